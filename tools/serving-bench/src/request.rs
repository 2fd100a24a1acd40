//! One benchmark request, timed: first token, every later token, the end.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::dataset::Prompt;

/// What one request measured.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub ok: bool,
    pub error: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub ttft: Duration,
    /// Gaps between consecutive content events after the first.
    pub itl: Vec<Duration>,
    pub latency: Duration,
}

pub struct Target {
    pub http: reqwest::Client,
    pub url: String,
    pub model: String,
    pub chat: bool,
    pub stream: bool,
    pub token: Option<String>,
    pub ignore_eos: bool,
}

impl Target {
    #[expect(
        clippy::indexing_slicing,
        reason = "serde_json::Value indexing: reads of absent keys yield Null, writes go to an object built here"
    )]
    fn body(&self, prompt: &Prompt) -> Value {
        let mut body = if self.chat {
            json!({"model": self.model, "messages": [{"role": "user", "content": prompt.text}]})
        } else {
            json!({"model": self.model, "prompt": prompt.text})
        };
        body["max_tokens"] = json!(prompt.output_tokens);
        body["stream"] = json!(self.stream);
        if self.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        if self.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        body
    }

    #[expect(
        clippy::indexing_slicing,
        reason = "serde_json::Value indexing: reads of absent keys yield Null, writes go to an object built here"
    )]
    pub async fn send(&self, prompt: &Prompt) -> Outcome {
        let started = Instant::now();
        let mut req = self.http.post(&self.url).json(&self.body(prompt));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let mut outcome = Outcome {
            input_tokens: prompt.input_tokens,
            ..Outcome::default()
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return failed(outcome, e.to_string()),
        };
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return failed(
                outcome,
                format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                ),
            );
        }
        if self.stream {
            self.read_stream(resp, started, &mut outcome).await;
        } else {
            match resp.json::<Value>().await {
                Ok(v) => {
                    outcome.latency = started.elapsed();
                    outcome.ttft = outcome.latency;
                    outcome.output_tokens = v["usage"]["completion_tokens"]
                        .as_u64()
                        .unwrap_or(prompt.output_tokens);
                    if let Some(p) = v["usage"]["prompt_tokens"].as_u64() {
                        outcome.input_tokens = p;
                    }
                    outcome.ok = true;
                }
                Err(e) => return failed(outcome, format!("unreadable response: {e}")),
            }
        }
        outcome
    }

    #[expect(
        clippy::indexing_slicing,
        reason = "serde_json::Value indexing: reads of absent keys yield Null, writes go to an object built here"
    )]
    async fn read_stream(&self, resp: reqwest::Response, started: Instant, outcome: &mut Outcome) {
        let mut body = resp.bytes_stream();
        let mut pending = String::new();
        let mut last: Option<Instant> = None;
        let mut events = 0u64;
        let mut usage: Option<(u64, u64)> = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    outcome.error = Some(format!("stream broke: {e}"));
                    return;
                }
            };
            let now = Instant::now();
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let Some(data) = line.trim().strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if let (Some(p), Some(c)) = (
                    v["usage"]["prompt_tokens"].as_u64(),
                    v["usage"]["completion_tokens"].as_u64(),
                ) {
                    usage = Some((p, c));
                }
                let choice = &v["choices"][0];
                let text = if self.chat {
                    &choice["delta"]["content"]
                } else {
                    &choice["text"]
                };
                if text.as_str().is_some_and(|t| !t.is_empty()) {
                    match last {
                        None => outcome.ttft = now - started,
                        Some(prev) => outcome.itl.push(now - prev),
                    }
                    last = Some(now);
                    events += 1;
                }
            }
        }
        outcome.latency = started.elapsed();
        outcome.output_tokens = usage.map(|u| u.1).unwrap_or(events);
        if let Some((p, _)) = usage {
            outcome.input_tokens = p;
        }
        outcome.ok = last.is_some();
        if !outcome.ok {
            outcome.error = Some("the stream carried no tokens".into());
        }
    }
}

fn failed(mut outcome: Outcome, error: String) -> Outcome {
    outcome.ok = false;
    outcome.error = Some(error);
    outcome
}
