//! The plugin API of inference-gateway.
//!
//! A plugin serves one [`Phase`] of a request and may watch the response. It never touches the
//! HTTP session: the core writes every response, so a plugin is testable without a server.
//! The core runs the phases in this order, whatever the order of `[[plugins]]` (that order
//! only decides among plugins of the same phase):
//!
//! 1. [`Phase::Authenticate`]: [`Plugin::authenticate`], from the request headers alone,
//!    before the body is read or `100 Continue` is sent. The first plugin that recognises the
//!    credential decides; when some plugin authenticates and none recognised it, the core
//!    answers 401.
//! 2. The core reads and parses the body, then maps the model to a pool the principal may use
//!    (404 `model_not_found`, 403 `permission_denied`).
//! 3. [`Phase::Authorize`]: [`Plugin::authorize`], with the principal, model and pool known.
//! 4. [`Phase::Admit`]: [`Plugin::admit`] (limits and quotas). Nothing before this phase may
//!    consume a budget, so refused requests (401, 403, 404, 400) never do.
//! 5. Forwarding, watched by every plugin: [`Plugin::on_upstream_request`],
//!    [`Plugin::on_response_header`], [`Plugin::on_response_chunk`] for each body chunk.
//! 6. [`Plugin::on_done`] once the request has ended, whatever the outcome, for every plugin
//!    (settling budgets, metrics, logs).
//!
//! Local routes (models, whoami, list-endpoints, jobs) run only phase 1 and `on_done`.

pub mod config;
mod context;
mod error;
pub mod metrics;
pub mod text;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use context::{Principal, RequestCtx, RequestHead, RequestSummary, Usage};
pub use error::ApiError;
pub use prometheus;

/// The phase of a request a plugin serves; see the crate documentation for the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Establishes who is asking, from the request headers ([`Plugin::authenticate`]).
    Authenticate,
    /// Decides whether the principal may make this request ([`Plugin::authorize`]).
    Authorize,
    /// Applies budgets: limits, quotas ([`Plugin::admit`]).
    Admit,
    /// Only watches the request and its response (the `on_*` hooks).
    Observe,
}

/// What an authenticator says about a request's credential.
#[derive(Debug)]
pub enum Authn {
    /// Not a credential this plugin judges (absent, or another kind): the next one tries.
    NotMine,
    /// This plugin's kind of credential, and valid: the request is this principal's. Shared:
    /// an authenticator's cache hands out the same principal to each of a user's requests
    /// (a copy was five allocations a request).
    Accepted(Arc<Principal>),
    /// This plugin's kind of credential, and refused (401), or it cannot be checked now (503).
    Refused(ApiError),
}

/// What a plugin wants the core to do after [`Plugin::authorize`] or [`Plugin::admit`].
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next plugin, then the next phase.
    Continue,
    /// Stop here and answer the client with this error.
    Respond(ApiError),
}

/// A request hook set. Every hook has a default that does nothing; the core calls only the
/// request hook of the plugin's [`Plugin::phase`], and the response hooks of every plugin.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The name used in logs (usually the `kind`).
    fn name(&self) -> &str;

    /// The phase this plugin serves.
    fn phase(&self) -> Phase;

    /// [`Phase::Authenticate`]: judges the request's credential from its headers. The body has
    /// not been read: an anonymous client costs the gateway no more than its header.
    async fn authenticate(&self, _head: &RequestHead<'_>, _ctx: &RequestCtx) -> Authn {
        Authn::NotMine
    }

    /// [`Phase::Authenticate`]: how a client gets the credential this plugin accepts, e.g.
    /// "get one with `...`". When no authenticator recognises a request's credential, the
    /// core's 401 shows the hint of the first one that has a hint. The default has none.
    fn credential_hint(&self) -> Option<&str> {
        None
    }

    /// [`Phase::Authorize`]: runs once the principal (if any), the model and the pool are known.
    /// `Flow::Respond` ends the request with that error (usually a 403).
    async fn authorize(&self, _head: &RequestHead<'_>, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue
    }

    /// [`Phase::Admit`]: runs just before forwarding, for requests every earlier phase let
    /// through. `Flow::Respond` ends the request (usually a 429); a plugin that reserves budget
    /// here settles it in [`Plugin::on_done`].
    async fn admit(&self, _head: &RequestHead<'_>, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue
    }

    /// Runs before the request header is sent upstream; may add or remove headers.
    fn on_upstream_request(&self, _headers: &mut dyn Headers, _ctx: &mut RequestCtx) {}

    /// Runs when the backend's response header arrives; may add or remove headers.
    fn on_response_header(&self, _status: u16, _headers: &mut dyn Headers, _ctx: &mut RequestCtx) {}

    /// Observes one response body chunk on its way to the client. Must not block or buffer.
    fn on_response_chunk(&self, _chunk: &Bytes, _end: bool, _ctx: &mut RequestCtx) {}

    /// Runs once when the request has ended, successfully or not.
    fn on_done(&self, _summary: &RequestSummary, _ctx: &RequestCtx) {}

    /// Runs before the process exits, after the last request: write out whatever is held in
    /// memory (e.g. log lines gathered for one write). May block briefly.
    fn flush(&self) {}
}

/// A header block a plugin may edit. The core hands plugins an `http::HeaderMap`; the trait
/// keeps plugins independent of how the core stores a header block.
pub trait Headers {
    fn get(&self, name: &str) -> Option<&http::HeaderValue>;
    fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue);
    fn remove(&mut self, name: &str);
}

impl Headers for http::HeaderMap {
    fn get(&self, name: &str) -> Option<&http::HeaderValue> {
        http::HeaderMap::get(self, name)
    }

    fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue) {
        http::HeaderMap::insert(self, name, value);
    }

    fn remove(&mut self, name: &str) {
        http::HeaderMap::remove(self, name);
    }
}

/// Builds plugins of one `kind` from their `[[plugins]]` table.
pub trait PluginFactory: Send + Sync {
    /// The `kind` value this factory answers to.
    fn kind(&self) -> &'static str;

    /// Validates `config` (the whole `[[plugins]]` table, `kind` included) and builds the
    /// plugin. `path` is the table's TOML path (e.g. `plugins[0]`); errors must name it.
    fn build(
        &self,
        config: &toml::Table,
        path: &str,
        cx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, String>;
}

/// What the core tells a factory about the rest of the configuration.
#[derive(Clone, Default)]
pub struct BuildContext {
    /// Some pool restricts access by group, so auth plugins must resolve group membership.
    pub groups_needed: bool,
    /// The server's metrics registry: plugins register their own metrics here (names start
    /// with `igw_`; no label may hold unbounded values such as users or tokens); see
    /// [`metrics`].
    pub registry: prometheus::Registry,
    /// Where a factory reads the environment variables its table names (secrets).
    pub env: Env,
}

/// Environment variables as a factory sees them: the process's by default; a test hands its
/// own instead of setting process-wide variables that tests running in parallel race on.
#[derive(Clone)]
pub struct Env(Arc<Lookup>);

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

impl Env {
    /// An environment that answers with `lookup`.
    pub fn new(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Env {
        Env(Arc::new(lookup))
    }

    /// The value of variable `name`, if it is set (and Unicode).
    pub fn var(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }
}

impl Default for Env {
    /// The process environment.
    fn default() -> Env {
        Env::new(|name| std::env::var(name).ok())
    }
}

/// The bearer token of a request, if it sent one.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
