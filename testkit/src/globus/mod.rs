//! Mock Globus Auth and Groups API, faithful to Globus's wire format: introspection with Basic
//! client credentials, the dependent-token grant, and `my_groups` (what a resource server
//! sees); the native-app login (authorize, code and refresh grants, revocation: what a user's
//! login tool sees) is in `native_app`. Tests register tokens, inject latency and outages,
//! and read call counters to assert caching and single-flight.

mod native_app;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One access token the mock knows.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub active: bool,
    /// Primary identity id (`sub`) and username.
    pub sub: String,
    pub username: String,
    pub name: String,
    /// Audiences; the resource server's client id by default.
    pub aud: Vec<String>,
    pub scope: String,
    /// Seconds from now; negative means expired.
    pub expires_in: i64,
    /// Identity ids the user authenticated with in this session (default: the primary).
    pub session_identities: Vec<String>,
    /// Linked identities besides the primary: (id, username).
    pub linked: Vec<(String, String)>,
    pub policies: HashMap<String, bool>,
    /// Group ids the user is an active member of.
    pub groups: Vec<String>,
}

impl TokenSpec {
    /// An active 48-hour token for `username` issued to the resource server `audience`.
    pub fn user(username: &str, audience: &str) -> TokenSpec {
        let sub = format!("id-{}", username.replace(['@', '.'], "-"));
        TokenSpec {
            active: true,
            sub: sub.clone(),
            username: username.into(),
            name: username.split('@').next().unwrap_or(username).into(),
            aud: vec![audience.into()],
            scope: format!("https://auth.globus.org/scopes/{audience}/action_all"),
            expires_in: 172_800,
            session_identities: vec![sub],
            linked: Vec::new(),
            policies: HashMap::new(),
            groups: Vec::new(),
        }
    }
}

#[derive(Default)]
pub struct GlobusStats {
    pub introspections: AtomicU64,
    pub dependent_grants: AtomicU64,
    pub group_calls: AtomicU64,
    pub bad_client_credentials: AtomicU64,
}

pub struct GlobusState {
    client_id: String,
    client_secret: String,
    tokens: Mutex<HashMap<String, TokenSpec>>,
    pub latency: Mutex<Duration>,
    /// While set, every endpoint answers 503.
    pub outage: AtomicBool,
    pub stats: GlobusStats,
    pub native: native_app::NativeAppState,
}

pub struct MockGlobus {
    pub addr: SocketAddr,
    pub state: Arc<GlobusState>,
    _stop: oneshot::Sender<()>,
}

impl MockGlobus {
    /// Binds 127.0.0.1 on a free port.
    pub async fn start(client_id: &str, client_secret: &str) -> std::io::Result<MockGlobus> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        MockGlobus::serve(listener, client_id, client_secret)
    }

    pub fn serve(
        listener: TcpListener,
        client_id: &str,
        client_secret: &str,
    ) -> std::io::Result<MockGlobus> {
        let addr = listener.local_addr()?;
        let state = Arc::new(GlobusState {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            tokens: Mutex::new(HashMap::new()),
            latency: Mutex::new(Duration::ZERO),
            outage: AtomicBool::new(false),
            stats: GlobusStats::default(),
            native: native_app::NativeAppState::default(),
        });
        let app = Router::new()
            .route("/v2/oauth2/token/introspect", post(introspect))
            .route("/v2/oauth2/token", post(token_grant))
            .route("/v2/oauth2/token/revoke", post(revoke))
            .route("/v2/oauth2/authorize", get(native_app::authorize))
            .route("/v2/web/auth-code", get(native_app::auth_code_page))
            .route("/v2/groups/my_groups", get(my_groups))
            .with_state(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            let _ = serve.await;
        });
        Ok(MockGlobus {
            addr,
            state,
            _stop: stop,
        })
    }

    pub fn add_token(&self, token: &str, spec: TokenSpec) {
        if let Ok(mut tokens) = self.state.tokens.lock() {
            tokens.insert(token.into(), spec);
        }
    }

    pub fn set_latency(&self, latency: Duration) {
        if let Ok(mut l) = self.state.latency.lock() {
            *l = latency;
        }
    }

    pub fn set_outage(&self, down: bool) {
        self.state.outage.store(down, Ordering::SeqCst);
    }

    pub fn introspections(&self) -> u64 {
        self.state.stats.introspections.load(Ordering::SeqCst)
    }

    /// The `[[plugins]]` URLs pointing at this mock.
    pub fn plugin_urls(&self) -> String {
        format!(
            "introspect_url = \"http://{a}/v2/oauth2/token/introspect\"\ntoken_url = \"http://{a}/v2/oauth2/token\"\ngroups_url = \"http://{a}/v2/groups/my_groups\"\n",
            a = self.addr
        )
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Latency, outage and client-credential checks shared by the Auth endpoints.
async fn gate(state: &GlobusState, headers: &HeaderMap, check_client: bool) -> Option<Response> {
    let latency = state.latency.lock().map(|l| *l).unwrap_or_default();
    tokio::time::sleep(latency).await;
    if state.outage.load(Ordering::SeqCst) {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response());
    }
    if check_client {
        let expected = format!("{}:{}", state.client_id, state.client_secret);
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
        if given.as_deref() != Some(expected.as_bytes()) {
            state
                .stats
                .bad_client_credentials
                .fetch_add(1, Ordering::SeqCst);
            return Some(
                (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "invalid_client"})),
                )
                    .into_response(),
            );
        }
    }
    None
}

fn identity(id: &str, username: &str, name: &str) -> Value {
    let domain = username
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("example.org");
    json!({
        "sub": id, "id": id, "username": username, "name": name, "email": username,
        "organization": domain, "identity_provider": format!("idp-{domain}"),
        "identity_provider_display_name": domain, "last_authentication": now() - 60,
        "identity_type": "login", "status": "used",
    })
}

async fn introspect(
    State(state): State<Arc<GlobusState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refusal) = gate(&state, &headers, true).await {
        return refusal;
    }
    state.stats.introspections.fetch_add(1, Ordering::SeqCst);
    let token = form.get("token").cloned().unwrap_or_default();
    let spec = state
        .tokens
        .lock()
        .ok()
        .and_then(|t| t.get(&token).cloned());
    let Some(spec) = spec.filter(|s| s.active) else {
        return Json(json!({"active": false})).into_response();
    };
    let iat = now() - 60;
    let mut details = vec![identity(&spec.sub, &spec.username, &spec.name)];
    details.extend(
        spec.linked
            .iter()
            .map(|(id, u)| identity(id, u, &spec.name)),
    );
    let authentications: serde_json::Map<String, Value> = spec
        .session_identities
        .iter()
        .map(|id| {
            (
                id.clone(),
                json!({"idp": format!("idp-of-{id}"), "auth_time": iat}),
            )
        })
        .collect();
    let requested: Vec<&str> = form
        .get("authentication_policies")
        .map(|p| p.split(',').collect())
        .unwrap_or_default();
    let evaluations: serde_json::Map<String, Value> = requested
        .iter()
        .map(|p| {
            (
                p.to_string(),
                json!({"evaluation": spec.policies.get(*p).copied().unwrap_or(false)}),
            )
        })
        .collect();
    let mut body = json!({
        "active": true, "token_type": "Bearer", "scope": spec.scope, "client_id": "native-app-client",
        "sub": spec.sub, "username": spec.username, "name": spec.name, "email": spec.username,
        "aud": spec.aud, "iss": "https://auth.globus.org",
        "exp": now() + spec.expires_in, "iat": iat, "nbf": iat,
        "dependent_tokens_cache_id": "cache-id",
        "identity_set": details.iter().map(|d| d["sub"].clone()).collect::<Vec<_>>(),
        "identity_set_detail": details,
        "session_info": {"session_id": "session-1", "authentications": authentications},
    });
    if !requested.is_empty() {
        body["policy_evaluations"] = Value::Object(evaluations);
    }
    Json(body).into_response()
}

/// `POST /v2/oauth2/token`: the native app's grants (a public client: `client_id` in the form,
/// no secret) and the resource server's dependent-token grant (Basic client credentials).
async fn token_grant(
    State(state): State<Arc<GlobusState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let grant_type = form.get("grant_type").map(String::as_str);
    let public = matches!(grant_type, Some("authorization_code" | "refresh_token"));
    if let Some(refusal) = gate(&state, &headers, !public).await {
        return refusal;
    }
    match grant_type {
        Some("authorization_code") => return native_app::exchange_code(&state, &form),
        Some("refresh_token") => return native_app::refresh(&state, &form),
        Some("urn:globus:auth:grant_type:dependent_token") => {}
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "unsupported_grant_type"})),
            )
                .into_response()
        }
    }
    state.stats.dependent_grants.fetch_add(1, Ordering::SeqCst);
    let token = form.get("token").cloned().unwrap_or_default();
    let known = state
        .tokens
        .lock()
        .ok()
        .is_some_and(|t| t.get(&token).is_some_and(|s| s.active));
    if !known {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    }
    Json(json!([{
        "scope": "urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships",
        "access_token": format!("groups-{token}"),
        "token_type": "Bearer",
        "expires_in": 172800,
        "resource_server": "groups.api.globus.org",
    }]))
    .into_response()
}

async fn revoke(
    State(state): State<Arc<GlobusState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refusal) = gate(&state, &headers, false).await {
        return refusal;
    }
    native_app::revoke(&state, &form)
}

async fn my_groups(State(state): State<Arc<GlobusState>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = gate(&state, &headers, false).await {
        return refusal;
    }
    state.stats.group_calls.fetch_add(1, Ordering::SeqCst);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer groups-"))
        .unwrap_or_default()
        .to_string();
    let spec = state
        .tokens
        .lock()
        .ok()
        .and_then(|t| t.get(&token).cloned());
    let Some(spec) = spec else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"code": "AUTHENTICATION_ERROR"})),
        )
            .into_response();
    };
    let groups: Vec<Value> = spec
        .groups
        .iter()
        .map(|g| {
            json!({
                "id": g, "name": format!("group {g}"), "group_type": "regular",
                "my_memberships": [{"group_id": g, "identity_id": spec.sub, "username": spec.username, "role": "member", "status": "active"}],
            })
        })
        .collect();
    Json(groups).into_response()
}
