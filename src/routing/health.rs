//! Active health checks: an HTTP GET of each backend's health path on a fixed interval, run
//! as a Pingora background service so that shutdown stops it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::http::Connector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_http::RequestHeader;

use super::backend::{connect_failure, ConnectFailure};
use super::pool::{Backend, CheckResult, Pool};

/// The counters the checks increment, by pool and backend, handed in by whoever keeps the
/// metrics.
#[derive(Clone)]
pub struct CheckCounters {
    pub failures: prometheus::IntCounterVec,
    pub busy: prometheus::IntCounterVec,
}

pub struct HealthChecker {
    /// The table in force: after a reload its pools are checked (backends kept by the reload
    /// keep their state).
    table: super::CurrentTable,
    counters: Option<CheckCounters>,
    /// Its own connector, never released into: every check opens a fresh connection, so a
    /// pooled keep-alive connection cannot hide a backend that stopped accepting.
    connector: Connector,
}

impl HealthChecker {
    pub fn new(table: super::CurrentTable, counters: Option<CheckCounters>) -> HealthChecker {
        HealthChecker {
            table,
            counters,
            connector: Connector::new(None),
        }
    }

    async fn check_pool(&self, pool: &Pool) {
        let checks = pool.backends.iter().map(|backend| async move {
            let probe = self.probe(backend, pool).await;
            // Read after the probe, so bytes that flowed while it waited count; every check
            // moves the "since the last check" window forward.
            let progressed = backend.progressed_since_last_check();
            let (result, reason) = match probe {
                Err(Probe::Local(reason)) => {
                    // This host is out of sockets: says nothing about the backend.
                    log::error!(target: "health", "pool={} backend={} check not made: {reason} (raise LimitNOFILE?)", pool.name, backend.address);
                    return;
                }
                Ok(()) => (CheckResult::Passed, String::new()),
                Err(Probe::TimedOut(_)) if progressed => (CheckResult::Busy, String::new()),
                Err(Probe::TimedOut(reason) | Probe::Failed(reason)) => {
                    (CheckResult::Failed, reason)
                }
                Err(Probe::Unreachable(reason)) => (CheckResult::Unreachable, reason),
            };
            if let Some(c) = &self.counters {
                let labels = [pool.name.as_str(), backend.address.as_str()];
                match result {
                    CheckResult::Busy => c.busy.with_label_values(&labels).inc(),
                    CheckResult::Failed | CheckResult::Unreachable => {
                        c.failures.with_label_values(&labels).inc()
                    }
                    CheckResult::Passed => {}
                }
            }
            let h = &pool.health;
            if let Some(now) =
                backend.record_check(result, h.healthy_threshold, h.unhealthy_threshold)
            {
                log::warn!(
                    target: "health",
                    "pool={} backend={} health={} reason={}",
                    pool.name, backend.address, now.as_str(), reason
                );
            }
        });
        futures_util::future::join_all(checks).await;
        // Recomputing the status after each round keeps its "since" accurate.
        pool.status();
    }

    async fn probe(&self, backend: &Backend, pool: &Pool) -> Result<(), Probe> {
        // One deadline for the whole check, connect included.
        let timeout = pool.health.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let connect = self.connector.get_http_session(&backend.peer);
        let mut session = match tokio::time::timeout_at(deadline, connect).await {
            Ok(Ok((session, _))) => session,
            Ok(Err(e)) => {
                let reason = format!("connect: {e}");
                return Err(match connect_failure(&e) {
                    ConnectFailure::Refused => Probe::Unreachable(reason),
                    ConnectFailure::TimedOut => Probe::TimedOut(reason),
                    ConnectFailure::Local => Probe::Local(reason),
                });
            }
            Err(_) => return Err(Probe::TimedOut(format!("no connection within {timeout:?}"))),
        };
        let exchange = async {
            let req = probe_request(backend, pool).map_err(Probe::Failed)?;
            session
                .write_request_header(Box::new(req))
                .await
                .map_err(|e| closed_or_failed("send", &e))?;
            session
                .finish_request_body()
                .await
                .map_err(|e| closed_or_failed("send", &e))?;
            session
                .read_response_header()
                .await
                .map_err(|e| closed_or_failed("read", &e))?;
            let status = session
                .response_header()
                .map(|h| h.status.as_u16())
                .unwrap_or(0);
            // The session (and its connection) is dropped, not pooled.
            if pool.health.passes(status) {
                Ok(())
            } else {
                Err(Probe::Failed(format!("status {status}")))
            }
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Probe::TimedOut(format!("no answer within {timeout:?}"))),
        }
    }
}

/// Why a check did not pass.
enum Probe {
    /// This host could not open a socket (out of descriptors or ports).
    Local(String),
    /// No connection or no answer within the timeout.
    TimedOut(String),
    /// Connected and answered, wrongly (status, broken header).
    Failed(String),
    /// Refused, no route, or closed before a whole answer.
    Unreachable(String),
}

fn probe_request(backend: &Backend, pool: &Pool) -> Result<RequestHeader, String> {
    let mut req = RequestHeader::build("GET", pool.health.path.as_bytes(), None)
        .map_err(|e| e.to_string())?;
    req.insert_header("host", backend.address.as_str())
        .map_err(|e| e.to_string())?;
    req.insert_header("user-agent", "inference-gateway-health")
        .map_err(|e| e.to_string())?;
    if let Some(auth) = &pool.authorization {
        req.insert_header("authorization", auth.clone())
            .map_err(|e| e.to_string())?;
    }
    Ok(req)
}

/// A connection reset or closed before any byte of the answer means nothing serves there
/// (as a refused connect does); anything else is a failed check.
fn closed_or_failed(step: &str, e: &pingora_error::Error) -> Probe {
    use pingora_error::ErrorType;
    match e.etype() {
        ErrorType::ConnectionClosed => Probe::Unreachable(format!("{step}: {e}")),
        _ if is_reset(e) => Probe::Unreachable(format!("{step}: {e}")),
        _ => Probe::Failed(format!("{step}: {e}")),
    }
}

fn is_reset(e: &pingora_error::Error) -> bool {
    use std::io::ErrorKind;
    let io = e
        .root_cause()
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind);
    matches!(
        io,
        Some(ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe)
    )
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // One loop a pool, each on its own interval; when a reload replaces the table, the
        // loops start over on the new pools (each checked at once).
        loop {
            let table = (self.table)();
            let loops = table.pools.iter().map(|pool| async move {
                let mut ticker = tokio::time::interval(pool.health.interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    self.check_pool(pool).await;
                }
            });
            let replaced = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if !Arc::ptr_eq(&(self.table)(), &table) {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = futures_util::future::join_all(loops) => return,
                _ = replaced => continue,
                _ = shutdown.changed() => return,
            }
        }
    }
}
