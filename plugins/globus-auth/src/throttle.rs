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

/// Client addresses remembered at most; past this, addresses whose bucket has refilled (the
/// same as never seen) are forgotten, so random source addresses cannot grow the map.
const MAX_CLIENTS: usize = 10_000;

pub struct MissThrottle {
    global_rate: Rate,
    client_rate: Rate,
    global: Mutex<Bucket>,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
}

impl MissThrottle {
    pub fn new(global_rate: Rate, client_rate: Rate) -> MissThrottle {
        let now = Instant::now();
        MissThrottle {
            global: Mutex::new(Bucket::full(global_rate.burst, now)),
            clients: Mutex::new(HashMap::new()),
            global_rate,
            client_rate,
        }
    }

    /// Charges one introspection to `client` (when known) and to the gateway.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<(), Throttled> {
        self.admit_at(client, Instant::now())
    }

    fn admit_at(&self, client: Option<IpAddr>, now: Instant) -> Result<(), Throttled> {
        let (client_rate, global_rate) = (self.client_rate, self.global_rate);
        if let Some(ip) = client {
            let Ok(mut clients) = self.clients.lock() else {
                return Err(Throttled::Global(Duration::from_secs(1)));
            };
            if clients.len() >= MAX_CLIENTS && !clients.contains_key(&ip) {
                clients.retain(|_, b| {
                    b.refill(client_rate.per_second, client_rate.burst, now);
                    b.tokens < client_rate.burst
                });
            }
            let bucket = clients
                .entry(ip)
                .or_insert_with(|| Bucket::full(client_rate.burst, now));
            bucket
                .take(client_rate.per_second, client_rate.burst, now)
                .map_err(Throttled::Client)?;
        }
        let Ok(mut global) = self.global.lock() else {
            return Err(Throttled::Global(Duration::from_secs(1)));
        };
        global
            .take(global_rate.per_second, global_rate.burst, now)
            .map_err(Throttled::Global)
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
        let t = throttle();
        let start = Instant::now();
        for i in 0..(3 * MAX_CLIENTS as u32) {
            // Far apart in time, so every bucket has refilled and may be forgotten.
            let now = start + Duration::from_secs(u64::from(i));
            let _ = t.admit_at(Some(IpAddr::from(i.to_be_bytes())), now);
        }
        let size = t.clients.lock().map(|c| c.len()).unwrap_or(usize::MAX);
        assert!(size <= MAX_CLIENTS, "{size}");
    }
}
