//! The limiter's own metrics.

use gateway_plugin_api::metrics;

/// `igw_rate_limit_*` metrics.
pub struct LimitMetrics {
    pub rejections: prometheus::IntCounterVec,
    pub backend_errors: prometheus::IntCounter,
    /// 1 while Redis is failing and requests use local limits (or are refused).
    pub degraded: prometheus::IntGauge,
}

impl LimitMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<LimitMetrics> {
        Ok(LimitMetrics {
            rejections: metrics::counter_vec(
                registry,
                "igw_rate_limit_rejections_total",
                "Requests refused with 429, by the limit that refused them",
                &["scope", "limit"],
            )?,
            backend_errors: metrics::counter(
                registry,
                "igw_rate_limit_backend_errors_total",
                "Limit checks Redis could not answer",
            )?,
            degraded: metrics::gauge(
                registry,
                "igw_rate_limit_redis_degraded",
                "1 while Redis is unreachable and limits fall back (fail_open) or refuse (fail_closed)",
            )?,
        })
    }
}
