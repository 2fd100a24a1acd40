//! `access_log`: one JSON line per request, to stdout (journald under systemd) or a file.
//!
//! ```toml
//! [[plugins]]
//! kind = "access_log"
//! path = "/var/log/inference-gateway/access.log"   # optional; stdout when absent
//! flush_interval = "100ms"                          # optional; lines are written in batches
//! ```
//! Lines never hold prompt or completion text, tokens, or secrets.

mod writer;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_plugin_api::config::{from_table, TextDuration};
use gateway_plugin_api::{BuildContext, Phase, Plugin, PluginFactory, RequestCtx, RequestSummary};
use serde::Deserialize;

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
        let file: FileConfig = from_table(config, path)?;
        let interval = file.flush_interval.map_or(DEFAULT_FLUSH_INTERVAL, |d| d.0);
        if interval > MAX_FLUSH_INTERVAL {
            return Err(format!(
                "{path}.flush_interval: `{interval:?}` must be at most 10s (lines wait this long in memory)"
            ));
        }
        let out: Box<dyn Write + Send> = match file.path {
            None => Box::new(io::stdout()),
            Some(file) => {
                let opened = OpenOptions::new().create(true).append(true).open(&file);
                let file = opened
                    .map_err(|e| format!("{path}.path: cannot open `{file}` for append: {e}"))?;
                Box::new(file)
            }
        };
        let lines = writer::LineWriter::start(out, interval)
            .map_err(|e| format!("{path}: cannot start the log writer thread: {e}"))?;
        Ok(Arc::new(AccessLog { lines }))
    }
}

/// How long the writer gathers lines before one write.
const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// The `[[plugins]]` table of `kind = "access_log"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// The file lines are appended to; stdout when absent.
    path: Option<String>,
    /// Lines that arrive within this long of the first leave together in one write ("0s":
    /// each as it comes).
    flush_interval: Option<TextDuration>,
}

/// A field's key as written, built at compile time: `,"name":`. One copy a field instead of
/// four pushes (the keys were a third of the line's instructions); `finish` turns the first
/// field's comma into the object's `{`.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

// After `key!`, which it uses.
mod line;
use line::JsonLine;

pub struct AccessLog {
    lines: writer::LineWriter,
}

/// Microseconds, rounded to the nearest: written as milliseconds with three places.
fn micros(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_nanos().saturating_add(500) / 1000))
}

impl Plugin for AccessLog {
    fn name(&self) -> &str {
        "access_log"
    }

    fn phase(&self) -> Phase {
        Phase::Observe
    }

    fn on_done(&self, summary: &RequestSummary, ctx: &RequestCtx) {
        let principal = ctx.principal.as_ref();
        // Microseconds since the epoch, written as seconds with six places.
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| {
                d.as_secs()
                    .saturating_mul(1_000_000)
                    .saturating_add(u64::from(d.subsec_micros()))
            })
            .unwrap_or_default();
        // Field names are a stable interface for log pipelines.
        let mut line = JsonLine::new();
        line.decimal::<6>(key!("ts"), Some(ts));
        line.string(key!("kind"), Some("access"));
        line.string(key!("request_id"), Some(&ctx.request_id));
        line.string(key!("route"), Some(ctx.route));
        line.integer(key!("status"), Some(summary.status.into()));
        line.string(key!("model"), ctx.model.as_deref());
        line.string(key!("cluster"), ctx.cluster.as_deref());
        line.string(key!("framework"), ctx.framework.as_deref());
        line.string(key!("pool"), ctx.pool.as_deref());
        line.string(key!("backend"), ctx.backend.as_deref());
        line.boolean(key!("stream"), Some(ctx.stream));
        line.string(key!("user"), principal.map(|p| p.username.as_str()));
        line.string(
            key!("identity_provider"),
            principal.and_then(|p| p.identity_provider.as_deref()),
        );
        line.string(
            key!("auth_method"),
            principal.map(|p| p.auth_method.as_str()),
        );
        line.ip(key!("client"), ctx.client_addr.map(|a| a.ip()));
        line.decimal::<3>(key!("duration_ms"), Some(micros(summary.duration)));
        line.decimal::<3>(key!("first_byte_ms"), summary.first_byte.map(micros));
        line.integer(key!("bytes_in"), Some(summary.bytes_received));
        line.integer(key!("bytes_out"), Some(summary.bytes_sent));
        line.integer(
            key!("upstream_attempts"),
            Some(summary.upstream_attempts.into()),
        );
        line.integer(key!("prompt_tokens"), ctx.usage.map(|u| u.prompt_tokens));
        line.integer(
            key!("completion_tokens"),
            ctx.usage.map(|u| u.completion_tokens),
        );
        line.boolean(key!("tokens_estimated"), ctx.usage.map(|u| u.estimated));
        line.string(key!("limiter"), ctx.admit_outcome);
        line.string(key!("error_code"), summary.error_code);
        line.boolean(key!("client_aborted"), Some(summary.client_aborted));
        line.boolean(key!("truncated"), Some(summary.truncated));
        line.boolean(key!("panic_routed"), Some(summary.panic_routed));
        line.string(key!("batch_id"), ctx.batch_id.as_deref());
        self.lines.push(&line.finish());
    }

    fn flush(&self) {
        self.lines.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(src: &str) -> toml::Table {
        src.parse().expect("toml")
    }

    /// The error building the plugin from `src` at `path` gives.
    fn build_error(src: &str, path: &str) -> String {
        AccessLogFactory
            .build(&table(src), path, &BuildContext::default())
            .err()
            .expect("error")
    }

    #[test]
    fn rejects_a_flush_interval_over_10s_naming_it() {
        let err = build_error(
            "kind = \"access_log\"\nflush_interval = \"1m\"",
            "plugins[1]",
        );
        assert!(err.starts_with("plugins[1].flush_interval: `60s`"), "{err}");
    }

    #[test]
    fn rejects_unknown_keys_with_path() {
        let err = build_error("kind = \"access_log\"\nfile = \"x\"", "plugins[2]");
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
        // Written by the log's thread: `flush` (as at exit) waits for it.
        plugin.flush();
        let text = std::fs::read_to_string(&file).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["request_id"], "req-1");
        assert_eq!(lines[0]["model"], "m");
        assert_eq!(lines[0]["bytes_out"], 42);
        // Every field is on every line, null when unknown: the set is the interface.
        let keys: Vec<&str> = lines[0]
            .as_object()
            .map(|o| o.keys().map(|k| k.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(keys.len(), 29, "{keys:?}");
        assert_eq!(lines[0]["panic_routed"], false);
        assert!(lines[0]["user"].is_null() && lines[0]["client"].is_null());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn durations_round_to_the_nearest_microsecond() {
        assert_eq!(micros(Duration::from_nanos(1_499)), 1);
        assert_eq!(micros(Duration::from_nanos(1_500)), 2);
        assert_eq!(micros(Duration::new(2, 999_999_999)), 3_000_000);
        assert_eq!(micros(Duration::MAX), u64::MAX);
    }
}
