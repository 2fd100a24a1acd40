//! One generated answer of the mock, rendered as vLLM renders it: whole, as stream events,
//! and its usage (true, omitted, or made up by the test).

use serde_json::{json, Value};

use crate::openai::{now, Kind};

/// What usage a request's answer reports (`x-mock-usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageReport {
    /// The true counts.
    Real,
    /// No usage at all (no `usage` field, no usage chunk).
    Omitted,
    /// These prompt and completion counts, whatever was generated.
    Fixed(u64, u64),
}

/// One generated answer: `tokens` tokens, each the word `tokN `.
pub struct Generation {
    pub id: String,
    pub model: String,
    pub(crate) kind: Kind,
    pub tokens: u32,
    pub prompt_tokens: u32,
    pub finish_reason: &'static str,
    pub report: UsageReport,
}

impl Generation {
    pub fn token(i: u32) -> String {
        format!("tok{i} ")
    }

    pub fn usage(&self) -> Value {
        let (prompt, completion) = match self.report {
            UsageReport::Fixed(p, c) => (p, c),
            _ => (u64::from(self.prompt_tokens), u64::from(self.tokens)),
        };
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
        })
    }

    /// The whole answer as vLLM writes it: `usage` after the choices (unless omitted), then,
    /// when asked for, the prompt's logprobs and token ids (about 40 bytes per prompt token,
    /// at least 8 KiB of them).
    pub(crate) fn full_text(&self, prompt_logprobs: bool) -> String {
        let mut full = self.full();
        if self.report == UsageReport::Omitted {
            if let Some(object) = full.as_object_mut() {
                object.remove("usage");
            }
        }
        let mut text = full.to_string();
        if prompt_logprobs && text.ends_with('}') {
            text.pop();
            let entries = (self.prompt_tokens as usize).max(200);
            let logprobs: Vec<String> = (1..entries)
                .map(|i| {
                    format!(
                        "{{\"{i}\":{{\"logprob\":-1.25,\"rank\":1,\"decoded_token\":\"t{i}\"}}}}"
                    )
                })
                .collect();
            let ids: Vec<String> = (0..entries).map(|i| i.to_string()).collect();
            text.push_str(&format!(
                ",\"prompt_logprobs\":[null,{}],\"prompt_token_ids\":[{}],\"kv_transfer_params\":null}}",
                logprobs.join(","),
                ids.join(",")
            ));
        }
        text
    }

    pub(crate) fn full(&self) -> Value {
        let text: String = (0..self.tokens).map(Generation::token).collect();
        let choice = if self.kind == Kind::Chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": self.finish_reason})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": self.finish_reason})
        };
        json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
            "created": now(),
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
        })
    }

    /// The SSE event for token `i`, or the closing event (finish_reason) when `i == tokens`.
    pub fn chunk(&self, i: Option<u32>) -> Value {
        let finish = if i.is_none() {
            Value::from(self.finish_reason)
        } else {
            Value::Null
        };
        let text = i.map(Generation::token).unwrap_or_default();
        let choice = if self.kind == Kind::Chat {
            let delta = if i == Some(0) {
                json!({"role": "assistant", "content": text})
            } else {
                json!({"content": text})
            };
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
        };
        json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": now(),
            "model": self.model,
            "choices": [choice],
        })
    }

    pub fn usage_chunk(&self) -> Value {
        json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": now(),
            "model": self.model,
            "choices": [],
            "usage": self.usage(),
        })
    }
}
