//! Reading token usage off a response on its way to the client, without holding it back.
//!
//! JSON bodies: the top-level `usage` object is found wherever it is, by an incremental scan
//! that keeps only a few counters and the usage object itself (at most `MAX_USAGE_OBJECT`
//! bytes). vLLM writes `prompt_logprobs`, `prompt_token_ids` and `kv_transfer_params` after
//! `usage`, so a window on the tail of the body would miss it; and a `"usage"` inside a
//! string or a nested object (model output, a tool call) is never taken for it.
//!
//! SSE (`text/event-stream`): events are split across chunks arbitrarily, so only the partial
//! last line of a chunk is kept between chunks (usually nothing: events tend to end at chunk
//! ends). A `data:` line is scanned only when it holds `"usage"` followed by an object,
//! which vLLM sends once, in the final chunk, when `stream_options.include_usage` is set.
//! Data events are counted so that a stream without a usage chunk still yields an estimate
//! for metrics and logs (marked `estimated`; the limiter charges such a stream its whole
//! reservation instead, see the rate_limits plugin).

use gateway_plugin_api::Usage;
use memchr::memmem;

/// Largest partial SSE line kept between chunks; longer lines are not usage lines.
const MAX_LINE: usize = 256 << 10;
/// Largest `usage` object read; OpenAI's and vLLM's are a few hundred bytes.
const MAX_USAGE_OBJECT: usize = 4 << 10;

mod flat;
use flat::parse_usage;

/// Where the scan is in the current top-level key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Key {
    /// Not reading a top-level key.
    #[default]
    None,
    /// Read this many bytes of a key that still matches `usage`.
    Matching(usize),
    /// Reading a top-level key that is not `usage`.
    Other,
}

/// An incremental scan for the top-level `"usage": {...}` of one JSON document, fed in
/// arbitrary pieces. Never panics and never buffers more than one usage object, whatever
/// the input (invalid JSON just yields nothing). One tight pass: string contents are jumped
/// over, and the usage object is parsed where it lies when it ends in the piece it began in
/// (copied only when a piece boundary splits it).
#[derive(Debug, Default)]
pub struct UsageScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a key (after `{` or `,`).
    expect_key: bool,
    key: Key,
    /// The last top-level key was `usage` and its value comes next.
    usage_next: bool,
    /// Inside the top-level usage object.
    capturing: bool,
    /// Its bytes from earlier pieces, when a piece boundary split it.
    partial: Vec<u8>,
    found: Option<Usage>,
}

const USAGE: &[u8] = b"usage";

/// Where the current string may end or escape: its next quote or backslash. The first 32
/// bytes (most keys and values) are searched a word at a time; longer strings with `memchr2`,
/// whose set-up costs more than a short string's whole search.
fn string_end(rest: &[u8]) -> Option<usize> {
    const SHORT: usize = 32;
    let head = rest.get(..SHORT).unwrap_or(rest);
    let mut words = head.chunks_exact(8);
    let mut offset = 0;
    for word in &mut words {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        if let Some(at) = quote_or_backslash(u64::from_le_bytes(word)) {
            return Some(offset + at);
        }
        offset += 8;
    }
    if let Some(at) = words
        .remainder()
        .iter()
        .position(|b| *b == b'"' || *b == b'\\')
    {
        return Some(offset + at);
    }
    if rest.len() <= SHORT {
        return None;
    }
    memchr::memchr2(b'"', b'\\', rest.get(SHORT..).unwrap_or_default()).map(|at| at + SHORT)
}

/// The index of the first `"` or `\` among a word's eight bytes (little-endian), if any:
/// a byte equal to the pattern is zero after the xor, and `(x - 0x01..) & !x & 0x80..` marks
/// the lowest zero byte exactly (a false mark can only sit above a true one).
fn quote_or_backslash(word: u64) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let quotes = word ^ u64::from_le_bytes([b'"'; 8]);
    let backslashes = word ^ u64::from_le_bytes([b'\\'; 8]);
    let marks = zero_bytes(quotes) | zero_bytes(backslashes);
    (marks != 0).then(|| (marks.trailing_zeros() / 8) as usize)
}

impl UsageScan {
    pub fn feed(&mut self, bytes: &[u8]) {
        // The state lives in locals for the loop (registers, not memory) and is written back
        // at the end: this loop runs once per byte of every non-streaming answer.
        let UsageScan {
            mut depth,
            mut in_string,
            mut escaped,
            mut expect_key,
            mut key,
            mut usage_next,
            mut capturing,
            ..
        } = *self;
        // Where the usage object began in this piece, if it did.
        let mut started: Option<usize> = None;
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if in_string {
                if escaped {
                    escaped = false;
                    if key != Key::None {
                        // An escaped key is not written as plain `usage`.
                        key = Key::Other;
                    }
                } else if b == b'"' {
                    in_string = false;
                    if key != Key::None {
                        usage_next = key == Key::Matching(USAGE.len());
                        key = Key::None;
                        expect_key = false;
                    }
                } else if b == b'\\' {
                    escaped = true;
                } else if let Key::Matching(n) = key {
                    key = match USAGE.get(n) {
                        Some(&want) if want == b => Key::Matching(n + 1),
                        _ => Key::Other,
                    };
                } else if key == Key::None {
                    // Nothing inside a value string matters but where it ends.
                    match bytes.get(i..).and_then(string_end) {
                        Some(at) => {
                            i += at;
                            continue;
                        }
                        None => break,
                    }
                }
                i += 1;
                continue;
            }
            let top = depth == 1;
            match b {
                b'"' => {
                    let is_key = top && expect_key;
                    let rest = bytes.get(i + 1..).unwrap_or_default();
                    // Most strings end, unescaped, in the piece they begin in: take them whole.
                    if let Some(len) = string_end(rest).filter(|&at| rest.get(at) == Some(&b'"')) {
                        if is_key {
                            usage_next = rest.get(..len) == Some(USAGE);
                            expect_key = false;
                        } else if top {
                            usage_next = false;
                        }
                        i += len + 2;
                        continue;
                    }
                    // Else byte by byte, across escapes and pieces.
                    in_string = true;
                    if is_key {
                        key = Key::Matching(0);
                    } else if top {
                        usage_next = false;
                    }
                }
                b'{' | b'[' => {
                    if top && usage_next && b == b'{' {
                        capturing = true;
                        self.partial.clear();
                        started = Some(i);
                    }
                    if top {
                        usage_next = false;
                    }
                    depth = depth.saturating_add(1);
                    if depth == 1 {
                        expect_key = b == b'{';
                    }
                }
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 1 && capturing {
                        capturing = false;
                        let here = bytes.get(started.unwrap_or(0)..=i).unwrap_or_default();
                        self.complete(here, started.is_some());
                        started = None;
                    }
                }
                b',' if top => {
                    expect_key = true;
                    usage_next = false;
                }
                b':' if top => expect_key = false,
                b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' => {}
                // The first byte of a number or literal: a top-level value that is no object.
                _ if top => usage_next = false,
                _ => {}
            }
            i += 1;
        }
        if capturing {
            // The piece ended inside the usage object: keep what it holds of it, bounded.
            let tail = bytes.get(started.unwrap_or(0)..).unwrap_or_default();
            if self.partial.len() + tail.len() <= MAX_USAGE_OBJECT {
                self.partial.extend_from_slice(tail);
            } else {
                // Too large to be a usage object: give up on this one.
                capturing = false;
                self.partial = Vec::new();
            }
        }
        self.depth = depth;
        self.in_string = in_string;
        self.escaped = escaped;
        self.expect_key = expect_key;
        self.key = key;
        self.usage_next = usage_next;
        self.capturing = capturing;
    }

    /// The usage object has ended with `here` (all of it when it began in this piece, else
    /// its last part). A later top-level `usage` replaces an earlier one, as serde's maps do.
    fn complete(&mut self, here: &[u8], whole: bool) {
        let usage = if self.partial.len() + here.len() > MAX_USAGE_OBJECT {
            // Too large to be a usage object.
            None
        } else if whole {
            parse_usage(here)
        } else {
            self.partial.extend_from_slice(here);
            parse_usage(&self.partial)
        };
        if usage.is_some() {
            self.found = usage;
        }
        self.partial = Vec::new();
    }

    pub fn usage(&self) -> Option<Usage> {
        self.found
    }
}

/// The `"usage"` searcher, built once: building one per line cost ~380 instructions, a tenth
/// of a streamed chunk's whole path.
static USAGE_KEY: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"usage\""));

/// Whether `line` may hold a usage object: `"usage"` followed by `:` and `{` somewhere. A
/// cheap filter: vLLM sends `"usage":null` in every chunk of a stream with usage on.
fn may_hold_usage(line: &[u8]) -> bool {
    USAGE_KEY.find_iter(line).any(|at| {
        let rest = line.get(at + 7..).unwrap_or_default();
        rest.iter()
            .find(|c| !c.is_ascii_whitespace() && **c != b':')
            .is_some_and(|c| *c == b'{')
    })
}

enum Mode {
    Sse { partial: Vec<u8>, data_events: u64 },
    Json(Box<UsageScan>),
    Other,
}

pub struct UsageObserver {
    mode: Mode,
    reported: Option<Usage>,
}

impl UsageObserver {
    pub fn new(content_type: Option<&[u8]>) -> UsageObserver {
        let mode = match content_type {
            Some(ct) if ct.starts_with(b"text/event-stream") => Mode::Sse {
                partial: Vec::new(),
                data_events: 0,
            },
            Some(ct) if ct.starts_with(b"application/json") => Mode::Json(Box::default()),
            _ => Mode::Other,
        };
        UsageObserver {
            mode,
            reported: None,
        }
    }

    pub fn observe(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            Mode::Other => {}
            Mode::Json(scan) => scan.feed(chunk),
            Mode::Sse {
                partial,
                data_events,
            } => {
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', chunk) {
                    let piece = chunk.get(start..end).unwrap_or_default();
                    start = end + 1;
                    if partial.is_empty() {
                        Self::line(piece, data_events, &mut self.reported);
                    } else {
                        partial.extend_from_slice(piece);
                        Self::line(partial, data_events, &mut self.reported);
                        partial.clear();
                    }
                }
                let rest = chunk.get(start..).unwrap_or_default();
                if partial.len() + rest.len() <= MAX_LINE {
                    partial.extend_from_slice(rest);
                } else {
                    partial.clear();
                }
            }
        }
    }

    fn line(line: &[u8], data_events: &mut u64, reported: &mut Option<Usage>) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            return;
        }
        *data_events += 1;
        if may_hold_usage(data) {
            let mut scan = UsageScan::default();
            scan.feed(data);
            if let Some(usage) = scan.usage() {
                *reported = Some(usage);
            }
        }
    }

    /// The usage the backend reported; else, for a stream, an estimate from the request body
    /// size (4 bytes a token) and the number of content events (one token each, less the
    /// closing event); else `None` (the usage could not be determined).
    pub fn finish(&mut self, body_bytes: u64) -> Option<Usage> {
        if let Mode::Json(scan) = &self.mode {
            self.reported = scan.usage();
        }
        if self.reported.is_some() {
            return self.reported;
        }
        match &self.mode {
            Mode::Sse { data_events, .. } => Some(Usage {
                prompt_tokens: body_bytes / 4,
                completion_tokens: data_events.saturating_sub(1),
                estimated: true,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
