//! The plugin: builds the checks for a request, answers 429, adds OpenAI's rate-limit
//! headers, and settles tokens and concurrency when the request ends.

mod admission;
mod checks;
mod headers;
mod metrics;
mod redis_side;
mod rule_cache;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use gateway_plugin_api::{
    ApiError, BuildContext, Flow, Headers, Phase, Plugin, PluginFactory, RequestCtx, RequestHead,
    RequestSummary,
};

use crate::config::{Backend, LimitsConfig, OnRedisError};
use crate::gcra::{CheckOutcome, WINDOW};
use crate::store::memory::{system_clock, Clock, MemoryStore};
use crate::store::{Decision, Key, Store};
use admission::{keep_leases, settle_with_retries, Admission, Allowance, Budget};
use checks::{describe, shown_user, Plan, What};
use metrics::LimitMetrics;
use redis_side::RedisSide;
use rule_cache::RuleCache;

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

pub struct RateLimits {
    cfg: LimitsConfig,
    rules: RuleCache,
    memory: Arc<MemoryStore>,
    redis: Option<Arc<RedisSide>>,
    metrics: Option<LimitMetrics>,
    /// Random per process, so holder ids of concurrency slots are unique across replicas.
    holder_nonce: u64,
    holders: AtomicU64,
}

impl RateLimits {
    pub fn new(cfg: LimitsConfig, clock: Clock) -> RateLimits {
        let redis = match &cfg.backend {
            Backend::Memory => None,
            Backend::Redis {
                url,
                cluster,
                timeout,
                on_error,
                lease,
            } => Some(Arc::new(RedisSide::new(
                url.clone(),
                *cluster,
                *timeout,
                *lease,
                *on_error,
            ))),
        };
        RateLimits {
            memory: Arc::new(MemoryStore::new(clock)),
            cfg,
            rules: RuleCache::default(),
            redis,
            metrics: None,
            holder_nonce: std::collections::hash_map::RandomState::new().hash_one(0u8),
            holders: AtomicU64::new(0),
        }
    }

    fn next_holder(&self) -> String {
        let n = self.holders.fetch_add(1, Ordering::Relaxed);
        holder_id(self.holder_nonce, n)
    }

    /// Runs the checks on Redis, or on the local store when Redis is off, down, or not used.
    async fn acquire(
        &self,
        checks: &[crate::store::Check],
        holder: &str,
        request_id: &str,
    ) -> Result<(Decision, Arc<dyn Store>), ApiError> {
        match &self.redis {
            None => self.acquire_local(checks),
            // Boxed: the Redis path's future (connecting included) is several KB, which
            // inline every admission would build and copy into async_trait's box.
            Some(redis) => Box::pin(self.acquire_shared(redis, checks, holder, request_id)).await,
        }
    }

    /// This replica's own limits (the memory store never waits: no future).
    fn acquire_local(
        &self,
        checks: &[crate::store::Check],
    ) -> Result<(Decision, Arc<dyn Store>), ApiError> {
        let local: Arc<dyn Store> = self.memory.clone();
        self.memory
            .acquire_now(checks)
            .map(|d| (d, local))
            .map_err(|e| unavailable(&e.0))
    }

    /// The limits shared on Redis; on an error, the local ones (fail_open) or a 503.
    async fn acquire_shared(
        &self,
        redis: &Arc<RedisSide>,
        checks: &[crate::store::Check],
        holder: &str,
        request_id: &str,
    ) -> Result<(Decision, Arc<dyn Store>), ApiError> {
        // The first requests wait for the first connection (bounded by the timeout), so a
        // healthy Redis is used from the start rather than after a spurious fallback.
        let error = match redis.connected().await {
            Some(store) => match store.acquire(checks, holder).await {
                Ok(decision) => {
                    if let Some(m) = &self.metrics {
                        m.degraded.set(0);
                    }
                    if redis.failing.swap(false, Ordering::Relaxed) {
                        log::warn!(target: "rate_limits", "Redis at {} is reachable again; shared limits resume", redis.url);
                    }
                    return Ok((decision, store));
                }
                Err(e) => {
                    // The script may have run before the error (a reply that timed out):
                    // free whatever slots it took for this holder, best effort.
                    let slots: Vec<Key> = checks
                        .iter()
                        .filter(|c| c.kind == crate::store::Kind::Concurrency)
                        .map(|c| c.key.clone())
                        .collect();
                    if !slots.is_empty() {
                        let (store, holder) = (store.clone(), holder.to_string());
                        tokio::spawn(async move {
                            let _ = store.finish(&[], &slots, &holder).await;
                        });
                    }
                    e.0
                }
            },
            None => "not connected".to_string(),
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
            OnRedisError::FailOpen => self.acquire_local(checks),
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

#[async_trait]
impl Plugin for RateLimits {
    fn name(&self) -> &str {
        "rate_limits"
    }

    fn phase(&self) -> Phase {
        Phase::Admit
    }

    async fn admit(&self, _head: &RequestHead<'_>, ctx: &mut RequestCtx) -> Flow {
        let Some(model) = ctx.model.clone() else {
            return Flow::Continue;
        };
        let rules = self.rules.rules_for(&self.cfg, ctx, &model);
        if rules.list.is_empty() {
            return Flow::Continue;
        }
        let plan = Plan::new(rules, ctx, self.cfg.default_max_tokens);
        // Only Redis tells holders apart (this process's own slots are counts).
        let holder = match self.redis {
            Some(_) => self.next_holder(),
            None => String::new(),
        };
        let (decision, store) = match self.acquire(&plan.checks, &holder, &ctx.request_id).await {
            Ok(found) => found,
            Err(e) => return Flow::Respond(e),
        };
        let outcomes = match decision {
            Decision::Refused { index, retry_after } => {
                let Some(rule) = plan.rules.list.get(index) else {
                    return Flow::Respond(unavailable("a store refused a check it was not given"));
                };
                let (scope, what) = (rule.scope, rule.what);
                ctx.admit_outcome = Some("limited");
                if let Some(m) = &self.metrics {
                    m.rejections
                        .with_label_values(&[scope.label(), what.label()])
                        .inc();
                }
                let limit = describe(scope, what, &shown_user(ctx), &model, rule.limit);
                let wait = retry_after.clamp(1.0, WINDOW).ceil() as u64;
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
            Decision::Admitted(outcomes) => outcomes,
        };
        let mut admission = Admission {
            store: store.clone(),
            budgets: Vec::new(),
            reserved: plan.reserved,
            slots: Vec::new(),
            holder,
            requests: None,
            tokens: None,
            leases: None,
        };
        for ((check, rule), outcome) in plan.checks.into_iter().zip(&plan.rules.list).zip(outcomes)
        {
            let CheckOutcome::Admit { remaining, reset } = outcome else {
                continue;
            };
            let allowance = Allowance {
                limit: check.limit,
                remaining,
                reset: reset.clamp(0.0, WINDOW),
            };
            match rule.what {
                What::Requests => admission.requests = allowance.tighter_than(admission.requests),
                What::Tokens => {
                    admission.tokens = allowance.tighter_than(admission.tokens);
                    admission.budgets.push(Budget {
                        key: check.key,
                        limit: check.limit,
                        charged: check.cost,
                    });
                }
                What::Concurrent => admission.slots.push(check.key),
            }
        }
        if let (Some(every), false) = (store.lease_refresh_interval(), admission.slots.is_empty()) {
            let keeper = keep_leases(
                store,
                admission.slots.clone(),
                admission.holder.clone(),
                every,
            );
            admission.leases = Some(Arc::new(keeper));
        }
        ctx.extensions.insert(admission);
        ctx.admit_outcome = Some("admitted");
        Flow::Continue
    }

    fn on_response_header(&self, _status: u16, headers: &mut dyn Headers, ctx: &mut RequestCtx) {
        if let Some(admission) = ctx.extensions.get::<Admission>() {
            headers::report(admission, headers);
        }
    }

    fn on_done(&self, summary: &RequestSummary, ctx: &RequestCtx) {
        let Some(admission) = ctx.extensions.get::<Admission>() else {
            return;
        };
        let budgets = admission.settlements(summary, ctx);
        if let Some(done) =
            admission
                .store
                .finish_now(&budgets, &admission.slots, &admission.holder)
        {
            if let Err(e) = done {
                log::warn!(target: "rate_limits", request_id = ctx.request_id.as_str(); "settling a request: {}", e.0);
            }
            return;
        }
        tokio::spawn(settle_with_retries(
            admission.clone(),
            budgets,
            ctx.request_id.clone(),
        ));
    }
}

/// `{nonce:016x}-{n:x}`, written by hand: `format!` cost ~1.3k instructions a request
/// (callgrind), a tenth of the limiter's admission.
fn holder_id(nonce: u64, n: u64) -> String {
    fn push_hex(out: &mut String, value: u64, min_digits: u32) {
        let digits = (u64::BITS - value.leading_zeros())
            .div_ceil(4)
            .max(min_digits);
        for i in (0..digits).rev() {
            let nibble = (value >> (i * 4)) & 0xf;
            out.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
        }
    }
    let mut id = String::with_capacity(33);
    push_hex(&mut id, nonce, 16);
    id.push('-');
    push_hex(&mut id, n, 1);
    id
}

#[cfg(test)]
mod tests;
