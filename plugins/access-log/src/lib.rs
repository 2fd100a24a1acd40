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
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_plugin_api::config::{from_table, TextDuration};
use gateway_plugin_api::{BuildContext, Phase, Plugin, PluginFactory, RequestCtx, RequestSummary};
use serde::{Deserialize, Serialize};

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

/// One JSON object written field by field. Keys are literals of this file (nothing to
/// escape); values go through serde_json, so strings are escaped exactly as serde would.
/// Under half the instructions of serializing a derived struct: the access log was 10 % of a
/// request's instructions with every feature on (benches/README.md).
struct JsonLine(Vec<u8>);

/// Whether JSON (as serde_json writes it) escapes any byte of `text`: quotes, backslashes,
/// control characters. No early exit, so the compiler may vectorize the loop.
fn needs_escape(text: &str) -> bool {
    text.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

impl JsonLine {
    fn new() -> JsonLine {
        JsonLine(Vec::with_capacity(640))
    }

    /// `key` comes from `key!`.
    fn key(&mut self, key: &str) {
        self.0.extend_from_slice(key.as_bytes());
    }

    fn value(&mut self, value: impl Serialize) {
        // Writing into a Vec cannot fail, and these types always serialize.
        let _ = serde_json::to_writer(&mut self.0, &value);
    }

    fn string(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            // Most values (ids, names, codes) need no escaping: copied as they are.
            Some(text) if !needs_escape(text) => {
                self.0.push(b'"');
                self.0.extend_from_slice(text.as_bytes());
                self.0.push(b'"');
            }
            other => self.value(other),
        }
    }

    /// Numbers by `itoa`, not serde's float and integer machinery: the line's three
    /// decimals were written by a shortest-float algorithm (~0.5 % of a request's CPU with
    /// everything on, `perf`).
    fn integer(&mut self, key: &str, value: Option<u64>) {
        self.key(key);
        match value {
            Some(n) => self
                .0
                .extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            None => self.0.extend_from_slice(b"null"),
        }
    }

    /// `value` / 10^`PLACES`, written with `PLACES` decimal places (`12345` with 3 is
    /// `12.345`, `7` is `0.007`).
    fn decimal<const PLACES: u32>(&mut self, key: &str, value: Option<u64>) {
        self.integer(key, value.map(|v| v / 10u64.pow(PLACES)));
        if let Some(v) = value {
            let scale = 10u64.pow(PLACES);
            // The fraction plus `scale` has a leading 1 then the places, zeros kept.
            let mut digits = itoa::Buffer::new();
            let padded = digits.format(v % scale + scale).as_bytes();
            self.0.push(b'.');
            self.0
                .extend_from_slice(padded.get(1..).unwrap_or_default());
        }
    }

    fn boolean(&mut self, key: &str, value: Option<bool>) {
        self.key(key);
        self.0.extend_from_slice(match value {
            Some(true) => b"true",
            Some(false) => b"false",
            None => b"null",
        });
    }

    fn ip(&mut self, key: &str, ip: Option<IpAddr>) {
        self.key(key);
        match ip {
            None => self.0.extend_from_slice(b"null"),
            Some(ip) => {
                // Address text needs no JSON escaping.
                self.0.push(b'"');
                gateway_plugin_api::text::push_ip(&mut self.0, ip);
                self.0.push(b'"');
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        match self.0.first_mut() {
            Some(comma) => *comma = b'{',
            None => self.0.push(b'{'),
        }
        self.0.extend_from_slice(b"}\n");
        self.0
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

    fn line_of(build: impl FnOnce(&mut JsonLine)) -> serde_json::Value {
        let mut line = JsonLine::new();
        build(&mut line);
        let bytes = line.finish();
        assert_eq!(bytes.last(), Some(&b'\n'));
        serde_json::from_slice(&bytes).expect("valid JSON")
    }

    #[test]
    fn values_are_escaped_and_typed_like_serde() {
        let v = line_of(|l| {
            l.string(key!("model"), Some("a\"b\\c\n\u{1}é"));
            l.string(key!("pool"), None);
            l.decimal::<6>(key!("ts"), Some(1_795_754_953_594_000));
            l.decimal::<3>(key!("first_byte_ms"), None);
            l.integer(key!("bytes_in"), Some(u64::MAX));
            l.boolean(key!("stream"), Some(true));
            l.boolean(key!("tokens_estimated"), None);
        });
        assert_eq!(v["model"], "a\"b\\c\n\u{1}é");
        assert!(v["pool"].is_null() && v["first_byte_ms"].is_null());
        assert_eq!(v["ts"], 1795754953.594);
        assert_eq!(v["bytes_in"], u64::MAX);
        assert_eq!(v["stream"], true);
        assert!(v["tokens_estimated"].is_null());
        assert_eq!(v.as_object().map(|o| o.len()), Some(7));
    }

    #[test]
    fn decimals_keep_their_places_and_read_back_as_the_same_number() {
        let text = |micros: u64| {
            let mut line = JsonLine::new();
            line.decimal::<3>(key!("ms"), Some(micros));
            String::from_utf8_lossy(&line.finish()).into_owned()
        };
        assert_eq!(text(0), "{\"ms\":0.000}\n");
        assert_eq!(text(7), "{\"ms\":0.007}\n");
        assert_eq!(text(12_340), "{\"ms\":12.340}\n");
        assert_eq!(text(u64::MAX), "{\"ms\":18446744073709551.615}\n");
        for micros in [1, 999, 1_000, 123_456, 86_400_000_000] {
            let v: serde_json::Value = serde_json::from_str(&text(micros)).expect("json");
            assert_eq!(v["ms"].as_f64(), Some(micros as f64 / 1000.0), "{micros}");
        }
    }

    #[test]
    fn durations_round_to_the_nearest_microsecond() {
        assert_eq!(micros(Duration::from_nanos(1_499)), 1);
        assert_eq!(micros(Duration::from_nanos(1_500)), 2);
        assert_eq!(micros(Duration::new(2, 999_999_999)), 3_000_000);
        assert_eq!(micros(Duration::MAX), u64::MAX);
    }

    #[test]
    fn strings_are_written_byte_for_byte_as_serde_writes_them() {
        let mut texts: Vec<String> = (0u8..0x80)
            .map(|b| format!("ab{}cd", char::from(b)))
            .collect();
        texts.extend(["", "plain-id-0123", "é\u{7f}ü", "tail\\", "\"head"].map(String::from));
        for text in texts {
            let mut line = JsonLine::new();
            line.string(key!("k"), Some(&text));
            let written = line.finish();
            let want = format!(
                "{{\"k\":{}}}\n",
                serde_json::to_string(&text).expect("json")
            );
            assert_eq!(String::from_utf8_lossy(&written), want, "{text:?}");
        }
    }

    #[test]
    fn client_addresses_print_as_display_does() {
        let cases = [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.254.200.101",
            "::1",
            "2001:db8::8a2e:370:7334",
        ];
        for text in cases {
            let ip: IpAddr = text.parse().expect("ip");
            let v = line_of(|l| l.ip(key!("client"), Some(ip)));
            assert_eq!(v["client"], ip.to_string(), "{text}");
        }
        assert!(line_of(|l| l.ip(key!("client"), None))["client"].is_null());
    }
}
