//! The `[[plugins]]` table of `kind = "rate_limits"`.

use std::time::Duration;

use serde::Deserialize;

/// Limits of one scope; each absent key means "no limit of that kind".
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScopeLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u64>,
}

impl ScopeLimits {
    /// `other`'s keys replace ours where set.
    fn merge(&mut self, other: &ScopeLimits) {
        self.requests_per_minute = other.requests_per_minute.or(self.requests_per_minute);
        self.tokens_per_minute = other.tokens_per_minute.or(self.tokens_per_minute);
        self.max_concurrent = other.max_concurrent.or(self.max_concurrent);
    }

    fn check(&self, path: &str) -> Result<(), String> {
        for (key, value) in [
            ("requests_per_minute", self.requests_per_minute),
            ("tokens_per_minute", self.tokens_per_minute),
            ("max_concurrent", self.max_concurrent),
        ] {
            if value == Some(0) {
                return Err(format!(
                    "{path}.{key}: `0` would refuse everything; omit the key for no limit"
                ));
            }
        }
        Ok(())
    }
}

/// The three scopes a request is counted in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub user: ScopeLimits,
    pub user_model: ScopeLimits,
    pub model: ScopeLimits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Applies to requests for this model ...
    pub model: Option<String>,
    /// ... by members of this group ...
    pub group: Option<String>,
    /// ... or by this username (e.g. a service account). Every selector set must match.
    pub user: Option<String>,
    #[serde(default)]
    pub per_user: Option<ScopeLimits>,
    #[serde(default)]
    pub per_user_model: Option<ScopeLimits>,
    #[serde(default)]
    pub per_model: Option<ScopeLimits>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Fall back to this replica's own limiter (logged once per outage).
    FailOpen,
    /// Refuse with 503 while Redis is unreachable.
    FailClosed,
}

#[derive(Debug, Clone)]
pub enum Backend {
    Memory,
    Redis {
        url: String,
        timeout: Duration,
        on_error: OnRedisError,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[allow(dead_code, reason = "read by the core to pick this factory")]
    kind: String,
    backend: Option<String>,
    redis_url: Option<String>,
    redis_timeout: Option<String>,
    on_redis_error: Option<String>,
    default_max_tokens: Option<u64>,
    key_prefix: Option<String>,
    #[serde(default)]
    per_user: ScopeLimits,
    #[serde(default)]
    per_user_model: ScopeLimits,
    #[serde(default)]
    per_model: ScopeLimits,
    #[serde(default)]
    overrides: Vec<Override>,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub backend: Backend,
    pub default_max_tokens: u64,
    pub key_prefix: String,
    pub base: Limits,
    pub overrides: Vec<Override>,
}

impl LimitsConfig {
    pub fn parse(table: &toml::Table, path: &str) -> Result<LimitsConfig, String> {
        let f: FileConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| format!("{path}: {}", e.message()))?;
        let backend = match f.backend.as_deref().unwrap_or("memory") {
            "memory" => Backend::Memory,
            "redis" => {
                let url = f.redis_url.clone().ok_or_else(|| {
                    format!("{path}.redis_url: required with backend = \"redis\"")
                })?;
                if !(url.starts_with("redis://")
                    || url.starts_with("rediss://")
                    || url.starts_with("unix://"))
                {
                    return Err(format!("{path}.redis_url: `{url}` is not a redis:// URL"));
                }
                let timeout = gateway_plugin_api::config::duration(
                    f.redis_timeout.as_deref(),
                    path,
                    "redis_timeout",
                    Duration::from_millis(250),
                )?;
                let on_error = match f.on_redis_error.as_deref().unwrap_or("fail_open") {
                    "fail_open" => OnRedisError::FailOpen,
                    "fail_closed" => OnRedisError::FailClosed,
                    other => {
                        return Err(format!(
                            "{path}.on_redis_error: `{other}` is not fail_open or fail_closed"
                        ))
                    }
                };
                Backend::Redis {
                    url,
                    timeout,
                    on_error,
                }
            }
            other => return Err(format!("{path}.backend: `{other}` is not memory or redis")),
        };
        let base = Limits {
            user: f.per_user,
            user_model: f.per_user_model,
            model: f.per_model,
        };
        base.user.check(&format!("{path}.per_user"))?;
        base.user_model.check(&format!("{path}.per_user_model"))?;
        base.model.check(&format!("{path}.per_model"))?;
        for (i, o) in f.overrides.iter().enumerate() {
            let at = format!("{path}.overrides[{i}]");
            if o.model.is_none() && o.group.is_none() && o.user.is_none() {
                return Err(format!("{at}: set at least one of model, group, user"));
            }
            for (name, scope) in [
                ("per_user", &o.per_user),
                ("per_user_model", &o.per_user_model),
                ("per_model", &o.per_model),
            ] {
                if let Some(s) = scope {
                    s.check(&format!("{at}.{name}"))?;
                }
            }
        }
        let default_max_tokens = f.default_max_tokens.unwrap_or(1024);
        if default_max_tokens == 0 {
            return Err(format!("{path}.default_max_tokens: must be at least 1"));
        }
        Ok(LimitsConfig {
            backend,
            default_max_tokens,
            key_prefix: f.key_prefix.unwrap_or_else(|| "igw".into()),
            base,
            overrides: f.overrides,
        })
    }

    /// The limits for a request, after every matching override (in order).
    pub fn effective(&self, model: &str, username: Option<&str>, groups: &[String]) -> Limits {
        let mut limits = self.base;
        for o in &self.overrides {
            let matches = o.model.as_deref().is_none_or(|m| m == model)
                && o.group.as_ref().is_none_or(|g| groups.contains(g))
                && o.user.as_deref().is_none_or(|u| Some(u) == username);
            if matches {
                if let Some(s) = &o.per_user {
                    limits.user.merge(s);
                }
                if let Some(s) = &o.per_user_model {
                    limits.user_model.merge(s);
                }
                if let Some(s) = &o.per_model {
                    limits.model.merge(s);
                }
            }
        }
        limits
    }
}
