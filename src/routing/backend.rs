//! One backend of a pool: where it is, what the gateway believes about its health, and the
//! requests it has in flight.
//!
//! Health has three states, because "down" has two meanings an LLM server makes very
//! different: nothing listens (refused, reset before a byte: fail fast, never route there),
//! or it listens but its checks fail (timed out, wrong status: often a server busy
//! generating, whose health route waits behind the model; panic routing may still use it).
//! Response bytes flowing are evidence too: a check that times out while they flow is "busy",
//! not a failure.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType};

/// What the gateway believes about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Passes its checks, or answers traffic while they time out.
    Up,
    /// Accepts connections but failed its last checks: slow, hung, or answering errors.
    Failing,
    /// Refused a connection or closed one before any byte: nothing serves there.
    Unreachable,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Failing => "failing",
            Health::Unreachable => "unreachable",
        }
    }

    fn from_u8(value: u8) -> Health {
        match value {
            0 => Health::Up,
            1 => Health::Failing,
            _ => Health::Unreachable,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Health::Up => 0,
            Health::Failing => 1,
            Health::Unreachable => 2,
        }
    }
}

/// One active check's result, as the state machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    Passed,
    /// No answer in time, but response bytes flowed since the last check: alive and busy.
    Busy,
    /// Connected, then no answer in time or a status the pool does not expect.
    Failed,
    /// The connection was refused or closed before any byte.
    Unreachable,
}

pub struct Backend {
    /// As configured (`host:port`).
    pub address: String,
    pub weight: u32,
    /// Built once; the connector keys its keep-alive pool on it.
    pub peer: HttpPeer,
    /// `peer.reuse_hash()`, the key of its idle connections: hashing the peer's address and
    /// options cost ~150 instructions, twice a request.
    pub reuse_key: u64,
    /// The `Host` header requests to this backend carry (its configured address).
    pub host: http::HeaderValue,
    health: AtomicU8,
    inflight: AtomicUsize,
    consecutive_ok: AtomicU32,
    consecutive_failed: AtomicU32,
    /// Bumped by every response header, body chunk and completed response: passive evidence
    /// that the backend is alive, compared by the health checker between two checks.
    progress: AtomicU64,
    progress_at_last_check: AtomicU64,
}

impl Backend {
    pub fn new(address: String, weight: u32, peer: HttpPeer) -> Backend {
        Backend {
            // A configured `host:port` is always a valid header value.
            host: http::HeaderValue::from_str(&address)
                .unwrap_or(http::HeaderValue::from_static("localhost")),
            address,
            weight,
            reuse_key: peer.reuse_hash(),
            peer,
            health: AtomicU8::new(Health::Up.as_u8()),
            inflight: AtomicUsize::new(0),
            consecutive_ok: AtomicU32::new(0),
            consecutive_failed: AtomicU32::new(0),
            progress: AtomicU64::new(0),
            progress_at_last_check: AtomicU64::new(0),
        }
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    pub fn is_healthy(&self) -> bool {
        self.health() == Health::Up
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Sets the state; returns the previous one.
    fn set(&self, health: Health) -> Health {
        Health::from_u8(self.health.swap(health.as_u8(), Ordering::Relaxed))
    }

    /// Feeds one active check; returns `Some(new_state)` when the state changes. A failing
    /// backend goes out after `unhealthy_after` failed checks in a row, an unreachable one at
    /// once; either comes back after `healthy_after` passed (or busy) checks in a row.
    pub fn record_check(
        &self,
        result: CheckResult,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Option<Health> {
        let current = self.health();
        let next = match result {
            CheckResult::Passed | CheckResult::Busy => {
                self.consecutive_failed.store(0, Ordering::Relaxed);
                let run = bump(&self.consecutive_ok);
                match current {
                    _ if run >= healthy_after => Some(Health::Up),
                    // It answers again: not "nothing listens", though not yet back in.
                    Health::Unreachable => Some(Health::Failing),
                    _ => None,
                }
            }
            CheckResult::Failed => {
                self.consecutive_ok.store(0, Ordering::Relaxed);
                let run = bump(&self.consecutive_failed);
                match current {
                    // It accepts connections again: no longer "nothing listens".
                    Health::Unreachable => Some(Health::Failing),
                    _ => (run >= unhealthy_after).then_some(Health::Failing),
                }
            }
            CheckResult::Unreachable => {
                self.consecutive_ok.store(0, Ordering::Relaxed);
                bump(&self.consecutive_failed);
                Some(Health::Unreachable)
            }
        }?;
        (self.set(next) != next).then_some(next)
    }

    /// Passive ejection: a refused connection takes the backend out at once; the health
    /// check brings it back after `healthy_threshold` good checks. True when that changed
    /// its state.
    pub fn eject(&self) -> bool {
        self.consecutive_ok.store(0, Ordering::Relaxed);
        self.set(Health::Unreachable) != Health::Unreachable
    }

    /// Passive failure: a connect that timed out takes an up backend out as failing (panic
    /// routing may still use it: a server too busy to accept is not gone). True when it was
    /// up.
    pub fn fail(&self) -> bool {
        self.consecutive_ok.store(0, Ordering::Relaxed);
        self.health
            .compare_exchange(
                Health::Up.as_u8(),
                Health::Failing.as_u8(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Records that the backend sent response bytes (or finished a response). One relaxed
    /// atomic add: this runs per streamed chunk.
    pub fn saw_progress(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the backend sent response bytes since the last call (the health checker calls
    /// it once per check, so "since the last check").
    pub fn progressed_since_last_check(&self) -> bool {
        let now = self.progress.load(Ordering::Relaxed);
        self.progress_at_last_check.swap(now, Ordering::Relaxed) != now
    }

    /// Counts the request as in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self.clone())
    }
}

fn bump(counter: &AtomicU32) -> u32 {
    counter.fetch_add(1, Ordering::Relaxed).saturating_add(1)
}

pub struct InflightGuard(Arc<Backend>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a connection to a backend could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Refused or no route: nothing listens there.
    Refused,
    /// No answer in time: the host may be down, or the server too busy to accept.
    TimedOut,
    /// This host is out of file descriptors or ports: no backend's fault.
    Local,
}

/// Classifies a failed connect from Pingora's error chain.
pub fn connect_failure(e: &Error) -> ConnectFailure {
    let mut current = Some(e);
    while let Some(err) = current {
        match err.etype() {
            ErrorType::SocketError | ErrorType::BindError => return ConnectFailure::Local,
            ErrorType::ConnectTimedout => return ConnectFailure::TimedOut,
            ErrorType::ConnectRefused | ErrorType::ConnectNoRoute => {
                return ConnectFailure::Refused
            }
            _ => {}
        }
        // Pingora chains causes as boxed errors (`BError`), sometimes as bare ones.
        current = err.cause.as_deref().and_then(|c| {
            c.downcast_ref::<Box<Error>>()
                .map(|b| b.as_ref())
                .or_else(|| c.downcast_ref::<Error>())
        });
    }
    ConnectFailure::Refused
}
