//! The `[server]` section: listeners, timeouts, and the bounds every client is held to.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use super::file::ServerSection;
use super::model::{duration_or, err};
use super::units::parse_size;
use super::ConfigError;

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// `""` or a path starting with `/` and not ending with one.
    pub base_path: String,
    pub threads: usize,
    pub max_request_body: u64,
    /// Bound on reading a whole request body (the socket timeout is per read).
    pub client_body_timeout: Duration,
    /// Bound on receiving a whole request header, so a client trickling header lines cannot
    /// hold a connection.
    pub client_header_timeout: Duration,
    /// How long a client's idle keep-alive connection is kept open between requests.
    pub client_keepalive_timeout: Duration,
    /// Client connections served at once; new ones beyond it get a quick 503.
    pub max_connections: usize,
    /// Largest `max_tokens` (or `max_completion_tokens`) a request may ask for.
    pub max_tokens_limit: u64,
    /// Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<IpNet>,
    pub upstream_connect_timeout: Duration,
    /// Largest gap allowed between bytes of a backend response (also the wait for its header).
    pub upstream_idle_timeout: Duration,
    /// How long an idle keep-alive connection to a backend is kept for reuse.
    pub upstream_keepalive_timeout: Duration,
    /// Backend attempts per request (connects, and the one resend a stale keep-alive
    /// connection allows), bounded by the pool size for connects.
    pub max_connect_attempts: usize,
    pub shutdown_grace_period: Duration,
    pub log_level: log::LevelFilter,
    /// Where `GET /metrics` is served; `None` turns metrics off.
    pub metrics_listen: Option<SocketAddr>,
    /// The Unix socket a new process (`run --upgrade`) takes the listening sockets over from
    /// this one (zero-downtime binary upgrade).
    pub upgrade_socket: std::path::PathBuf,
    /// HTTPS listeners, when `[server.tls]` is set.
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain and private key; read again on SIGHUP.
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// `[server.tls]`: addresses, and a certificate and key that load and match.
fn tls_config(t: &super::file::TlsSection) -> Result<TlsConfig, ConfigError> {
    let listen = t
        .listen
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<SocketAddr>().map_err(|_| {
                err(
                    format!("server.tls.listen[{i}]"),
                    format!("`{a}` is not an ip:port address"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if listen.is_empty() {
        return Err(err("server.tls.listen", "at least one address is required"));
    }
    let (cert, key) = (
        std::path::PathBuf::from(&t.cert),
        std::path::PathBuf::from(&t.key),
    );
    crate::tls::read_pair(&cert, &key).map_err(|m| err("server.tls.cert", m))?;
    Ok(TlsConfig { listen, cert, key })
}

impl ServerConfig {
    /// Whether `peer` is one of the configured trusted proxies.
    /// An IPv4 peer on a dual-stack listener arrives as `::ffff:a.b.c.d`; it is matched as
    /// the IPv4 address it is.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

/// The largest value `max_tokens_limit` may take: far above any model's context, small
/// enough that `max_tokens × n` and every budget sum stay exact.
const MAX_TOKENS_CEILING: u64 = 1 << 40;

fn bounded_duration(
    value: &Option<String>,
    path: &str,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
) -> Result<Duration, ConfigError> {
    let d = duration_or(value, path, default)?;
    if range.contains(&d) {
        Ok(d)
    } else {
        Err(err(
            path,
            format!(
                "`{d:?}` must be from {:?} to {:?}",
                range.start(),
                range.end()
            ),
        ))
    }
}

fn trusted_proxies(entries: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let path = format!("server.trusted_proxies[{i}]");
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    err(
                        path,
                        format!("`{text}` is not an address or network like \"10.0.0.0/8\""),
                    )
                })
        })
        .collect()
}

pub(super) fn server_config(s: &ServerSection) -> Result<ServerConfig, ConfigError> {
    let listen_text = s
        .listen
        .clone()
        .unwrap_or_else(|| vec!["0.0.0.0:8000".into()]);
    if listen_text.is_empty() {
        return Err(err("server.listen", "at least one address is required"));
    }
    let listen = listen_text
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<SocketAddr>().map_err(|_| {
                err(
                    format!("server.listen[{i}]"),
                    format!("`{a}` is not an ip:port address"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let base_path = s
        .base_path
        .clone()
        .unwrap_or_else(|| "/resource_server".into());
    if !base_path.is_empty()
        && (!base_path.starts_with('/') || base_path.ends_with('/') || base_path.contains("//"))
    {
        return Err(err(
            "server.base_path",
            format!("`{base_path}` must be \"\" or start with `/` and not end with `/`"),
        ));
    }
    let threads = s.threads.unwrap_or(2);
    if !(1..=1024).contains(&threads) {
        return Err(err(
            "server.threads",
            format!("`{threads}` must be between 1 and 1024"),
        ));
    }
    let max_request_body = match &s.max_request_body {
        None => 10 << 20,
        Some(text) => parse_size(text).map_err(|m| err("server.max_request_body", m))?,
    };
    if !(1..=(1 << 32)).contains(&max_request_body) {
        return Err(err(
            "server.max_request_body",
            format!("`{max_request_body}` bytes must be from 1 byte to 4GiB"),
        ));
    }
    let max_connect_attempts = s.max_connect_attempts.unwrap_or(3);
    if !(1..=16).contains(&max_connect_attempts) {
        return Err(err(
            "server.max_connect_attempts",
            format!("`{max_connect_attempts}` must be between 1 and 16"),
        ));
    }
    let max_connections = s.max_connections.unwrap_or(10_000);
    if !(1..=10_000_000).contains(&max_connections) {
        return Err(err(
            "server.max_connections",
            format!("`{max_connections}` must be from 1 to 10000000"),
        ));
    }
    let max_tokens_limit = s.max_tokens_limit.unwrap_or(1 << 20);
    if !(1..=MAX_TOKENS_CEILING).contains(&max_tokens_limit) {
        return Err(err(
            "server.max_tokens_limit",
            format!("`{max_tokens_limit}` must be from 1 to {MAX_TOKENS_CEILING}"),
        ));
    }
    let log_level = match s.log_level.as_deref().unwrap_or("info") {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        other => {
            return Err(err(
                "server.log_level",
                format!("`{other}` is not one of error, warn, info, debug, trace"),
            ))
        }
    };
    let metrics_listen = match s.metrics_listen.as_deref().unwrap_or("127.0.0.1:9464") {
        "" => None,
        text => Some(text.parse::<SocketAddr>().map_err(|_| {
            err(
                "server.metrics_listen",
                format!("`{text}` is not an ip:port address (\"\" turns metrics off)"),
            )
        })?),
    };
    let upgrade_socket = std::path::PathBuf::from(
        s.upgrade_socket
            .as_deref()
            .unwrap_or("/run/inference-gateway/upgrade.sock"),
    );
    // A Unix socket path: absolute, and within the 107 bytes `sun_path` holds.
    if !upgrade_socket.is_absolute() || upgrade_socket.as_os_str().len() > 100 {
        return Err(err(
            "server.upgrade_socket",
            format!(
                "`{}` must be an absolute path of at most 100 bytes",
                upgrade_socket.display()
            ),
        ));
    }
    let tls = s.tls.as_ref().map(tls_config).transpose()?;
    let seconds = Duration::from_secs;
    Ok(ServerConfig {
        tls,
        upgrade_socket,
        metrics_listen,
        listen,
        base_path,
        threads,
        max_request_body,
        client_body_timeout: duration_or(
            &s.client_body_timeout,
            "server.client_body_timeout",
            seconds(60),
        )?,
        client_header_timeout: bounded_duration(
            &s.client_header_timeout,
            "server.client_header_timeout",
            seconds(30),
            Duration::from_millis(100)..=seconds(3600),
        )?,
        // Whole seconds: Pingora keeps client connections alive in seconds.
        client_keepalive_timeout: bounded_duration(
            &s.client_keepalive_timeout,
            "server.client_keepalive_timeout",
            seconds(60),
            seconds(1)..=seconds(86_400),
        )
        .map(|d| seconds(d.as_secs()))?,
        max_connections,
        max_tokens_limit,
        trusted_proxies: trusted_proxies(s.trusted_proxies.as_deref().unwrap_or_default())?,
        upstream_connect_timeout: duration_or(
            &s.upstream_connect_timeout,
            "server.upstream_connect_timeout",
            seconds(2),
        )?,
        upstream_idle_timeout: duration_or(
            &s.upstream_idle_timeout,
            "server.upstream_idle_timeout",
            seconds(600),
        )?,
        upstream_keepalive_timeout: duration_or(
            &s.upstream_keepalive_timeout,
            "server.upstream_keepalive_timeout",
            seconds(60),
        )?,
        max_connect_attempts,
        shutdown_grace_period: duration_or(
            &s.shutdown_grace_period,
            "server.shutdown_grace_period",
            seconds(30),
        )?,
        log_level,
    })
}
