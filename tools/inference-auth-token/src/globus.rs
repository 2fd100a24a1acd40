//! The calls to Globus Auth a native app makes, as a public client (its `client_id` in the
//! form, no secret): exchange the authorization code (with the PKCE verifier), refresh, revoke.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::settings::Settings;
use crate::store::{sane_token, Tokens};
use crate::Fail;

/// Answers from Globus are small; anything larger is not Globus.
const MAX_ANSWER: usize = 1 << 20;

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// One token of a token response (the top level, or one of `other_tokens`).
#[derive(Debug, Deserialize)]
struct Issued {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    expires_in: i64,
    resource_server: String,
    scope: String,
    #[serde(default)]
    token_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    #[serde(flatten)]
    top: Issued,
    #[serde(default)]
    other_tokens: Vec<Issued>,
}

#[derive(Debug, Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// An HTTP client for Globus Auth and the gateway: TLS verified against the public roots and
/// the site's CA file, when one is set; bounded waits.
pub fn http_client(settings: &Settings) -> Result<reqwest::Client, Fail> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("inference-auth-token/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| Fail::Usage(format!("ca_file {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Fail::Usage(format!("ca_file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(Fail::Usage(format!(
                "ca_file {}: no PEM certificate in it",
                path.display()
            )));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| Fail::Failed(format!("cannot build an HTTP client: {e}")))
}

/// Reads at most `MAX_ANSWER` bytes of a body.
pub async fn bounded_body(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("an answer larger than {MAX_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The chain of causes of a transport error ("error sending request" alone says nothing).
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

pub struct Globus<'a> {
    pub settings: &'a Settings,
    pub http: reqwest::Client,
}

/// How a grant failed: Globus refused it (the login is gone) or could not be asked.
pub enum GrantError {
    Refused(String),
    Unreachable(String),
}

impl From<GrantError> for Fail {
    fn from(e: GrantError) -> Fail {
        match e {
            GrantError::Refused(m) => Fail::Login(m),
            GrantError::Unreachable(m) => Fail::Failed(m),
        }
    }
}

impl Globus<'_> {
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Result<Vec<u8>, GrantError> {
        let url = self.settings.auth_endpoint(path);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let resp = self
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                GrantError::Unreachable(format!(
                    "cannot reach Globus Auth at {url}: {}",
                    describe(&e)
                ))
            })?;
        let status = resp.status();
        let body = bounded_body(resp)
            .await
            .map_err(|e| GrantError::Unreachable(format!("Globus Auth at {url}: {e}")))?;
        if status.is_success() {
            return Ok(body);
        }
        let refusal = serde_json::from_slice::<OAuthError>(&body).ok();
        match refusal {
            // 400/401 with an OAuth error: Globus read the request and said no.
            Some(e) if status.is_client_error() => {
                Err(GrantError::Refused(match e.error_description {
                    Some(d) => format!(
                        "Globus Auth refused: {} ({})",
                        e.error,
                        d.chars().take(200).collect::<String>()
                    ),
                    None => format!("Globus Auth refused: {}", e.error),
                }))
            }
            _ => Err(GrantError::Unreachable(format!(
                "Globus Auth at {url} answered {status}; try again later"
            ))),
        }
    }

    /// The token for our resource server out of a token response.
    fn ours(&self, body: &[u8], old_refresh: Option<&str>) -> Result<Tokens, GrantError> {
        let response: TokenResponse = serde_json::from_slice(body).map_err(|e| {
            GrantError::Unreachable(format!(
                "Globus Auth sent a token response that does not parse: {e}"
            ))
        })?;
        let rs = &self.settings.resource_server;
        let issued = std::iter::once(response.top)
            .chain(response.other_tokens)
            .find(|t| &t.resource_server == rs)
            .ok_or_else(|| {
                GrantError::Refused(format!(
                    "Globus Auth did not grant a token for the gateway (resource server {rs}); check gateway_client_id / scope"
                ))
            })?;
        let refresh = issued.refresh_token.or(old_refresh.map(str::to_string));
        if !sane_token(&issued.access_token) || refresh.as_deref().is_some_and(|r| !sane_token(r)) {
            return Err(GrantError::Unreachable(
                "Globus Auth sent a malformed token".into(),
            ));
        }
        // Bounded before arithmetic: Globus's tokens live 48 hours.
        let lifetime = issued.expires_in.clamp(0, 366 * 86_400);
        Ok(Tokens {
            resource_server: issued.resource_server,
            identity_id: None,
            scope: issued.scope,
            access_token: issued.access_token,
            refresh_token: refresh,
            expires_at_seconds: now() + lifetime,
            token_type: issued.token_type.unwrap_or_else(|| "Bearer".into()),
        })
    }

    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<Tokens, GrantError> {
        let body = self
            .post(
                "/v2/oauth2/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", redirect_uri),
                    ("client_id", &self.settings.client_id),
                    ("code_verifier", verifier),
                ],
            )
            .await?;
        self.ours(&body, None)
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, GrantError> {
        let body = self
            .post(
                "/v2/oauth2/token",
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                    ("client_id", &self.settings.client_id),
                ],
            )
            .await?;
        self.ours(&body, Some(refresh_token))
    }

    pub async fn revoke(&self, token: &str) -> Result<(), GrantError> {
        self.post(
            "/v2/oauth2/token/revoke",
            &[("token", token), ("client_id", &self.settings.client_id)],
        )
        .await
        .map(|_| ())
    }
}
