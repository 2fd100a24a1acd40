//! The gateway's own log lines (not the access log): one JSON object per line on stderr,
//! with key-values from `log::warn!(request_id = id; "...")` as fields.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{Key, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};

struct JsonLogger {
    level: LevelFilter,
}

struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            serde_json::Value::from(n)
        } else if let Some(b) = value.to_bool() {
            serde_json::Value::from(b)
        } else {
            serde_json::Value::from(value.to_string())
        };
        self.0.insert(key.as_str().to_string(), json);
        Ok(())
    }
}

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // Pingora logs each client disconnect and the like at `error`/`warn` from its own
        // modules; below `warn` they are noise for operators.
        let floor = if metadata.target().starts_with("pingora") {
            self.level.min(LevelFilter::Warn)
        } else {
            self.level
        };
        metadata.level() <= floor
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut map = serde_json::Map::new();
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        map.insert("ts".into(), ts.into());
        map.insert(
            "level".into(),
            record.level().as_str().to_ascii_lowercase().into(),
        );
        map.insert("target".into(), record.target().into());
        map.insert("msg".into(), record.args().to_string().into());
        let _ = record.key_values().visit(&mut Fields(&mut map));
        let Ok(mut line) = serde_json::to_vec(&map) else {
            return;
        };
        line.push(b'\n');
        let _ = std::io::stderr().lock().write_all(&line);
    }

    fn flush(&self) {}
}

/// Installs the JSON logger once; later calls (tests) keep the first.
pub fn init(level: LevelFilter) {
    if log::set_boxed_logger(Box::new(JsonLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}
