//! Getting the request to a backend: pick, connect, write, and try again only where the
//! backend provably received nothing (see `retry.rs`).

use std::sync::Arc;

use bytes::Bytes;
use gateway_plugin_api::{ApiError, RequestCtx, RequestSummary};
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_http::RequestHeader;

use super::forward::Forwarder;
use super::forwarded::Origin;
use super::retry::{may_resend, WriteFailure};
use super::upstream::upstream_header;
use crate::config::Balance;
use crate::errors;
use crate::metrics::GatewayMetrics;
use crate::routing::backend::{connect_failure, ConnectFailure};
use crate::routing::pool::{InflightGuard, Picked};
use crate::routing::{Api, Backend, NoBackend, Pool};

/// A connected upstream session with the request written.
pub(super) struct Written {
    pub upstream: Box<UpstreamSession>,
    pub backend: Arc<Backend>,
    pub _inflight: InflightGuard,
}

impl Forwarder {
    /// Picks backends until one takes the whole request. Tries again only where the backend
    /// provably received nothing: a refused connect (another backend), or a failed write on
    /// a reused keep-alive connection (once). At most `max_connect_attempts` attempts.
    #[expect(clippy::too_many_arguments, reason = "the parts of one request")]
    pub(super) async fn connect_and_write(
        &self,
        client: &RequestHeader,
        api: Api,
        body: &Bytes,
        origin: Origin,
        ctx: &mut RequestCtx,
        pool: &Pool,
        done: &mut RequestSummary,
    ) -> Result<Written, ApiError> {
        let mut tried: Vec<usize> = Vec::new();
        let mut resent = false;
        // Only `consistent_hash` reads it; hashing the user costs a few hundred instructions.
        let affinity = match pool.balance {
            Balance::ConsistentHash => affinity_key(ctx),
            _ => 0,
        };
        loop {
            let Picked {
                index,
                backend,
                panic,
            } = match pool.pick(&tried, affinity) {
                Ok(picked) => picked,
                Err(NoBackend::NoneHealthy) if done.upstream_attempts == 0 => {
                    return Err(errors::no_healthy_backend(&pool.name, pool.retry_after()))
                }
                Err(_) => return Err(errors::backends_refused(&pool.name, done.upstream_attempts)),
            };
            ctx.backend = Some(backend.address.clone());
            done.upstream_attempts += 1;
            if panic && !done.panic_routed {
                done.panic_routed = true;
                if let Some(m) = &self.metrics {
                    m.panic_routed.with_label_values(&[&pool.name]).inc();
                }
            }
            // Count the attempt as in flight at once, so that concurrent selections see it.
            let inflight = backend.start_request();
            let (mut upstream, reused) = match self.backends.session_to(&backend).await {
                Ok(s) => s,
                Err(e) if connect_failure(&e) == ConnectFailure::Local => {
                    // Out of sockets or ports here: not the backend's fault, so nothing is
                    // ejected, and another backend would fail the same way.
                    log::error!(
                        request_id = ctx.request_id.as_str(), pool = pool.name.as_str();
                        "cannot open a connection to a backend (raise LimitNOFILE?): {e}"
                    );
                    return Err(errors::gateway_overloaded());
                }
                Err(e) => {
                    if let Some(m) = &self.metrics {
                        m.connect_errors
                            .with_label_values(&[&pool.name, &backend.address])
                            .inc();
                    }
                    let (changed, now) = match connect_failure(&e) {
                        ConnectFailure::TimedOut => (backend.fail(), "failing"),
                        _ => (backend.eject(), "unreachable"),
                    };
                    if changed {
                        log::warn!(
                            request_id = ctx.request_id.as_str(), pool = pool.name.as_str(),
                            backend = backend.address.as_str();
                            "connecting to a backend failed; marked {now} until its health check passes: {e}"
                        );
                    }
                    tried.push(index);
                    self.next_attempt(pool, done)?;
                    continue;
                }
            };
            self.peers.prepare(&mut upstream);
            // Built per attempt: Pingora takes the header by value, so one copy per attempt.
            let header = upstream_header(
                client,
                ctx,
                pool,
                &backend,
                api,
                body.len(),
                origin,
                &self.plugins,
            )?;
            match write(&mut upstream, header, body, ctx, self.metrics.as_deref()).await {
                Ok(()) => {
                    return Ok(Written {
                        upstream,
                        backend,
                        _inflight: inflight,
                    })
                }
                Err(WriteFailure::Stale(e)) if may_resend(reused, resent, &e) => {
                    log::info!(
                        request_id = ctx.request_id.as_str(), pool = pool.name.as_str(),
                        backend = backend.address.as_str();
                        "a kept-alive connection failed before the request was written; sending it once more: {e}"
                    );
                    resent = true;
                    self.next_attempt(pool, done)?;
                }
                Err(WriteFailure::Stale(e)) | Err(WriteFailure::Failed(e)) => {
                    log::warn!(
                        request_id = ctx.request_id.as_str(), pool = pool.name.as_str(),
                        backend = backend.address.as_str();
                        "writing the request to a backend failed (not resent): {e}"
                    );
                    return Err(errors::upstream_failed(&pool.name));
                }
            }
        }
    }

    /// Counts a retry, or ends the request when `max_connect_attempts` are spent.
    fn next_attempt(&self, pool: &Pool, done: &RequestSummary) -> Result<(), ApiError> {
        if done.upstream_attempts as usize >= self.max_connect_attempts {
            return Err(errors::backends_refused(&pool.name, done.upstream_attempts));
        }
        if let Some(m) = &self.metrics {
            m.retries.with_label_values(&[&pool.name]).inc();
        }
        Ok(())
    }
}

/// Writes the request header and body. The time until the request is on its way is the
/// gateway's own overhead (everything after it is the backend's).
async fn write(
    upstream: &mut UpstreamSession,
    header: RequestHeader,
    body: &Bytes,
    ctx: &RequestCtx,
    metrics: Option<&GatewayMetrics>,
) -> Result<(), WriteFailure> {
    let header = Box::new(header);
    // A body of up to 16 KiB leaves with the header: one write (one syscall), not two
    // (vendor/README.md).
    let body_sent = match &mut *upstream {
        UpstreamSession::H1(h1) => h1.write_request_header_with_body(header, body).await,
        other => other.write_request_header(header).await.map(|()| false),
    }
    .map_err(WriteFailure::Stale)?;
    if !body.is_empty() && !body_sent {
        upstream
            .write_request_body(body.clone(), true)
            .await
            .map_err(WriteFailure::Stale)?;
    }
    // The last bytes may already be on their way: from here a failure is not provably
    // "nothing received".
    upstream
        .finish_request_body()
        .await
        .map_err(WriteFailure::Failed)?;
    if let Some(m) = metrics {
        m.overhead
            .with_label_values(&[ctx.route])
            .observe(ctx.started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The key `consistent_hash` pools hash on: the user when known, else the client address,
/// so that one user's requests (and their shared prompt prefixes) land on one backend.
fn affinity_key(ctx: &RequestCtx) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match (&ctx.principal, ctx.client_addr) {
        (Some(p), _) => p.id.hash(&mut hasher),
        (None, Some(addr)) => addr.ip().hash(&mut hasher),
        (None, None) => {}
    }
    hasher.finish()
}
