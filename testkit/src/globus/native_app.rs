//! The native-app side of the mock Globus Auth, as a user's login tool sees it: the authorize
//! endpoint (no browser: it logs the configured test user in at once and redirects to the
//! auth-code page, which shows the code to paste), the `authorization_code` grant with the
//! PKCE (S256) verifier checked, the `refresh_token` grant, and revocation. Access tokens it
//! issues are known to introspection, so a gateway with `globus_auth` accepts them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{GlobusState, MockGlobus, TokenSpec};

/// A code handed out by `authorize`, waiting to be exchanged (once, within 10 minutes).
struct PendingCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scopes: Vec<String>,
    username: String,
    offline: bool,
    issued: Instant,
}

/// What a refresh token stands for.
#[derive(Clone)]
struct Grant {
    client_id: String,
    scope: String,
    username: String,
    /// Access tokens issued under this grant: revoking the refresh token revokes them too.
    access_tokens: Vec<String>,
}

pub struct NativeAppState {
    /// Who `authorize` logs in; `None`: it refuses, as if nobody completed the login page.
    pub(super) login_user: Mutex<Option<String>>,
    /// Lifetime of the access tokens issued, in seconds (Globus: 48 hours).
    pub(super) access_token_lifetime: Mutex<i64>,
    codes: Mutex<HashMap<String, PendingCode>>,
    refresh_tokens: Mutex<HashMap<String, Grant>>,
    minted: AtomicU64,
    pub authorizations: AtomicU64,
    pub code_exchanges: AtomicU64,
    pub refreshes: AtomicU64,
    pub revocations: AtomicU64,
}

impl Default for NativeAppState {
    fn default() -> Self {
        NativeAppState {
            login_user: Mutex::new(None),
            access_token_lifetime: Mutex::new(172_800),
            codes: Mutex::new(HashMap::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            minted: AtomicU64::new(0),
            authorizations: AtomicU64::new(0),
            code_exchanges: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            revocations: AtomicU64::new(0),
        }
    }
}

impl NativeAppState {
    /// An opaque token shaped like Globus's (`Ag…`, about 95 characters, no dots).
    fn mint(&self) -> String {
        let n = self.minted.fetch_add(1, Ordering::SeqCst);
        let seed = format!("{n}-{:?}-{:?}", Instant::now(), std::thread::current().id());
        let a = hex::encode(Sha256::digest(seed.as_bytes()));
        let b = hex::encode(Sha256::digest(a.as_bytes()));
        format!("Ag{a}{}", &b[..29])
    }
}

/// What tests set and read of the native-app side.
impl MockGlobus {
    /// Who the authorize endpoint logs in from now on (no browser, no password).
    pub fn set_login_user(&self, username: &str) {
        if let Ok(mut u) = self.state.native.login_user.lock() {
            *u = Some(username.into());
        }
    }

    /// Lifetime, in seconds, of the access tokens the code and refresh grants issue.
    pub fn set_access_token_lifetime(&self, seconds: i64) {
        if let Ok(mut l) = self.state.native.access_token_lifetime.lock() {
            *l = seconds;
        }
    }

    /// Whether `token` is an access token introspection reports active.
    pub fn is_active(&self, token: &str) -> bool {
        self.state
            .tokens
            .lock()
            .is_ok_and(|t| t.get(token).is_some_and(|s| s.active))
    }

    /// `refresh_token` grants answered so far.
    pub fn refreshes(&self) -> u64 {
        self.state.native.refreshes.load(Ordering::SeqCst)
    }

    /// Revocation requests so far.
    pub fn revocations(&self) -> u64 {
        self.state.native.revocations.load(Ordering::SeqCst)
    }

    /// The Globus Auth base URL of this mock (what a login tool's `auth_url` is set to).
    pub fn auth_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// The resource server a scope string belongs to (`https://auth.globus.org/scopes/<rs>/<name>`).
fn resource_server(scope: &str) -> Option<String> {
    let rest = scope.strip_prefix("https://auth.globus.org/scopes/")?;
    let (rs, name) = rest.split_once('/')?;
    (!rs.is_empty() && !name.is_empty()).then(|| rs.to_string())
}

/// `GET /v2/oauth2/authorize`: checks the request as Globus does, logs the test user in and
/// redirects to `redirect_uri` with the code.
pub(super) async fn authorize(
    State(state): State<Arc<GlobusState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let app = &state.native;
    app.authorizations.fetch_add(1, Ordering::SeqCst);
    let param = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    if param("response_type") != "code" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_response_type",
            "response_type must be code",
        );
    }
    if param("client_id").is_empty() || param("redirect_uri").is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id and redirect_uri are required",
        );
    }
    if param("code_challenge_method") != "S256" || param("code_challenge").len() != 43 {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a native app must use PKCE with S256",
        );
    }
    let scopes: Vec<String> = param("scope")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if scopes.is_empty() || scopes.iter().any(|s| resource_server(s).is_none()) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "unknown scope");
    }
    let Some(username) = app.login_user.lock().ok().and_then(|u| u.clone()) else {
        return oauth_error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the test user did not log in",
        );
    };
    let code = app.mint();
    let pending = PendingCode {
        client_id: param("client_id").into(),
        redirect_uri: param("redirect_uri").into(),
        challenge: param("code_challenge").into(),
        scopes,
        username,
        offline: param("access_type") == "offline",
        issued: Instant::now(),
    };
    if let Ok(mut codes) = app.codes.lock() {
        codes.insert(code.clone(), pending);
    }
    let separator = if param("redirect_uri").contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!(
        "{}{separator}code={code}&state={}",
        param("redirect_uri"),
        url_escape(param("state"))
    );
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /v2/web/auth-code`: the page Globus shows a native-app user, with the code to copy.
pub(super) async fn auth_code_page(Query(q): Query<HashMap<String, String>>) -> Response {
    let code = q.get("code").cloned().unwrap_or_default();
    format!("Native App Authorization Code\n\nCopy this code and paste it into your application:\n\n{code}\n")
        .into_response()
}

/// A token response in Globus's shape: the first scope's token at the top level, the others
/// in `other_tokens`.
fn issue(state: &GlobusState, scopes: &[String], username: &str, refresh: Option<&str>) -> Value {
    let app = &state.native;
    let lifetime = app
        .access_token_lifetime
        .lock()
        .map(|l| *l)
        .unwrap_or(172_800);
    let mut tokens: Vec<Value> = scopes
        .iter()
        .map(|scope| {
            let rs = resource_server(scope).unwrap_or_default();
            let access = app.mint();
            let mut spec = TokenSpec::user(username, &rs);
            spec.scope = scope.clone();
            spec.expires_in = lifetime;
            if let Ok(mut known) = state.tokens.lock() {
                known.insert(access.clone(), spec);
            }
            let mut token = json!({
                "access_token": access, "expires_in": lifetime, "resource_server": rs,
                "token_type": "Bearer", "scope": scope, "state": "_default",
            });
            if let Some(r) = refresh {
                token["refresh_token"] = json!(r);
                if let Some(grant) = app
                    .refresh_tokens
                    .lock()
                    .ok()
                    .as_mut()
                    .and_then(|g| g.get_mut(r))
                {
                    grant.access_tokens.push(access);
                }
            }
            token
        })
        .collect();
    let mut first = if tokens.is_empty() {
        json!({})
    } else {
        tokens.remove(0)
    };
    first["other_tokens"] = Value::Array(tokens);
    first
}

/// `POST /v2/oauth2/token` with `grant_type=authorization_code` (public client: `client_id` in
/// the form, no secret).
pub(super) fn exchange_code(state: &GlobusState, form: &HashMap<String, String>) -> Response {
    let app = &state.native;
    app.code_exchanges.fetch_add(1, Ordering::SeqCst);
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let pending = app
        .codes
        .lock()
        .ok()
        .and_then(|mut c| c.remove(field("code")));
    let Some(pending) = pending.filter(|p| p.issued.elapsed() < Duration::from_secs(600)) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown, used or expired code",
        );
    };
    if pending.client_id != field("client_id") || pending.redirect_uri != field("redirect_uri") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "client_id or redirect_uri does not match the authorization",
        );
    }
    let verifier = field("code_verifier");
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    if !(43..=128).contains(&verifier.len()) || challenge != pending.challenge {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "code_verifier does not match code_challenge",
        );
    }
    let refresh = pending.offline.then(|| app.mint());
    if let Some(r) = &refresh {
        let grant = Grant {
            client_id: pending.client_id.clone(),
            scope: pending.scopes.join(" "),
            username: pending.username.clone(),
            access_tokens: Vec::new(),
        };
        if let Ok(mut grants) = app.refresh_tokens.lock() {
            grants.insert(r.clone(), grant);
        }
    }
    Json(issue(
        state,
        &pending.scopes,
        &pending.username,
        refresh.as_deref(),
    ))
    .into_response()
}

/// `POST /v2/oauth2/token` with `grant_type=refresh_token`: a new access token, the same
/// refresh token (Globus does not rotate them).
pub(super) fn refresh(state: &GlobusState, form: &HashMap<String, String>) -> Response {
    let app = &state.native;
    app.refreshes.fetch_add(1, Ordering::SeqCst);
    let token = form.get("refresh_token").cloned().unwrap_or_default();
    let grant = app
        .refresh_tokens
        .lock()
        .ok()
        .and_then(|g| g.get(&token).cloned());
    let Some(grant) = grant else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "invalid or revoked refresh token",
        );
    };
    if form.get("client_id") != Some(&grant.client_id) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "the refresh token belongs to another client",
        );
    }
    let scopes: Vec<String> = grant.scope.split(' ').map(str::to_string).collect();
    Json(issue(state, &scopes, &grant.username, Some(&token))).into_response()
}

/// `POST /v2/oauth2/token/revoke`: a refresh token (and every access token issued under it) or
/// an access token stops working. Unknown tokens are fine (RFC 7009).
pub(super) fn revoke(state: &GlobusState, form: &HashMap<String, String>) -> Response {
    let app = &state.native;
    app.revocations.fetch_add(1, Ordering::SeqCst);
    let token = form.get("token").cloned().unwrap_or_default();
    let grant = app
        .refresh_tokens
        .lock()
        .ok()
        .and_then(|mut g| g.remove(&token));
    let mut dead = grant.map(|g| g.access_tokens).unwrap_or_default();
    dead.push(token);
    if let Ok(mut known) = state.tokens.lock() {
        for t in &dead {
            if let Some(spec) = known.get_mut(t) {
                spec.active = false;
            }
        }
    }
    Json(json!({"active": false})).into_response()
}
