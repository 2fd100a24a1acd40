//! The Redis side of the limiter: connected lazily and in the background, so a Redis that is
//! down at start or mid-run never delays a request by more than the configured timeout.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::OnRedisError;
use crate::store::redis::RedisStore;

pub struct RedisSide {
    pub url: String,
    pub cluster: bool,
    pub timeout: Duration,
    pub lease: Duration,
    pub on_error: OnRedisError,
    pub store: tokio::sync::RwLock<Option<Arc<RedisStore>>>,
    /// The first connection attempt: the requests that arrive while it runs wait for it
    /// (bounded by the timeout) instead of falling back to local limits.
    initial: tokio::sync::OnceCell<()>,
    last_attempt: Mutex<Option<Instant>>,
    /// Set while Redis is failing, so the outage is logged once, and its end once.
    pub failing: AtomicBool,
}

impl RedisSide {
    pub fn new(
        url: String,
        cluster: bool,
        timeout: Duration,
        lease: Duration,
        on_error: OnRedisError,
    ) -> RedisSide {
        RedisSide {
            url,
            cluster,
            timeout,
            lease,
            on_error,
            store: tokio::sync::RwLock::new(None),
            initial: tokio::sync::OnceCell::new(),
            last_attempt: Mutex::new(None),
            failing: AtomicBool::new(false),
        }
    }

    /// The connected store. The first call connects (and concurrent first calls wait for
    /// that one attempt); later calls never wait: when not connected they start a
    /// background attempt (at most one a second) and return `None`.
    pub async fn connected(self: &Arc<Self>) -> Option<Arc<RedisStore>> {
        self.initial
            .get_or_init(|| async {
                if let Ok(mut last) = self.last_attempt.lock() {
                    *last = Some(Instant::now());
                }
                self.connect().await;
            })
            .await;
        let store = self.store.read().await.clone();
        if store.is_none() {
            self.connect_in_background();
        }
        store
    }

    pub async fn connect(&self) -> Option<Arc<RedisStore>> {
        match RedisStore::connect(&self.url, self.cluster, self.timeout, self.lease).await {
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
    pub fn connect_in_background(self: &Arc<Self>) {
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
