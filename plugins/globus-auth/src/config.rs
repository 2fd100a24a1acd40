//! The `[[plugins]]` table of `kind = "globus_auth"`.

use std::time::Duration;

use gateway_plugin_api::config::{from_table, TextDuration};
use gateway_plugin_api::{BuildContext, Env};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    client_id: String,
    client_secret_file: Option<String>,
    client_secret_env: Option<String>,
    introspect_url: Option<String>,
    token_url: Option<String>,
    groups_url: Option<String>,
    required_scope: Option<String>,
    check_audience: Option<bool>,
    #[serde(default)]
    authorized_idp_domains: Vec<String>,
    #[serde(default)]
    policies: Vec<String>,
    #[serde(default)]
    service_accounts: Vec<String>,
    cache_ttl: Option<TextDuration>,
    negative_cache_ttl: Option<TextDuration>,
    cache_capacity: Option<u64>,
    timeout: Option<TextDuration>,
    exp_leeway: Option<TextDuration>,
    retry_after: Option<TextDuration>,
    max_concurrent_introspections: Option<u64>,
    introspections_per_second: Option<f64>,
    introspections_per_client_per_minute: Option<f64>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct GlobusConfig {
    pub client_id: String,
    pub client_secret: String,
    pub introspect_url: String,
    pub token_url: String,
    pub groups_url: String,
    pub required_scope: Option<String>,
    pub check_audience: bool,
    pub authorized_idp_domains: Vec<String>,
    pub policies: Vec<String>,
    pub service_accounts: Vec<String>,
    pub cache_ttl: Duration,
    pub negative_cache_ttl: Duration,
    pub cache_capacity: u64,
    pub timeout: Duration,
    pub exp_leeway: Duration,
    pub retry_after: Duration,
    /// Some pool restricts by group: resolve memberships through the Groups API.
    pub fetch_groups: bool,
    /// Introspections (with their group lookups) in flight at once.
    pub max_concurrent_introspections: usize,
    /// Cache misses per second the gateway as a whole may send to Globus (burst: twice that).
    pub introspections_per_second: f64,
    /// Cache misses per minute one client address may cause (burst: a third of that).
    pub introspections_per_client_per_minute: f64,
}

fn secs(value: Option<TextDuration>, default: u64) -> Duration {
    value.map_or(Duration::from_secs(default), |d| d.0)
}

fn url(value: Option<String>, path: &str, key: &str, default: &str) -> Result<String, String> {
    let url = value.unwrap_or_else(|| default.to_string());
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url)
    } else {
        Err(format!("{path}.{key}: `{url}` is not an http(s) URL"))
    }
}

fn read_secret(f: &FileConfig, path: &str, env: &Env) -> Result<String, String> {
    let secret = match (&f.client_secret_file, &f.client_secret_env) {
        (Some(file), None) => std::fs::read_to_string(file)
            .map_err(|e| format!("{path}.client_secret_file: cannot read `{file}`: {e}"))?,
        (None, Some(var)) => env.var(var).ok_or_else(|| {
            format!("{path}.client_secret_env: environment variable `{var}` is not set")
        })?,
        (Some(_), Some(_)) => {
            return Err(format!(
                "{path}: set one of client_secret_file and client_secret_env, not both"
            ))
        }
        (None, None) => {
            return Err(format!(
                "{path}.client_secret_file: missing; the client secret comes from a file \
                 (client_secret_file) or an environment variable (client_secret_env), never inline"
            ))
        }
    };
    let secret = secret.trim().to_string();
    if secret.is_empty() {
        return Err(format!("{path}: the client secret is empty"));
    }
    Ok(secret)
}

impl GlobusConfig {
    /// Validates the table at `path`; `cx` says whether groups are needed, and where
    /// `client_secret_env` is looked up.
    pub fn parse(table: &toml::Table, path: &str, cx: &BuildContext) -> Result<Self, String> {
        let f: FileConfig = from_table(table, path)?;
        if f.client_id.trim().is_empty() {
            return Err(format!("{path}.client_id: must not be empty"));
        }
        let capacity = f.cache_capacity.unwrap_or(100_000);
        if capacity == 0 {
            return Err(format!(
                "{path}.cache_capacity: `0` would disable caching; use at least 1"
            ));
        }
        let concurrent = f.max_concurrent_introspections.unwrap_or(16);
        if !(1..=1024).contains(&concurrent) {
            return Err(format!(
                "{path}.max_concurrent_introspections: `{concurrent}` must be from 1 to 1024"
            ));
        }
        let rate = |value: Option<f64>, key: &str, default: f64| match value.unwrap_or(default) {
            r if r.is_finite() && (0.01..=1e6).contains(&r) => Ok(r),
            r => Err(format!(
                "{path}.{key}: `{r}` must be a number from 0.01 to 1000000"
            )),
        };
        Ok(GlobusConfig {
            max_concurrent_introspections: concurrent as usize,
            introspections_per_second: rate(
                f.introspections_per_second,
                "introspections_per_second",
                20.0,
            )?,
            introspections_per_client_per_minute: rate(
                f.introspections_per_client_per_minute,
                "introspections_per_client_per_minute",
                60.0,
            )?,
            client_secret: read_secret(&f, path, &cx.env)?,
            introspect_url: url(
                f.introspect_url,
                path,
                "introspect_url",
                "https://auth.globus.org/v2/oauth2/token/introspect",
            )?,
            token_url: url(
                f.token_url,
                path,
                "token_url",
                "https://auth.globus.org/v2/oauth2/token",
            )?,
            groups_url: url(
                f.groups_url,
                path,
                "groups_url",
                "https://groups.api.globus.org/v2/groups/my_groups",
            )?,
            required_scope: f.required_scope,
            check_audience: f.check_audience.unwrap_or(true),
            authorized_idp_domains: f.authorized_idp_domains,
            policies: f.policies,
            service_accounts: f.service_accounts,
            cache_ttl: secs(f.cache_ttl, 600),
            negative_cache_ttl: secs(f.negative_cache_ttl, 60),
            cache_capacity: capacity,
            timeout: secs(f.timeout, 5),
            exp_leeway: secs(f.exp_leeway, 30),
            retry_after: secs(f.retry_after, 5),
            client_id: f.client_id,
            fetch_groups: cx.groups_needed,
        })
    }
}
