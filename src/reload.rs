//! Reloading the configuration on SIGHUP (`systemctl reload`): the file is read and validated
//! again; if it is good, a new snapshot (model table, plugins, forwarder) replaces the one in
//! force in one atomic swap. Requests and streams already running finish on the snapshot they
//! started with. Backends configured alike keep their health state and counters, and plugins
//! whose `[[plugins]]` table did not change are kept as they are (rate-limit counters, the
//! auth cache, Redis connections). A file that does not validate is refused with its error
//! (TOML path and value) and the running configuration goes on. Settings that need a restart
//! (all of `[server]` and `[batch]`) are named in the log, never silently ignored.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::config::{Config, ConfigError, ServerConfig};
use crate::metrics::GatewayMetrics;
use crate::plugins::build_chain_reusing;
use crate::proxy::{BackendConnections, Live, PeerSettings, Snapshot};
use crate::routing::ModelTable;

pub struct Reloader {
    path: PathBuf,
    /// The configuration in force; its `[server]` and `[batch]` stay until a restart.
    running: Mutex<Config>,
    live: Live,
    registry: prometheus::Registry,
    backends: Arc<BackendConnections>,
    metrics: Option<Arc<GatewayMetrics>>,
    /// The HTTPS listeners' certificate, read again on every SIGHUP.
    certificate: Option<Arc<crate::tls::ReloadableCert>>,
}

/// What a reload did.
#[derive(Debug)]
pub struct Reloaded {
    pub pools: usize,
    pub plugins_kept: usize,
    pub plugins_built: usize,
    /// Settings that changed in the file but take effect only after a restart.
    pub need_restart: Vec<String>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        running: Config,
        live: Live,
        registry: prometheus::Registry,
        backends: Arc<BackendConnections>,
        metrics: Option<Arc<GatewayMetrics>>,
    ) -> Reloader {
        Reloader {
            path,
            running: Mutex::new(running),
            live,
            registry,
            backends,
            metrics,
            certificate: None,
        }
    }

    pub fn with_certificate(mut self, cert: Option<Arc<crate::tls::ReloadableCert>>) -> Reloader {
        self.certificate = cert;
        self
    }

    /// Reads, validates and swaps in the file; on any error nothing changes.
    pub fn reload(&self) -> Result<Reloaded, ConfigError> {
        let new = Config::load(&self.path)?;
        let mut running = self.running.lock().map_err(|_| ConfigError::Invalid {
            path: "config".into(),
            message: "the running configuration is unavailable (a reload panicked)".into(),
        })?;
        let old = self.live.load_full();
        // The server's own settings stay as they are until a restart: backends connect with
        // the running timeouts.
        let server = &running.server;
        let peers = PeerSettings::new(server);
        let table = ModelTable::reusing(&new.pools, &|socket| peers.peer(socket), Some(&old.table));
        let chain = build_chain_reusing(&new, &self.registry, &old.chain.built)?;
        let plugins_kept = chain
            .built
            .iter()
            .filter(|b| {
                old.chain
                    .built
                    .iter()
                    .any(|o| Arc::ptr_eq(&o.plugin, &b.plugin))
            })
            .count();
        let reloaded = Reloaded {
            pools: table.pools.len(),
            plugins_kept,
            plugins_built: chain.built.len() - plugins_kept,
            need_restart: need_restart(&running, &new),
        };
        let snapshot = Snapshot::new(
            server,
            Arc::new(table),
            chain,
            self.backends.clone(),
            self.metrics.clone(),
        );
        self.live.store(Arc::new(snapshot));
        // Pools and plugins are the new file's; what needs a restart stays as it runs.
        running.pools = new.pools;
        running.plugins = new.plugins;
        Ok(reloaded)
    }

    fn reload_and_log(&self) {
        if let Some(cert) = &self.certificate {
            match cert.reload() {
                Ok(()) => log::info!("TLS certificate reloaded: {cert:?}"),
                Err(e) => log::error!("TLS certificate reload refused, the one in use stays: {e}"),
            }
        }
        match self.reload() {
            Ok(r) => {
                log::info!(
                    pools = r.pools, plugins_kept = r.plugins_kept, plugins_built = r.plugins_built;
                    "configuration reloaded from {}", self.path.display()
                );
                if !r.need_restart.is_empty() {
                    log::warn!(
                        "configuration reload: {} changed in the file but take effect only after a restart; the running values stay",
                        r.need_restart.join(", ")
                    );
                }
            }
            Err(e) => log::error!(
                "configuration reload refused, the running configuration stays: {}: {e}",
                self.path.display()
            ),
        }
    }
}

/// The `[server]` keys (and `[batch]`) that differ between `running` and `new`.
fn need_restart(running: &Config, new: &Config) -> Vec<String> {
    let (a, b): (&ServerConfig, &ServerConfig) = (&running.server, &new.server);
    let mut changed = Vec::new();
    macro_rules! compare {
        ($($key:ident),*) => {
            $(if a.$key != b.$key {
                changed.push(format!("server.{}", stringify!($key)));
            })*
        };
    }
    compare!(
        listen,
        base_path,
        threads,
        max_request_body,
        client_body_timeout,
        client_header_timeout,
        client_keepalive_timeout,
        max_connections,
        max_tokens_limit,
        trusted_proxies,
        upstream_connect_timeout,
        upstream_idle_timeout,
        upstream_keepalive_timeout,
        max_connect_attempts,
        shutdown_grace_period,
        log_level,
        metrics_listen,
        upgrade_socket,
        tls
    );
    if running.batch != new.batch {
        changed.push("batch".into());
    }
    changed
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reloads are off: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                Some(()) = hangups.recv() => self.reload_and_log(),
                _ = shutdown.changed() => return,
            }
        }
    }
}
