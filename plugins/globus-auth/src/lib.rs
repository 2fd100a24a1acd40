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
//!
//! A flood of unknown tokens must not get the facility's Globus client rate-limited: cache
//! misses are bounded per client address (429 past `introspections_per_client_per_minute`),
//! for the whole gateway (503 past `introspections_per_second`), and in flight
//! (`max_concurrent_introspections`). Cached verdicts are never throttled. A token longer than
//! any Globus token is refused without asking Globus.

mod client;
mod config;
mod throttle;
mod verdict;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gateway_plugin_api::{
    bearer_token, metrics, ApiError, Authn, BuildContext, Phase, Plugin, PluginFactory, Principal,
    RequestCtx, RequestHead,
};
use moka::future::Cache;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use client::{GlobusClient, Outage};
pub use config::GlobusConfig;
use throttle::{MissThrottle, Rate, Throttled};
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
        let cfg = GlobusConfig::parse(config, path, cx)?;
        let metrics = GlobusMetrics::register(&cx.registry)
            .map_err(|e| format!("{path}: registering metrics: {e}"))?;
        let mut plugin = GlobusAuth::new(cfg)?;
        plugin.metrics = Some(metrics);
        Ok(Arc::new(plugin))
    }
}

/// What the gateway decided about one token, and for how long that decision may be cached.
#[derive(Debug)]
pub enum TokenVerdict {
    Accepted(Arc<Principal>, Duration),
    Rejected(Rejection, Duration),
}

struct VerdictExpiry;

impl moka::Expiry<[u8; 32], Arc<TokenVerdict>> for VerdictExpiry {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        value: &Arc<TokenVerdict>,
        _: Instant,
    ) -> Option<Duration> {
        Some(match value.as_ref() {
            TokenVerdict::Accepted(_, ttl) | TokenVerdict::Rejected(_, ttl) => *ttl,
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
        Ok(GlobusMetrics {
            checks: metrics::counter_vec(
                registry,
                "igw_globus_auth_checks_total",
                "Token checks by outcome: hit (cached verdict), miss (introspected), unavailable (Globus down or busy), throttled (too many unknown tokens)",
                &["result"],
            )?,
            introspection: metrics::histogram(
                registry,
                "igw_globus_introspection_seconds",
                "Time to introspect a token (and fetch its groups when needed)",
                vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )?,
            failures: metrics::counter(
                registry,
                "igw_globus_errors_total",
                "Introspections that got no usable answer from Globus",
            )?,
        })
    }
}

/// How a user gets a Globus access token for the gateway, for the core's 401.
const GET_TOKEN_HINT: &str = "get one with `inference-auth-token get_access_token`";

/// Globus Auth access tokens are ~100 characters; anything far longer is not one, and is
/// refused without a call to Globus.
const MAX_TOKEN_LEN: usize = 1024;

/// Why a token could not be judged now (never cached).
#[derive(Debug)]
pub enum CheckError {
    /// Globus did not answer usefully, or too many introspections were already in flight.
    Outage(String),
    /// Too many unknown tokens: from this client, or from everyone.
    Throttled(Throttled),
}

pub struct GlobusAuth {
    client: GlobusClient,
    /// Keyed by the token's digest, hashed with foldhash (randomly seeded, as std's SipHash,
    /// so a client choosing tokens cannot aim at one bucket) at a fraction of SipHash's cost.
    cache: Cache<[u8; 32], Arc<TokenVerdict>, foldhash::fast::RandomState>,
    throttle: MissThrottle,
    in_flight: Semaphore,
    metrics: Option<GlobusMetrics>,
}

impl GlobusAuth {
    pub fn new(cfg: GlobusConfig) -> Result<GlobusAuth, String> {
        let cache = Cache::builder()
            .max_capacity(cfg.cache_capacity)
            .expire_after(VerdictExpiry)
            .build_with_hasher(foldhash::fast::RandomState::default());
        let throttle = MissThrottle::new(
            Rate {
                per_second: cfg.introspections_per_second,
                burst: (cfg.introspections_per_second * 2.0).max(1.0),
            },
            Rate {
                per_second: cfg.introspections_per_client_per_minute / 60.0,
                burst: (cfg.introspections_per_client_per_minute / 3.0).max(1.0),
            },
        );
        Ok(GlobusAuth {
            in_flight: Semaphore::new(cfg.max_concurrent_introspections),
            client: GlobusClient::new(cfg)?,
            cache,
            throttle,
            metrics: None,
        })
    }

    /// Introspects (and, when needed, resolves groups for) a token no cache entry covers,
    /// within the throttle's bounds.
    async fn verify(
        &self,
        token: &str,
        client: Option<IpAddr>,
        ran: &std::sync::atomic::AtomicBool,
    ) -> Result<Arc<TokenVerdict>, CheckError> {
        self.throttle.admit(client).map_err(CheckError::Throttled)?;
        let timeout = self.client.config().timeout;
        let _permit = match tokio::time::timeout(timeout, self.in_flight.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(CheckError::Outage(format!(
                    "no introspection slot within {timeout:?} (max_concurrent_introspections)"
                )))
            }
        };
        ran.store(true, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let result = self.introspect_and_judge(token).await;
        if let Some(m) = &self.metrics {
            m.introspection.observe(started.elapsed().as_secs_f64());
            if result.is_err() {
                m.failures.inc();
            }
        }
        result.map_err(|Outage(reason)| CheckError::Outage(reason))
    }

    async fn introspect_and_judge(&self, token: &str) -> Result<Arc<TokenVerdict>, Outage> {
        let cfg = self.client.config();
        let introspection = self.client.introspect(token).await?;
        let verdict = match verdict::judge(&introspection, cfg) {
            Err(rejection) => TokenVerdict::Rejected(rejection, cfg.negative_cache_ttl),
            Ok(mut accepted) => {
                if cfg.fetch_groups && !accepted.service_account {
                    accepted.principal.groups = self.client.groups(token).await?;
                }
                TokenVerdict::Accepted(Arc::new(accepted.principal), accepted.ttl)
            }
        };
        Ok(Arc::new(verdict))
    }

    /// Entries in the verdict cache (after pending evictions), for tests and metrics.
    pub async fn cached_entries(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// The cached or freshly established verdict for `token`, sent from `client`.
    pub async fn check(
        &self,
        token: &str,
        client: Option<IpAddr>,
    ) -> Result<Arc<TokenVerdict>, Arc<CheckError>> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // A hit first, without building the introspection's future: unpolled, it is still
        // ~1.5 KB that `try_get_with` takes by value, and inline it would make every call's
        // future that large (copied into async_trait's box per request). Misses box it.
        let result = match self.cache.get(&key).await {
            Some(verdict) => Ok((verdict, false)),
            None => Box::pin(self.check_miss(key, token, client)).await,
        };
        if let Some(m) = &self.metrics {
            let outcome = match &result {
                Err(e) if matches!(e.as_ref(), CheckError::Throttled(_)) => "throttled",
                Err(_) => "unavailable",
                Ok((_, true)) => "miss",
                Ok((_, false)) => "hit",
            };
            m.checks.with_label_values(&[outcome]).inc();
        }
        result.map(|(verdict, _)| verdict)
    }

    /// Introspects a token the cache lacks; concurrent requests with it wait for one
    /// introspection. `true` when this call ran it itself (a miss, not a waiter).
    async fn check_miss(
        &self,
        key: [u8; 32],
        token: &str,
        client: Option<IpAddr>,
    ) -> Result<(Arc<TokenVerdict>, bool), Arc<CheckError>> {
        let ran = std::sync::atomic::AtomicBool::new(false);
        let result = self
            .cache
            .try_get_with(key, self.verify(token, client, &ran))
            .await?;
        Ok((result, ran.load(std::sync::atomic::Ordering::Relaxed)))
    }

    fn refusal(&self, error: &CheckError, ctx: &RequestCtx) -> ApiError {
        // Rounded up: a client that obeys must not come back before the bucket has refilled.
        let retry = |d: Duration| (d.as_secs_f64().ceil() as u64).max(1);
        match error {
            CheckError::Outage(reason) => {
                log::warn!(
                    target: "globus_auth",
                    request_id = ctx.request_id.as_str();
                    "Globus Auth unavailable, token not verified: {reason}"
                );
                ApiError::auth_unavailable(
                    "Globus Auth could not be reached to verify your token; try again shortly."
                        .into(),
                    self.client.config().retry_after.as_secs(),
                )
            }
            CheckError::Throttled(Throttled::Client(wait)) => ApiError::new(
                429,
                "rate_limit_error",
                "too_many_new_tokens",
                "Too many unknown access tokens from your address; try again shortly with a \
                 valid one."
                    .into(),
            )
            .with_header("retry-after", retry(*wait).to_string()),
            CheckError::Throttled(Throttled::Global(wait)) => ApiError::auth_unavailable(
                "The gateway is verifying too many new tokens right now; try again shortly.".into(),
                retry(*wait),
            ),
        }
    }
}

#[async_trait]
impl Plugin for GlobusAuth {
    fn name(&self) -> &str {
        "globus_auth"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn credential_hint(&self) -> Option<&str> {
        Some(GET_TOKEN_HINT)
    }

    async fn authenticate(&self, head: &RequestHead<'_>, ctx: &RequestCtx) -> Authn {
        let Some(token) = bearer_token(head.headers) else {
            return Authn::NotMine;
        };
        if token.split('.').count() == 3 {
            return Authn::NotMine;
        }
        if token.len() > MAX_TOKEN_LEN {
            return Authn::Refused(ApiError::unauthorized(
                "invalid_token",
                format!(
                    "Your bearer token is longer than any Globus access token ({MAX_TOKEN_LEN} \
                     bytes at most). Get one with `inference-auth-token get_access_token`."
                ),
            ));
        }
        let client = ctx.client_addr.map(|a| a.ip());
        match self.check(token, client).await {
            Ok(verdict) => match verdict.as_ref() {
                TokenVerdict::Accepted(principal, _) => Authn::Accepted(principal.clone()),
                TokenVerdict::Rejected(r, _) => {
                    Authn::Refused(ApiError::unauthorized(r.code, r.message.clone()))
                }
            },
            Err(error) => Authn::Refused(self.refusal(&error, ctx)),
        }
    }
}
