//! The `[[plugins]]` table of `kind = "rate_limits"`.

use std::time::Duration;

use gateway_plugin_api::config::{from_table, TextDuration};
use serde::Deserialize;

/// The largest limit of any kind. Limits, costs and settlements stay within it, so the
/// arithmetic (here and in Redis's Lua, whose numbers are doubles) is exact and cannot wrap.
pub const MAX_LIMIT: u64 = 1_000_000_000_000;

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
            match value {
                Some(0) => {
                    return Err(format!(
                        "{path}.{key}: `0` would refuse everything; omit the key for no limit"
                    ))
                }
                Some(n) if n > MAX_LIMIT => {
                    return Err(format!(
                        "{path}.{key}: `{n}` is above the largest limit, {MAX_LIMIT}; omit the key for no limit"
                    ))
                }
                _ => {}
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
        /// `url` is a seed node of a Redis Cluster.
        cluster: bool,
        timeout: Duration,
        on_error: OnRedisError,
        /// How long a concurrency slot outlives a replica that stopped refreshing it.
        lease: Duration,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    backend: Option<String>,
    redis_url: Option<String>,
    redis_cluster: Option<bool>,
    redis_timeout: Option<TextDuration>,
    concurrency_lease: Option<TextDuration>,
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
    /// `{key_prefix}`: the Redis hash tag every key of a request starts with.
    pub key_tag: String,
    pub base: Limits,
    pub overrides: Vec<Override>,
}

impl LimitsConfig {
    pub fn parse(table: &toml::Table, path: &str) -> Result<LimitsConfig, String> {
        let f: FileConfig = from_table(table, path)?;
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
                let timeout = f.redis_timeout.map_or(Duration::from_millis(250), |d| d.0);
                let on_error = match f.on_redis_error.as_deref().unwrap_or("fail_open") {
                    "fail_open" => OnRedisError::FailOpen,
                    "fail_closed" => OnRedisError::FailClosed,
                    other => {
                        return Err(format!(
                            "{path}.on_redis_error: `{other}` is not fail_open or fail_closed"
                        ))
                    }
                };
                let lease = f.concurrency_lease.map_or(Duration::from_secs(60), |d| d.0);
                if !(Duration::from_secs(3)..=Duration::from_secs(86_400)).contains(&lease) {
                    return Err(format!(
                        "{path}.concurrency_lease: `{lease:?}` must be from 3s to 24h"
                    ));
                }
                Backend::Redis {
                    url,
                    cluster: f.redis_cluster.unwrap_or(false),
                    timeout,
                    on_error,
                    lease,
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
        if !(1..=MAX_LIMIT).contains(&default_max_tokens) {
            return Err(format!(
                "{path}.default_max_tokens: `{default_max_tokens}` must be from 1 to {MAX_LIMIT}"
            ));
        }
        let key_prefix = f.key_prefix.unwrap_or_else(|| "igw".into());
        let key_ok = !key_prefix.is_empty()
            && key_prefix.len() <= 64
            && key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !key_ok {
            return Err(format!(
                "{path}.key_prefix: `{key_prefix}` must be 1 to 64 letters, digits, `-`, `_`, `.` or `:` (it becomes a Redis hash tag)"
            ));
        }
        Ok(LimitsConfig {
            backend,
            default_max_tokens,
            key_tag: format!("{{{key_prefix}}}"),
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
