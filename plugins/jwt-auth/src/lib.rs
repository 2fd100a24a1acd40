//! `jwt_auth`: OIDC access tokens as signed JWTs, for facilities whose IdP issues them
//! (Keycloak and other OIDC issuers).
//!
//! ```toml
//! [[plugins]]
//! kind = "jwt_auth"
//! issuer = "https://keycloak.example.org/realms/hpc"
//! audience = ["inference-gateway"]
//! jwks_url = "https://keycloak.example.org/realms/hpc/protocol/openid-connect/certs"
//! ```
//! A token is this plugin's when it is JWT-shaped and its (unverified) `iss` is the configured
//! issuer; then the signature, `iss`, `aud`, `exp` and `nbf` decide. Other tokens are left to
//! the next plugin in the chain.

mod config;
mod keys;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use gateway_plugin_api::{
    bearer_token, ApiError, Authn, BuildContext, Phase, Plugin, PluginFactory, Principal,
    RequestCtx, RequestHead,
};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use config::{JwtConfig, KeySource};
use keys::{JwksCache, KeyError};

pub struct JwtAuthFactory;

impl PluginFactory for JwtAuthFactory {
    fn kind(&self) -> &'static str {
        "jwt_auth"
    }

    fn build(
        &self,
        config: &toml::Table,
        path: &str,
        _cx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(JwtAuth::new(JwtConfig::parse(config, path)?)?))
    }
}

enum Keys {
    Static(Arc<DecodingKey>),
    Jwks(Box<JwksCache>),
}

pub struct JwtAuth {
    cfg: JwtConfig,
    keys: Keys,
    validation: Validation,
    /// How to get a token, for the core's 401.
    hint: String,
}

const GET_TOKEN: &str = "Log in again with your facility's identity provider to get a new token.";

fn invalid(code: &'static str, message: String) -> Authn {
    Authn::Refused(ApiError::unauthorized(code, message))
}

/// The payload of a JWT-shaped token, unverified: only for deciding whose token it is.
fn peek_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn claim_strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

impl JwtAuth {
    fn new(cfg: JwtConfig) -> Result<JwtAuth, String> {
        let keys = match &cfg.keys {
            KeySource::Static(key) => Keys::Static(Arc::new(key.clone())),
            KeySource::Jwks { url, min_refresh } => {
                let http = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .user_agent("inference-gateway")
                    .build()
                    .map_err(|e| format!("building the JWKS HTTP client: {e}"))?;
                Keys::Jwks(Box::new(JwksCache::new(url.clone(), *min_refresh, http)))
            }
        };
        // `JwtConfig::parse` refuses an empty list; the first algorithm only seeds `Validation`.
        let first = cfg.algorithms.first().copied().unwrap_or(Algorithm::RS256);
        let mut validation = Validation::new(first);
        validation.algorithms = cfg.algorithms.clone();
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&cfg.audience);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = cfg.leeway.as_secs();
        Ok(JwtAuth {
            hint: format!(
                "get one from your facility's identity provider, {}",
                cfg.issuer
            ),
            cfg,
            keys,
            validation,
        })
    }

    /// The principal a verified token names; `None` when it lacks the id claim (every user
    /// would otherwise share one empty id, and with it one set of limits).
    fn principal(&self, claims: &Map<String, Value>) -> Option<Principal> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
        let id = text(&self.cfg.id_claim).filter(|id| !id.is_empty())?;
        Some(Principal {
            username: text(&self.cfg.username_claim).unwrap_or_else(|| id.clone()),
            id,
            name: text("name"),
            identity_provider: Some(self.cfg.identity_provider.clone()),
            groups: claim_strings(claims.get(&self.cfg.groups_claim)),
            auth_method: "jwt".into(),
        })
    }

    async fn verify(&self, token: &str, peeked: &Map<String, Value>, ctx: &RequestCtx) -> Authn {
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) => {
                return invalid(
                    "invalid_token",
                    format!("Your token is not a valid JWT. {GET_TOKEN}"),
                )
            }
        };
        if !self.cfg.algorithms.contains(&header.alg) {
            return invalid(
                "invalid_token",
                format!("Tokens signed with {:?} are not accepted here.", header.alg),
            );
        }
        let candidates = match &self.keys {
            Keys::Static(key) => vec![key.clone()],
            Keys::Jwks(cache) => match cache.keys_for(header.kid.as_deref()).await {
                Ok(keys) => keys,
                Err(KeyError::UnknownKey) => {
                    return invalid(
                        "invalid_token",
                        format!(
                        "Your token is signed with a key the issuer does not publish. {GET_TOKEN}"
                    ),
                    )
                }
                Err(KeyError::Unavailable(reason)) => {
                    log::warn!(
                        target: "jwt_auth",
                        request_id = ctx.request_id.as_str();
                        "no signing keys to verify a token: {reason}"
                    );
                    return Authn::Refused(ApiError::auth_unavailable(
                        "The identity provider's signing keys could not be fetched; try again shortly.".into(),
                        5,
                    ));
                }
            },
        };
        let mut last = ErrorKind::InvalidSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.validation) {
                Ok(data) => {
                    return match self.principal(&data.claims) {
                        Some(principal) => Authn::Accepted(Arc::new(principal)),
                        None => invalid(
                            "invalid_token",
                            format!(
                                "Your token has no `{}` claim to identify you by. {GET_TOKEN}",
                                self.cfg.id_claim
                            ),
                        ),
                    };
                }
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {}
                Err(e) => {
                    last = e.kind().clone();
                    break;
                }
            }
        }
        match last {
            ErrorKind::ExpiredSignature => {
                let exp = peeked.get("exp").and_then(Value::as_u64).unwrap_or_default();
                let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(exp));
                invalid("token_expired", format!("Your token expired at {at}. {GET_TOKEN}"))
            }
            ErrorKind::ImmatureSignature => {
                invalid("token_not_yet_valid", "Your token is not valid yet (nbf); check the clock.".into())
            }
            ErrorKind::InvalidAudience => invalid(
                "wrong_audience",
                format!(
                    "Your token was not issued for this gateway (accepted audiences: {}). {GET_TOKEN}",
                    self.cfg.audience.join(", ")
                ),
            ),
            ErrorKind::InvalidSignature => {
                invalid("invalid_token", format!("Your token's signature does not verify. {GET_TOKEN}"))
            }
            other => invalid("invalid_token", format!("Your token was refused ({other:?}). {GET_TOKEN}")),
        }
    }
}

#[async_trait]
impl Plugin for JwtAuth {
    fn name(&self) -> &str {
        "jwt_auth"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn credential_hint(&self) -> Option<&str> {
        Some(&self.hint)
    }

    async fn authenticate(&self, head: &RequestHead<'_>, ctx: &RequestCtx) -> Authn {
        let Some(token) = bearer_token(head.headers) else {
            return Authn::NotMine;
        };
        let Some(peeked) = peek_claims(token) else {
            return Authn::NotMine;
        };
        if peeked.get("iss").and_then(Value::as_str) != Some(self.cfg.issuer.as_str()) {
            return Authn::NotMine;
        }
        self.verify(token, &peeked, ctx).await
    }
}
