//! The HTTP application: one request in, routed, answered locally or forwarded.
//!
//! Flow per request (see design.md): request id → route match → local answer, or read the
//! body (bounded) → parse `model`/`stream` → plugins' `on_request` → model → pool → backend
//! (`forward.rs`) → stream the response through → plugins' `on_done`.

mod body;
mod forward;
mod local;
mod respond;
pub mod usage;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use gateway_plugin_api::{ApiError, Flow, Plugin, RequestCtx, RequestHead, RequestSummary};
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;

use crate::config::ServerConfig;
use crate::errors;
use crate::metrics::{status_class, GatewayMetrics};
use crate::routing::{match_route, Api, ModelTable, Route, Target};
use forward::Forwarded;
use respond::Sent;

pub use body::parse_routing_fields;

/// How long an unread request body is drained after an early error answer.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Gateway {
    settings: ServerConfig,
    table: Arc<ModelTable>,
    plugins: Arc<[Arc<dyn Plugin>]>,
    connector: Connector,
    metrics: Option<Arc<GatewayMetrics>>,
    /// Some plugin authenticates: requests no plugin recognised are refused.
    auth_required: bool,
    /// `created` of every model in `/v1/models`: when this configuration was loaded.
    loaded_at: u64,
    /// Client connections inside `process_new_http`, idle keep-alive ones included: the
    /// server exits early once this is zero after SIGTERM (see `server::exit_when_drained`).
    connections: Arc<AtomicUsize>,
}

/// Counts one connection in `Gateway::connections` while it lives.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(counter: &Arc<AtomicUsize>) -> Counted {
        counter.fetch_add(1, Ordering::SeqCst);
        Counted(counter.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gateway {
    pub fn new(
        settings: ServerConfig,
        table: Arc<ModelTable>,
        plugins: Vec<Arc<dyn Plugin>>,
        metrics: Option<Arc<GatewayMetrics>>,
    ) -> Gateway {
        Gateway {
            metrics,
            settings,
            table,
            auth_required: plugins.iter().any(|p| p.authenticates()),
            plugins: plugins.into(),
            connector: Connector::new(None),
            loaded_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many client connections are being served or kept alive right now.
    pub fn connections(&self) -> Arc<AtomicUsize> {
        self.connections.clone()
    }

    /// Handles one request; the summary is what `on_done` sees.
    async fn handle(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> RequestSummary {
        let mut summary = RequestSummary::default();
        let path = session.req_header().uri.path().to_string();
        let route = match_route(&self.settings.base_path, &path);
        ctx.route = route.name();
        if let Route::Inference {
            target: Some(t), ..
        }
        | Route::Models { target: Some(t) } = route
        {
            ctx.cluster = Some(t.cluster.to_string());
            ctx.framework = Some(t.framework.to_string());
        }
        let method_ok = session.req_header().method.as_str() == route.method();
        let result = match route {
            Route::NotFound => Err(errors::not_found(&path)),
            _ if !method_ok => Err(errors::method_not_allowed(
                session.req_header().method.as_str(),
                route.method(),
            )),
            Route::Ready => {
                let ready = self.table.pools.iter().any(|p| p.healthy_count() > 0);
                let (status, text) = if ready {
                    (200, "ready")
                } else {
                    (503, "no healthy backend")
                };
                Ok(self
                    .reply(session, ctx, status, serde_json::json!({"status": text}))
                    .await)
            }
            Route::Jobs { cluster } => match self.run_on_request(session, ctx).await {
                Ok(()) => {
                    let jobs = local::jobs(&self.table, cluster);
                    Ok(self.reply(session, ctx, 200, jobs).await)
                }
                Err(e) => Err(e),
            },
            Route::Health => Ok(self
                .reply(session, ctx, 200, serde_json::json!({"status": "ok"}))
                .await),
            Route::Models { target } => match self.run_on_request(session, ctx).await {
                Ok(()) => {
                    let principal = ctx.principal.as_ref();
                    let list = local::models(&self.table, target, principal, self.loaded_at);
                    Ok(self.reply(session, ctx, 200, list).await)
                }
                Err(e) => Err(e),
            },
            Route::Whoami => match self.run_on_request(session, ctx).await {
                Ok(()) => match ctx.principal.as_ref().map(local::whoami) {
                    Some(me) => Ok(self.reply(session, ctx, 200, me).await),
                    None => Err(errors::missing_token()),
                },
                Err(e) => Err(e),
            },
            Route::ListEndpoints => match self.run_on_request(session, ctx).await {
                Ok(()) => {
                    let list = local::list_endpoints(&self.table, &self.settings.base_path);
                    Ok(self.reply(session, ctx, 200, list).await)
                }
                Err(e) => Err(e),
            },
            Route::Inference { api, target } => {
                let mut forwarded = Forwarded::default();
                let outcome = self
                    .inference(session, ctx, api, target, &mut summary, &mut forwarded)
                    .await;
                summary.upstream_attempts = forwarded.attempts;
                summary.first_byte = forwarded.first_byte;
                summary.client_aborted = forwarded.client_aborted;
                summary.truncated = forwarded.truncated;
                summary.error_code = forwarded.error_code;
                outcome.map(|()| Sent {
                    status: forwarded.status,
                    bytes: forwarded.bytes_sent,
                })
            }
        };
        let sent = match result {
            Ok(sent) => sent,
            Err(err) => {
                summary.error_code = Some(err.code);
                if err.status >= 500 {
                    log::warn!(
                        request_id = ctx.request_id.as_str(), route = ctx.route, code = err.code;
                        "{}", err.message
                    );
                }
                let unread_body = !session.is_body_done();
                if unread_body {
                    // The body may still be on the wire; never parse it as the next request.
                    session.set_keepalive(None);
                }
                let sent = respond::error(session, &err, &ctx.request_id).await;
                if unread_body {
                    // Lingering close: a client still sending would get a reset instead of our
                    // answer if we closed now, so discard its body for a bounded while.
                    let _ = tokio::time::timeout(LINGER, session.drain_request_body()).await;
                }
                sent
            }
        };
        summary.status = sent.status;
        summary.bytes_sent = sent.bytes;
        summary.bytes_received = session.body_bytes_read() as u64;
        summary.duration = ctx.started.elapsed();
        if let Some(m) = &self.metrics {
            self.record(m, &summary, ctx);
        }
        summary
    }

    fn record(&self, m: &GatewayMetrics, summary: &RequestSummary, ctx: &RequestCtx) {
        let model = m.model_label(ctx.model.as_deref());
        let pool = ctx.pool.as_deref().unwrap_or("");
        m.requests
            .with_label_values(&[ctx.route, model, pool, status_class(summary.status)])
            .inc();
        m.duration
            .with_label_values(&[ctx.route, model, pool])
            .observe(summary.duration.as_secs_f64());
        if let Some(usage) = ctx.usage {
            m.tokens
                .with_label_values(&[model, "prompt"])
                .inc_by(usage.prompt_tokens as f64);
            m.tokens
                .with_label_values(&[model, "completion"])
                .inc_by(usage.completion_tokens as f64);
        }
    }

    async fn inference(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        api: Api,
        target: Option<Target<'_>>,
        summary: &mut RequestSummary,
        forwarded: &mut Forwarded,
    ) -> Result<(), ApiError> {
        let body = body::read_body(
            session,
            self.settings.max_request_body,
            self.settings.client_body_timeout,
        )
        .await?;
        summary.bytes_received = body.len() as u64;
        let fields = parse_routing_fields(&body)?;
        ctx.model = Some(fields.model.into_owned());
        ctx.stream = fields.stream && api != Api::Embeddings;
        ctx.max_tokens = fields.max_tokens;
        ctx.body_bytes = body.len() as u64;
        self.run_on_request(session, ctx).await?;
        let model = ctx.model.as_deref().unwrap_or_default();
        let pool = self.table.resolve(model, target, ctx.principal.as_ref())?;
        ctx.pool = Some(pool.name.clone());
        self.forward(session, ctx, &pool, api, body, forwarded)
            .await
    }

    async fn run_on_request(
        &self,
        session: &ServerSession,
        ctx: &mut RequestCtx,
    ) -> Result<(), ApiError> {
        let req = session.req_header();
        let head = RequestHead {
            method: &req.method,
            uri: &req.uri,
            headers: &req.headers,
        };
        for plugin in self.plugins.iter() {
            if let Flow::Respond(err) = plugin.on_request(&head, ctx).await {
                return Err(err);
            }
        }
        if self.auth_required && ctx.principal.is_none() {
            return Err(errors::missing_token());
        }
        Ok(())
    }

    async fn reply(
        &self,
        session: &mut ServerSession,
        ctx: &RequestCtx,
        status: u16,
        body: serde_json::Value,
    ) -> Sent {
        match serde_json::to_vec(&body) {
            Ok(bytes) => respond::json(session, status, bytes, &ctx.request_id, &[]).await,
            Err(e) => {
                respond::error(session, &errors::internal(&e.to_string()), &ctx.request_id).await
            }
        }
    }
}

/// The client's `x-request-id` when it is a sane token, else a fresh UUID.
fn request_id(session: &ServerSession) -> String {
    let sane = |v: &[u8]| {
        !v.is_empty()
            && v.len() <= 128
            && v.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    };
    match session.get_header("x-request-id") {
        Some(v) if sane(v.as_bytes()) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let _counted = Counted::new(&self.connections);
        let mut stopping = shutdown.clone();
        let read = tokio::select! {
            biased;
            read = session.read_request() => read,
            // Shutting down: an idle keep-alive connection is closed, as nginx does, so that
            // the drain can end. A request already on the wire was read by the branch above.
            _ = stopping.wait_for(|stop| *stop) => return None,
        };
        match read {
            Ok(true) => {}
            // The client closed an idle keep-alive connection, or sent garbage.
            Ok(false) => return None,
            Err(e) => {
                log::debug!("reading request header: {e}");
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let client_addr = session.client_addr().and_then(|a| a.as_inet()).copied();
        let mut ctx = RequestCtx::new(request_id(&session), client_addr);
        let summary = self.handle(&mut session, &mut ctx).await;
        for plugin in self.plugins.iter() {
            plugin.on_done(&summary, &ctx);
        }
        if summary.truncated {
            // `finish` would end the chunked body properly and make a cut-short response look
            // complete; close the connection instead so the client sees the truncation.
            session.shutdown().await;
            return None;
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent)),
            Err(e) => {
                log::debug!(request_id = ctx.request_id.as_str(); "finishing the session: {e}");
                None
            }
        }
    }
}
