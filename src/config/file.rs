//! The TOML file format, as written by operators. Every struct rejects unknown keys; values
//! are checked and converted in `model.rs`.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub plugins: Vec<toml::Table>,
    #[serde(default)]
    pub pools: Vec<PoolSection>,
    /// Present: batch jobs are on (checked in `batch.rs`).
    pub batch: Option<BatchSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSection {
    pub state_dir: Option<String>,
    pub store: Option<String>,
    pub store_password_file: Option<String>,
    pub store_password_env: Option<String>,
    pub lease: Option<String>,
    pub max_lines: Option<u64>,
    pub max_file_size: Option<String>,
    pub file_expiry: Option<String>,
    pub max_active_per_user: Option<u64>,
    pub max_attempts: Option<u32>,
    pub retry_backoff: Option<String>,
    pub line_timeout: Option<String>,
    pub max_response_size: Option<String>,
    #[serde(default)]
    pub allowed_input_roots: Vec<String>,
    #[serde(default)]
    pub allowed_output_roots: Vec<String>,
    pub default_output_folder: Option<String>,
    pub require_owner: Option<bool>,
    pub result_file_mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: Option<Vec<String>>,
    pub base_path: Option<String>,
    pub threads: Option<usize>,
    pub max_request_body: Option<String>,
    pub client_body_timeout: Option<String>,
    pub client_header_timeout: Option<String>,
    pub client_keepalive_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub max_tokens_limit: Option<u64>,
    pub trusted_proxies: Option<Vec<String>>,
    pub upstream_connect_timeout: Option<String>,
    pub upstream_idle_timeout: Option<String>,
    pub upstream_keepalive_timeout: Option<String>,
    pub max_connect_attempts: Option<usize>,
    pub shutdown_grace_period: Option<String>,
    pub log_level: Option<String>,
    pub metrics_listen: Option<String>,
    pub upgrade_socket: Option<String>,
    pub tls: Option<TlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub listen: Vec<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    pub name: String,
    pub cluster: String,
    pub framework: String,
    pub models: Vec<String>,
    /// Each entry is `"host:port"` or `{ address = "host:port", weight = 2 }`; checked in
    /// `model.rs` so that errors can name the entry.
    pub backends: Vec<toml::Value>,
    pub balance: Option<String>,
    pub priority: Option<i64>,
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    #[serde(default)]
    pub health: HealthSection,
    pub batch_max_in_flight: Option<usize>,
    pub batch_when_below: Option<usize>,
    /// Present: the pool's backends speak HTTPS.
    pub tls: Option<PoolTlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTlsSection {
    pub sni: Option<String>,
    pub verify: Option<bool>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub unhealthy_threshold: Option<u32>,
    pub healthy_threshold: Option<u32>,
    /// An integer status, a class like `"2xx"`, or an array of those; checked in `health.rs`.
    pub expect_status: Option<toml::Value>,
    pub panic_routing: Option<bool>,
    pub panic_threshold: Option<u32>,
}
