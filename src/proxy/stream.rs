//! The observe phase: the response body passes through chunk by chunk as it arrives (Bytes,
//! no copy, no re-framing) while usage, timing and the client connection are watched on the
//! side.

use bytes::Bytes;
use futures_util::FutureExt;
use gateway_plugin_api::{RequestCtx, RequestSummary};
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_core::protocols::http::{HttpTask, ServerSession};
use pingora_error::ErrorType;

use super::forward::Forwarder;
use super::retry::client_left;
use super::usage::UsageObserver;
use crate::metrics::GatewayMetrics;
use crate::routing::Backend;

/// Per-stream timing histograms, observed as chunks pass.
pub struct StreamTiming {
    first_token: prometheus::Histogram,
    gap: prometheus::Histogram,
    last: Option<std::time::Instant>,
}

impl StreamTiming {
    /// The histograms' children for this model and pool, resolved once per stream. A stream
    /// exists only for a model its pool serves, so the model is its own label.
    pub fn new(m: &GatewayMetrics, model: Option<&str>, pool: &str) -> StreamTiming {
        let model = model.unwrap_or_default();
        StreamTiming {
            first_token: m.first_token.with_label_values(&[model, pool]),
            gap: m.chunk_gap.with_label_values(&[model, pool]),
            last: None,
        }
    }

    fn chunk(&mut self, started: std::time::Instant) {
        let now = std::time::Instant::now();
        match self.last {
            None => self.first_token.observe((now - started).as_secs_f64()),
            Some(last) => self.gap.observe((now - last).as_secs_f64()),
        }
        self.last = Some(now);
    }
}

/// What watches each chunk as it passes.
pub struct Watchers<'a> {
    pub usage: &'a mut UsageObserver,
    pub timing: Option<StreamTiming>,
    /// Told of every chunk of a non-5xx answer: response bytes flowing are evidence the
    /// backend is alive.
    pub alive: Option<&'a Backend>,
}

/// At most this many chunks, or this many bytes, go out in one write (see `stream_body`).
const GATHER_CHUNKS: usize = 64;
const GATHER_BYTES: usize = 64 << 10;

impl Forwarder {
    /// Passes body chunks through as they arrive while watching the client connection.
    /// Returns true when the upstream response was read to its end.
    ///
    /// Chunks that are already there when one arrives (Pingora holds them, or the socket
    /// has them) go out with it in one write: a burst of SSE events costs one syscall, not
    /// one each. Tokens a GPU server sends one by one find nothing more, and the read that
    /// finds nothing is the one the next turn of the loop would have made anyway.
    pub(super) async fn stream_body(
        &self,
        session: &mut ServerSession,
        upstream: &mut UpstreamSession,
        ctx: &mut RequestCtx,
        mut watch: Watchers<'_>,
        done: &mut RequestSummary,
    ) -> bool {
        let mut watch_client = true;
        loop {
            tokio::select! {
                biased;
                chunk = upstream.read_response_body() => match chunk {
                    Ok(Some(chunk)) => {
                        self.watch_chunk(&chunk, ctx, &mut watch, done);
                        let mut first = Some(chunk);
                        let mut batch: Vec<HttpTask> = Vec::new();
                        let mut gathered = first.as_ref().map_or(0, Bytes::len);
                        let mut ended = false;
                        let mut broke = None;
                        // The probes never wait, so they need no timer: with a read timeout
                        // set, Pingora registers one for every read it starts.
                        upstream.set_read_timeout(None);
                        while batch.len() < GATHER_CHUNKS && gathered < GATHER_BYTES {
                            match upstream.read_response_body().now_or_never() {
                                Some(Ok(Some(next))) => {
                                    self.watch_chunk(&next, ctx, &mut watch, done);
                                    gathered += next.len();
                                    if let Some(first) = first.take() {
                                        batch.push(HttpTask::Body(Some(first), false));
                                    }
                                    batch.push(HttpTask::Body(Some(next), false));
                                }
                                Some(Ok(None)) => {
                                    ended = true;
                                    break;
                                }
                                Some(Err(e)) => {
                                    broke = Some(e);
                                    break;
                                }
                                None => break,
                            }
                        }
                        upstream.set_read_timeout(Some(self.peers.idle_timeout));
                        let written = match first {
                            Some(chunk) => session.write_response_body(chunk, false).await,
                            None => session.response_duplex_vec(batch).await.map(|_| ()),
                        };
                        if let Err(e) = written {
                            log::debug!(request_id = ctx.request_id.as_str(); "client went away mid-response: {e}");
                            done.client_aborted = true;
                            return false;
                        }
                        if let Some(e) = broke {
                            return upstream_broke(&e, ctx, done);
                        }
                        if ended {
                            return self.upstream_ended(ctx, &watch);
                        }
                    }
                    Ok(None) => return self.upstream_ended(ctx, &watch),
                    Err(e) => return upstream_broke(&e, ctx, done),
                },
                idle = session.read_body_or_idle(true), if watch_client => {
                    if client_left(idle) {
                        done.client_aborted = true;
                        return false;
                    }
                    // Bytes after the body (a stray CRLF, a pipelined request): not a
                    // disconnect. Stop watching; the connection will not be reused.
                    session.set_keepalive(None);
                    watch_client = false;
                }
            }
        }
    }

    /// What is observed of each chunk on its way: progress, usage, timing, plugins, bytes.
    fn watch_chunk(
        &self,
        chunk: &Bytes,
        ctx: &mut RequestCtx,
        watch: &mut Watchers<'_>,
        done: &mut RequestSummary,
    ) {
        if let Some(b) = watch.alive {
            b.saw_progress();
        }
        watch.usage.observe(chunk);
        if let Some(t) = &mut watch.timing {
            t.chunk(ctx.started);
        }
        for plugin in self.plugins.iter() {
            plugin.on_response_chunk(chunk, false, ctx);
        }
        if done.first_byte.is_none() {
            done.first_byte = Some(ctx.started.elapsed());
        }
        done.bytes_sent += chunk.len() as u64;
    }

    /// The upstream body ended; returns true (read to its end).
    fn upstream_ended(&self, ctx: &mut RequestCtx, watch: &Watchers<'_>) -> bool {
        if let Some(b) = watch.alive {
            b.saw_progress();
        }
        for plugin in self.plugins.iter() {
            plugin.on_response_chunk(&Bytes::new(), true, ctx);
        }
        true
    }
}

/// The backend's answer broke off mid-body; returns false (not read to its end).
fn upstream_broke(e: &pingora_error::Error, ctx: &RequestCtx, done: &mut RequestSummary) -> bool {
    let timed_out = e.etype() == &ErrorType::ReadTimedout;
    done.error_code = Some(if timed_out {
        "upstream_timeout"
    } else {
        "upstream_error"
    });
    log::warn!(
        request_id = ctx.request_id.as_str(),
        backend = ctx.backend.as_deref().unwrap_or("");
        "backend response broke off mid-body: {e}"
    );
    false
}
