//! The series a finished request is counted in, found with one lookup a request.
//!
//! `with_label_values` hashes its labels (SipHash) and takes its vec's lock on every call:
//! ~280 instructions each, four a request. Here the route × model × pool is looked up once
//! (foldhash, a read lock) and each child is resolved on its first use, so a series appears
//! in the output exactly when it would without the cache. Children are never removed from
//! their vecs, so a resolved child stays the one the registry exports. The key space is
//! bounded: routes are the gateway's, models the configured ones or `other`, pools the
//! configured ones.

use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use hashbrown::HashTable;
use prometheus::{Counter, CounterVec, Histogram, HistogramVec, IntCounter, IntCounterVec};

/// `status_class` names, in the order of `RequestSeries::requests`.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

pub fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

pub struct RequestSeries {
    route: &'static str,
    model: Box<str>,
    pool: Box<str>,
    requests: [OnceLock<IntCounter>; STATUS_CLASSES.len()],
    duration: OnceLock<Histogram>,
    prompt_tokens: OnceLock<Counter>,
    completion_tokens: OnceLock<Counter>,
}

impl RequestSeries {
    fn is(&self, route: &str, model: &str, pool: &str) -> bool {
        self.route == route && *self.model == *model && *self.pool == *pool
    }

    pub fn requests(&self, vec: &IntCounterVec, status: u16) -> Option<&IntCounter> {
        let class = status_class_index(status);
        let name = STATUS_CLASSES.get(class)?;
        Some(
            self.requests.get(class)?.get_or_init(|| {
                vec.with_label_values(&[self.route, &self.model, &self.pool, name])
            }),
        )
    }

    pub fn duration(&self, vec: &HistogramVec) -> &Histogram {
        self.duration
            .get_or_init(|| vec.with_label_values(&[self.route, &self.model, &self.pool]))
    }

    pub fn prompt_tokens(&self, vec: &CounterVec) -> &Counter {
        self.prompt_tokens
            .get_or_init(|| vec.with_label_values(&[&self.model, "prompt"]))
    }

    pub fn completion_tokens(&self, vec: &CounterVec) -> &Counter {
        self.completion_tokens
            .get_or_init(|| vec.with_label_values(&[&self.model, "completion"]))
    }
}

#[derive(Default)]
pub struct SeriesCache {
    hasher: foldhash::fast::RandomState,
    table: RwLock<HashTable<Arc<RequestSeries>>>,
}

impl SeriesCache {
    pub fn get(&self, route: &'static str, model: &str, pool: &str) -> Arc<RequestSeries> {
        let hash = self.hasher.hash_one((route, model, pool));
        let found = self
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .find(hash, |s| s.is(route, model, pool))
            .cloned();
        if let Some(series) = found {
            return series;
        }
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have added it between the two locks.
        if let Some(series) = table.find(hash, |s| s.is(route, model, pool)) {
            return series.clone();
        }
        let series = Arc::new(RequestSeries {
            route,
            model: model.into(),
            pool: pool.into(),
            requests: Default::default(),
            duration: OnceLock::new(),
            prompt_tokens: OnceLock::new(),
            completion_tokens: OnceLock::new(),
        });
        let hasher = &self.hasher;
        table.insert_unique(hash, series.clone(), |s| {
            hasher.hash_one((s.route, &*s.model, &*s.pool))
        });
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;
    use prometheus::{HistogramOpts, Opts};

    #[test]
    fn one_series_a_key_and_children_only_once_used() {
        let requests =
            IntCounterVec::new(Opts::new("r", "r"), &["route", "model", "pool", "status"])
                .expect("vec");
        let duration = HistogramVec::new(HistogramOpts::new("d", "d"), &["route", "model", "pool"])
            .expect("vec");
        let cache = SeriesCache::default();
        let a = cache.get("chat", "m", "p");
        assert!(Arc::ptr_eq(&a, &cache.get("chat", "m", "p")));
        // A different split of the same characters is a different key.
        assert!(!Arc::ptr_eq(&a, &cache.get("chat", "mp", "")));
        assert!(!Arc::ptr_eq(&a, &cache.get("completions", "m", "p")));
        a.requests(&requests, 200).expect("class").inc();
        cache
            .get("chat", "m", "p")
            .requests(&requests, 204)
            .expect("class")
            .inc();
        a.requests(&requests, 503).expect("class").inc();
        assert_eq!(
            requests.with_label_values(&["chat", "m", "p", "2xx"]).get(),
            2
        );
        assert_eq!(
            requests.with_label_values(&["chat", "m", "p", "5xx"]).get(),
            1
        );
        // Only the classes counted exist (the 2xx and 5xx just read included).
        assert_eq!(requests.collect()[0].get_metric().len(), 2);
        // The duration child is made on first use.
        assert!(duration.collect()[0].get_metric().is_empty());
        a.duration(&duration).observe(0.5);
        assert_eq!(
            duration
                .with_label_values(&["chat", "m", "p"])
                .get_sample_count(),
            1
        );
    }
}
