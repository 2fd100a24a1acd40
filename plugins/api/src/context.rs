//! What the core knows about a request, shared with every plugin.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The parts of the client's request a plugin may read.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
}

/// Who made the request, as established by an auth plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// Stable identity id (e.g. a Globus identity UUID).
    pub id: String,
    pub username: String,
    pub name: Option<String>,
    pub identity_provider: Option<String>,
    pub groups: Vec<String>,
    /// Which plugin authenticated it (`globus`, `jwt`, `api_key`, ...).
    pub auth_method: String,
}

/// Token counts reported by the backend (or estimated, see `Usage::estimated`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// True when the backend reported no usage and the core estimated it (prompt: body
    /// bytes / 4; completion: streamed content events).
    pub estimated: bool,
}

/// Per-request state, created by the core when the request header arrives.
#[derive(Debug)]
pub struct RequestCtx {
    /// The `x-request-id` of this request (client's if sane, generated otherwise).
    pub request_id: String,
    pub started: Instant,
    pub client_addr: Option<SocketAddr>,
    /// Route name, e.g. `chat_completions`, `models`, `health`.
    pub route: &'static str,
    /// The `model` field of the request body, when the route has one.
    pub model: Option<String>,
    /// The `stream` field of the request body.
    pub stream: bool,
    /// `max_completion_tokens` (or `max_tokens`) of the request body, when set; the core
    /// refuses values outside `1..=server.max_tokens_limit` before any plugin sees them.
    pub max_tokens: Option<u64>,
    /// `n` of the request body (choices to generate), 1 when absent; at most 128.
    pub choices: u32,
    /// Size of the request body in bytes (a basis for prompt-size estimates).
    pub body_bytes: u64,
    /// Cluster and framework named in the path (`/{cluster}/{framework}/v1/...`), if any.
    pub cluster: Option<String>,
    pub framework: Option<String>,
    /// The pool and backend address the request went to.
    pub pool: Option<String>,
    pub backend: Option<String>,
    pub principal: Option<Arc<Principal>>,
    pub usage: Option<Usage>,
    /// What the admit phase decided (e.g. `admitted`, `limited`), set by the admit plugin
    /// that decided, for logs.
    pub admit_outcome: Option<&'static str>,
    /// The batch a request belongs to, when the batch worker sent it (route `batch`).
    pub batch_id: Option<String>,
    /// Typed per-plugin state: each plugin keeps its own types here (`insert`, `get`), so
    /// this crate knows nothing of any plugin's state.
    pub extensions: http::Extensions,
}

impl RequestCtx {
    pub fn new(request_id: String, client_addr: Option<SocketAddr>) -> Self {
        RequestCtx {
            request_id,
            started: Instant::now(),
            client_addr,
            route: "unknown",
            model: None,
            stream: false,
            max_tokens: None,
            choices: 1,
            body_bytes: 0,
            cluster: None,
            framework: None,
            pool: None,
            backend: None,
            principal: None,
            usage: None,
            admit_outcome: None,
            batch_id: None,
            extensions: http::Extensions::new(),
        }
    }
}

/// How a request ended, handed to [`crate::Plugin::on_done`].
#[derive(Debug, Clone, Default)]
pub struct RequestSummary {
    /// Status sent to the client (0 if none was sent).
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// Request body bytes received from the client.
    pub bytes_received: u64,
    /// Time from request header to the end of the response.
    pub duration: Duration,
    /// Time from request header to the first response body byte, if any was sent.
    pub first_byte: Option<Duration>,
    /// Backend attempts made (connect retries included).
    pub upstream_attempts: u32,
    /// The gateway's own error code, when the gateway produced the answer as an error.
    pub error_code: Option<&'static str>,
    /// True when the client went away before the response was complete.
    pub client_aborted: bool,
    /// True when the response body was cut short, by the client or the backend.
    pub truncated: bool,
    /// True when the pool was routing in panic mode when a backend was picked: too few of its
    /// backends passed their health checks, so every one not unreachable was eligible.
    pub panic_routed: bool,
}
