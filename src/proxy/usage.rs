//! Reading token usage off a response on its way to the client, without holding it back.
//!
//! SSE (`text/event-stream`): events are split across chunks arbitrarily, so only the partial
//! last line of a chunk is kept between chunks (usually nothing: events tend to end at chunk
//! ends). A `data:` line is parsed only when it contains `"usage"` followed by an object,
//! which vLLM sends once, in the final chunk, when `stream_options.include_usage` is set.
//! Data events are counted so that a stream without a usage chunk still yields an estimate.
//!
//! JSON: OpenAI servers put `usage` last, so only the last few KiB are kept and parsed at
//! the end.

use gateway_plugin_api::Usage;
use memchr::memmem;
use serde::Deserialize;

/// Largest partial SSE line kept between chunks; longer lines are not usage lines.
const MAX_LINE: usize = 256 << 10;
/// Tail of a JSON body searched for `usage`.
const JSON_TAIL: usize = 4 << 10;

#[derive(Deserialize)]
struct UsageJson {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

enum Mode {
    Sse { partial: Vec<u8>, data_events: u64 },
    Json { tail: Vec<u8> },
    Other,
}

pub struct UsageObserver {
    mode: Mode,
    reported: Option<Usage>,
}

/// Finds `"usage"` followed by `:` and an object in `text`, and parses that object.
fn usage_in(text: &[u8]) -> Option<Usage> {
    let mut from = 0;
    while let Some(at) = memmem::find(&text[from..], b"\"usage\"") {
        let rest = &text[from + at + 7..];
        let value = rest
            .iter()
            .position(|c| !c.is_ascii_whitespace() && *c != b':')
            .map(|i| &rest[i..]);
        if let Some(obj) = value.filter(|v| v.first() == Some(&b'{')) {
            let mut parsed = serde_json::Deserializer::from_slice(obj).into_iter::<UsageJson>();
            if let Some(Ok(u)) = parsed.next() {
                return Some(Usage {
                    prompt_tokens: u.prompt_tokens,
                    completion_tokens: u.completion_tokens,
                    estimated: false,
                });
            }
        }
        from += at + 7;
    }
    None
}

impl UsageObserver {
    pub fn new(content_type: Option<&[u8]>) -> UsageObserver {
        let mode = match content_type {
            Some(ct) if ct.starts_with(b"text/event-stream") => Mode::Sse {
                partial: Vec::new(),
                data_events: 0,
            },
            Some(ct) if ct.starts_with(b"application/json") => Mode::Json { tail: Vec::new() },
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
            Mode::Json { tail } => {
                if chunk.len() >= JSON_TAIL {
                    tail.clear();
                    tail.extend_from_slice(&chunk[chunk.len() - JSON_TAIL..]);
                } else {
                    let excess = (tail.len() + chunk.len()).saturating_sub(JSON_TAIL);
                    tail.drain(..excess);
                    tail.extend_from_slice(chunk);
                }
            }
            Mode::Sse {
                partial,
                data_events,
            } => {
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', chunk) {
                    let piece = &chunk[start..end];
                    start = end + 1;
                    if partial.is_empty() {
                        Self::line(piece, data_events, &mut self.reported);
                    } else {
                        partial.extend_from_slice(piece);
                        Self::line(partial, data_events, &mut self.reported);
                        partial.clear();
                    }
                }
                let rest = &chunk[start..];
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
        if let Some(usage) = usage_in(data) {
            *reported = Some(usage);
        }
    }

    /// The usage the backend reported; else, for a stream, an estimate from the request body
    /// size (4 bytes a token) and the number of content events (one token each, less the
    /// closing event).
    pub fn finish(&mut self, body_bytes: u64) -> Option<Usage> {
        if let Mode::Json { tail } = &self.mode {
            self.reported = usage_in(tail);
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
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":null}\n\n\
        data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
        data: {\"choices\":[],\"usage\": {\"prompt_tokens\": 12, \"completion_tokens\": 2, \"total_tokens\": 14}}\n\n\
        data: [DONE]\n\n";

    fn observe_in_pieces(text: &str, piece: usize) -> Option<Usage> {
        let mut o = UsageObserver::new(Some(b"text/event-stream"));
        for chunk in text.as_bytes().chunks(piece) {
            o.observe(chunk);
        }
        o.finish(0)
    }

    #[test]
    fn sse_usage_is_found_however_the_stream_is_split() {
        let want = Some(Usage {
            prompt_tokens: 12,
            completion_tokens: 2,
            estimated: false,
        });
        for piece in [1, 2, 3, 7, 16, 64, STREAM.len()] {
            assert_eq!(observe_in_pieces(STREAM, piece), want, "pieces of {piece}");
        }
    }

    #[test]
    fn streams_without_usage_are_estimated() {
        let no_usage = STREAM.replace("\"usage\": {", "\"other\": {");
        let mut o = UsageObserver::new(Some(b"text/event-stream"));
        o.observe(no_usage.as_bytes());
        let u = o.finish(400).expect("estimate");
        assert!(u.estimated);
        assert_eq!(u.prompt_tokens, 100);
        // Four data events (not [DONE]), less the closing one.
        assert_eq!(u.completion_tokens, 3);
    }

    #[test]
    fn json_usage_is_read_from_the_tail() {
        let body = format!(
            "{{\"choices\":[{{\"message\":{{\"content\":\"{}\"}}}}],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":7}}}}",
            "x".repeat(20_000)
        );
        let mut o = UsageObserver::new(Some(b"application/json"));
        for chunk in body.as_bytes().chunks(1000) {
            o.observe(chunk);
        }
        let u = o.finish(0).expect("usage");
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.estimated),
            (5, 7, false)
        );
    }

    #[test]
    fn other_bodies_report_nothing() {
        let mut o = UsageObserver::new(Some(b"text/plain"));
        o.observe(b"\"usage\":{\"prompt_tokens\":1}");
        assert_eq!(o.finish(10), None);
    }
}
