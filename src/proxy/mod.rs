//! The HTTP application: one request in, routed, answered locally or forwarded.
//!
//! The phases of a request, in this order whatever the order of `[[plugins]]` (README.md, "Architecture"):
//! route → authenticate (headers only) → read and parse the body → authorize (model → pool
//! the principal may use, then authorize plugins) → admit (limits) → forward → observe.
//! A request that fails a phase never reaches the next, so a refused request never reads a
//! body it does not need or consumes a budget.

// One file a phase: route.rs → authenticate.rs → body.rs → authorize.rs → admit.rs →
// forward.rs (connect.rs picks and writes) → stream.rs (observe). `phases()` calls them in
// that order; the other modules are what they use.
mod admit;
mod authenticate;
mod authorize;
mod body;
mod forward;
mod route;
mod stream;

mod connect;
mod connection;
mod forwarded;
mod idle_pool;
mod local;
mod peer;
mod respond;
mod retry;
mod upstream;
pub mod usage;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gateway_plugin_api::{ApiError, RequestCtx, RequestHead, RequestSummary};
use pingora_core::protocols::http::ServerSession;

use crate::config::ServerConfig;
use crate::metrics::GatewayMetrics;
use crate::plugins::Chain;
use crate::routing::{ModelTable, Route};
use forward::Forwarder;
use forwarded::Origin;
use respond::Sent;

pub use body::{expect_body, parse_routing_fields, read_body};
pub use forwarded::real_client;
pub use idle_pool::BackendConnections;

pub use peer::PeerSettings;

/// What a request runs on: the model table, the plugins and the forwarder of one configuration.
/// A reload builds a new one and swaps it in; requests that started on the old one finish on it.
pub struct Snapshot {
    pub table: Arc<ModelTable>,
    pub chain: Chain,
    forwarder: Forwarder,
    /// `created` of every model in `/v1/models`: when this configuration was loaded.
    loaded_at: u64,
}

impl Snapshot {
    /// `backends` is shared by every snapshot, so kept-alive upstream connections outlive a
    /// reload.
    pub fn new(
        settings: &ServerConfig,
        table: Arc<ModelTable>,
        chain: Chain,
        backends: Arc<BackendConnections>,
        metrics: Option<Arc<GatewayMetrics>>,
    ) -> Snapshot {
        let forwarder = Forwarder {
            backends,
            peers: PeerSettings::new(settings),
            max_connect_attempts: settings.max_connect_attempts,
            plugins: chain.all.clone(),
            metrics,
        };
        Snapshot {
            table,
            chain,
            forwarder,
            loaded_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
        }
    }
}

/// The snapshot in force, swapped whole by a reload.
pub type Live = Arc<arc_swap::ArcSwap<Snapshot>>;

pub struct Gateway {
    settings: ServerConfig,
    live: Live,
    metrics: Option<Arc<GatewayMetrics>>,
    /// Client connections inside `process_new_http`, idle keep-alive ones included: bounds
    /// `max_connections`, and the server exits early once this is zero after SIGTERM (see
    /// `server::exit_when_drained`).
    connections: Arc<AtomicUsize>,
    /// The batch engine, when `[batch]` is configured.
    batches: Option<Arc<crate::batch::Engine>>,
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
        live: Live,
        metrics: Option<Arc<GatewayMetrics>>,
        batches: Option<Arc<crate::batch::Engine>>,
    ) -> Gateway {
        Gateway {
            metrics,
            settings,
            live,
            connections: Arc::new(AtomicUsize::new(0)),
            batches,
        }
    }

    /// How many client connections are being served or kept alive right now.
    pub fn connections(&self) -> Arc<AtomicUsize> {
        self.connections.clone()
    }

    /// Handles one request; the summary is what `on_done` sees.
    async fn handle(
        &self,
        snapshot: &Snapshot,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> RequestSummary {
        let mut summary = RequestSummary::default();
        let sent = match self.phases(snapshot, session, ctx, &mut summary).await {
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
            Err(Stop::Answer(err)) => respond::refuse(session, ctx, &err, &mut summary).await,
        };
        summary.status = sent.status;
        summary.bytes_sent = sent.bytes;
        summary.bytes_received = session.body_bytes_read() as u64;
        summary.duration = ctx.started.elapsed();
        if let Some(m) = &self.metrics {
            m.record(&summary, ctx, &snapshot.table);
        }
        summary
    }

    /// The phases of one request, in order (README.md, "Architecture"); each returns early with its answer.
    async fn phases(
        &self,
        snap: &Snapshot,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        summary: &mut RequestSummary,
    ) -> Result<Sent, Stop> {
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.as_str();
        let route = route::route(&self.settings.base_path, method, &path, ctx)?;
        if let Some((status, body)) = status_route(&snap.table, &route) {
            return Ok(respond::reply(session, ctx, status, &body).await);
        }
        authenticate::authenticate(&snap.chain.authenticate, &head(session), ctx).await?;
        let (api, target) = match route {
            Route::Inference { api, target } => (api, target),
            // Boxed, as rarer routes: their futures (the batch store's queries) are larger
            // than the inference path's, and inline every request's future would be as large.
            Route::Batches { .. } | Route::Files { .. } => {
                return Ok(Box::pin(self.answer_batches(session, ctx, route)).await?)
            }
            local => return Ok(Box::pin(self.answer_locally(snap, session, ctx, local)).await?),
        };
        let body = body::read(session, &self.settings, ctx, api).await?;
        let pool = authorize::authorize(
            &snap.table,
            &snap.chain.authorize,
            &head(session),
            ctx,
            target,
        )
        .await?;
        admit::admit(&snap.chain.admit, &head(session), ctx).await?;
        let origin = Origin::of(session, |ip| self.settings.trusts(ip));
        snap.forwarder
            .forward(session, ctx, &pool, api, body, origin, summary)
            .await
    }

    /// The batch and file routes, answered by the batch engine.
    async fn answer_batches(
        &self,
        session: &mut ServerSession,
        ctx: &RequestCtx,
        route: Route<'_>,
    ) -> Result<Sent, ApiError> {
        use crate::batch::Answer;
        match crate::batch::answer(self.batches.as_ref(), session, ctx, route).await? {
            Answer::Json(status, body) => Ok(respond::reply(session, ctx, status, &body).await),
            Answer::File { path, bytes } => Ok(respond::file(session, ctx, &path, bytes).await),
        }
    }

    /// The routes the gateway answers itself (model lists, endpoints, jobs, whoami).
    async fn answer_locally(
        &self,
        snap: &Snapshot,
        session: &mut ServerSession,
        ctx: &RequestCtx,
        route: Route<'_>,
    ) -> Result<Sent, ApiError> {
        let view = local::LocalView {
            table: &snap.table,
            base_path: &self.settings.base_path,
            loaded_at: snap.loaded_at,
            batches: self.batches.is_some(),
        };
        let body = local::answer(&view, route, ctx.principal.as_deref())?;
        Ok(respond::reply(session, ctx, 200, &body).await)
    }
}

/// Liveness and readiness: answered before authentication, for load balancers and probes.
fn status_route(table: &ModelTable, route: &Route<'_>) -> Option<(u16, serde_json::Value)> {
    match route {
        Route::Health => Some((200, local::health())),
        Route::Ready => Some(local::ready(table)),
        _ => None,
    }
}
