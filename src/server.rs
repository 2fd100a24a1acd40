//! Assembling Pingora: the gateway service on its listeners and the health checker.

use std::sync::Arc;

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::config::{Config, ConfigError};
use crate::plugins::build_chain;
use crate::proxy::Gateway;
use crate::routing::health::HealthChecker;
use crate::routing::ModelTable;

/// Validates everything `run` would, without binding sockets: the file and the plugins.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    build_chain(config).map(|_| ())
}

/// Builds the server; `run_forever` on it serves until SIGTERM (graceful) or SIGINT.
pub fn build(config: Config) -> Result<Server, ConfigError> {
    let plugins = build_chain(&config)?;
    let table = Arc::new(ModelTable::new(&config));

    let grace = config.server.shutdown_grace_period.as_secs();
    let conf = ServerConf {
        threads: config.server.threads,
        // In-flight streams get this long to finish after SIGTERM.
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(grace + 5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);

    let gateway = Gateway::new(config.server.clone(), table.clone(), plugins);
    let mut service = Service::new("inference-gateway".to_string(), gateway);
    for addr in &config.server.listen {
        service.add_tcp(&addr.to_string());
    }
    service.threads = Some(config.server.threads);
    server.add_service(service);
    server.add_service(background_service(
        "health-checks",
        HealthChecker::new(table.pools.clone()),
    ));
    server.bootstrap();
    Ok(server)
}
