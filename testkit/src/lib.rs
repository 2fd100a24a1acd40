//! Test kit: a mock OpenAI-compatible backend speaking vLLM's dialect, with fault modes.
//!
//! Used in-process by the integration tests ([`MockBackend::start`]) and as the `mock-openai`
//! binary for the quick start, the Python end-to-end tests and benchmarks.
//!
//! Behaviour comes from [`MockConfig`] and can be changed per request with headers (the
//! gateway forwards them untouched): `x-mock-fault` (`status=503`, `hang`, `reset`),
//! `x-mock-first-token-ms`, `x-mock-token-gap-ms`, `x-mock-tokens`, and `x-mock-usage`
//! (`none`: report no usage at all; `P,C`: report P prompt and C completion tokens).
//! In `serial` mode it behaves like llama-cpp-python's server: one generation at a time,
//! with its health and model routes blocked while one runs.
//! A request with vLLM's `prompt_logprobs` gets them (and `prompt_token_ids`) after `usage`,
//! in vLLM's order.
//! Every response carries `x-mock-body-sha256` and `x-mock-body-len` of the request body it
//! received, so a test can prove a body arrived byte for byte.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "the test kit: mocks for tests and benchmarks, never on the gateway's path"
)]

mod generation;
pub mod globus;
pub mod jwks;
mod openai;
mod openai_stream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use openai::router;

/// What a request should suffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Answer every inference request with this status and an error body.
    Status(u16),
    /// Accept the request and never answer.
    Hang,
    /// Send a few SSE events, then abort the connection mid-body.
    ResetMidStream,
    /// `/health` answers 503 (inference still works).
    Unhealthy,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        match s {
            "none" => Ok(Fault::None),
            "hang" => Ok(Fault::Hang),
            "reset" => Ok(Fault::ResetMidStream),
            "unhealthy" => Ok(Fault::Unhealthy),
            _ => s
                .strip_prefix("status=")
                .and_then(|code| code.parse().ok())
                .map(Fault::Status)
                .ok_or_else(|| {
                    format!("unknown fault `{s}` (none, hang, reset, unhealthy, status=NNN)")
                }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MockConfig {
    pub models: Vec<String>,
    /// Delay before the first streamed token (and before a non-streaming answer).
    pub first_token_delay: Duration,
    /// Gap between streamed tokens.
    pub token_gap: Duration,
    /// Tokens generated when the request's `max_tokens` allows.
    pub tokens: u32,
    pub fault: Fault,
    /// Dimensions of returned embeddings.
    pub embedding_dim: usize,
    /// One model behind one lock, like llama-cpp-python's server: one request at a time
    /// (others queue), and `/health` and `/v1/models` wait for the generation in progress.
    pub serial: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            models: vec!["facebook/opt-125m".into()],
            first_token_delay: Duration::ZERO,
            token_gap: Duration::ZERO,
            tokens: 8,
            fault: Fault::None,
            embedding_dim: 8,
            serial: false,
        }
    }
}

/// What the mock has seen; shared with the test that started it.
#[derive(Debug, Default)]
pub struct MockStats {
    pub requests: AtomicU64,
    pub health_checks: AtomicU64,
    pub streams_started: AtomicU64,
    pub streams_completed: AtomicU64,
    /// Streams whose client (the gateway) went away before the last event.
    pub streams_cancelled: AtomicU64,
    /// Inference requests whose connection closed before the answer was ready (the handler
    /// was dropped while it waited), e.g. a hung request whose client left.
    pub requests_abandoned: AtomicU64,
    /// Headers of the last inference request.
    pub last_headers: Mutex<Option<axum::http::HeaderMap>>,
    /// SHA-256 (hex) and length of the last inference request body.
    pub last_body: Mutex<Option<(String, usize)>>,
}

impl MockStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

pub struct MockState {
    pub config: Mutex<MockConfig>,
    pub stats: MockStats,
    /// The model, in `serial` mode: held for a whole generation. Tokio's mutex is fair, so
    /// waiters are served in arrival order, as a single-slot server's queue would.
    pub model: Arc<tokio::sync::Mutex<()>>,
}

impl MockState {
    pub fn config(&self) -> MockConfig {
        self.config.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// A mock backend running on its own port in the current Tokio runtime.
pub struct MockBackend {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    stop: Option<oneshot::Sender<()>>,
}

impl MockBackend {
    /// Binds 127.0.0.1 on a free port and serves until dropped.
    pub async fn start(config: MockConfig) -> std::io::Result<MockBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Ok(MockBackend::serve(listener, config))
    }

    pub fn serve(listener: TcpListener, config: MockConfig) -> MockBackend {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let state = Arc::new(MockState {
            config: Mutex::new(config),
            stats: MockStats::default(),
            model: Arc::new(tokio::sync::Mutex::new(())),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(state.clone());
        tokio::spawn(async move {
            // vLLM's server (uvicorn on asyncio) sets TCP_NODELAY, so small SSE events leave
            // as they are written; the mock behaves the same way.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            let _ = serve.await;
        });
        MockBackend {
            addr,
            state,
            stop: Some(stop),
        }
    }

    pub fn set_fault(&self, fault: Fault) {
        if let Ok(mut c) = self.state.config.lock() {
            c.fault = fault;
        }
    }

    pub fn stats(&self) -> &MockStats {
        &self.state.stats
    }

    /// Stops accepting connections (existing ones finish).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9)
}
