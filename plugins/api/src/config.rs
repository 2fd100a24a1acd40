//! Reading a plugin's own `[[plugins]]` table, so every plugin words its errors the same way:
//! the TOML path of the bad key (nested keys included), then what is wrong with it.
//!
//! A plugin declares its file format as a serde struct with `#[serde(deny_unknown_fields)]`
//! and no `kind` field, reads it with [`from_table`], then validates it into its own settings.

use std::fmt;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

/// A plugin table that does not say what its plugin needs: `path` is the TOML path of the key
/// at fault (e.g. `plugins[2].per_user.tokens_per_minute`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for PluginConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for PluginConfigError {}

/// Factories answer with text (see [`crate::PluginFactory::build`]); `?` converts.
impl From<PluginConfigError> for String {
    fn from(e: PluginConfigError) -> String {
        e.to_string()
    }
}

/// Deserializes `table` (a whole `[[plugins]]` table at `toml_path`, e.g. `plugins[0]`) into
/// `T`, ignoring its `kind` key, which picked the factory. Errors name the full TOML path of
/// the key at fault: `plugins[0].per_user.rpm: unknown key for plugin `rate_limits` (unknown
/// field `rpm`, expected ...)`; a missing key is named by its own path:
/// `plugins[1].keys[0].username: missing`.
pub fn from_table<T: DeserializeOwned>(
    table: &toml::Table,
    toml_path: &str,
) -> Result<T, PluginConfigError> {
    let mut table = table.clone();
    let kind = table.remove("kind");
    serde_path_to_error::deserialize(table).map_err(|e| {
        let at = match e.path().to_string() {
            inner if inner == "." => toml_path.to_string(),
            inner => format!("{toml_path}.{inner}"),
        };
        let message = e.into_inner().message().trim_end().to_string();
        explain(at, message, kind.as_ref().and_then(toml::Value::as_str))
    })
}

/// Words serde's messages about keys as the rest of the configuration does.
fn explain(path: String, message: String, kind: Option<&str>) -> PluginConfigError {
    // serde reports a missing key at the path of its table: `missing field `name``.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
        .filter(|key| !key.contains('`'));
    if let Some(key) = missing {
        return PluginConfigError {
            path: format!("{path}.{key}"),
            message: "missing".into(),
        };
    }
    if message.starts_with("unknown field `") {
        let plugin = kind
            .map(|k| format!(" for plugin `{k}`"))
            .unwrap_or_default();
        return PluginConfigError {
            path,
            message: format!("unknown key{plugin} ({message})"),
        };
    }
    PluginConfigError { path, message }
}

/// A duration written as text, `"250ms"`, `"5s"`, `"1m30s"` (humantime's syntax, as the
/// core's own durations). Use `Option<TextDuration>` for a key with a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextDuration(pub std::time::Duration);

impl<'de> Deserialize<'de> for TextDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map(TextDuration)
            .map_err(|e| {
                D::Error::custom(format!(
                    "`{text}` is not a duration like \"60s\" or \"250ms\" ({e})"
                ))
            })
    }
}

#[cfg(test)]
mod tests;
