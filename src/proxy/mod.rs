//! The HTTP application: one request in, routed, answered locally or forwarded.
//!
//! The phases of a request, in this order whatever the order of `[[plugins]]` (design.md):
//! route → authenticate (headers only) → read and parse the body → authorize (model → pool
//! the principal may use, then authorize plugins) → admit (limits) → forward → observe.
//! A request that fails a phase never reaches the next, so a refused request never reads a
//! body it does not need or consumes a budget.

mod body;
mod connection;
mod forward;
mod forwarded;
mod local;
mod respond;
mod retry;
mod stream;
mod upstream;
pub mod usage;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gateway_plugin_api::{ApiError, Authn, Flow, RequestCtx, RequestHead, RequestSummary};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::ServerSession;

use crate::config::ServerConfig;
use crate::errors;
use crate::metrics::{status_class, GatewayMetrics};
use crate::plugins::Chain;
use crate::routing::{match_route, Api, ModelTable, Pool, Route, Target};
use forward::Forwarded;
use forwarded::Origin;
use respond::Sent;

pub use body::parse_routing_fields;
pub use forwarded::real_client;

/// How long an unread request body is drained after an early error answer.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Gateway {
    settings: ServerConfig,
    table: Arc<ModelTable>,
    chain: Chain,
    connector: Connector,
    metrics: Option<Arc<GatewayMetrics>>,
    /// `created` of every model in `/v1/models`: when this configuration was loaded.
    loaded_at: u64,
    /// Client connections inside `process_new_http`, idle keep-alive ones included: bounds
    /// `max_connections`, and the server exits early once this is zero after SIGTERM (see
    /// `server::exit_when_drained`).
    connections: Arc<AtomicUsize>,
}

/// Why a request stopped before a backend answered it.
pub enum Stop {
    /// Answer the client with this error (nothing was sent to it yet).
    Answer(ApiError),
    /// The client went away while the backend was working: nothing to answer, and the
    /// upstream connection was closed so that the backend stops.
    ClientGone,
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Self {
        Stop::Answer(e)
    }
}

fn head(session: &ServerSession) -> RequestHead<'_> {
    let req = session.req_header();
    RequestHead {
        method: &req.method,
        uri: &req.uri,
        headers: &req.headers,
    }
}

impl Gateway {
    pub fn new(
        settings: ServerConfig,
        table: Arc<ModelTable>,
        chain: Chain,
        metrics: Option<Arc<GatewayMetrics>>,
    ) -> Gateway {
        Gateway {
            metrics,
            settings,
            table,
            chain,
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
        let mut forwarded = Forwarded::default();
        let result = self.phases(session, ctx, &mut forwarded).await;
        summary.upstream_attempts = forwarded.attempts;
        summary.first_byte = forwarded.first_byte;
        summary.client_aborted = forwarded.client_aborted;
        summary.truncated = forwarded.truncated;
        summary.error_code = forwarded.error_code;
        summary.panic_routed = forwarded.panic_routed;
        let sent = match result {
            Ok(sent) => sent,
            Err(Stop::ClientGone) => {
                // Nothing reached the client; logged as nginx does, 499.
                summary.error_code = Some("client_closed_request");
                session.set_keepalive(None);
                Sent {
                    status: 499,
                    bytes: 0,
                }
            }
            Err(Stop::Answer(err)) => self.answer_error(session, ctx, &err, &mut summary).await,
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

    /// The phases of one request, in order; each returns early with its answer.
    async fn phases(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        forwarded: &mut Forwarded,
    ) -> Result<Sent, Stop> {
        let path = session.req_header().uri.path().to_string();
        let route = self.route(session, ctx, &path)?;
        match route {
            Route::Health => return Ok(self.reply(session, ctx, 200, local::health()).await),
            Route::Ready => {
                let (status, body) = local::ready(&self.table);
                return Ok(self.reply(session, ctx, status, body).await);
            }
            _ => {}
        }
        self.authenticate(session, ctx).await?;
        let (api, target) = match route {
            Route::Inference { api, target } => (api, target),
            other => return Ok(self.answer_locally(session, ctx, other).await?),
        };
        let body = self.read_body(session, ctx, api).await?;
        let pool = self.authorize(session, ctx, target).await?;
        self.admit(session, ctx).await?;
        self.forward(session, ctx, &pool, api, body, forwarded)
            .await?;
        Ok(Sent {
            status: forwarded.status,
            bytes: forwarded.bytes_sent,
        })
    }

    /// Phase 1: the route and its method.
    fn route<'p>(
        &self,
        session: &ServerSession,
        ctx: &mut RequestCtx,
        path: &'p str,
    ) -> Result<Route<'p>, ApiError> {
        let route = match_route(&self.settings.base_path, path);
        ctx.route = route.name();
        if let Route::Inference {
            target: Some(t), ..
        }
        | Route::Models { target: Some(t) } = route
        {
            ctx.cluster = Some(t.cluster.to_string());
            ctx.framework = Some(t.framework.to_string());
        }
        let method = session.req_header().method.as_str();
        match route {
            Route::NotFound => Err(errors::not_found(path)),
            _ if method != route.method() => {
                Err(errors::method_not_allowed(method, route.method()))
            }
            _ => Ok(route),
        }
    }

    /// Phase 2: the first authenticator that recognises the credential decides; when some
    /// plugin authenticates and none did, 401. Only the headers are read.
    async fn authenticate(
        &self,
        session: &ServerSession,
        ctx: &mut RequestCtx,
    ) -> Result<(), ApiError> {
        let head = head(session);
        for plugin in self.chain.authenticate.iter() {
            match plugin.authenticate(&head, ctx).await {
                Authn::NotMine => continue,
                Authn::Accepted(principal) => {
                    ctx.principal = Some(principal);
                    return Ok(());
                }
                Authn::Refused(err) => return Err(err),
            }
        }
        if self.chain.authenticates() {
            return Err(errors::missing_token());
        }
        Ok(())
    }

    /// Phase 3: the body, bounded in size and time, and the fields routing and limits need.
    async fn read_body(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        api: Api,
    ) -> Result<Bytes, ApiError> {
        let body = body::read_body(
            session,
            self.settings.max_request_body,
            self.settings.client_body_timeout,
        )
        .await?;
        let fields = parse_routing_fields(&body, self.settings.max_tokens_limit)?;
        ctx.model = Some(fields.model.into_owned());
        ctx.stream = fields.stream && api != Api::Embeddings;
        ctx.max_tokens = fields.max_tokens;
        ctx.choices = fields.choices;
        ctx.body_bytes = body.len() as u64;
        Ok(body)
    }

    /// Phase 4: a pool that serves the model and admits the principal (404, 403), then the
    /// authorize plugins.
    async fn authorize(
        &self,
        session: &ServerSession,
        ctx: &mut RequestCtx,
        target: Option<Target<'_>>,
    ) -> Result<Arc<Pool>, ApiError> {
        let model = ctx.model.as_deref().unwrap_or_default();
        let pool = self.table.resolve(model, target, ctx.principal.as_ref())?;
        ctx.pool = Some(pool.name.clone());
        let head = head(session);
        for plugin in self.chain.authorize.iter() {
            if let Flow::Respond(err) = plugin.authorize(&head, ctx).await {
                return Err(err);
            }
        }
        Ok(pool)
    }

    /// Phase 5: budgets. Only requests every earlier phase let through get here.
    async fn admit(&self, session: &ServerSession, ctx: &mut RequestCtx) -> Result<(), ApiError> {
        let head = head(session);
        for plugin in self.chain.admit.iter() {
            if let Flow::Respond(err) = plugin.admit(&head, ctx).await {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Where this request comes from, for the upstream's forwarding headers.
    fn origin(&self, session: &ServerSession) -> Origin {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        Origin {
            peer,
            trusted: peer.is_some_and(|ip| self.settings.trusts(ip)),
        }
    }

    /// The routes the gateway answers itself, for an authenticated caller.
    async fn answer_locally(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        route: Route<'_>,
    ) -> Result<Sent, ApiError> {
        let principal = ctx.principal.as_ref();
        let body = match route {
            Route::Models { target } => {
                local::models(&self.table, target, principal, self.loaded_at)
            }
            Route::ListEndpoints => {
                local::list_endpoints(&self.table, &self.settings.base_path, principal)
            }
            Route::Jobs { cluster } => local::jobs(&self.table, cluster, principal),
            Route::Whoami => match principal {
                Some(p) => local::whoami(p),
                None => return Err(errors::missing_token()),
            },
            other => {
                return Err(errors::internal(&format!(
                    "{} is not a local route",
                    other.name()
                )))
            }
        };
        Ok(self.reply(session, ctx, 200, body).await)
    }

    async fn answer_error(
        &self,
        session: &mut ServerSession,
        ctx: &RequestCtx,
        err: &ApiError,
        summary: &mut RequestSummary,
    ) -> Sent {
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
        let sent = respond::error(session, err, &ctx.request_id).await;
        if unread_body {
            // Lingering close: a client still sending would get a reset instead of our
            // answer if we closed now, so discard (never buffer or parse) its body for a
            // bounded while.
            let _ = tokio::time::timeout(LINGER, session.drain_request_body()).await;
        }
        sent
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
