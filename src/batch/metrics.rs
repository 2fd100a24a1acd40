//! Batch metrics: batches by status, lines by outcome, tokens per user, lines in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gateway_plugin_api::metrics::{counter_vec, register};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::store::ACTIVE;

#[derive(Clone)]
pub struct BatchMetrics {
    batches: IntGaugeVec,
    /// Lines by pool and outcome (`completed`, `failed`, `retried`).
    pub lines: IntCounterVec,
    /// Batch tokens by user and kind (`prompt`, `completion`). Labelled per user on purpose:
    /// batch users are a facility's account holders, and their usage is what operators bill.
    pub tokens: IntCounterVec,
}

impl BatchMetrics {
    pub fn register(registry: &Registry, in_flight: Arc<AtomicUsize>) -> prometheus::Result<Self> {
        let batches = register(
            registry,
            IntGaugeVec::new(
                Opts::new("igw_batches", "Batches in the job store, by status"),
                &["status"],
            )?,
        )?;
        let lines = counter_vec(
            registry,
            "igw_batch_lines_total",
            "Batch lines by pool and outcome (completed, failed, retried)",
            &["pool", "outcome"],
        )?;
        let tokens = counter_vec(
            registry,
            "igw_batch_tokens_total",
            "Tokens used by batch lines, by user and kind (prompt, completion)",
            &["user", "kind"],
        )?;
        let gauge = prometheus::IntGauge::new(
            "igw_batch_lines_in_flight",
            "Batch lines being sent or waiting for a retry now",
        )?;
        registry.register(Box::new(InFlight {
            gauge,
            source: in_flight,
        }))?;
        Ok(BatchMetrics {
            batches,
            lines,
            tokens,
        })
    }

    /// Sets the status gauge from the store's counts (statuses with none go to 0).
    pub fn set_statuses(&self, counts: &[(String, i64)]) {
        for status in ACTIVE
            .iter()
            .chain(&["completed", "failed", "expired", "cancelled"])
        {
            let n = counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            self.batches.with_label_values(&[status]).set(n);
        }
    }
}

/// The in-flight gauge, read from the worker's counter at scrape time.
struct InFlight {
    gauge: prometheus::IntGauge,
    source: Arc<AtomicUsize>,
}

impl prometheus::core::Collector for InFlight {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauge.set(self.source.load(Ordering::Relaxed) as i64);
        self.gauge.collect()
    }
}
