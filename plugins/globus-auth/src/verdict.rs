//! Judging an introspection response: the checks of globus-auth.md, as a pure function.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_plugin_api::Principal;
use serde::Deserialize;

use crate::config::GlobusConfig;

/// What Globus Auth's introspect endpoint returns (fields we read; others are ignored).
#[derive(Debug, Default, Deserialize)]
pub struct Introspection {
    #[serde(default)]
    pub active: bool,
    pub scope: Option<String>,
    pub sub: Option<String>,
    pub username: Option<String>,
    pub name: Option<String>,
    #[serde(default)]
    pub aud: Vec<String>,
    pub exp: Option<i64>,
    #[serde(default)]
    pub identity_set_detail: Vec<IdentityDetail>,
    pub session_info: Option<SessionInfo>,
    #[serde(default)]
    pub policy_evaluations: HashMap<String, PolicyEvaluation>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct IdentityDetail {
    pub sub: Option<String>,
    pub id: Option<String>,
    #[serde(default)]
    pub username: String,
    pub name: Option<String>,
    pub identity_provider: Option<String>,
    pub identity_provider_display_name: Option<String>,
}

impl IdentityDetail {
    fn identity_id(&self) -> Option<&str> {
        self.id.as_deref().or(self.sub.as_deref())
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct SessionInfo {
    #[serde(default)]
    pub authentications: HashMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct PolicyEvaluation {
    #[serde(default)]
    pub evaluation: bool,
}

/// A token Globus knows but the gateway refuses: 401 with a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

/// An accepted token: who it is, and for how long the verdict may be cached.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub principal: Principal,
    pub ttl: Duration,
    /// Service accounts skip session checks and group lookups.
    pub service_account: bool,
}

const GET_TOKEN: &str = "Get a new one with `inference-auth-token get_access_token` \
                         (or `authenticate --force` to log in again).";

fn reject(code: &'static str, message: String) -> Rejection {
    Rejection { code, message }
}

fn domain(username: &str) -> Option<&str> {
    username.rsplit_once('@').map(|(_, d)| d)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn format_time(secs: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

pub fn judge(r: &Introspection, cfg: &GlobusConfig) -> Result<Accepted, Rejection> {
    judge_at(r, cfg, unix_now())
}

pub fn judge_at(r: &Introspection, cfg: &GlobusConfig, now: i64) -> Result<Accepted, Rejection> {
    if !r.active {
        return Err(reject(
            "token_inactive",
            format!("Your access token is not active (expired, revoked, or not a Globus token). {GET_TOKEN}"),
        ));
    }
    let exp = r.exp.unwrap_or(now);
    if exp + cfg.exp_leeway.as_secs() as i64 <= now {
        return Err(reject(
            "token_expired",
            format!(
                "Your access token expired at {}. {GET_TOKEN}",
                format_time(exp)
            ),
        ));
    }
    if cfg.check_audience && !r.aud.contains(&cfg.client_id) {
        return Err(reject(
            "wrong_audience",
            format!(
                "Your access token was not issued for this gateway (resource server {}). \
                 Request a token for this gateway's scope. {GET_TOKEN}",
                cfg.client_id
            ),
        ));
    }
    if let Some(scope) = &cfg.required_scope {
        let scopes = r.scope.as_deref().unwrap_or_default();
        if !scopes.split_whitespace().any(|s| s == scope) {
            return Err(reject(
                "missing_scope",
                format!("Your access token lacks the scope `{scope}`. {GET_TOKEN}"),
            ));
        }
    }
    let ttl = Duration::from_secs((exp - now).max(1) as u64).min(cfg.cache_ttl);
    let username = r.username.clone().unwrap_or_default();
    if cfg.service_accounts.contains(&username) {
        let principal = Principal {
            id: r.sub.clone().unwrap_or_else(|| username.clone()),
            username,
            name: r.name.clone(),
            identity_provider: None,
            groups: Vec::new(),
            auth_method: "globus".into(),
        };
        return Ok(Accepted {
            principal,
            ttl,
            service_account: true,
        });
    }
    let identity = choose_identity(r, cfg)?;
    for policy in &cfg.policies {
        let passed = r
            .policy_evaluations
            .get(policy)
            .is_some_and(|p| p.evaluation);
        if !passed {
            return Err(reject(
                "policy_failed",
                format!(
                    "Your Globus session does not satisfy this facility's authentication policy \
                     ({policy}). Log out at https://app.globus.org/logout, then log in again with \
                     `inference-auth-token authenticate --force`."
                ),
            ));
        }
    }
    let principal = Principal {
        id: identity
            .identity_id()
            .map(str::to_string)
            .or_else(|| r.sub.clone())
            .unwrap_or_default(),
        username: identity.username.clone(),
        name: identity.name.clone(),
        identity_provider: identity
            .identity_provider_display_name
            .clone()
            .or_else(|| domain(&identity.username).map(str::to_string)),
        groups: Vec::new(),
        auth_method: "globus".into(),
    };
    Ok(Accepted {
        principal,
        ttl,
        service_account: false,
    })
}

/// With `authorized_idp_domains`, the identity is one the user authenticated with in this
/// session from an allowed domain; without, the token's primary identity.
fn choose_identity(r: &Introspection, cfg: &GlobusConfig) -> Result<IdentityDetail, Rejection> {
    let primary = || {
        r.identity_set_detail
            .iter()
            .find(|d| d.identity_id().is_some() && d.identity_id() == r.sub.as_deref())
            .cloned()
            .unwrap_or_else(|| IdentityDetail {
                sub: r.sub.clone(),
                username: r.username.clone().unwrap_or_default(),
                name: r.name.clone(),
                ..IdentityDetail::default()
            })
    };
    if cfg.authorized_idp_domains.is_empty() {
        return Ok(primary());
    }
    let authenticated = r.session_info.as_ref().map(|s| &s.authentications);
    let allowed = |d: &IdentityDetail| {
        domain(&d.username).is_some_and(|dom| {
            cfg.authorized_idp_domains
                .iter()
                .any(|a| a.eq_ignore_ascii_case(dom))
        })
    };
    let mut candidates: Vec<&IdentityDetail> = r
        .identity_set_detail
        .iter()
        .filter(|d| {
            d.identity_id()
                .is_some_and(|id| authenticated.is_some_and(|a| a.contains_key(id)))
        })
        .filter(|d| allowed(d))
        .collect();
    // Deterministic choice when several allowed identities are in the session.
    candidates.sort_by(|a, b| a.username.cmp(&b.username));
    candidates.first().map(|d| (*d).clone()).ok_or_else(|| {
        reject(
            "wrong_identity_provider",
            format!(
                "Wrong identity provider: this gateway accepts identities from {} only, and your \
                 Globus session has none. Log out at https://app.globus.org/logout and log in \
                 again with one of them (`inference-auth-token authenticate --force`).",
                cfg.authorized_idp_domains.join(", ")
            ),
        )
    })
}

#[cfg(test)]
mod tests;
