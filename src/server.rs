//! Assembling Pingora: the gateway service on its listeners, the metrics listener, and the
//! health checker.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{ExecutionPhase, RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::config::{Config, ConfigError};
use crate::metrics::{GatewayMetrics, MetricsApp};
use crate::plugins::build_chain;
use crate::proxy::{BackendConnections, Gateway, Live, PeerSettings, Snapshot};
use crate::reload::Reloader;
use crate::routing::health::{CheckCounters, HealthChecker};
use crate::routing::{CurrentTable, ModelTable};
use crate::tls::ReloadableCert;

/// Validates everything `run` would, without binding sockets: the file and the plugins.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    build_chain(config, &prometheus::Registry::new()).map(|_| ())
}

fn metrics_error(e: prometheus::Error) -> ConfigError {
    ConfigError::Invalid {
        path: "server.metrics_listen".into(),
        message: format!("registering metrics failed: {e}"),
    }
}

/// The assembled server, and the plugins to flush before the process exits.
pub struct Serving {
    server: Server,
    live: Live,
}

impl Serving {
    /// Serves until SIGTERM (graceful) or SIGINT, flushes the plugins, and exits.
    pub fn run_forever(self) -> ! {
        self.server.run(RunArgs::default());
        flush_plugins(&self.live);
        std::process::exit(0)
    }
}

/// Lets every plugin of the configuration in force write out what it holds (the access log
/// gathers lines in memory for up to its `flush_interval`).
fn flush_plugins(live: &Live) {
    for plugin in live.load().chain.all.iter() {
        plugin.flush();
    }
}

/// Builds the server; `run_forever` on it serves until SIGTERM (graceful) or SIGINT.
/// After SIGTERM the process exits as soon as no client connection is left, and at the
/// latest when the grace period ends.
/// `path` is where `config` was read from: SIGHUP reads it again (see `reload.rs`).
/// `upgrade`: take the listening sockets over from a running gateway (see `cli.rs`).
pub fn build(config: Config, path: PathBuf, upgrade: bool) -> Result<Serving, ConfigError> {
    let registry = prometheus::Registry::new();
    let registry_for_reload = registry.clone();
    let chain = build_chain(&config, &registry)?;
    let peers = PeerSettings::new(&config.server);
    let table = Arc::new(ModelTable::new(&config.pools, &|socket| peers.peer(socket)));
    let backends = Arc::new(BackendConnections::default());
    // Filled with the first snapshot at once; `current` reads whichever is in force.
    let live: Live = Arc::new(ArcSwap::from_pointee(Snapshot::new(
        &config.server,
        table.clone(),
        chain.clone(),
        backends.clone(),
        None,
    )));
    let current: CurrentTable = {
        let live = live.clone();
        Arc::new(move || live.load().table.clone())
    };
    let metrics = match config.server.metrics_listen {
        Some(_) => Some(Arc::new(
            GatewayMetrics::register(&registry, current.clone()).map_err(metrics_error)?,
        )),
        None => None,
    };
    // Again, now with the metrics the forwarder records into.
    live.store(Arc::new(Snapshot::new(
        &config.server,
        table,
        chain.clone(),
        backends.clone(),
        metrics.clone(),
    )));

    let grace = config.server.shutdown_grace_period.as_secs();
    let conf = ServerConf {
        threads: config.server.threads,
        upgrade_sock: config.server.upgrade_socket.display().to_string(),
        // In-flight streams get this long to finish after SIGTERM.
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(grace + 5),
        // One event loop per thread, as nginx's workers: a connection stays on the thread that
        // accepted it. Work stealing costs every wake-up atomics and cross-thread checks:
        // ~20 % of a small request's CPU with one thread, nothing gained with two on two
        // cores (benches/README.md).
        work_stealing: false,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    // Nothing here reads how long a stream waited to read or write; keeping it cost four
    // clock readings a proxied request (vendored pingora-core, vendor/README.md).
    pingora_core::protocols::l4::stream::set_pending_time_tracking(false);

    let batches = match &config.batch {
        Some(batch) => Some(Arc::new(
            crate::batch::Engine::open(
                batch.clone(),
                &config.server,
                current.clone(),
                chain.all.clone(),
                metrics.as_ref().map(|_| &registry),
            )
            .map_err(|message| ConfigError::Invalid {
                path: match batch.store {
                    Some(_) => "batch.store".into(),
                    None => "batch.state_dir".into(),
                },
                message,
            })?,
        )),
        None => None,
    };
    let gateway = Gateway::new(
        served_settings(&config),
        live.clone(),
        metrics.clone(),
        batches.clone(),
    );
    let connections = gateway.connections();
    let mut service = Service::new("inference-gateway".to_string(), gateway);
    for addr in &config.server.listen {
        // No L4 read buffer: without TLS it only adds a copy, and Pingora's default is
        // 64 KiB per client connection, most of the memory of an open stream.
        let listener =
            ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::default().read(0));
        service.add_listener(listener);
    }
    let certificate = match &config.server.tls {
        Some(tls) => {
            let tls_error = |message: String| ConfigError::Invalid {
                path: "server.tls.cert".into(),
                message,
            };
            let cert = Arc::new(ReloadableCert::load(&tls.cert, &tls.key).map_err(tls_error)?);
            for addr in &tls.listen {
                let settings = crate::tls::listener_settings(&cert).map_err(tls_error)?;
                service.add_listener(ListenerConfig::tcp(addr.to_string()).tls(settings));
            }
            Some(cert)
        }
        None => None,
    };
    service.threads = Some(config.server.threads);
    server.add_service(service);
    if let Some(addr) = config.server.metrics_listen {
        let mut metrics_service = Service::new(
            "metrics".to_string(),
            MetricsApp {
                registry: registry.clone(),
            },
        );
        metrics_service.add_tcp(&addr.to_string());
        metrics_service.threads = Some(1);
        server.add_service(metrics_service);
    }
    server.add_service(background_service(
        "health-checks",
        HealthChecker::new(
            current,
            metrics.as_ref().map(|m| CheckCounters {
                failures: m.health_failures.clone(),
                busy: m.health_busy.clone(),
            }),
        ),
    ));
    server.add_service(background_service(
        "upgrade",
        crate::upgrade::Upgrader::new(path.clone(), config.server.upgrade_socket.clone()),
    ));
    server.add_service(background_service(
        "reload",
        Reloader::new(
            path,
            config.clone(),
            live.clone(),
            registry_for_reload,
            backends,
            metrics,
        )
        .with_certificate(certificate),
    ));
    let batch_lines = match batches {
        Some(engine) => {
            let in_flight = engine.in_flight.clone();
            server.add_service(background_service(
                "batch-worker",
                crate::batch::Worker::new(engine),
            ));
            in_flight
        }
        None => Arc::new(AtomicUsize::new(0)),
    };
    server.bootstrap();
    exit_when_drained(&server, connections, batch_lines, live.clone());
    Ok(Serving { server, live })
}

/// `[server]` as served: `max_connections` capped at what the descriptor limit holds (raised
/// to the hard limit first). The configuration itself keeps the operator's value, so a reload
/// compares like with like.
fn served_settings(config: &Config) -> crate::config::ServerConfig {
    let mut settings = config.server.clone();
    let budget = crate::descriptors::budget(settings.max_connections);
    if let Some(before) = budget.raised_from {
        log::info!(
            "file descriptor limit raised from {before} to the hard limit, {}",
            budget.limit
        );
    }
    if budget.max_connections < settings.max_connections {
        log::warn!(
            "server.max_connections = {} needs {} file descriptors (two a proxied connection, {} \
             kept for the rest) and the limit is {}: serving at most {} connections at once, \
             the rest get 503 too_many_connections (raise LimitNOFILE / ulimit -n)",
            settings.max_connections,
            settings.max_connections as u64 * 2 + crate::descriptors::RESERVED,
            crate::descriptors::RESERVED,
            budget.limit,
            budget.max_connections
        );
        settings.max_connections = budget.max_connections;
    }
    settings
}

/// Pingora sleeps through the whole grace period after SIGTERM, even with nothing in flight,
/// so every restart took `shutdown_grace_period`. Once the grace period starts, the listeners
/// are closed and idle keep-alive connections close themselves (`process_new_http`); when no
/// connection is left on two checks in a row, nothing can still be answering, and the
/// process exits, once the plugins have written out what they hold: nothing is lost.
fn exit_when_drained(
    server: &Server,
    connections: Arc<AtomicUsize>,
    batch_lines: Arc<AtomicUsize>,
    live: Live,
) {
    let mut phases = server.watch_execution_phase();
    std::thread::spawn(move || {
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
        let mut idle_checks = 0;
        loop {
            // Batch lines being sent count too: they finish within the grace period.
            let open = connections.load(Ordering::SeqCst) + batch_lines.load(Ordering::SeqCst);
            idle_checks = if open == 0 { idle_checks + 1 } else { 0 };
            if idle_checks >= 2 {
                log::info!(
                    "shutdown: every connection has finished; exiting before the grace period ends"
                );
                flush_plugins(&live);
                std::process::exit(0);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    });
}
