//! Sending one request to a backend of a pool and streaming the answer back.
//!
//! We drive Pingora's `Connector` ourselves instead of `ProxyHttp`'s upstream phases: the
//! proxy framework can replay a body it has already read only from its 64 KiB retry buffer,
//! and the body must be read first to route on `model`. Here the whole (bounded) body is in
//! hand, so any size goes upstream.
//!
//! A prompt is sent twice only when the backend provably did not receive it: a connection
//! that was refused (another backend is tried), or a reused keep-alive connection whose
//! write failed before the request was fully written and before any response byte (resent
//! once, on a fresh pick). Once the whole request is written, any failure is the client's
//! answer (502, or 504 on silence), never a resend: the backend may be working on it. Every
//! attempt counts against `max_connect_attempts`, in the access log and in the metrics.

use std::sync::Arc;

use bytes::Bytes;
use gateway_plugin_api::{ApiError, RequestCtx};
use http::header;
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_core::protocols::http::ServerSession;
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;

use super::forwarded::Origin;
use super::retry::{backend_at_fault, client_left, may_resend, WriteFailure};
use super::stream::{StreamTiming, Watchers};
use super::upstream::{downstream_header, upstream_header};
use super::usage::UsageObserver;
use super::{Gateway, Stop};
use crate::errors;
use crate::metrics::GatewayMetrics;
use crate::routing::pool::{InflightGuard, Picked};
use crate::routing::{Api, Backend, NoBackend, Pool};

/// How the forwarded request went, for `on_done`.
#[derive(Debug, Default)]
pub struct Forwarded {
    pub status: u16,
    pub bytes_sent: u64,
    pub first_byte: Option<std::time::Duration>,
    pub attempts: u32,
    pub client_aborted: bool,
    /// The response header went out but the body did not end properly.
    pub truncated: bool,
    /// Set when the response was cut short after its header was sent.
    pub error_code: Option<&'static str>,
    /// The backend was picked by panic routing (too few healthy backends in the pool).
    pub panic_routed: bool,
}

/// A connected upstream session with the request written.
struct Written {
    upstream: UpstreamSession,
    backend: Arc<Backend>,
    _inflight: InflightGuard,
}

impl Gateway {
    /// Forwards the request; `Err` means nothing was sent to the client yet.
    pub(super) async fn forward(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        pool: &Pool,
        api: Api,
        body: Bytes,
        done: &mut Forwarded,
    ) -> Result<(), Stop> {
        let origin = self.origin(session);
        // Boxed: connecting nests Pingora's connector futures, the largest state of a request;
        // inline, every open stream would carry that size for its whole life.
        let Written {
            mut upstream,
            backend,
            _inflight,
        } = Box::pin(self.connect_and_write(
            session.req_header(),
            api,
            &body,
            origin,
            ctx,
            pool,
            done,
        ))
        .await?;
        // Written in full and never resent from here on: a long prompt must not stay in
        // memory for the whole life of its stream.
        drop(body);

        // The wait for the header is the whole generation of a non-streaming request: a
        // client that leaves meanwhile closes the upstream connection at once (dropped on
        // return), which is how a backend learns to stop generating.
        let read = tokio::select! {
            biased;
            read = upstream.read_response_header() => read,
            idle = session.read_body_or_idle(true) => {
                if client_left(idle) {
                    done.client_aborted = true;
                    return Err(Stop::ClientGone);
                }
                // Bytes after the body (a stray CRLF, a pipelined request): not a disconnect.
                // The connection will not be reused; wait for the header alone.
                session.set_keepalive(None);
                upstream.read_response_header().await
            }
        };
        if let Err(e) = read {
            return Err(self.header_failure(&e, pool, &backend, ctx).into());
        }
        backend.saw_progress();
        let response = match upstream.response_header() {
            Some(h) => downstream_header(h, ctx, &self.chain.all)?,
            None => return Err(errors::upstream_failed(&pool.name).into()),
        };
        done.status = response.status.as_u16();
        let content_type = response
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes());
        let mut usage = UsageObserver::new(content_type);
        if let Err(e) = session.write_response_header(Box::new(response)).await {
            log::debug!(request_id = ctx.request_id.as_str(); "client went away before the header: {e}");
            done.client_aborted = true;
            done.truncated = true;
            return Ok(());
        }

        // Streams feed the first-token and inter-chunk histograms (children resolved once).
        let timing = self
            .metrics
            .as_ref()
            .filter(|_| ctx.stream)
            .map(|m| StreamTiming::new(m, ctx.model.as_deref(), &pool.name));
        let watch = Watchers {
            usage: &mut usage,
            timing,
            backend: &backend,
        };
        let upstream_done = self
            .stream_body(session, &mut upstream, ctx, watch, done)
            .await;
        done.truncated = !upstream_done;
        ctx.usage = usage.finish(ctx.body_bytes);
        if upstream_done {
            if let Err(e) = session.finish_body().await {
                log::debug!(request_id = ctx.request_id.as_str(); "finishing response: {e}");
                done.client_aborted = true;
                done.truncated = true;
            }
            let keepalive = Some(self.settings.upstream_keepalive_timeout);
            self.connector
                .release_http_session(upstream, &backend.peer, keepalive)
                .await;
        }
        // Otherwise `upstream` drops here and its connection closes, which is how a backend
        // learns to stop generating for a client that left.
        Ok(())
    }

    /// The 502 or 504 for a backend that failed after the whole request was written.
    fn header_failure(
        &self,
        e: &Error,
        pool: &Pool,
        backend: &Backend,
        ctx: &RequestCtx,
    ) -> ApiError {
        if e.etype() == &ErrorType::ReadTimedout {
            return errors::upstream_timeout(&pool.name, self.settings.upstream_idle_timeout);
        }
        log::warn!(
            request_id = ctx.request_id.as_str(), pool = pool.name.as_str(),
            backend = backend.address.as_str();
            "backend failed after receiving the request, before its response header (not resent): {e}"
        );
        errors::upstream_failed(&pool.name)
    }

    /// Picks backends until one takes the whole request. Tries again only where the backend
    /// provably received nothing: a refused connect (another backend), or a failed write on
    /// a reused keep-alive connection (once). At most `max_connect_attempts` attempts.
    #[expect(clippy::too_many_arguments, reason = "the parts of one request")]
    async fn connect_and_write(
        &self,
        client: &RequestHeader,
        api: Api,
        body: &Bytes,
        origin: Origin,
        ctx: &mut RequestCtx,
        pool: &Pool,
        done: &mut Forwarded,
    ) -> Result<Written, ApiError> {
        let mut tried: Vec<usize> = Vec::new();
        let mut resent = false;
        let affinity = affinity_key(ctx);
        loop {
            let Picked {
                index,
                backend,
                panic,
            } = match pool.pick(&tried, affinity) {
                Ok(picked) => picked,
                Err(NoBackend::NoneHealthy) if done.attempts == 0 => {
                    return Err(errors::no_healthy_backend(&pool.name, pool.retry_after()))
                }
                Err(_) => return Err(errors::backends_refused(&pool.name, done.attempts)),
            };
            ctx.backend = Some(backend.address.clone());
            done.attempts += 1;
            if panic && !done.panic_routed {
                done.panic_routed = true;
                if let Some(m) = &self.metrics {
                    m.panic_routed.with_label_values(&[&pool.name]).inc();
                }
            }
            // Count the attempt as in flight at once, so that concurrent selections see it.
            let inflight = backend.start_request();
            let (mut upstream, reused) = match self.connector.get_http_session(&backend.peer).await
            {
                Ok(s) => s,
                Err(e) if !backend_at_fault(&e) => {
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
                    if backend.eject() {
                        log::warn!(
                            request_id = ctx.request_id.as_str(), pool = pool.name.as_str(),
                            backend = backend.address.as_str();
                            "backend refused a connection; marked down until its health check passes: {e}"
                        );
                    }
                    tried.push(index);
                    self.next_attempt(pool, done)?;
                    continue;
                }
            };
            upstream.set_read_timeout(Some(self.settings.upstream_idle_timeout));
            // Built per attempt: Pingora takes the header by value, so one copy per attempt.
            let header = upstream_header(
                client,
                ctx,
                pool,
                &backend,
                api,
                body.len(),
                origin,
                &self.chain.all,
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
    fn next_attempt(&self, pool: &Pool, done: &Forwarded) -> Result<(), ApiError> {
        if done.attempts as usize >= self.settings.max_connect_attempts {
            return Err(errors::backends_refused(&pool.name, done.attempts));
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
    upstream
        .write_request_header(Box::new(header))
        .await
        .map_err(WriteFailure::Stale)?;
    if !body.is_empty() {
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
