//! Sending one request to a backend of a pool and streaming the answer back.
//!
//! We drive Pingora's `Connector` ourselves instead of `ProxyHttp`'s upstream phases: the
//! proxy framework can replay a body it has already read only from its 64 KiB retry buffer,
//! and the body must be read first to route on `model`. Here the whole (bounded) body is in
//! hand, so any size goes upstream, and connect failures are retried on another backend.

use std::sync::Arc;

use bytes::Bytes;
use gateway_plugin_api::{ApiError, RequestCtx};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_core::protocols::http::ServerSession;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};

use super::usage::UsageObserver;
use super::Gateway;
use crate::errors;
use crate::metrics::GatewayMetrics;
use crate::routing::pool::InflightGuard;
use crate::routing::{Api, Backend, NoBackend, Pool};

/// Headers that describe one hop, not the message; never forwarded either way.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::EXPECT,
];
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Per-stream timing histograms, observed as chunks pass.
struct StreamTiming {
    first_token: prometheus::Histogram,
    gap: prometheus::Histogram,
    last: Option<std::time::Instant>,
}

impl StreamTiming {
    fn chunk(&mut self, started: std::time::Instant) {
        let now = std::time::Instant::now();
        match self.last {
            None => self.first_token.observe((now - started).as_secs_f64()),
            Some(last) => self.gap.observe((now - last).as_secs_f64()),
        }
        self.last = Some(now);
    }
}

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
}

/// A connected upstream session with the request already sent.
struct Sent {
    upstream: UpstreamSession,
    backend: Arc<Backend>,
    _inflight: InflightGuard,
}

impl Gateway {
    /// Forwards the request; `Err` means nothing was sent to the client yet and the caller
    /// answers with that error.
    pub(super) async fn forward(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        pool: &Pool,
        api: Api,
        body: Bytes,
        done: &mut Forwarded,
    ) -> Result<(), ApiError> {
        // Boxed: connecting nests Pingora's connector futures, the largest state of a request;
        // inline, every open stream would carry that size for its whole life.
        let Sent {
            mut upstream,
            backend,
            _inflight,
        } = Box::pin(self.connect_and_send(session.req_header(), api, &body, ctx, pool, done))
            .await?;
        // Sent in full and never retried from here on: a long prompt must not stay in memory
        // for the whole life of its stream.
        drop(body);

        let response = match upstream.response_header() {
            Some(h) => self.downstream_header(h, ctx)?,
            None => return Err(errors::upstream_failed(&pool.name)),
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
        let timing = self.metrics.as_ref().filter(|_| ctx.stream).map(|m| {
            let model = m.model_label(ctx.model.as_deref());
            StreamTiming {
                first_token: m.first_token.with_label_values(&[model, &pool.name]),
                gap: m.chunk_gap.with_label_values(&[model, &pool.name]),
                last: None,
            }
        });
        let upstream_done = self
            .stream_body(session, &mut upstream, ctx, &mut usage, timing, done)
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

    /// Picks backends until one accepts the request. Retries only where no byte of the
    /// request can have been processed: a refused connect, or a stale keep-alive connection.
    async fn connect_and_send(
        &self,
        client: &RequestHeader,
        api: Api,
        body: &Bytes,
        ctx: &mut RequestCtx,
        pool: &Pool,
        done: &mut Forwarded,
    ) -> Result<Sent, ApiError> {
        let mut tried: Vec<usize> = Vec::new();
        let affinity = affinity_key(ctx);
        loop {
            let index = match pool.select(&tried, affinity) {
                Ok(i) => i,
                Err(NoBackend::NoneHealthy) if done.attempts == 0 => {
                    return Err(errors::no_healthy_backend(&pool.name, pool.retry_after()))
                }
                Err(_) => return Err(errors::backends_refused(&pool.name, done.attempts)),
            };
            let backend = pool.backends[index].clone();
            ctx.backend = Some(backend.address.clone());
            done.attempts += 1;
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
                    if done.attempts as usize >= self.settings.max_connect_attempts {
                        return Err(errors::backends_refused(&pool.name, done.attempts));
                    }
                    if let Some(m) = &self.metrics {
                        m.retries.with_label_values(&[&pool.name]).inc();
                    }
                    continue;
                }
            };
            upstream.set_read_timeout(Some(self.settings.upstream_idle_timeout));
            // Built per attempt: Pingora takes the header by value, so one copy per attempt.
            let header = self.upstream_header(client, ctx, pool, api, body.len())?;
            match send(&mut upstream, header, body, ctx, self.metrics.as_deref()).await {
                Ok(()) => {
                    return Ok(Sent {
                        upstream,
                        backend,
                        _inflight: inflight,
                    })
                }
                // A pooled connection the backend had already closed: try again, fresh.
                Err(e) if reused && is_stale_connection(&e) => {
                    log::debug!(request_id = ctx.request_id.as_str(); "stale upstream connection, retrying: {e}");
                    done.attempts -= 1;
                    continue;
                }
                Err(e) if e.etype() == &ErrorType::ReadTimedout => {
                    return Err(errors::upstream_timeout(
                        &pool.name,
                        self.settings.upstream_idle_timeout,
                    ))
                }
                Err(e) => {
                    log::warn!(
                        request_id = ctx.request_id.as_str(), pool = pool.name.as_str(),
                        backend = backend.address.as_str();
                        "backend failed before its response header: {e}"
                    );
                    return Err(errors::upstream_failed(&pool.name));
                }
            }
        }
    }

    /// The client's header, minus what must not travel upstream.
    ///
    /// Edited as plain `http` parts: Pingora's header type keeps each name's case in a second
    /// map, and every insert through it costs a few thousand instructions (case copy, name
    /// re-parse, two map updates). Header-name case means nothing to HTTP/1.1 backends.
    fn upstream_header(
        &self,
        client: &RequestHeader,
        ctx: &mut RequestCtx,
        pool: &Pool,
        api: Api,
        body_len: usize,
    ) -> Result<RequestHeader, ApiError> {
        let mut parts = client.as_owned_parts();
        // Backends serve the plain OpenAI paths: drop the base path and cluster/framework.
        parts.uri = match client.uri.query() {
            None => http::Uri::from_static(api.path()),
            Some(query) => format!("{}?{query}", api.path())
                .parse()
                .map_err(|e: http::uri::InvalidUri| errors::internal(&e.to_string()))?,
        };
        let headers = &mut parts.headers;
        // The client's token is for the gateway; the backend gets the pool's own key or none.
        headers.remove(header::AUTHORIZATION);
        remove_hop_by_hop(headers);
        // The body goes upstream whole, so it is framed by its length.
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if headers.remove(header::TRANSFER_ENCODING).is_some() || declared != Some(body_len) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
        }
        if headers.get(X_REQUEST_ID).map(|v| v.as_bytes()) != Some(ctx.request_id.as_bytes()) {
            headers.insert(X_REQUEST_ID, request_id_value(ctx)?);
        }
        if let Some(auth) = &pool.authorization {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
        for plugin in self.plugins.iter() {
            plugin.on_upstream_request(headers, ctx);
        }
        Ok(RequestHeader::from(parts))
    }

    /// The backend's response header as the client gets it (plain parts, as above).
    fn downstream_header(
        &self,
        upstream: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<ResponseHeader, ApiError> {
        let mut parts = upstream.as_owned_parts();
        let headers = &mut parts.headers;
        remove_hop_by_hop(headers);
        headers.insert(X_REQUEST_ID, request_id_value(ctx)?);
        let is_sse = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if is_sse {
            // Tell an nginx or tunnel in front of us not to buffer the stream either.
            headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
        }
        let status = parts.status.as_u16();
        for plugin in self.plugins.iter() {
            plugin.on_response_header(status, headers, ctx);
        }
        Ok(ResponseHeader::from(parts))
    }

    /// Passes body chunks through as they arrive while watching the client connection.
    /// Returns true when the upstream response was read to its end.
    async fn stream_body(
        &self,
        session: &mut ServerSession,
        upstream: &mut UpstreamSession,
        ctx: &mut RequestCtx,
        usage: &mut UsageObserver,
        mut timing: Option<StreamTiming>,
        done: &mut Forwarded,
    ) -> bool {
        let mut watch_client = true;
        loop {
            tokio::select! {
                biased;
                chunk = upstream.read_response_body() => match chunk {
                    Ok(Some(chunk)) => {
                        usage.observe(&chunk);
                        if let Some(t) = &mut timing {
                            t.chunk(ctx.started);
                        }
                        for plugin in self.plugins.iter() {
                            plugin.on_response_chunk(&chunk, false, ctx);
                        }
                        if done.first_byte.is_none() {
                            done.first_byte = Some(ctx.started.elapsed());
                        }
                        done.bytes_sent += chunk.len() as u64;
                        if let Err(e) = session.write_response_body(chunk, false).await {
                            log::debug!(request_id = ctx.request_id.as_str(); "client went away mid-response: {e}");
                            done.client_aborted = true;
                            return false;
                        }
                    }
                    Ok(None) => {
                        for plugin in self.plugins.iter() {
                            plugin.on_response_chunk(&Bytes::new(), true, ctx);
                        }
                        return true;
                    }
                    Err(e) => {
                        let timed_out = e.etype() == &ErrorType::ReadTimedout;
                        done.error_code = Some(if timed_out { "upstream_timeout" } else { "upstream_error" });
                        log::warn!(
                            request_id = ctx.request_id.as_str(),
                            backend = ctx.backend.as_deref().unwrap_or("");
                            "backend response broke off mid-body: {e}"
                        );
                        return false;
                    }
                },
                idle = session.read_body_or_idle(true), if watch_client => match idle {
                    Err(_) => {
                        done.client_aborted = true;
                        return false;
                    }
                    // Pipelined bytes from the client: not a disconnect; stop watching.
                    Ok(_) => watch_client = false,
                },
            }
        }
    }
}

/// Sends the request and reads the response header. The time until the request is on its
/// way is the gateway's own overhead (everything after it is the backend's).
async fn send(
    upstream: &mut UpstreamSession,
    header: RequestHeader,
    body: &Bytes,
    ctx: &RequestCtx,
    metrics: Option<&GatewayMetrics>,
) -> pingora_error::Result<()> {
    upstream.write_request_header(Box::new(header)).await?;
    if !body.is_empty() {
        upstream.write_request_body(body.clone(), true).await?;
    }
    upstream.finish_request_body().await?;
    if let Some(m) = metrics {
        m.overhead
            .with_label_values(&[ctx.route])
            .observe(ctx.started.elapsed().as_secs_f64());
    }
    upstream.read_response_header().await
}

/// Removes the fixed hop-by-hop headers and every header the sender's `Connection` header
/// names as one (RFC 9110 §7.6.1), except those the gateway re-frames or must keep: a client
/// cannot strip `Host`, and the message length is set by the gateway on the way up and
/// checked by Pingora on the way down.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| {
            ![
                header::HOST,
                header::CONTENT_LENGTH,
                header::TRANSFER_ENCODING,
            ]
            .contains(name)
        })
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

/// The request id as a header value; ids we generate are always valid, a client's was
/// already a header value.
fn request_id_value(ctx: &RequestCtx) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&ctx.request_id).map_err(|e| errors::internal(&e.to_string()))
}

/// Whether a failed connect speaks of the backend (refused, unreachable, too slow) rather
/// than of this host (no file descriptor or port left to make a socket with).
fn backend_at_fault(e: &Error) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        match err.etype() {
            ErrorType::SocketError | ErrorType::BindError => return false,
            ErrorType::ConnectRefused | ErrorType::ConnectTimedout | ErrorType::ConnectNoRoute => {
                return true
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
    true
}

/// Errors that mean a reused keep-alive connection was already dead when we picked it.
fn is_stale_connection(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed | ErrorType::WriteError | ErrorType::ReadError
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_named_by_connection_are_hop_by_hop_but_framing_and_host_stay() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Trace-Hop , host"),
            ("connection", "content-length,transfer-encoding, bad name"),
            ("keep-alive", "timeout=5"),
            ("x-trace-hop", "1"),
            ("host", "gw.example"),
            ("content-length", "12"),
            ("x-kept", "yes"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "host", "x-kept"]);
    }

    #[test]
    fn local_socket_exhaustion_is_not_the_backends_fault() {
        let local = Error::because(
            ErrorType::InternalError,
            "Fail to connect",
            Error::explain(
                ErrorType::SocketError,
                "failed to create socket: Too many open files",
            ),
        );
        assert!(!backend_at_fault(&local));
        assert!(backend_at_fault(&Error::new(ErrorType::ConnectRefused)));
        let wrapped = Error::because(
            ErrorType::InternalError,
            "connect",
            Error::new(ErrorType::ConnectTimedout),
        );
        assert!(backend_at_fault(&wrapped));
    }
}
