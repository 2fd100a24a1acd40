//! The plugin API of inference-gateway.
//!
//! A plugin observes and steers requests through a fixed set of hooks. It never touches the
//! HTTP session: the core writes every response, so a plugin is testable without a server.
//! The core calls, per proxied request and in `[[plugins]]` order:
//!
//! 1. [`Plugin::on_request`] once the request body is read and the model is known, before a
//!    backend is chosen (auth, limits, ACL). The first [`Flow::Respond`] ends the request.
//! 2. [`Plugin::on_upstream_request`] just before the request goes to the backend.
//! 3. [`Plugin::on_response_header`] when the backend's response header arrives.
//! 4. [`Plugin::on_response_chunk`] for every body chunk, synchronously, as it passes through.
//! 5. [`Plugin::on_done`] once the request has ended, whatever the outcome (metrics, logs).
//!
//! Local routes (health, models, ...) run only `on_request` (for auth) and `on_done`.

pub mod config;
mod context;
mod error;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use context::{Principal, RequestCtx, RequestHead, RequestSummary, Usage};
pub use error::ApiError;
pub use prometheus;

/// What a plugin wants the core to do after [`Plugin::on_request`].
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next plugin, then the backend.
    Continue,
    /// Stop here and answer the client with this error.
    Respond(ApiError),
}

/// A request hook set. Every method has a default that does nothing.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The name used in logs (usually the `kind`).
    fn name(&self) -> &str;

    /// True for plugins that establish [`RequestCtx::principal`]. When any plugin in the chain
    /// authenticates, the core refuses (401) requests that none of them recognised.
    fn authenticates(&self) -> bool {
        false
    }

    /// Runs after the body is read and parsed. `Flow::Respond` ends the request with that error.
    async fn on_request(&self, _head: &RequestHead<'_>, _ctx: &mut RequestCtx) -> Flow {
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
    /// with `igw_`; no label may hold unbounded values such as users or tokens).
    pub registry: prometheus::Registry,
}

/// The token an auth plugin should judge: the bearer token, unless an earlier plugin in the
/// chain already recognised the request (the first that recognises a token decides).
pub fn unclaimed_token<'a>(head: &RequestHead<'a>, ctx: &RequestCtx) -> Option<&'a str> {
    match ctx.principal {
        Some(_) => None,
        None => bearer_token(head.headers),
    }
}

/// The bearer token of a request, if it sent one.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
