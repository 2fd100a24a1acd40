//! Helpers for plugins validating their own `[[plugins]]` tables, so every plugin words its
//! errors the same way: the TOML path, the bad value, what was expected.

use std::time::Duration;

/// Reads an optional duration key (`"250ms"`, `"5s"`, `"1m30s"`), or `default` when absent.
pub fn duration(
    value: Option<&str>,
    path: &str,
    key: &str,
    default: Duration,
) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text.trim()).map_err(|e| {
            format!("{path}.{key}: `{text}` is not a duration like \"60s\" or \"250ms\" ({e})")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_errors() {
        assert_eq!(
            duration(None, "plugins[0]", "timeout", Duration::from_secs(5)),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            duration(Some("250ms"), "p", "k", Duration::ZERO),
            Ok(Duration::from_millis(250))
        );
        let err = duration(Some("soon"), "plugins[2]", "timeout", Duration::ZERO).expect_err("bad");
        assert!(
            err.starts_with("plugins[2].timeout: `soon` is not a duration"),
            "{err}"
        );
    }
}
