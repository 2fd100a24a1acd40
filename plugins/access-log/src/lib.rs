//! `access_log`: one JSON line per request, to stdout (journald under systemd) or a file.
//!
//! ```toml
//! [[plugins]]
//! kind = "access_log"
//! path = "/var/log/inference-gateway/access.log"   # optional; stdout when absent
//! ```
//! Lines never hold prompt or completion text, tokens, or secrets.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use gateway_plugin_api::{BuildContext, Plugin, PluginFactory, RequestCtx, RequestSummary};
use serde::Serialize;

pub struct AccessLogFactory;

impl PluginFactory for AccessLogFactory {
    fn kind(&self) -> &'static str {
        "access_log"
    }

    fn build(
        &self,
        config: &toml::Table,
        path: &str,
        _cx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, String> {
        let mut sink = Sink::Stdout;
        for (key, value) in config {
            match (key.as_str(), value) {
                ("kind", _) => {}
                ("path", toml::Value::String(file)) => {
                    let opened = OpenOptions::new().create(true).append(true).open(file);
                    let file = opened.map_err(|e| {
                        format!("{path}.path: cannot open `{file}` for append: {e}")
                    })?;
                    sink = Sink::File(Mutex::new(file));
                }
                ("path", other) => {
                    return Err(format!(
                        "{path}.path: expected a file path string, got `{other}`"
                    ))
                }
                (other, _) => {
                    return Err(format!(
                        "{path}.{other}: unknown key for plugin `access_log` (known: kind, path)"
                    ))
                }
            }
        }
        Ok(Arc::new(AccessLog { sink }))
    }
}

enum Sink {
    Stdout,
    File(Mutex<File>),
}

pub struct AccessLog {
    sink: Sink,
}

/// One access-log line. Field names are a stable interface for log pipelines.
#[derive(Serialize)]
struct Line<'a> {
    ts: f64,
    kind: &'static str,
    request_id: &'a str,
    route: &'static str,
    status: u16,
    model: Option<&'a str>,
    cluster: Option<&'a str>,
    framework: Option<&'a str>,
    pool: Option<&'a str>,
    backend: Option<&'a str>,
    stream: bool,
    user: Option<&'a str>,
    identity_provider: Option<&'a str>,
    auth_method: Option<&'a str>,
    client: Option<String>,
    duration_ms: f64,
    first_byte_ms: Option<f64>,
    bytes_in: u64,
    bytes_out: u64,
    upstream_attempts: u32,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    tokens_estimated: Option<bool>,
    limiter: Option<&'static str>,
    error_code: Option<&'static str>,
    client_aborted: bool,
    truncated: bool,
}

impl AccessLog {
    fn write(&self, line: &[u8]) -> io::Result<()> {
        match &self.sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line)?;
                out.flush()
            }
            Sink::File(file) => {
                let mut file = file.lock().map_err(|_| io::Error::other("poisoned"))?;
                file.write_all(line)
            }
        }
    }
}

fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

impl Plugin for AccessLog {
    fn name(&self) -> &str {
        "access_log"
    }

    fn on_done(&self, summary: &RequestSummary, ctx: &RequestCtx) {
        let principal = ctx.principal.as_ref();
        let line = Line {
            ts: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
            kind: "access",
            request_id: &ctx.request_id,
            route: ctx.route,
            status: summary.status,
            model: ctx.model.as_deref(),
            cluster: ctx.cluster.as_deref(),
            framework: ctx.framework.as_deref(),
            pool: ctx.pool.as_deref(),
            backend: ctx.backend.as_deref(),
            stream: ctx.stream,
            user: principal.map(|p| p.username.as_str()),
            identity_provider: principal.and_then(|p| p.identity_provider.as_deref()),
            auth_method: principal.map(|p| p.auth_method.as_str()),
            client: ctx.client_addr.map(|a| a.ip().to_string()),
            duration_ms: millis(summary.duration),
            first_byte_ms: summary.first_byte.map(millis),
            bytes_in: summary.bytes_received,
            bytes_out: summary.bytes_sent,
            upstream_attempts: summary.upstream_attempts,
            prompt_tokens: ctx.usage.map(|u| u.prompt_tokens),
            completion_tokens: ctx.usage.map(|u| u.completion_tokens),
            tokens_estimated: ctx.usage.map(|u| u.estimated),
            limiter: ctx.limiter,
            error_code: summary.error_code,
            client_aborted: summary.client_aborted,
            truncated: summary.truncated,
        };
        let Ok(mut bytes) = serde_json::to_vec(&line) else {
            return;
        };
        bytes.push(b'\n');
        // A full disk or closed stdout must not fail the request; there is nowhere to report it.
        let _ = self.write(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(src: &str) -> toml::Table {
        src.parse().expect("toml")
    }

    #[test]
    fn rejects_unknown_keys_with_path() {
        let err = AccessLogFactory
            .build(
                &table("kind = \"access_log\"\nfile = \"x\""),
                "plugins[2]",
                &BuildContext::default(),
            )
            .err()
            .expect("error");
        assert!(err.starts_with("plugins[2].file:"), "{err}");
    }

    #[test]
    fn writes_one_json_line_per_request_to_a_file() {
        let dir = std::env::temp_dir().join(format!("access-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("access.log");
        let src = format!(
            "kind = \"access_log\"\npath = {:?}",
            file.display().to_string()
        );
        let plugin = AccessLogFactory
            .build(&table(&src), "plugins[0]", &BuildContext::default())
            .expect("build");
        let mut ctx = RequestCtx::new("req-1".into(), None);
        ctx.route = "chat_completions";
        ctx.model = Some("m".into());
        let summary = RequestSummary {
            status: 200,
            bytes_sent: 42,
            ..Default::default()
        };
        plugin.on_done(&summary, &ctx);
        plugin.on_done(&summary, &ctx);
        let text = std::fs::read_to_string(&file).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["request_id"], "req-1");
        assert_eq!(lines[0]["model"], "m");
        assert_eq!(lines[0]["bytes_out"], 42);
        std::fs::remove_dir_all(&dir).ok();
    }
}
