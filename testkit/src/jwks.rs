//! A mock OIDC issuer's JWKS endpoint: serves a swappable key set and counts fetches, so
//! tests can rotate keys and assert the refresh rate limit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct JwksState {
    document: Mutex<Value>,
    pub fetches: AtomicU64,
}

pub struct MockJwks {
    pub addr: SocketAddr,
    pub state: Arc<JwksState>,
    _stop: oneshot::Sender<()>,
}

impl MockJwks {
    pub async fn start(document: Value) -> std::io::Result<MockJwks> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(JwksState {
            document: Mutex::new(document),
            fetches: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/certs", get(certs))
            .with_state(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            let _ = serve.await;
        });
        Ok(MockJwks {
            addr,
            state,
            _stop: stop,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/certs", self.addr)
    }

    pub fn set(&self, document: Value) {
        if let Ok(mut d) = self.state.document.lock() {
            *d = document;
        }
    }

    pub fn fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

async fn certs(State(state): State<Arc<JwksState>>) -> Json<Value> {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    Json(
        state
            .document
            .lock()
            .map(|d| d.clone())
            .unwrap_or(Value::Null),
    )
}
