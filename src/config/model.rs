//! The validated configuration the gateway runs on. Built from [`super::file`] by `Config::build`;
//! nothing here derives `Deserialize`, so an unchecked value cannot sneak in.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::batch::batch_config;
pub use super::batch::BatchConfig;
use super::file::{FileConfig, PoolSection};
use super::health::health_config;
pub use super::health::HealthConfig;
use super::server::server_config;
pub use super::server::ServerConfig;
use super::units::parse_duration;
use super::ConfigError;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub plugins: Vec<PluginConfig>,
    pub pools: Vec<PoolConfig>,
    /// `None`: no `[batch]` section, batch jobs are off.
    pub batch: Option<BatchConfig>,
}

#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub kind: String,
    /// The whole `[[plugins]]` table, for the plugin's factory to validate.
    pub table: toml::Table,
    /// TOML path, e.g. `plugins[0]`.
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequests,
    ConsistentHash,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub cluster: String,
    pub framework: String,
    pub models: Vec<String>,
    pub backends: Vec<BackendConfig>,
    pub balance: Balance,
    pub priority: i64,
    /// The backend's own bearer key, read from the environment at load time.
    pub api_key: Option<String>,
    /// When non-empty, only principals in one of these groups may use the pool.
    pub allowed_groups: Vec<String>,
    /// When non-empty, only principals whose username is in one of these domains may.
    pub allowed_domains: Vec<String>,
    pub health: HealthConfig,
    /// Batch lines at most in flight on one backend of this pool (0: no batches here).
    pub batch_max_in_flight: usize,
    /// A batch line starts on a backend only while its requests in flight (interactive and
    /// batch) are fewer than this: interactive users keep priority.
    pub batch_when_below: usize,
    /// HTTPS to the backends, when `[pools.tls]` is set.
    pub tls: Option<BackendTls>,
}

/// TLS to a pool's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTls {
    /// The name sent in SNI and checked against the certificate; default: the backend's host.
    pub sni: Option<String>,
    /// Verify the certificate chain and name (default true).
    pub verify: bool,
    /// DER of the CA (first certificate of `ca_file`) trusted for these backends, instead of the
    /// system's roots.
    pub ca_der: Option<Vec<u8>>,
}

impl PoolConfig {
    pub fn is_restricted(&self) -> bool {
        !self.allowed_groups.is_empty() || !self.allowed_domains.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// As written (`host:port`), for logs and metrics.
    pub address: String,
    pub socket: SocketAddr,
    pub weight: u32,
}

pub(super) fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

pub(super) fn duration_or(
    value: &Option<String>,
    path: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration(text).map_err(|m| err(path, m)),
    }
}

/// Reads an environment variable (secrets named in the file); tests pass their own.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    pub(super) fn build(file: FileConfig, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let server = server_config(&file.server)?;
        let plugins = file
            .plugins
            .into_iter()
            .enumerate()
            .map(|(i, table)| plugin_config(i, table))
            .collect::<Result<Vec<_>, _>>()?;
        if file.pools.is_empty() {
            return Err(err("pools", "at least one [[pools]] entry is required"));
        }
        let mut names = HashSet::new();
        let mut pools = Vec::with_capacity(file.pools.len());
        for (i, section) in file.pools.iter().enumerate() {
            let pool = pool_config(i, section, env)?;
            if !names.insert(pool.name.clone()) {
                return Err(err(
                    format!("pools[{i}].name"),
                    format!("`{}` is used by an earlier pool", pool.name),
                ));
            }
            pools.push(pool);
        }
        let batch = file
            .batch
            .as_ref()
            .map(|b| batch_config(b, env))
            .transpose()?;
        Ok(Config {
            server,
            plugins,
            pools,
            batch,
        })
    }
}

fn plugin_config(i: usize, table: toml::Table) -> Result<PluginConfig, ConfigError> {
    let path = format!("plugins[{i}]");
    let kind = match table.get("kind") {
        Some(toml::Value::String(kind)) => kind.clone(),
        Some(other) => {
            return Err(err(
                format!("{path}.kind"),
                format!("`{other}` is not a string"),
            ))
        }
        None => {
            return Err(err(
                format!("{path}.kind"),
                "missing; every plugin needs a `kind`",
            ))
        }
    };
    Ok(PluginConfig { kind, table, path })
}

/// Names that appear in URL paths must be one plain path segment (the rule routes match
/// client paths with, `routing::route::is_segment`).
fn check_segment(value: &str, path: &str) -> Result<(), ConfigError> {
    if crate::routing::route::is_segment(value) {
        Ok(())
    } else {
        Err(err(
            path,
            format!(
                "`{value}` must be 1 to {} letters, digits, `-`, `_` or `.`",
                crate::routing::route::MAX_SEGMENT
            ),
        ))
    }
}

/// The longest model name a request may carry (and so a pool may serve): model names reach
/// log lines and error messages.
pub const MAX_MODEL_NAME: usize = 256;

fn pool_config(i: usize, p: &PoolSection, env: EnvLookup<'_>) -> Result<PoolConfig, ConfigError> {
    let at = |key: &str| format!("pools[{i}].{key}");
    check_segment(&p.name, &at("name"))?;
    check_segment(&p.cluster, &at("cluster"))?;
    check_segment(&p.framework, &at("framework"))?;
    if p.models.is_empty() {
        return Err(err(at("models"), "at least one model is required"));
    }
    for (m, model) in p.models.iter().enumerate() {
        if model.trim().is_empty() || model.trim() != model || model.len() > MAX_MODEL_NAME {
            return Err(err(
                format!("pools[{i}].models[{m}]"),
                format!("`{model}` must be 1 to {MAX_MODEL_NAME} bytes without surrounding spaces"),
            ));
        }
    }
    if p.backends.is_empty() {
        return Err(err(at("backends"), "at least one backend is required"));
    }
    let backends = p
        .backends
        .iter()
        .enumerate()
        .map(|(b, entry)| backend_config(entry, &format!("pools[{i}].backends[{b}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let balance = match p.balance.as_deref().unwrap_or("least_requests") {
        "least_requests" => Balance::LeastRequests,
        "round_robin" => Balance::RoundRobin,
        "consistent_hash" => Balance::ConsistentHash,
        other => {
            return Err(err(
                at("balance"),
                format!("`{other}` is not one of round_robin, least_requests, consistent_hash"),
            ))
        }
    };
    let api_key = match &p.api_key_env {
        None => None,
        Some(var) => match env(var) {
            Some(key) if !key.is_empty() => {
                if http::HeaderValue::from_str(&key).is_err() {
                    return Err(err(
                        at("api_key_env"),
                        format!("environment variable `{var}` holds characters an Authorization header cannot carry (only visible ASCII and spaces)"),
                    ));
                }
                Some(key)
            }
            _ => {
                return Err(err(
                    at("api_key_env"),
                    format!("environment variable `{var}` is not set or is empty"),
                ))
            }
        },
    };
    Ok(PoolConfig {
        name: p.name.clone(),
        cluster: p.cluster.clone(),
        framework: p.framework.clone(),
        models: p.models.clone(),
        backends,
        balance,
        priority: p.priority.unwrap_or(0),
        api_key,
        allowed_groups: non_empty_strings(&p.allowed_groups, &at("allowed_groups"))?,
        allowed_domains: non_empty_strings(&p.allowed_domains, &at("allowed_domains"))?,
        health: health_config(&p.health, &at("health"))?,
        batch_max_in_flight: bounded(
            p.batch_max_in_flight,
            4,
            0..=10_000,
            &at("batch_max_in_flight"),
        )?,
        tls: p
            .tls
            .as_ref()
            .map(|t| backend_tls(t, &at("tls")))
            .transpose()?,
        batch_when_below: bounded(p.batch_when_below, 8, 1..=100_000, &at("batch_when_below"))?,
    })
}

fn backend_tls(t: &super::file::PoolTlsSection, path: &str) -> Result<BackendTls, ConfigError> {
    let ca_der = match &t.ca_file {
        None => None,
        Some(file) => {
            let bad = |why: String| err(format!("{path}.ca_file"), format!("`{file}`: {why}"));
            let mut store = pingora_rustls::RootCertStore::empty();
            pingora_rustls::load_ca_file_into_store(file, &mut store)
                .map_err(|e| bad(e.to_string()))?;
            let der = pingora_rustls::load_pem_file_ca(file).map_err(|e| bad(e.to_string()))?;
            if der.is_empty() {
                return Err(bad("holds no PEM certificate".into()));
            }
            Some(der)
        }
    };
    if let Some(sni) = &t.sni {
        if sni.is_empty()
            || sni.len() > 253
            || !sni
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-.".contains(&c))
        {
            return Err(err(
                format!("{path}.sni"),
                format!("`{sni}` is not a host name"),
            ));
        }
    }
    Ok(BackendTls {
        sni: t.sni.clone(),
        verify: t.verify.unwrap_or(true),
        ca_der,
    })
}

fn bounded(
    value: Option<usize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
    path: &str,
) -> Result<usize, ConfigError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(err(
            path,
            format!("`{v}` must be from {} to {}", range.start(), range.end()),
        ))
    }
}

fn non_empty_strings(values: &[String], path: &str) -> Result<Vec<String>, ConfigError> {
    for (i, v) in values.iter().enumerate() {
        if v.trim().is_empty() || v.trim() != v {
            return Err(err(
                format!("{path}[{i}]"),
                format!("`{v}` must be non-empty without surrounding spaces"),
            ));
        }
    }
    Ok(values.to_vec())
}

fn backend_config(entry: &toml::Value, path: &str) -> Result<BackendConfig, ConfigError> {
    let (address, weight) = match entry {
        toml::Value::String(address) => (address.clone(), 1),
        toml::Value::Table(table) => {
            if let Some(key) = table.keys().find(|k| *k != "address" && *k != "weight") {
                return Err(err(
                    format!("{path}.{key}"),
                    "unknown key (known: address, weight)",
                ));
            }
            let address = match table.get("address") {
                Some(toml::Value::String(a)) => a.clone(),
                Some(other) => {
                    return Err(err(
                        format!("{path}.address"),
                        format!("`{other}` is not a string"),
                    ))
                }
                None => return Err(err(format!("{path}.address"), "missing")),
            };
            let weight = match table.get("weight") {
                None => 1,
                Some(toml::Value::Integer(w)) if (1..=1000).contains(w) => *w as u32,
                Some(other) => {
                    return Err(err(
                        format!("{path}.weight"),
                        format!("`{other}` must be an integer from 1 to 1000"),
                    ))
                }
            };
            (address, weight)
        }
        other => {
            return Err(err(
                path,
                format!(
                "`{other}` is neither \"host:port\" nor {{ address = \"host:port\", weight = N }}"
            ),
            ))
        }
    };
    let socket = resolve(&address).map_err(|m| err(path, m))?;
    Ok(BackendConfig {
        address,
        socket,
        weight,
    })
}

fn resolve(address: &str) -> Result<SocketAddr, String> {
    let not_host_port = || format!("`{address}` is not a host:port");
    let (host, port) = address.rsplit_once(':').ok_or_else(not_host_port)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(not_host_port());
    }
    address
        .to_socket_addrs()
        .map_err(|e| format!("`{address}` does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("`{address}` resolves to no address"))
}
