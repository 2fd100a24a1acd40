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
use serde::Deserialize;

/// Largest partial SSE line kept between chunks; longer lines are not usage lines.
const MAX_LINE: usize = 256 << 10;
/// Largest `usage` object read; OpenAI's and vLLM's are a few hundred bytes.
const MAX_USAGE_OBJECT: usize = 4 << 10;

#[derive(Deserialize)]
struct UsageJson {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

/// Reads a captured usage object; `None` unless it holds a token count (embeddings report
/// only `prompt_tokens` and `total_tokens`).
fn parse_usage(object: &[u8]) -> Option<Usage> {
    let u: UsageJson = serde_json::from_slice(object).ok()?;
    let prompt = u.prompt_tokens?;
    let completion = u
        .completion_tokens
        .or_else(|| u.total_tokens.map(|t| t.saturating_sub(prompt)))
        .unwrap_or(0);
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        estimated: false,
    })
}

/// Where the scan is in the current top-level key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// Not reading a top-level key.
    None,
    /// Read this many bytes of a key that still matches `usage`.
    Matching(usize),
    /// Reading a top-level key that is not `usage`.
    Other,
}

/// An incremental scan for the top-level `"usage": {...}` of one JSON document, fed in
/// arbitrary pieces. Never panics and never buffers more than one usage object, whatever
/// the input (invalid JSON just yields nothing).
#[derive(Debug)]
pub struct UsageScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a key (after `{` or `,`).
    expect_key: bool,
    key: Key,
    /// The last top-level key was `usage` and its value comes next.
    usage_next: bool,
    /// The usage object's bytes while it is being read.
    capture: Option<Vec<u8>>,
    found: Option<Usage>,
}

const USAGE: &[u8] = b"usage";

impl Default for UsageScan {
    fn default() -> Self {
        UsageScan {
            depth: 0,
            in_string: false,
            escaped: false,
            expect_key: false,
            key: Key::None,
            usage_next: false,
            capture: None,
            found: None,
        }
    }
}

impl UsageScan {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            // Inside a string nothing matters but its end: skip to the next quote or
            // backslash in one step (most of a large body is strings).
            if self.in_string && !self.escaped && self.capture.is_none() && self.key == Key::None {
                match memchr::memchr2(b'"', b'\\', bytes) {
                    Some(at) => bytes = bytes.get(at..).unwrap_or_default(),
                    None => return,
                }
            }
            let Some((&b, rest)) = bytes.split_first() else {
                return;
            };
            bytes = rest;
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        if let Some(capture) = &mut self.capture {
            if capture.len() < MAX_USAGE_OBJECT {
                capture.push(b);
            } else {
                // Too large to be a usage object: give up on this one.
                self.capture = None;
            }
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
                if self.key != Key::None {
                    // An escaped key is not written as plain `usage`.
                    self.key = Key::Other;
                }
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.key != Key::None {
                    self.usage_next = self.key == Key::Matching(USAGE.len());
                    self.key = Key::None;
                    self.expect_key = false;
                }
            } else if let Key::Matching(n) = self.key {
                self.key = match USAGE.get(n) {
                    Some(&want) if want == b => Key::Matching(n + 1),
                    _ => Key::Other,
                };
            }
            return;
        }
        let top = self.depth == 1;
        match b {
            b'"' => {
                self.in_string = true;
                if top && self.expect_key {
                    self.key = Key::Matching(0);
                } else if top {
                    self.usage_next = false;
                }
            }
            b'{' | b'[' => {
                if top && self.usage_next && b == b'{' {
                    self.capture = Some(vec![b'{']);
                }
                if top {
                    self.usage_next = false;
                }
                self.depth = self.depth.saturating_add(1);
                if self.depth == 1 {
                    self.expect_key = b == b'{';
                }
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 1 {
                    if let Some(object) = self.capture.take() {
                        // A later top-level `usage` replaces an earlier one, as serde's maps do.
                        if let Some(usage) = parse_usage(&object) {
                            self.found = Some(usage);
                        }
                    }
                }
            }
            b',' if top => {
                self.expect_key = true;
                self.usage_next = false;
            }
            b':' if top => self.expect_key = false,
            b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' => {}
            // The first byte of a number or literal: a top-level value that is no object.
            _ if top => self.usage_next = false,
            _ => {}
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.found
    }
}

/// Whether `line` may hold a usage object: `"usage"` followed by `:` and `{` somewhere. A
/// cheap filter: vLLM sends `"usage":null` in every chunk of a stream with usage on.
fn may_hold_usage(line: &[u8]) -> bool {
    memmem::find_iter(line, b"\"usage\"").any(|at| {
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
