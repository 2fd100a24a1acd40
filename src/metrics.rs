//! Prometheus metrics, registered into a registry the server owns (no globals) and served
//! on their own listener. Labels hold only bounded values: routes, configured models and
//! pools, backends, status classes. A model name a client made up is counted as `other`.

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    exponential_buckets, CounterVec, Encoder, GaugeVec, HistogramVec, IntCounterVec, Opts,
    Registry, TextEncoder,
};

use gateway_plugin_api::{RequestCtx, RequestSummary};

use crate::routing::pool::Routing;
use crate::routing::{CurrentTable, ModelTable};

mod series;
use series::SeriesCache;

/// Latencies of LLM requests span milliseconds to minutes.
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
const FIRST_TOKEN_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];
const GAP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

pub struct GatewayMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub first_token: HistogramVec,
    pub chunk_gap: HistogramVec,
    pub overhead: HistogramVec,
    pub tokens: CounterVec,
    pub connect_errors: IntCounterVec,
    pub retries: IntCounterVec,
    pub health_failures: IntCounterVec,
    pub health_busy: IntCounterVec,
    pub panic_routed: IntCounterVec,
    pub connections_refused: prometheus::IntCounter,
    /// Where `record` finds a request's series.
    series: SeriesCache,
}

// The same helpers the plugins register their metrics with.
use gateway_plugin_api::metrics::{counter_vec as counter, histogram_vec as histogram, register};

impl GatewayMetrics {
    pub fn register(
        registry: &Registry,
        table: CurrentTable,
    ) -> prometheus::Result<GatewayMetrics> {
        let tokens = register(
            registry,
            CounterVec::new(
                Opts::new(
                    "igw_tokens_total",
                    "Tokens processed, as reported by backends (or estimated)",
                ),
                &["model", "kind"],
            )?,
        )?;
        registry.register(Box::new(PoolCollector::new(table)?))?;
        Ok(GatewayMetrics {
            requests: counter(
                registry,
                "igw_requests_total",
                "Requests by route, model, pool and status class",
                &["route", "model", "pool", "status"],
            )?,
            duration: histogram(
                registry,
                "igw_request_duration_seconds",
                "Time from request header to the end of the response",
                &["route", "model", "pool"],
                REQUEST_BUCKETS.to_vec(),
            )?,
            first_token: histogram(
                registry,
                "igw_time_to_first_token_seconds",
                "Streaming: time from request header to the first response body bytes",
                &["model", "pool"],
                FIRST_TOKEN_BUCKETS.to_vec(),
            )?,
            chunk_gap: histogram(
                registry,
                "igw_inter_chunk_gap_seconds",
                "Streaming: gap between consecutive response chunks",
                &["model", "pool"],
                GAP_BUCKETS.to_vec(),
            )?,
            overhead: histogram(
                registry,
                "igw_gateway_overhead_seconds",
                "Time the gateway spends before the request is sent upstream (body read, plugins, routing, connect)",
                &["route"],
                exponential_buckets(0.00005, 2.0, 14)?,
            )?,
            tokens,
            connect_errors: counter(
                registry,
                "igw_upstream_connect_errors_total",
                "Refused or failed connections to backends",
                &["pool", "backend"],
            )?,
            retries: counter(
                registry,
                "igw_upstream_retries_total",
                "Backend attempts after the first: refused connects retried on another backend, and the one resend a stale keep-alive connection allows",
                &["pool"],
            )?,
            health_failures: counter(
                registry,
                "igw_health_check_failures_total",
                "Failed active health checks (timed out without traffic, wrong status, refused)",
                &["pool", "backend"],
            )?,
            health_busy: counter(
                registry,
                "igw_health_checks_busy_total",
                "Health checks that timed out while the backend was sending responses: busy, not down",
                &["pool", "backend"],
            )?,
            panic_routed: counter(
                registry,
                "igw_panic_routed_requests_total",
                "Requests sent while the pool routed in panic mode (too few healthy backends: every backend that accepts connections)",
                &["pool"],
            )?,
            connections_refused: gateway_plugin_api::metrics::counter(
                registry,
                "igw_connections_refused_total",
                "New client connections answered 503 because max_connections were open",
            )?,
            series: SeriesCache::default(),
        })
    }

    /// Counts a finished request: by route, model, pool and status class, its duration and
    /// its tokens.
    /// `table` is the request's snapshot's: model labels are the models it serves.
    pub fn record(&self, summary: &RequestSummary, ctx: &RequestCtx, table: &ModelTable) {
        let model = model_label(table, ctx.model.as_deref());
        let pool = ctx.pool.as_deref().unwrap_or("");
        let series = self.series.get(ctx.route, model, pool);
        if let Some(requests) = series.requests(&self.requests, summary.status) {
            requests.inc();
        }
        series
            .duration(&self.duration)
            .observe(summary.duration.as_secs_f64());
        if let Some(usage) = ctx.usage {
            series
                .prompt_tokens(&self.tokens)
                .inc_by(usage.prompt_tokens as f64);
            series
                .completion_tokens(&self.tokens)
                .inc_by(usage.completion_tokens as f64);
        }
    }
}

/// The model label: configured models by name, anything a client made up as `other`.
pub fn model_label<'a>(table: &ModelTable, model: Option<&'a str>) -> &'a str {
    match model {
        Some(m) if table.serves(m) => m,
        Some(_) => "other",
        None => "",
    }
}

/// Pool state read at scrape time (no cost on the request path): in-flight requests and
/// backend health.
struct PoolCollector {
    table: CurrentTable,
    descs: Vec<Desc>,
}

impl PoolCollector {
    fn new(table: CurrentTable) -> prometheus::Result<PoolCollector> {
        let mut descs = Vec::new();
        for g in Self::gauges()? {
            descs.extend(g.desc().into_iter().cloned());
        }
        Ok(PoolCollector { table, descs })
    }

    fn gauges() -> prometheus::Result<[GaugeVec; 4]> {
        Ok([
            GaugeVec::new(
                Opts::new("igw_pool_inflight_requests", "Requests in flight per pool"),
                &["pool"],
            )?,
            GaugeVec::new(
                Opts::new(
                    "igw_backend_healthy",
                    "1 when the backend passes health checks, else 0",
                ),
                &["pool", "backend"],
            )?,
            GaugeVec::new(
                Opts::new("igw_pool_healthy_backends", "Healthy backends per pool"),
                &["pool"],
            )?,
            GaugeVec::new(
                Opts::new(
                    "igw_pool_panic_routing",
                    "1 while the pool routes in panic mode (too few healthy backends), else 0",
                ),
                &["pool"],
            )?,
        ])
    }
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok([inflight, healthy, healthy_count, panic]) = Self::gauges() else {
            return Vec::new();
        };
        let table = (self.table)();
        for pool in &table.pools {
            inflight
                .with_label_values(&[&pool.name])
                .set(pool.inflight() as f64);
            healthy_count
                .with_label_values(&[&pool.name])
                .set(pool.healthy_count() as f64);
            let panicking = pool.routing() == Routing::Panic;
            panic
                .with_label_values(&[&pool.name])
                .set(if panicking { 1.0 } else { 0.0 });
            for b in &pool.backends {
                let up = if b.is_healthy() { 1.0 } else { 0.0 };
                healthy.with_label_values(&[&pool.name, &b.address]).set(up);
            }
        }
        [inflight, healthy, healthy_count, panic]
            .iter()
            .flat_map(|g| g.collect())
            .collect()
    }
}

/// `GET /metrics` on the metrics listener.
pub struct MetricsApp {
    pub registry: Registry,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, content_type, body) = if path == "/metrics" {
            let mut body = Vec::new();
            match TextEncoder::new().encode(&self.registry.gather(), &mut body) {
                Ok(()) => (200, TextEncoder::new().format_type().to_string(), body),
                Err(e) => (500, "text/plain".to_string(), e.to_string().into_bytes()),
            }
        } else {
            (
                404,
                "text/plain".to_string(),
                b"metrics are at /metrics\n".to_vec(),
            )
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
