//! File descriptors. A proxied request holds two (the client's connection and the backend's),
//! so a gateway whose `max_connections` the descriptor limit cannot hold would fail accepts
//! (Pingora then pauses its accept loop for a second) and backend connects instead of
//! answering the overflow. At start the soft limit is raised to the hard one, as nginx's
//! `worker_rlimit_nofile` and Go's runtime do, and connections are capped at what it holds,
//! so the overflow gets the quick 503 `too_many_connections`.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept for everything but proxied connections: listeners, logs, the metrics
/// listener, health checks, plugin connections (Redis, Globus), the job store, Pingora's idle
/// pool of backend connections (128), and clients being answered 503 past the cap.
pub const RESERVED: u64 = 512;

/// What the limit allows, decided once at start.
#[derive(Debug, PartialEq, Eq)]
pub struct Budget {
    /// The soft limit in force after start.
    pub limit: u64,
    /// What the soft limit was before, when start raised it.
    pub raised_from: Option<u64>,
    /// Client connections served at once: `max_connections`, or fewer when the limit
    /// cannot hold that many.
    pub max_connections: usize,
}

/// Raises the soft descriptor limit to the hard one and caps `configured` at what it holds.
pub fn budget(configured: usize) -> Budget {
    let (mut soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        // No limit to read: nothing to cap against.
        Err(_) => {
            return Budget {
                limit: u64::MAX,
                raised_from: None,
                max_connections: configured,
            }
        }
    };
    let mut raised_from = None;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        raised_from = Some(soft);
        soft = hard;
    }
    Budget {
        limit: soft,
        raised_from,
        max_connections: cap(configured, soft),
    }
}

/// Connections `limit` descriptors hold beside the reserve, at least one.
pub fn cap(configured: usize, limit: u64) -> usize {
    let fits = limit.saturating_sub(RESERVED) / 2;
    usize::try_from(fits).map_or(configured, |fits| configured.min(fits.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_limit_leaves_max_connections_alone() {
        assert_eq!(cap(10_000, 1_048_576), 10_000);
        assert_eq!(cap(10_000, u64::MAX), 10_000);
    }

    #[test]
    fn a_small_limit_caps_at_two_descriptors_a_connection() {
        assert_eq!(cap(10_000, 20_000), (20_000 - 512) / 2);
        assert_eq!(cap(10_000, 1_024), 256);
        // Never zero: one connection is served, the rest are told to come back.
        assert_eq!(cap(10_000, 100), 1);
    }
}
