//! A pool of backends serving the same models, and how one backend is picked from it.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;

pub use super::backend::{Backend, CheckResult, Health, InflightGuard};
use crate::config::{Balance, PoolConfig};
use gateway_plugin_api::Principal;

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
    /// Batch lines at most in flight on one backend (0: the pool takes no batches).
    pub batch_max_in_flight: usize,
    /// A batch line starts on a backend only while it has fewer requests in flight.
    pub batch_when_below: usize,
    /// HTTPS to the backends (their peers carry it); a reload that changes it makes new ones.
    tls: Option<crate::config::BackendTls>,
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
    /// Some backends down, or all down but routed to in panic mode.
    Degraded,
    /// Nothing to route to.
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

/// Which backends of a pool requests may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// The healthy ones.
    Healthy,
    /// Too few are healthy: every backend that accepts connections.
    Panic,
    /// None: every backend is unreachable, or down with panic routing off.
    Nothing,
}

/// A backend picked for one attempt.
pub struct Picked {
    /// Its place in the pool, for the attempt's `tried` list.
    pub index: usize,
    pub backend: Arc<Backend>,
    /// Picked by panic routing.
    pub panic: bool,
}

/// Why no backend could be picked.
#[derive(Debug, PartialEq, Eq)]
pub enum NoBackend {
    /// Nothing to route to (see [`Routing::Nothing`]).
    NoneHealthy,
    /// Every healthy backend was already tried for this request.
    AllTried,
}

impl Pool {
    /// `peer` builds the connection target of a backend (the proxy layer's settings).
    pub fn new(config: &PoolConfig, peer: &dyn Fn(SocketAddr) -> HttpPeer) -> Pool {
        Pool::reusing(config, peer, None)
    }

    /// As [`Pool::new`], keeping the backends of `previous` (the same pool before a reload)
    /// that are configured alike: their health, in-flight counts and traffic evidence go on.
    pub fn reusing(
        config: &PoolConfig,
        peer: &dyn Fn(SocketAddr) -> HttpPeer,
        previous: Option<&Pool>,
    ) -> Pool {
        let kept = |address: &str, weight: u32| {
            previous
                .filter(|p| p.tls == config.tls)?
                .backends
                .iter()
                .find(|b| b.address == address && b.weight == weight)
                .cloned()
        };
        let backends = config
            .backends
            .iter()
            .map(|b| {
                kept(&b.address, b.weight).unwrap_or_else(|| {
                    let mut target = peer(b.socket);
                    if let Some(tls) = &config.tls {
                        with_tls(&mut target, tls, &b.address);
                    }
                    Arc::new(Backend::new(b.address.clone(), b.weight, target))
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
            batch_max_in_flight: config.batch_max_in_flight,
            batch_when_below: config.batch_when_below,
            tls: config.tls.clone(),
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
        let now = if self.healthy_count() == self.backends.len() {
            PoolStatus::Ready
        } else if self.routing() == Routing::Nothing {
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

    /// Which backends requests may go to now. Panic routing (Envoy's panic threshold, nginx
    /// putting all failed upstreams back): when fewer than `panic_threshold` percent of the
    /// backends are healthy, and always when none is, requests go to every backend that
    /// accepts connections. Failed checks on a busy LLM server most often mean a health
    /// route stuck behind generation; refusing every user would turn load into an outage.
    pub fn routing(&self) -> Routing {
        let up = self.healthy_count();
        let h = &self.health;
        let too_few = up == 0
            || up.saturating_mul(100)
                < usize::from(h.panic_threshold).saturating_mul(self.backends.len());
        let failing = || self.backends.iter().any(|b| b.health() == Health::Failing);
        if h.panic_routing && too_few && failing() {
            Routing::Panic
        } else if up > 0 {
            Routing::Healthy
        } else {
            Routing::Nothing
        }
    }

    /// Rank among pools serving the same model (lower first): pools with a healthy backend,
    /// then pools routing in panic, then pools with nothing to route to.
    pub fn preference(&self) -> u8 {
        if self.healthy_count() > 0 {
            0
        } else if self.routing() == Routing::Panic {
            1
        } else {
            2
        }
    }

    pub fn inflight(&self) -> usize {
        self.backends.iter().map(|b| b.inflight()).sum()
    }

    /// Seconds a client should wait before retrying when the pool is down.
    pub fn retry_after(&self) -> Duration {
        self.health.interval.max(Duration::from_secs(1))
    }

    /// Picks a backend not in `tried` (see [`Pool::routing`]).
    pub fn pick(&self, tried: &[usize], affinity: u64) -> Result<Picked, NoBackend> {
        let routing = self.routing();
        let index = self.choose(routing, tried, affinity)?;
        let backend = self.backends.get(index).ok_or(NoBackend::AllTried)?;
        Ok(Picked {
            index,
            backend: backend.clone(),
            panic: routing == Routing::Panic,
        })
    }

    /// The index [`Pool::pick`] would pick.
    pub fn select(&self, tried: &[usize], affinity: u64) -> Result<usize, NoBackend> {
        self.choose(self.routing(), tried, affinity)
    }

    /// Picks a backend that `routing` allows, not in `tried`. `affinity` feeds
    /// `consistent_hash`.
    fn choose(&self, routing: Routing, tried: &[usize], affinity: u64) -> Result<usize, NoBackend> {
        let allowed = |b: &Arc<Backend>| match routing {
            Routing::Healthy => b.is_healthy(),
            Routing::Panic => b.health() != Health::Unreachable,
            Routing::Nothing => false,
        };
        if routing == Routing::Nothing {
            return Err(NoBackend::NoneHealthy);
        }
        let usable = |i: &usize| self.backends.get(*i).is_some_and(allowed) && !tried.contains(i);
        let n = self.backends.len();
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

/// HTTPS to a backend: SNI (the configured name, else the host of `address`), verification,
/// and the pool's own CA when it names one.
fn with_tls(peer: &mut HttpPeer, tls: &crate::config::BackendTls, address: &str) {
    use pingora_core::upstreams::peer::Scheme;
    use pingora_core::utils::tls::{parse_x509, WrappedX509};
    peer.scheme = Scheme::HTTPS;
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    peer.sni = tls
        .sni
        .clone()
        .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
    peer.options.verify_cert = tls.verify;
    peer.options.verify_hostname = tls.verify;
    if let Some(der) = &tls.ca_der {
        let ca: Arc<[WrappedX509]> = Arc::new([WrappedX509::new(der.clone(), parse_x509)]);
        peer.options.ca = Some(ca);
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
