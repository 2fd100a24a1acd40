//! A pool of backends serving the same models, and how one backend is picked from it.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;

use crate::config::{Balance, PoolConfig, ServerConfig};
use gateway_plugin_api::Principal;

pub struct Backend {
    /// As configured (`host:port`).
    pub address: String,
    pub weight: u32,
    /// Built once; the connector keys its keep-alive pool on it.
    pub peer: HttpPeer,
    /// The `Host` header requests to this backend carry (its configured address).
    pub host: http::HeaderValue,
    healthy: AtomicBool,
    inflight: AtomicUsize,
    consecutive_ok: AtomicU32,
    consecutive_failed: AtomicU32,
}

impl Backend {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Feeds one health-check result; returns `Some(new_state)` when the state flips.
    pub fn record_check(&self, ok: bool, healthy_after: u32, unhealthy_after: u32) -> Option<bool> {
        if ok {
            self.consecutive_failed.store(0, Ordering::Relaxed);
            let run = self
                .consecutive_ok
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            (run >= healthy_after && !self.healthy.swap(true, Ordering::Relaxed)).then_some(true)
        } else {
            self.consecutive_ok.store(0, Ordering::Relaxed);
            let run = self
                .consecutive_failed
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            (run >= unhealthy_after && self.healthy.swap(false, Ordering::Relaxed)).then_some(false)
        }
    }

    /// Passive ejection: a refused connection takes the backend out at once; the health
    /// check brings it back after `healthy_threshold` good checks.
    pub fn eject(&self) -> bool {
        self.consecutive_ok.store(0, Ordering::Relaxed);
        self.healthy.swap(false, Ordering::Relaxed)
    }

    /// Counts the request as in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self.clone())
    }
}

pub struct InflightGuard(Arc<Backend>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Pool {
    pub name: String,
    pub cluster: String,
    pub framework: String,
    pub models: Vec<String>,
    pub backends: Vec<Arc<Backend>>,
    pub balance: Balance,
    pub priority: i64,
    /// `Bearer <key>` for the backend, when the pool has its own key.
    pub authorization: Option<http::HeaderValue>,
    pub allowed_groups: Vec<String>,
    pub allowed_domains: Vec<String>,
    pub health: crate::config::HealthConfig,
    cursor: AtomicUsize,
    /// Last computed [`PoolStatus`] and since when (unix seconds).
    status: AtomicUsize,
    status_since: AtomicU64,
}

/// A pool as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolStatus {
    /// Every backend healthy.
    Ready,
    /// Some backends down.
    Degraded,
    /// No healthy backend.
    Down,
}

impl PoolStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolStatus::Ready => "ready",
            PoolStatus::Degraded => "degraded",
            PoolStatus::Down => "down",
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Why no backend could be picked.
#[derive(Debug, PartialEq, Eq)]
pub enum NoBackend {
    /// Every backend of the pool is marked down.
    NoneHealthy,
    /// Every healthy backend was already tried for this request.
    AllTried,
}

impl Pool {
    pub fn new(config: &PoolConfig, server: &ServerConfig) -> Pool {
        let backends = config
            .backends
            .iter()
            .map(|b| {
                let mut peer = HttpPeer::new(b.socket, false, String::new());
                peer.options.connection_timeout = Some(server.upstream_connect_timeout);
                peer.options.read_timeout = Some(server.upstream_idle_timeout);
                peer.options.write_timeout = Some(server.upstream_idle_timeout);
                peer.options.idle_timeout = Some(server.upstream_keepalive_timeout);
                Arc::new(Backend {
                    // A configured `host:port` is always a valid header value.
                    host: http::HeaderValue::from_str(&b.address)
                        .unwrap_or(http::HeaderValue::from_static("localhost")),
                    address: b.address.clone(),
                    weight: b.weight,
                    peer,
                    healthy: AtomicBool::new(true),
                    inflight: AtomicUsize::new(0),
                    consecutive_ok: AtomicU32::new(0),
                    consecutive_failed: AtomicU32::new(0),
                })
            })
            .collect();
        Pool {
            name: config.name.clone(),
            cluster: config.cluster.clone(),
            framework: config.framework.clone(),
            models: config.models.clone(),
            backends,
            balance: config.balance,
            priority: config.priority,
            authorization: config.api_key.as_ref().and_then(|k| {
                // Checked when the config was read; sensitive keeps it out of debug output.
                let mut value = http::HeaderValue::from_str(&format!("Bearer {k}")).ok()?;
                value.set_sensitive(true);
                Some(value)
            }),
            allowed_groups: config.allowed_groups.clone(),
            allowed_domains: config.allowed_domains.clone(),
            health: config.health.clone(),
            cursor: AtomicUsize::new(0),
            status: AtomicUsize::new(PoolStatus::Ready as usize),
            status_since: AtomicU64::new(unix_now()),
        }
    }

    /// Whether `principal` may use this pool: it must meet every rule the pool sets (a group
    /// in `allowed_groups`, a username domain in `allowed_domains`). Unrestricted pools admit
    /// anyone the auth plugins let through.
    pub fn permits(&self, principal: Option<&Principal>) -> bool {
        if self.allowed_groups.is_empty() && self.allowed_domains.is_empty() {
            return true;
        }
        let Some(p) = principal else {
            return false;
        };
        let group_ok = self.allowed_groups.is_empty()
            || p.groups.iter().any(|g| self.allowed_groups.contains(g));
        let domain = p.username.rsplit_once('@').map(|(_, d)| d);
        let domain_ok = self.allowed_domains.is_empty()
            || domain.is_some_and(|d| {
                self.allowed_domains
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(d))
            });
        group_ok && domain_ok
    }

    /// The current status, and since when (unix seconds) it has held.
    pub fn status(&self) -> (PoolStatus, u64) {
        let healthy = self.healthy_count();
        let now = if healthy == self.backends.len() {
            PoolStatus::Ready
        } else if healthy == 0 {
            PoolStatus::Down
        } else {
            PoolStatus::Degraded
        };
        let before = self.status.swap(now as usize, Ordering::Relaxed);
        if before != now as usize {
            self.status_since.store(unix_now(), Ordering::Relaxed);
        }
        (now, self.status_since.load(Ordering::Relaxed))
    }

    pub fn healthy_count(&self) -> usize {
        self.backends.iter().filter(|b| b.is_healthy()).count()
    }

    pub fn inflight(&self) -> usize {
        self.backends.iter().map(|b| b.inflight()).sum()
    }

    /// Seconds a client should wait before retrying when the pool is down.
    pub fn retry_after(&self) -> Duration {
        self.health.interval.max(Duration::from_secs(1))
    }

    /// Picks a healthy backend not in `tried`: its index (for `tried`) and the backend.
    pub fn pick(&self, tried: &[usize], affinity: u64) -> Result<(usize, Arc<Backend>), NoBackend> {
        let index = self.select(tried, affinity)?;
        let backend = self.backends.get(index).ok_or(NoBackend::AllTried)?;
        Ok((index, backend.clone()))
    }

    /// Picks a healthy backend not in `tried`. `affinity` feeds `consistent_hash`.
    pub fn select(&self, tried: &[usize], affinity: u64) -> Result<usize, NoBackend> {
        let usable =
            |i: &usize| self.backends.get(*i).is_some_and(|b| b.is_healthy()) && !tried.contains(i);
        let n = self.backends.len();
        if !self.backends.iter().any(|b| b.is_healthy()) {
            return Err(NoBackend::NoneHealthy);
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let load = |i: &usize| {
            self.backends
                .get(*i)
                .map(|b| (b.inflight(), b.weight as usize))
        };
        let picked = match self.balance {
            Balance::RoundRobin => self.weighted_round_robin(start, &usable),
            // Rotating the scan start spreads ties (e.g. an idle pool) across backends.
            Balance::LeastRequests => (0..n)
                .map(|k| (start.wrapping_add(k)) % n)
                .filter(usable)
                .min_by(|a, b| {
                    // inflight/weight, compared without division.
                    let ((ia, wa), (ib, wb)) =
                        (load(a).unwrap_or_default(), load(b).unwrap_or_default());
                    ia.saturating_mul(wb).cmp(&ib.saturating_mul(wa))
                }),
            Balance::ConsistentHash => (0..n).filter(usable).max_by(|a, b| {
                let score = |i: &usize| {
                    self.backends.get(*i).map_or(0.0, |backend| {
                        rendezvous_score(affinity, &backend.address, backend.weight)
                    })
                };
                score(a).total_cmp(&score(b))
            }),
        };
        picked.ok_or(NoBackend::AllTried)
    }

    fn weighted_round_robin(
        &self,
        start: usize,
        usable: &impl Fn(&usize) -> bool,
    ) -> Option<usize> {
        let total: usize = self.backends.iter().map(|b| b.weight as usize).sum();
        let mut slot = start.checked_rem(total)?;
        let first = self.backends.iter().position(|b| {
            let w = b.weight as usize;
            if slot < w {
                true
            } else {
                slot -= w;
                false
            }
        })?;
        let n = self.backends.len();
        (0..n).map(|k| (first + k) % n).find(|i| usable(i))
    }
}

/// Weighted highest-random-weight hashing: a key keeps its backend while that backend is up,
/// only the keys of a backend that goes down move, and a backend's share follows its weight.
fn rendezvous_score(key: u64, address: &str, weight: u32) -> f64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    address.hash(&mut hasher);
    // u in (0, 1]; u^(1/w) is the standard weighted-rendezvous score.
    let u = (hasher.finish() as f64 + 1.0) / (u64::MAX as f64 + 1.0);
    u.powf(1.0 / f64::from(weight.max(1)))
}

#[cfg(test)]
mod tests;
