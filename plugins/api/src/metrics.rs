//! Creating a plugin's metrics and registering them on the server's registry in one step
//! (see [`crate::BuildContext::registry`]). A name registered twice is an error, not a panic.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Registers `metric` and hands it back, for the plugin to keep. A metric of the same name
/// and labels already there (the instance a configuration reload replaces) is replaced: its
/// counts start again, as a restarted process's would.
pub fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> prometheus::Result<M> {
    match registry.register(Box::new(metric.clone())) {
        Err(prometheus::Error::AlreadyReg) => {
            registry.unregister(Box::new(metric.clone()))?;
            registry.register(Box::new(metric.clone()))?;
        }
        other => other?,
    }
    Ok(metric)
}

pub fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    register(registry, IntCounter::new(name, help)?)
}

/// A counter per value of `labels` (never unbounded values: users, tokens).
pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

pub fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    register(registry, IntGauge::new(name, help)?)
}

pub fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<Histogram> {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(registry, Histogram::with_opts(opts)?)
}

/// A histogram per value of `labels`.
pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> prometheus::Result<HistogramVec> {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(registry, HistogramVec::new(opts, labels)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_registered_once() {
        let registry = Registry::new();
        let c = counter_vec(&registry, "igw_test_total", "Test", &["result"]).expect("new");
        c.with_label_values(&["hit"]).inc();
        gauge(&registry, "igw_test_gauge", "Test")
            .expect("new")
            .set(3);
        histogram(&registry, "igw_test_seconds", "Test", vec![0.1, 1.0])
            .expect("new")
            .observe(0.5);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert_eq!(
            names,
            ["igw_test_gauge", "igw_test_seconds", "igw_test_total"]
        );
        assert!(counter(&registry, "igw_test_total", "Again").is_err());
    }
}
