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
use gateway_plugin_api::{ApiError, Plugin, RequestCtx, RequestSummary};
use http::header;
use pingora_core::protocols::http::ServerSession;
use pingora_error::{Error, ErrorType};

use super::connect::Written;
use super::forwarded::Origin;
use super::peer::PeerSettings;
use super::respond::Sent;
use super::retry::client_left;
use super::stream::{StreamTiming, Watchers};
use super::upstream::downstream_header;
use super::usage::UsageObserver;
use super::Stop;
use crate::errors;
use crate::metrics::GatewayMetrics;
use crate::routing::{Api, Backend, Pool};

/// Sends requests to backends and streams their answers back: the connections, the upstream
/// settings and the plugins that watch the exchange. It writes what happened into the
/// request's summary itself (attempts, first byte, aborts, panic routing).
pub struct Forwarder {
    pub(super) backends: Arc<super::BackendConnections>,
    pub(super) peers: PeerSettings,
    pub(super) max_connect_attempts: usize,
    /// Every plugin, in phase order: they see the upstream request, the response header and
    /// every chunk.
    pub(super) plugins: Arc<[Arc<dyn Plugin>]>,
    pub(super) metrics: Option<Arc<GatewayMetrics>>,
}

impl Forwarder {
    /// Forwards the request and streams the answer; `Err` means nothing was sent to the
    /// client yet.
    #[expect(clippy::too_many_arguments, reason = "the parts of one request")]
    pub async fn forward(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        pool: &Pool,
        api: Api,
        body: Bytes,
        origin: Origin,
        done: &mut RequestSummary,
    ) -> Result<Sent, Stop> {
        // Inline: the large part of connecting (a new connection) is boxed where it happens.
        let Written {
            mut upstream,
            backend,
            _inflight,
        } = self
            .connect_and_write(session.req_header(), api, &body, origin, ctx, pool, done)
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
        let response = match upstream.response_header() {
            Some(h) => downstream_header(h, ctx, &self.plugins)?,
            None => return Err(errors::upstream_failed(&pool.name).into()),
        };
        done.status = response.status.as_u16();
        // Evidence for the health checks: an answer, not an error the backend is quick at.
        let alive = (done.status < 500).then_some(backend.as_ref());
        if let Some(b) = alive {
            b.saw_progress();
        }
        let content_type = response
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes());
        let mut usage = UsageObserver::new(content_type);
        if let Err(e) = session.write_response_header(Box::new(response)).await {
            log::debug!(request_id = ctx.request_id.as_str(); "client went away before the header: {e}");
            done.client_aborted = true;
            done.truncated = true;
            return Ok(Sent::of(done));
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
            alive,
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
            let keepalive = self.peers.keepalive_timeout;
            if let Some(mut unfit) = self.backends.release(upstream, &backend, keepalive) {
                // Closed gracefully. Boxed: the shutdown's future (a TLS one included) is
                // several times the session's size, and only this rare path needs it.
                Box::pin(async move { unfit.shutdown().await }).await;
            }
        }
        // Otherwise `upstream` drops here and its connection closes, which is how a backend
        // learns to stop generating for a client that left.
        Ok(Sent::of(done))
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
            return errors::upstream_timeout(&pool.name, self.peers.idle_timeout);
        }
        log::warn!(
            request_id = ctx.request_id.as_str(), pool = pool.name.as_str(),
            backend = backend.address.as_str();
            "backend failed after receiving the request, before its response header (not resent): {e}"
        );
        errors::upstream_failed(&pool.name)
    }
}
