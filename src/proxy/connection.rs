//! One client connection: bounded waits for each request header, the connection cap, and
//! the request loop's hand-off to `handle`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gateway_plugin_api::RequestCtx;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;

use super::upstream::X_REQUEST_ID;
use super::{real_client, respond, Gateway};
use crate::errors;

/// Counts one connection in `Gateway::connections` while it lives; says whether it is over
/// the cap.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(counter: &Arc<AtomicUsize>) -> (Counted, usize) {
        let open = counter.fetch_add(1, Ordering::SeqCst) + 1;
        (Counted(counter.clone()), open)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The client's `x-request-id` when it is a sane token (it reaches logs and the backend),
/// else a fresh UUID.
fn request_id(session: &ServerSession) -> String {
    let sane = |v: &[u8]| {
        !v.is_empty()
            && v.len() <= 128
            && v.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    };
    match session.get_header(X_REQUEST_ID) {
        Some(v) if sane(v.as_bytes()) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

impl Gateway {
    /// Reads the next request header. On a new connection the whole header must arrive
    /// within `client_header_timeout` of the connection. On a kept-alive one, Pingora closes
    /// it after `client_keepalive_timeout` without a byte, and the whole wait is bounded by
    /// `client_keepalive_timeout + client_header_timeout`, so a client trickling header lines
    /// is cut off either way. Both end the connection silently, as nginx does.
    async fn read_header(&self, session: &mut ServerSession, kept_alive: bool) -> bool {
        let mut limit = self.settings.client_header_timeout;
        if kept_alive {
            limit += self.settings.client_keepalive_timeout;
        }
        // Pingora's timer wheel: a tokio timer per request cost ~2k instructions.
        match pingora_timeout::timeout(limit, session.read_request()).await {
            Ok(Ok(true)) => true,
            // The client closed an idle keep-alive connection.
            Ok(Ok(false)) => false,
            Ok(Err(e)) => {
                log::debug!("reading a request header: {e}");
                false
            }
            Err(_) => {
                log::debug!("no complete request header within {limit:?}; closing");
                false
            }
        }
    }

    /// After a request header is read: how long the connection may then idle, and the
    /// request's context (its id, the real client's address).
    fn start_request(&self, session: &mut ServerSession, shutdown: &ShutdownWatch) -> RequestCtx {
        // Pingora has decided from the request whether the connection may live on (HTTP/1.0
        // without keep-alive, or `Connection: close`, may not); where it may, it idles for
        // `client_keepalive_timeout` at most instead of forever.
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            let idle = self.settings.client_keepalive_timeout.as_secs().max(1);
            session.set_keepalive(Some(idle));
        }
        let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
        let client_addr = peer.map(|p| {
            let ip = real_client(p.ip(), &session.req_header().headers, |ip| {
                self.settings.trusts(ip)
            });
            // A forwarded client's port is not known; 0 says so.
            if ip == p.ip() {
                p
            } else {
                std::net::SocketAddr::new(ip, 0)
            }
        });
        RequestCtx::new(request_id(session), client_addr)
    }

    /// Sheds a new connection past `max_connections` at once: its header was read (so the
    /// answer is an answer, not a reset), nothing else is done for it.
    async fn shed(&self, session: &mut ServerSession, ctx: &RequestCtx, open: usize) {
        session.set_keepalive(None);
        let err = errors::too_many_connections();
        respond::error(session, &err, &ctx.request_id).await;
        log::debug!(open = open as u64; "refused a connection over max_connections");
        if let Some(m) = &self.metrics {
            m.connections_refused.inc();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), session.drain_request_body()).await;
    }
}

#[async_trait]
impl HttpServerApp for Gateway {
    /// Serves a connection's requests one after another. Pingora's own keep-alive loop would
    /// call this once a request and box its future each time (a 5.8 KB copy, an allocation
    /// and the session moved twice more a request); looping here builds it once a connection.
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let (_counted, open) = Counted::new(&self.connections);
        let mut kept_alive = false;
        // One receiver for the connection's whole life, not a clone a request.
        let mut stopping = shutdown.clone();
        loop {
            if let ServerSession::H1(h1) = &mut session {
                // The backend's request is built from the parsed names
                // (`upstream::upstream_header`): the case map Pingora fills per header (a
                // hash and an insert each) would never be read.
                h1.set_keep_header_case(false);
            }
            let read = if kept_alive {
                tokio::select! {
                    biased;
                    read = self.read_header(&mut session, kept_alive) => read,
                    // Shutting down: an idle keep-alive connection is closed, as nginx does,
                    // so that the drain can end. A request already on the wire was read above.
                    _ = stopping.wait_for(|stop| *stop) => return None,
                }
            } else {
                // A new connection was accepted before the listeners closed (or before an
                // upgrade's hand-over): its client is sending its first request and gets an
                // answer; `client_header_timeout` bounds the wait.
                self.read_header(&mut session, kept_alive).await
            };
            if !read {
                return None;
            }
            let mut ctx = self.start_request(&mut session, shutdown);
            if !kept_alive && open > self.settings.max_connections {
                self.shed(&mut session, &ctx, open).await;
                return None;
            }
            // One configuration snapshot for the whole request: a reload meanwhile changes
            // the next request, never this one.
            let snapshot = self.live.load_full();
            let summary = self.handle(&snapshot, &mut session, &mut ctx).await;
            for plugin in snapshot.chain.all.iter() {
                plugin.on_done(&summary, &ctx);
            }
            if summary.truncated || summary.error_code == Some("client_closed_request") {
                // `finish` would end the chunked body properly and make a cut-short response
                // look complete; close the connection instead so the client sees it.
                session.shutdown().await;
                return None;
            }
            let persistent = HttpPersistentSettings::for_session(&session);
            // Pingora's `Session::finish`, with HTTP/1 taken directly and in place: the
            // generic future holds every protocol's finish and the session twice (~3.7 KB).
            let finished = match session {
                ServerSession::H1(mut h1) => match h1.finish_body().await {
                    Ok(_) => h1.reuse().await,
                    Err(e) => Err(e),
                },
                other => Box::pin(other.finish()).await,
            };
            let reusable = match finished {
                Ok(Some(reusable)) => reusable,
                Ok(None) => return None,
                Err(e) => {
                    log::debug!(request_id = ctx.request_id.as_str(); "finishing the session: {e}");
                    return None;
                }
            };
            // What Pingora's loop does between requests: a fresh session on the same stream
            // that keeps the keep-alive settings and any pipelined bytes already read.
            let (stream, settings) =
                ReusedHttpStream::from_reusable_stream(reusable, persistent).consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            kept_alive = true;
        }
    }
}
