//! Kept-alive connections to backends, held by the gateway between requests.
//!
//! Pingora's connector pools them too, at a price a profile of small requests showed at ~7 %
//! of the gateway's CPU: every hand-back spawns a task that watches the idle connection with
//! its own timer, and every reuse asks the kernel for the socket's peer (`getpeername`) to
//! check a descriptor the pool itself owns. Here an idle connection is its stream in a
//! per-backend stack behind a mutex held for a push or a pop. Reuse takes the most recent
//! and checks, without a system call unless the socket has something to read, that the
//! backend has neither closed it nor sent bytes nobody asked for (Pingora's own test). A
//! sweeper closes, once a second, what has been idle past `upstream_keepalive_timeout` or
//! was closed by its backend, so no connection lingers half-closed.
//!
//! Backends are plain HTTP/1.1 (`PeerSettings::peer`): only HTTP/1 sessions are kept.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_core::protocols::http::v1::client::HttpSession as H1Session;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::HttpPeer;
use tokio::io::{AsyncRead, ReadBuf};

use crate::routing::Backend;

/// Idle connections kept per backend at most; past it the oldest is closed. Pingora's pool
/// keeps 128 by default.
const MAX_IDLE_PER_BACKEND: usize = 128;
/// How often the sweeper closes expired and backend-closed connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How the gateway reaches backends: Pingora's connector opens connections, the idle pool
/// keeps them between requests. Shared by every configuration snapshot, so kept-alive
/// connections outlive a reload.
pub struct BackendConnections {
    connector: Connector,
    idle: Arc<IdlePool>,
}

impl Default for BackendConnections {
    fn default() -> Self {
        BackendConnections {
            connector: Connector::new(None),
            idle: Arc::default(),
        }
    }
}

impl BackendConnections {
    /// A kept-alive connection to `peer` when one is idle (`true`: reused), else a new one.
    /// A connect's future is large (~9 KB: Pingora's connectors with their TLS state), so
    /// it is boxed and exists only while connecting. The session is boxed too: it is ~470
    /// bytes, and a request moved it about ten times on its way through the forward path.
    pub async fn session_to(
        &self,
        backend: &Backend,
    ) -> pingora_error::Result<(Box<UpstreamSession>, bool)> {
        match self.idle.take(&backend.peer, backend.reuse_key) {
            Some(session) => Ok((session, true)),
            None => Box::pin(self.connector.get_http_session(&backend.peer))
                .await
                .map(|(session, reused)| (Box::new(session), reused)),
        }
    }

    /// Hands a finished session back for reuse (see `IdlePool::put`), without waiting: a
    /// session that may not be reused comes back, for the caller to shut down.
    #[must_use = "a session that may not be reused must be shut down"]
    pub fn release(
        &self,
        session: Box<UpstreamSession>,
        backend: &Backend,
        keepalive: Duration,
    ) -> Option<H1Session> {
        self.idle.put(session, backend.reuse_key, keepalive)
    }
}

struct Idle {
    stream: Stream,
    expires: Instant,
}

type Stacks = HashMap<u64, Vec<Idle>, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct IdlePool {
    /// Keyed by the peer's reuse hash (address and connection options), newest last.
    stacks: Mutex<Stacks>,
    sweeper_started: AtomicBool,
}

impl IdlePool {
    /// The most recently idled connection to `peer` (whose `reuse_hash` is `key`) that is
    /// still open and clean, as a session ready for a request.
    pub fn take(&self, peer: &HttpPeer, key: u64) -> Option<Box<UpstreamSession>> {
        let now = Instant::now();
        loop {
            let idle = self.stacks.lock().ok()?.get_mut(&key)?.pop()?;
            let mut stream = idle.stream;
            if idle.expires > now && still_idle(&mut stream) {
                return Some(Box::new(UpstreamSession::H1(H1Session::new_with_options(
                    stream, peer,
                ))));
            }
            // Expired or closed: dropped here, outside the lock; try the next one.
        }
    }

    /// Keeps `session`'s connection for the next request to `peer`, when its response was
    /// read whole and both sides allow keep-alive. A session that may not be reused is
    /// given back, to be shut down; any other connection not kept is closed here.
    pub fn put(
        self: &Arc<Self>,
        session: Box<UpstreamSession>,
        key: u64,
        keepalive: Duration,
    ) -> Option<H1Session> {
        let UpstreamSession::H1(mut h1) = *session else {
            return None;
        };
        h1.respect_keepalive();
        let mut stream = match h1.into_reusable() {
            Ok(stream) => stream,
            Err(unfit) => return Some(unfit),
        };
        let expires = expiry(Instant::now(), keepalive)?;
        if !still_idle(&mut stream) {
            return None;
        }
        self.start_sweeper();
        let idle = Idle { stream, expires };
        let evicted = match self.stacks.lock() {
            Ok(mut stacks) => {
                let stack = stacks.entry(key).or_default();
                stack.push(idle);
                (stack.len() > MAX_IDLE_PER_BACKEND).then(|| stack.remove(0))
            }
            Err(_) => None,
        };
        // Closed outside the lock.
        drop(evicted);
        None
    }

    /// Idle connections held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.stacks
            .lock()
            .map(|s| s.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Spawned on the runtime of the first hand-back: Pingora's runtimes live as long as
    /// the server.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.sweep(Instant::now());
            }
        });
    }

    /// Removes connections that expired or that their backend closed.
    fn sweep(&self, now: Instant) {
        let mut closed = Vec::new();
        if let Ok(mut stacks) = self.stacks.lock() {
            for stack in stacks.values_mut() {
                let mut kept = Vec::with_capacity(stack.len());
                for mut idle in stack.drain(..) {
                    if idle.expires > now && still_idle(&mut idle.stream) {
                        kept.push(idle);
                    } else {
                        closed.push(idle);
                    }
                }
                *stack = kept;
            }
            stacks.retain(|_, stack| !stack.is_empty());
        }
        // Closed outside the lock.
        drop(closed);
    }
}

/// Until when a connection idled at `now` may be reused; `None`: not at all (a zero
/// `upstream_keepalive_timeout`). The configuration accepts any duration (humantime reads
/// years), and an `Instant` overflow panics: beyond a year is a year.
fn expiry(now: Instant, keepalive: Duration) -> Option<Instant> {
    const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);
    if keepalive.is_zero() {
        return None;
    }
    now.checked_add(keepalive.min(LONGEST))
}

/// Whether an idle connection has nothing to read: a backend that closed it (end of
/// stream), broke it (an error) or wrote to it unasked (a response nobody is waiting for,
/// which would be taken for the next request's) makes it unfit for reuse. Polled once
/// without waiting; unconstrained, so tokio's cooperative budget cannot answer "pending"
/// for a socket that has something to read.
fn still_idle(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut probe = tokio::task::unconstrained(std::future::poll_fn(|cx| {
        Pin::new(&mut *stream).poll_read(cx, &mut buf)
    }));
    let mut cx = Context::from_waker(Waker::noop());
    // Ready means closed (nothing read), broken, or unasked bytes: unfit either way.
    matches!(Pin::new(&mut probe).poll(&mut cx), Poll::Pending)
}

#[cfg(test)]
mod tests;
