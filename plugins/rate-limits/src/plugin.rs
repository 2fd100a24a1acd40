//! The plugin: builds the checks for a request, answers 429, adds OpenAI's rate-limit
//! headers, and settles tokens and concurrency when the request ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gateway_plugin_api::{
    ApiError, BuildContext, Flow, Headers, Plugin, PluginFactory, RequestCtx, RequestHead,
    RequestSummary,
};
use http::HeaderName;

use crate::config::{Backend, LimitsConfig, OnRedisError, ScopeLimits};
use crate::gcra::Verdict;
use crate::store::memory::{system_clock, Clock, MemoryStore};
use crate::store::redis::RedisStore;
use crate::store::{Check, Decision, Kind, Store, CONCURRENCY_SUFFIX};

pub struct RateLimitsFactory;

impl PluginFactory for RateLimitsFactory {
    fn kind(&self) -> &'static str {
        "rate_limits"
    }

    fn build(
        &self,
        config: &toml::Table,
        path: &str,
        cx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, String> {
        let mut plugin = RateLimits::new(LimitsConfig::parse(config, path)?, system_clock());
        plugin.metrics = Some(
            LimitMetrics::register(&cx.registry)
                .map_err(|e| format!("{path}: registering metrics: {e}"))?,
        );
        Ok(Arc::new(plugin))
    }
}

/// The Redis side: connected lazily and in the background, so a Redis that is down at
/// start or mid-run never delays a request by more than the configured timeout.
struct RedisSide {
    url: String,
    timeout: Duration,
    on_error: OnRedisError,
    store: tokio::sync::RwLock<Option<Arc<RedisStore>>>,
    last_attempt: Mutex<Option<Instant>>,
    /// Set while Redis is failing, so the outage is logged once, and its end once.
    failing: AtomicBool,
}

pub struct RateLimits {
    cfg: LimitsConfig,
    memory: Arc<MemoryStore>,
    redis: Option<Arc<RedisSide>>,
    metrics: Option<LimitMetrics>,
}

/// `igw_rate_limit_*` metrics.
struct LimitMetrics {
    rejections: prometheus::IntCounterVec,
    backend_errors: prometheus::IntCounter,
    /// 1 while Redis is failing and requests use local limits (or are refused).
    degraded: prometheus::IntGauge,
}

impl LimitMetrics {
    fn register(registry: &prometheus::Registry) -> prometheus::Result<LimitMetrics> {
        let rejections = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "igw_rate_limit_rejections_total",
                "Requests refused with 429, by the limit that refused them",
            ),
            &["scope", "limit"],
        )?;
        let backend_errors = prometheus::IntCounter::new(
            "igw_rate_limit_backend_errors_total",
            "Limit checks Redis could not answer",
        )?;
        let degraded = prometheus::IntGauge::new(
            "igw_rate_limit_redis_degraded",
            "1 while Redis is unreachable and limits fall back (fail_open) or refuse (fail_closed)",
        )?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(backend_errors.clone()))?;
        registry.register(Box::new(degraded.clone()))?;
        Ok(LimitMetrics {
            rejections,
            backend_errors,
            degraded,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    User,
    UserModel,
    Model,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Requests,
    Tokens,
    Concurrent,
}

/// What was admitted, kept in the request context until the request ends.
#[derive(Clone)]
struct Admission {
    store: Arc<dyn Store>,
    /// (key, limit) of each tokens-per-minute check, charged `reserved` up front.
    token_keys: Vec<(String, u64)>,
    reserved: u64,
    concurrency_keys: Vec<String>,
    /// Tightest (limit, remaining, reset seconds) of the request and token budgets.
    requests: Option<(u64, u64, f64)>,
    tokens: Option<(u64, u64, f64)>,
}

fn describe(scope: Scope, what: What, user: &str, model: &str, limit: u64) -> String {
    let what = match what {
        What::Requests => format!("{limit} requests per minute"),
        What::Tokens => format!("{limit} tokens per minute"),
        What::Concurrent => format!("{limit} concurrent requests"),
    };
    match scope {
        Scope::User => format!("{what} for user `{user}`"),
        Scope::UserModel => format!("{what} for user `{user}` on model `{model}`"),
        Scope::Model => format!("{what} for model `{model}` (all users)"),
    }
}

/// OpenAI's reset format: "20ms", "1.5s", "6m0s". Built by hand: it goes out twice a
/// request, and `format!` costs ~1k instructions a call.
fn format_reset(secs: f64) -> String {
    let mut text = String::with_capacity(8);
    if secs < 1.0 {
        text.push_str(&((secs * 1000.0).ceil() as u64).to_string());
        text.push_str("ms");
    } else if secs < 60.0 {
        let tenths = (secs * 10.0).round() as u64;
        text.push_str(&(tenths / 10).to_string());
        if tenths % 10 != 0 {
            text.push('.');
            text.push(char::from(b'0' + (tenths % 10) as u8));
        }
        text.push('s');
    } else {
        text.push_str(&((secs / 60.0).floor() as u64).to_string());
        text.push('m');
        text.push_str(&((secs % 60.0).round() as u64).to_string());
        text.push('s');
    }
    text
}

fn tighter(
    current: Option<(u64, u64, f64)>,
    candidate: (u64, u64, f64),
) -> Option<(u64, u64, f64)> {
    match current {
        Some(c) if c.1 <= candidate.1 => Some(c),
        _ => Some(candidate),
    }
}

impl RateLimits {
    pub fn new(cfg: LimitsConfig, clock: Clock) -> RateLimits {
        let redis = match &cfg.backend {
            Backend::Memory => None,
            Backend::Redis {
                url,
                timeout,
                on_error,
            } => Some(Arc::new(RedisSide {
                url: url.clone(),
                timeout: *timeout,
                on_error: *on_error,
                store: tokio::sync::RwLock::new(None),
                last_attempt: Mutex::new(None),
                failing: AtomicBool::new(false),
            })),
        };
        RateLimits {
            memory: Arc::new(MemoryStore::new(clock)),
            cfg,
            redis,
            metrics: None,
        }
    }

    /// The checks for one request, with what each one is about (for the 429 message).
    fn checks(
        &self,
        ctx: &RequestCtx,
        model: &str,
    ) -> (Vec<Check>, Vec<(Scope, What)>, String, u64) {
        let principal = ctx.principal.as_ref();
        let user = match principal {
            Some(p) if !p.id.is_empty() => p.id.clone(),
            Some(p) => p.username.clone(),
            None => ctx
                .client_addr
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|| "anonymous".into()),
        };
        let shown = principal
            .map(|p| p.username.clone())
            .unwrap_or_else(|| user.clone());
        let groups = principal.map(|p| p.groups.as_slice()).unwrap_or_default();
        let limits = self
            .cfg
            .effective(model, principal.map(|p| p.username.as_str()), groups);
        let reserve = ctx.body_bytes / 4 + ctx.max_tokens.unwrap_or(self.cfg.default_max_tokens);
        let prefix = &self.cfg.key_prefix;
        let mut checks = Vec::new();
        let mut about = Vec::new();
        let mut add = |scope: Scope, subject: String, l: &ScopeLimits| {
            let mut push = |what: What, limit: Option<u64>, suffix: &str, kind: Kind, cost: u64| {
                if let Some(limit) = limit {
                    checks.push(Check {
                        key: concat(&[&subject, suffix]),
                        kind,
                        limit,
                        cost,
                    });
                    about.push((scope, what));
                }
            };
            push(What::Requests, l.requests_per_minute, ":rpm", Kind::Rate, 1);
            push(
                What::Tokens,
                l.tokens_per_minute,
                ":tpm",
                Kind::Rate,
                reserve,
            );
            push(
                What::Concurrent,
                l.max_concurrent,
                CONCURRENCY_SUFFIX,
                Kind::Concurrency,
                1,
            );
        };
        add(Scope::User, concat(&[prefix, ":u:", &user]), &limits.user);
        add(
            Scope::UserModel,
            concat(&[prefix, ":um:", &user, "|", model]),
            &limits.user_model,
        );
        add(Scope::Model, concat(&[prefix, ":m:", model]), &limits.model);
        (checks, about, shown, reserve)
    }

    /// Runs the checks on Redis, or on the local store when Redis is off, down, or not used.
    async fn acquire(
        &self,
        checks: &[Check],
        request_id: &str,
    ) -> Result<(Decision, Arc<dyn Store>), ApiError> {
        let local: Arc<dyn Store> = self.memory.clone();
        let Some(redis) = &self.redis else {
            return self
                .memory
                .acquire(checks)
                .await
                .map(|d| (d, local))
                .map_err(|e| unavailable(&e.0));
        };
        let mut connected = redis.store.read().await.clone();
        if connected.is_none() && redis.first_attempt() {
            // The first request connects inline (bounded by the timeout), so a healthy Redis
            // is used from the start rather than after a spurious fallback.
            connected = redis.connect().await;
        }
        let error = match connected {
            Some(store) => match store.acquire(checks).await {
                Ok(decision) => {
                    if let Some(m) = &self.metrics {
                        m.degraded.set(0);
                    }
                    if redis.failing.swap(false, Ordering::Relaxed) {
                        log::warn!(target: "rate_limits", "Redis at {} is reachable again; shared limits resume", redis.url);
                    }
                    return Ok((decision, store));
                }
                Err(e) => e.0,
            },
            None => {
                redis.connect_in_background();
                "not connected yet".to_string()
            }
        };
        if let Some(m) = &self.metrics {
            m.backend_errors.inc();
            m.degraded.set(1);
        }
        if !redis.failing.swap(true, Ordering::Relaxed) {
            log::warn!(
                target: "rate_limits",
                request_id = request_id;
                "Redis at {} is unreachable ({error}); {}",
                redis.url,
                match redis.on_error {
                    OnRedisError::FailOpen => "falling back to this replica's own limits",
                    OnRedisError::FailClosed => "refusing limited requests (fail_closed)",
                }
            );
        }
        match redis.on_error {
            OnRedisError::FailOpen => self
                .memory
                .acquire(checks)
                .await
                .map(|d| (d, local))
                .map_err(|e| unavailable(&e.0)),
            OnRedisError::FailClosed => Err(unavailable(&error)),
        }
    }
}

fn unavailable(detail: &str) -> ApiError {
    log::debug!(target: "rate_limits", "limiter unavailable: {detail}");
    ApiError::new(
        503,
        "service_unavailable",
        "rate_limiter_unavailable",
        "The rate limiter is unavailable; try again shortly.".into(),
    )
    .with_header("retry-after", "1".into())
}

impl RedisSide {
    /// True exactly once: for the caller that makes the first connection attempt.
    fn first_attempt(&self) -> bool {
        let Ok(mut last) = self.last_attempt.lock() else {
            return false;
        };
        let first = last.is_none();
        if first {
            *last = Some(Instant::now());
        }
        first
    }

    async fn connect(&self) -> Option<Arc<RedisStore>> {
        match RedisStore::connect(&self.url, self.timeout).await {
            Ok(store) => {
                let store = Arc::new(store);
                *self.store.write().await = Some(store.clone());
                Some(store)
            }
            Err(e) => {
                log::debug!(target: "rate_limits", "connecting to Redis at {}: {}", self.url, e.0);
                None
            }
        }
    }

    /// Starts one connection attempt unless one started within the last second.
    fn connect_in_background(self: &Arc<Self>) {
        {
            let Ok(mut last) = self.last_attempt.lock() else {
                return;
            };
            if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let side = self.clone();
        tokio::spawn(async move {
            side.connect().await;
        });
    }
}

/// Joins key parts: five keys a request, where `format!` cost ~1k instructions each.
fn concat(parts: &[&str]) -> String {
    let mut key = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        key.push_str(part);
    }
    key
}

// OpenAI's rate-limit headers. Built at compile time: `HeaderName::from_static` called at
// run time parses its argument on every call.
const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

#[async_trait]
impl Plugin for RateLimits {
    fn name(&self) -> &str {
        "rate_limits"
    }

    async fn on_request(&self, _head: &RequestHead<'_>, ctx: &mut RequestCtx) -> Flow {
        let Some(model) = ctx.model.clone() else {
            return Flow::Continue;
        };
        let (checks, about, user, reserved) = self.checks(ctx, &model);
        if checks.is_empty() {
            return Flow::Continue;
        }
        let (decision, store) = match self.acquire(&checks, &ctx.request_id).await {
            Ok(found) => found,
            Err(e) => return Flow::Respond(e),
        };
        let verdicts = match decision {
            Decision::Refused { index, retry_after } => {
                let (scope, what) = about[index];
                ctx.limiter = Some("limited");
                if let Some(m) = &self.metrics {
                    let scope_label = match scope {
                        Scope::User => "user",
                        Scope::UserModel => "user_model",
                        Scope::Model => "model",
                    };
                    let limit_label = match what {
                        What::Requests => "requests",
                        What::Tokens => "tokens",
                        What::Concurrent => "concurrent",
                    };
                    m.rejections
                        .with_label_values(&[scope_label, limit_label])
                        .inc();
                }
                let limit = describe(scope, what, &user, &model, checks[index].limit);
                let wait = retry_after.ceil().max(1.0) as u64;
                return Flow::Respond(
                    ApiError::new(
                        429,
                        "rate_limit_error",
                        "rate_limit_exceeded",
                        format!("Rate limit reached: {limit}. Try again in {wait}s."),
                    )
                    .with_header("retry-after", wait.to_string()),
                );
            }
            Decision::Admitted(verdicts) => verdicts,
        };
        let mut admission = Admission {
            store,
            token_keys: Vec::new(),
            reserved,
            concurrency_keys: Vec::new(),
            requests: None,
            tokens: None,
        };
        for ((check, (_, what)), verdict) in checks.into_iter().zip(about).zip(verdicts) {
            let Verdict::Admit { remaining, reset } = verdict else {
                continue;
            };
            match what {
                What::Requests => {
                    admission.requests =
                        tighter(admission.requests, (check.limit, remaining, reset))
                }
                What::Tokens => {
                    admission.tokens = tighter(admission.tokens, (check.limit, remaining, reset));
                    admission.token_keys.push((check.key, check.limit));
                }
                What::Concurrent => admission.concurrency_keys.push(check.key),
            }
        }
        ctx.extensions.insert(admission);
        ctx.limiter = Some("admitted");
        Flow::Continue
    }

    fn on_response_header(&self, _status: u16, headers: &mut dyn Headers, ctx: &mut RequestCtx) {
        let Some(admission) = ctx.extensions.get::<Admission>() else {
            return;
        };
        let mut set = |name: &HeaderName, value: http::HeaderValue| {
            headers.insert(name.clone(), value);
        };
        let reset_value = |secs: f64| {
            http::HeaderValue::try_from(format_reset(secs))
                .unwrap_or(http::HeaderValue::from_static("0s"))
        };
        if let Some((limit, remaining, reset)) = admission.requests {
            set(&LIMIT_REQUESTS, limit.into());
            set(&REMAINING_REQUESTS, remaining.into());
            set(&RESET_REQUESTS, reset_value(reset));
        }
        if let Some((limit, remaining, reset)) = admission.tokens {
            set(&LIMIT_TOKENS, limit.into());
            set(&REMAINING_TOKENS, remaining.into());
            set(&RESET_TOKENS, reset_value(reset));
        }
    }

    fn on_done(&self, summary: &RequestSummary, ctx: &RequestCtx) {
        let Some(admission) = ctx.extensions.get::<Admission>() else {
            return;
        };
        // Only a successful answer consumes tokens; its usage replaces the reservation.
        let used = match ctx.usage {
            Some(u) if (200..300).contains(&summary.status) => {
                u.prompt_tokens + u.completion_tokens
            }
            _ => 0,
        };
        let delta = used as i64 - admission.reserved as i64;
        let (budgets, slots) = (&admission.token_keys, &admission.concurrency_keys);
        if let Some(done) = admission.store.finish_now(budgets, delta, slots) {
            if let Err(e) = done {
                log::debug!(target: "rate_limits", request_id = ctx.request_id.as_str(); "settling a request: {}", e.0);
            }
            return;
        }
        let admission = admission.clone();
        let request_id = ctx.request_id.clone();
        tokio::spawn(async move {
            let done = admission
                .store
                .finish(&admission.token_keys, delta, &admission.concurrency_keys)
                .await;
            if let Err(e) = done {
                log::debug!(target: "rate_limits", request_id = request_id.as_str(); "settling a request: {}", e.0);
            }
        });
    }
}

#[cfg(test)]
mod tests;
