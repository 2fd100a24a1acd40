//! Active health checks: an HTTP GET of each backend's health path on a fixed interval, run
//! as a Pingora background service so that shutdown stops it.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::connectors::http::Connector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_http::RequestHeader;

use super::pool::{Backend, Pool};
use crate::metrics::GatewayMetrics;

pub struct HealthChecker {
    pools: Vec<Arc<Pool>>,
    metrics: Option<Arc<GatewayMetrics>>,
    /// Its own connector, never released into: every check opens a fresh connection, so a
    /// pooled keep-alive connection cannot hide a backend that stopped accepting.
    connector: Connector,
}

impl HealthChecker {
    pub fn new(pools: Vec<Arc<Pool>>, metrics: Option<Arc<GatewayMetrics>>) -> HealthChecker {
        HealthChecker {
            pools,
            metrics,
            connector: Connector::new(None),
        }
    }

    async fn check_pool(&self, pool: &Pool) {
        let checks = pool.backends.iter().map(|backend| async move {
            let result = self.probe(backend, pool).await;
            if let (Err(_), Some(m)) = (&result, &self.metrics) {
                m.health_failures
                    .with_label_values(&[&pool.name, &backend.address])
                    .inc();
            }
            let h = &pool.health;
            if let Some(now_healthy) =
                backend.record_check(result.is_ok(), h.healthy_threshold, h.unhealthy_threshold)
            {
                let reason = result.err().unwrap_or_default();
                log::warn!(
                    target: "health",
                    "pool={} backend={} healthy={} reason={}",
                    pool.name, backend.address, now_healthy, reason
                );
            }
        });
        futures_util::future::join_all(checks).await;
        // Recomputing the status after each round keeps its "since" accurate.
        pool.status();
    }

    async fn probe(&self, backend: &Backend, pool: &Pool) -> Result<(), String> {
        let work = async {
            let (mut session, _) = self
                .connector
                .get_http_session(&backend.peer)
                .await
                .map_err(|e| format!("connect: {e}"))?;
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
            session
                .write_request_header(Box::new(req))
                .await
                .map_err(|e| format!("send: {e}"))?;
            session
                .finish_request_body()
                .await
                .map_err(|e| format!("send: {e}"))?;
            session
                .read_response_header()
                .await
                .map_err(|e| format!("read: {e}"))?;
            let status = session
                .response_header()
                .map(|h| h.status.as_u16())
                .unwrap_or(0);
            // The session (and its connection) is dropped, not pooled.
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        };
        match tokio::time::timeout(pool.health.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", pool.health.timeout)),
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let loops = self.pools.iter().map(|pool| {
            let mut shutdown = shutdown.clone();
            async move {
                let mut ticker = tokio::time::interval(pool.health.interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => self.check_pool(pool).await,
                        _ = shutdown.changed() => return,
                    }
                }
            }
        });
        tokio::select! {
            _ = futures_util::future::join_all(loops) => {}
            _ = shutdown.changed() => {}
        }
    }
}
