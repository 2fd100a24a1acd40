//! Bounds on the introspections a flood of unknown tokens can cause: a global rate, a rate
//! per client address, and a cap on introspections in flight. Only cache misses pass through
//! here, so users whose verdict is cached never wait on it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            updated: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now;
    }

    /// Takes one token when there is one; else how long until there is.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// A per-second rate and the burst it allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// Why an introspection was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// This client address sent too many unknown tokens; retry after the duration.
    Client(Duration),
    /// The gateway as a whole is at its introspection rate; retry after the duration.
    Global(Duration),
}

/// Client addresses remembered at most. A full map forgets the addresses whose bucket has
/// refilled (the same as never seen), at most once a second; until then new addresses are
/// held to the global rate alone. Random source addresses can neither grow the map nor make
/// every request scan it.
const MAX_CLIENTS: usize = 10_000;

struct Clients {
    buckets: HashMap<IpAddr, Bucket>,
    pruned: Option<Instant>,
}

pub struct MissThrottle {
    global_rate: Rate,
    client_rate: Rate,
    global: Mutex<Bucket>,
    clients: Mutex<Clients>,
}

impl MissThrottle {
    pub fn new(global_rate: Rate, client_rate: Rate) -> MissThrottle {
        let now = Instant::now();
        MissThrottle {
            global: Mutex::new(Bucket::full(global_rate.burst, now)),
            clients: Mutex::new(Clients {
                buckets: HashMap::new(),
                pruned: None,
            }),
            global_rate,
            client_rate,
        }
    }

    /// Charges one introspection to `client` (when known) and to the gateway.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<(), Throttled> {
        self.admit_at(client, Instant::now())
    }

    /// Neither bucket is charged for a refusal: a client refused because the gateway as a
    /// whole is busy keeps its own budget, and the other way round.
    fn admit_at(&self, client: Option<IpAddr>, now: Instant) -> Result<(), Throttled> {
        let (client_rate, global_rate) = (self.client_rate, self.global_rate);
        let busy = || Throttled::Global(Duration::from_secs(1));
        let mut clients = self.clients.lock().map_err(|_| busy())?;
        let mut global = self.global.lock().map_err(|_| busy())?;
        let clients = &mut *clients;
        if let Some(ip) = client {
            let full = clients.buckets.len() >= MAX_CLIENTS;
            let may_prune = clients
                .pruned
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
            if full && !clients.buckets.contains_key(&ip) && may_prune {
                clients.pruned = Some(now);
                clients.buckets.retain(|_, b| {
                    b.refill(client_rate.per_second, client_rate.burst, now);
                    b.tokens < client_rate.burst
                });
            }
            if let Some(bucket) = clients.buckets.get_mut(&ip) {
                bucket.refill(client_rate.per_second, client_rate.burst, now);
                if bucket.tokens < 1.0 {
                    let wait = (1.0 - bucket.tokens) / client_rate.per_second;
                    return Err(Throttled::Client(Duration::from_secs_f64(wait)));
                }
            }
        }
        global
            .take(global_rate.per_second, global_rate.burst, now)
            .map_err(Throttled::Global)?;
        if let Some(ip) = client {
            if let Some(bucket) = clients.buckets.get_mut(&ip) {
                bucket.tokens -= 1.0;
            } else if clients.buckets.len() < MAX_CLIENTS {
                let mut bucket = Bucket::full(client_rate.burst, now);
                bucket.tokens -= 1.0;
                clients.buckets.insert(ip, bucket);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> MissThrottle {
        MissThrottle::new(
            Rate {
                per_second: 10.0,
                burst: 20.0,
            },
            Rate {
                per_second: 1.0,
                burst: 3.0,
            },
        )
    }

    #[test]
    fn one_client_is_held_to_its_own_rate_and_others_go_on() {
        let t = throttle();
        let now = Instant::now();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            assert_eq!(t.admit_at(a, now), Ok(()));
        }
        assert!(
            matches!(t.admit_at(a, now), Err(Throttled::Client(d)) if d <= Duration::from_secs(1))
        );
        assert_eq!(t.admit_at(b, now), Ok(()));
        assert_eq!(t.admit_at(a, now + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn the_global_rate_bounds_many_clients() {
        let t = throttle();
        let now = Instant::now();
        let admitted = (0..100u8)
            .filter(|i| t.admit_at(Some(IpAddr::from([10, 0, 1, *i])), now).is_ok())
            .count();
        assert_eq!(admitted, 20, "the global burst");
        assert!(matches!(
            t.admit_at(Some(IpAddr::from([10, 0, 2, 1])), now),
            Err(Throttled::Global(_))
        ));
    }

    #[test]
    fn random_addresses_do_not_grow_the_map_without_bound() {
        let t = MissThrottle::new(
            Rate {
                per_second: 1e9,
                burst: 1e9,
            },
            Rate {
                per_second: 0.01,
                burst: 3.0,
            },
        );
        let start = Instant::now();
        // A flood from ever new addresses, none of whose buckets refills meanwhile.
        for i in 0..(3 * MAX_CLIENTS as u32) {
            let now = start + Duration::from_millis(u64::from(i / 100));
            let _ = t.admit_at(Some(IpAddr::from(i.to_be_bytes())), now);
        }
        let size = t
            .clients
            .lock()
            .map(|c| c.buckets.len())
            .unwrap_or(usize::MAX);
        assert!(size <= MAX_CLIENTS, "{size}");
    }

    #[test]
    fn a_refusal_charges_neither_bucket() {
        let t = MissThrottle::new(
            Rate {
                per_second: 1.0,
                burst: 1.0,
            },
            Rate {
                per_second: 1.0,
                burst: 2.0,
            },
        );
        let now = Instant::now();
        let (a, b) = (
            Some(IpAddr::from([10, 0, 0, 1])),
            Some(IpAddr::from([10, 0, 0, 2])),
        );
        assert_eq!(t.admit_at(a, now), Ok(()));
        // The gateway is at its rate: b is refused without spending its own budget.
        for _ in 0..5 {
            assert!(matches!(t.admit_at(b, now), Err(Throttled::Global(_))));
        }
        let later = now + Duration::from_secs(2);
        assert_eq!(t.admit_at(b, later), Ok(()));
    }
}
