//! `globus_auth`: checks Globus access tokens by introspection (globus-auth.md).
//!
//! ```toml
//! [[plugins]]
//! kind = "globus_auth"
//! client_id = "<resource server client uuid>"
//! client_secret_file = "/etc/inference-gateway/globus-client-secret"
//! ```
//! Verdicts are cached by SHA-256 of the token: acceptances for min(`cache_ttl`, exp − now),
//! rejections for `negative_cache_ttl`, at most `cache_capacity` entries. Concurrent requests
//! with the same uncached token share one introspection. When Globus cannot answer, cached
//! users keep working, new ones get 503 `auth_unavailable`, and nothing is cached.
//! JWT-shaped tokens (three dot-separated parts) are left to the `jwt_auth` plugin.

mod client;
mod config;
mod verdict;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gateway_plugin_api::{
    unclaimed_token, ApiError, BuildContext, Flow, Plugin, PluginFactory, Principal, RequestCtx,
    RequestHead,
};
use moka::future::Cache;
use sha2::{Digest, Sha256};

use client::{GlobusClient, Outage};
pub use config::GlobusConfig;
pub use verdict::{judge_at, Introspection, Rejection};

pub struct GlobusAuthFactory;

impl PluginFactory for GlobusAuthFactory {
    fn kind(&self) -> &'static str {
        "globus_auth"
    }

    fn build(
        &self,
        config: &toml::Table,
        path: &str,
        cx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, String> {
        let cfg = GlobusConfig::parse(config, path, cx.groups_needed)?;
        let metrics = GlobusMetrics::register(&cx.registry)
            .map_err(|e| format!("{path}: registering metrics: {e}"))?;
        let mut plugin = GlobusAuth::new(cfg)?;
        plugin.metrics = Some(metrics);
        Ok(Arc::new(plugin))
    }
}

/// A cached decision about one token.
#[derive(Debug)]
pub enum Verdict {
    Accepted(Principal, Duration),
    Rejected(Rejection, Duration),
}

struct VerdictExpiry;

impl moka::Expiry<[u8; 32], Arc<Verdict>> for VerdictExpiry {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        value: &Arc<Verdict>,
        _: Instant,
    ) -> Option<Duration> {
        Some(match value.as_ref() {
            Verdict::Accepted(_, ttl) | Verdict::Rejected(_, ttl) => *ttl,
        })
    }
}

/// `igw_globus_*` metrics: cache hits and misses, introspection latency and failures.
struct GlobusMetrics {
    checks: prometheus::IntCounterVec,
    introspection: prometheus::Histogram,
    failures: prometheus::IntCounter,
}

impl GlobusMetrics {
    fn register(registry: &prometheus::Registry) -> prometheus::Result<GlobusMetrics> {
        let checks = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "igw_globus_auth_checks_total",
                "Token checks by outcome: hit (cached verdict), miss (introspected), unavailable (Globus down)",
            ),
            &["result"],
        )?;
        let introspection = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "igw_globus_introspection_seconds",
                "Time to introspect a token (and fetch its groups when needed)",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        let failures = prometheus::IntCounter::new(
            "igw_globus_errors_total",
            "Introspections that got no usable answer from Globus",
        )?;
        registry.register(Box::new(checks.clone()))?;
        registry.register(Box::new(introspection.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(GlobusMetrics {
            checks,
            introspection,
            failures,
        })
    }
}

pub struct GlobusAuth {
    client: GlobusClient,
    cache: Cache<[u8; 32], Arc<Verdict>>,
    metrics: Option<GlobusMetrics>,
}

impl GlobusAuth {
    pub fn new(cfg: GlobusConfig) -> Result<GlobusAuth, String> {
        let cache = Cache::builder()
            .max_capacity(cfg.cache_capacity)
            .expire_after(VerdictExpiry)
            .build();
        Ok(GlobusAuth {
            client: GlobusClient::new(cfg)?,
            cache,
            metrics: None,
        })
    }

    /// Introspects (and, when needed, resolves groups for) a token no cache entry covers.
    async fn verify(
        &self,
        token: &str,
        ran: &std::sync::atomic::AtomicBool,
    ) -> Result<Arc<Verdict>, Outage> {
        ran.store(true, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let result = self.introspect_and_judge(token).await;
        if let Some(m) = &self.metrics {
            m.introspection.observe(started.elapsed().as_secs_f64());
            if result.is_err() {
                m.failures.inc();
            }
        }
        result
    }

    async fn introspect_and_judge(&self, token: &str) -> Result<Arc<Verdict>, Outage> {
        let cfg = self.client.config();
        let introspection = self.client.introspect(token).await?;
        let verdict = match verdict::judge(&introspection, cfg) {
            Err(rejection) => Verdict::Rejected(rejection, cfg.negative_cache_ttl),
            Ok(mut accepted) => {
                if cfg.fetch_groups && !accepted.service_account {
                    accepted.principal.groups = self.client.groups(token).await?;
                }
                Verdict::Accepted(accepted.principal, accepted.ttl)
            }
        };
        Ok(Arc::new(verdict))
    }

    /// Entries in the verdict cache (after pending evictions), for tests and metrics.
    pub async fn cached_entries(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// The cached or freshly established verdict for `token`.
    pub async fn check(&self, token: &str) -> Result<Arc<Verdict>, Arc<Outage>> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Set when this call ran the introspection itself (a miss), not a waiter or a hit.
        let ran = std::sync::atomic::AtomicBool::new(false);
        let result = self.cache.try_get_with(key, self.verify(token, &ran)).await;
        if let Some(m) = &self.metrics {
            let outcome = match (&result, ran.load(std::sync::atomic::Ordering::Relaxed)) {
                (Err(_), _) => "unavailable",
                (Ok(_), true) => "miss",
                (Ok(_), false) => "hit",
            };
            m.checks.with_label_values(&[outcome]).inc();
        }
        result
    }
}

#[async_trait]
impl Plugin for GlobusAuth {
    fn name(&self) -> &str {
        "globus_auth"
    }

    fn authenticates(&self) -> bool {
        true
    }

    async fn on_request(&self, head: &RequestHead<'_>, ctx: &mut RequestCtx) -> Flow {
        let Some(token) = unclaimed_token(head, ctx) else {
            return Flow::Continue;
        };
        if token.split('.').count() == 3 {
            return Flow::Continue;
        }
        match self.check(token).await {
            Ok(verdict) => match verdict.as_ref() {
                Verdict::Accepted(principal, _) => {
                    ctx.principal = Some(principal.clone());
                    Flow::Continue
                }
                Verdict::Rejected(r, _) => {
                    Flow::Respond(ApiError::unauthorized(r.code, r.message.clone()))
                }
            },
            Err(outage) => {
                log::warn!(
                    target: "globus_auth",
                    request_id = ctx.request_id.as_str();
                    "Globus Auth unavailable, token not verified: {}", outage.0
                );
                let retry = self.client.config().retry_after.as_secs();
                Flow::Respond(ApiError::auth_unavailable(
                    "Globus Auth could not be reached to verify your token; try again shortly."
                        .into(),
                    retry,
                ))
            }
        }
    }
}
