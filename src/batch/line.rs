//! One line's attempts and outcome: which failures are tried again (after a backoff, up to
//! `max_attempts`), the output or error-file line it ends with, and how it is reported
//! (metrics, and the plugins' `on_done`, so the access log has a line per batch line with the
//! batch id and its tokens; it never passes the admit phase, so it uses no interactive budget).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_plugin_api::{Principal, RequestCtx, RequestSummary, Usage};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::capacity::Acquired;
use super::send::Attempt;
use super::store::{ClaimedLine, LineOutcome};
use super::worker::Run;
use super::{new_id, Engine};

const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub struct Tries<'a> {
    engine: &'a Arc<Engine>,
    run: &'a Run,
    line_no: i64,
    custom_id: String,
    url: String,
    body: Bytes,
    attempts: u32,
    started: Instant,
    outcome: Option<LineOutcome>,
    last_status: u16,
    last_pool: Option<String>,
    last_backend: Option<String>,
}

#[derive(Serialize)]
struct OutputLine<'a> {
    id: String,
    custom_id: &'a str,
    response: Option<ResponsePart<'a>>,
    error: Option<ErrorPart<'a>>,
}

#[derive(Serialize)]
struct ResponsePart<'a> {
    status_code: u16,
    request_id: &'a str,
    body: &'a RawValue,
}

#[derive(Serialize)]
struct ErrorPart<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Deserialize, Default)]
struct UsageField {
    #[serde(default)]
    usage: Option<Tokens>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct Tokens {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// A line of the output or error file for `custom_id`.
pub fn output_line(
    custom_id: &str,
    response: Option<(u16, &str, &[u8])>,
    error: Option<(&str, &str)>,
) -> String {
    let text;
    let body: Box<RawValue>;
    let response = match response {
        Some((status_code, request_id, raw)) => {
            // A body that is not JSON (a proxy's HTML error page) is kept as a string.
            body = match serde_json::from_slice::<&RawValue>(raw) {
                Ok(v) => v.to_owned(),
                Err(_) => {
                    text = String::from_utf8_lossy(raw).into_owned();
                    RawValue::from_string(serde_json::to_string(&text).unwrap_or_default())
                        .unwrap_or_else(|_| RawValue::NULL.to_owned())
                }
            };
            Some(ResponsePart {
                status_code,
                request_id,
                body: &body,
            })
        }
        None => None,
    };
    let line = OutputLine {
        id: new_id("batch_req_"),
        custom_id,
        response,
        error: error.map(|(code, message)| ErrorPart { code, message }),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

impl<'a> Tries<'a> {
    pub fn new(engine: &'a Arc<Engine>, run: &'a Run, line: &ClaimedLine) -> Tries<'a> {
        Tries {
            engine,
            run,
            line_no: line.line_no,
            custom_id: line.custom_id.clone(),
            url: line.url.clone(),
            body: Bytes::from(line.body.clone()),
            attempts: 0,
            started: Instant::now(),
            outcome: None,
            last_status: 0,
            last_pool: None,
            last_backend: None,
        }
    }

    /// One attempt on the backend picked; `Some(wait)` to try again after `wait`, `None` when
    /// the line has its outcome.
    pub async fn attempt(&mut self, acquired: Acquired) -> Option<Duration> {
        self.attempts += 1;
        let request_id = new_id("batchreq-");
        self.last_pool = Some(acquired.pool.name.clone());
        self.last_backend = Some(acquired.backend.address.clone());
        let attempt = self
            .engine
            .sender
            .send(
                &acquired.pool,
                &acquired.backend,
                &self.url,
                self.body.clone(),
                &request_id,
            )
            .await;
        drop(acquired);
        let max = self.engine.config.max_attempts;
        let retry = |me: &Self| {
            (me.attempts < max).then(|| {
                let factor = 1u32 << (me.attempts - 1).min(16);
                me.engine
                    .config
                    .retry_backoff
                    .saturating_mul(factor)
                    .min(MAX_BACKOFF)
            })
        };
        let (failed, result, tokens) = match attempt {
            Attempt::Answered {
                status,
                body,
                request_id: backend_id,
            } => {
                self.last_status = status;
                let id = backend_id.unwrap_or(request_id);
                if (200..300).contains(&status) {
                    let tokens = serde_json::from_slice::<UsageField>(&body)
                        .ok()
                        .and_then(|u| u.usage)
                        .unwrap_or_default();
                    (
                        false,
                        output_line(&self.custom_id, Some((status, &id, &body)), None),
                        tokens,
                    )
                } else {
                    let transient = status == 429 || status >= 500;
                    if transient {
                        if let Some(wait) = retry(self) {
                            self.count("retried");
                            return Some(wait);
                        }
                    }
                    let message = format!(
                        "the backend answered {status} (attempt {} of at most {max})",
                        self.attempts
                    );
                    let line = output_line(
                        &self.custom_id,
                        Some((status, &id, &body)),
                        Some(("backend_error", &message)),
                    );
                    (true, line, Tokens::default())
                }
            }
            Attempt::Transient(why) => {
                if let Some(wait) = retry(self) {
                    self.count("retried");
                    return Some(wait);
                }
                let message = format!("{why} (after {} attempts)", self.attempts);
                let line = output_line(
                    &self.custom_id,
                    None,
                    Some(("backend_unavailable", &message)),
                );
                (true, line, Tokens::default())
            }
            Attempt::Fatal(code, why) => (
                true,
                output_line(&self.custom_id, None, Some((code, &why))),
                Tokens::default(),
            ),
        };
        self.outcome = Some(LineOutcome {
            failed,
            result,
            prompt_tokens: tokens.prompt_tokens as i64,
            completion_tokens: tokens.completion_tokens as i64,
        });
        None
    }

    fn count(&self, outcome: &str) {
        if let (Some(m), Some(pool)) = (&self.engine.metrics, &self.last_pool) {
            m.lines.with_label_values(&[pool, outcome]).inc();
        }
    }

    /// Stores the outcome (retrying a busy database a few times) and reports the line.
    pub async fn store(self) {
        let Some(outcome) = &self.outcome else {
            return;
        };
        let mut stored = false;
        // About a minute: a database restart should not cost the answer.
        for wait in [0u64, 100, 500, 1000, 2000, 5000, 10_000, 20_000, 30_000] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match self
                .engine
                .store
                .finish_line(&self.run.id, self.line_no, outcome)
                .await
            {
                Ok(_) => {
                    stored = true;
                    break;
                }
                Err(e) => {
                    log::warn!(target: "batch", batch_id = self.run.id.as_str(); "storing a line's result: {e}")
                }
            }
        }
        if !stored {
            // Left claimed: sent again after the next start, never written twice.
            log::error!(target: "batch", batch_id = self.run.id.as_str(); "line {} could not be stored; it will be sent again after a restart", self.line_no);
            return;
        }
        self.count(if outcome.failed {
            "failed"
        } else {
            "completed"
        });
        if let Some(m) = &self.engine.metrics {
            m.tokens
                .with_label_values(&[&self.run.owner_name, "prompt"])
                .inc_by(outcome.prompt_tokens as u64);
            m.tokens
                .with_label_values(&[&self.run.owner_name, "completion"])
                .inc_by(outcome.completion_tokens as u64);
        }
        self.report(outcome);
    }

    /// The access-log view of the line: route `batch`, the batch id, its tokens.
    fn report(&self, outcome: &LineOutcome) {
        let mut ctx = RequestCtx::new(format!("{}-line-{}", self.run.id, self.line_no), None);
        ctx.started = self.started;
        ctx.route = "batch";
        ctx.model = Some(self.run.model.clone());
        ctx.pool = self.last_pool.clone();
        ctx.backend = self.last_backend.clone();
        ctx.body_bytes = self.body.len() as u64;
        ctx.batch_id = Some(self.run.id.clone());
        ctx.principal = Some(Arc::new(Principal {
            id: self.run.owner.clone(),
            username: self.run.owner_name.clone(),
            auth_method: "batch".into(),
            ..Principal::default()
        }));
        ctx.usage = Some(Usage {
            prompt_tokens: outcome.prompt_tokens as u64,
            completion_tokens: outcome.completion_tokens as u64,
            estimated: false,
        });
        let summary = RequestSummary {
            status: self.last_status,
            duration: self.started.elapsed(),
            upstream_attempts: self.attempts,
            error_code: outcome.failed.then_some("batch_line_failed"),
            ..RequestSummary::default()
        };
        for plugin in self.engine.plugins.iter() {
            plugin.on_done(&summary, &ctx);
        }
    }
}
