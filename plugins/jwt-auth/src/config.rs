//! The `[[plugins]]` table of `kind = "jwt_auth"`.

use std::str::FromStr;
use std::time::Duration;

use gateway_plugin_api::config::{from_table, TextDuration};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    issuer: String,
    audience: Vec<String>,
    algorithms: Option<Vec<String>>,
    jwks_url: Option<String>,
    key_file: Option<String>,
    jwks_min_refresh_interval: Option<TextDuration>,
    username_claim: Option<String>,
    groups_claim: Option<String>,
    id_claim: Option<String>,
    identity_provider: Option<String>,
    leeway: Option<TextDuration>,
    timeout: Option<TextDuration>,
}

/// Where verification keys come from.
pub enum KeySource {
    /// A JWKS document, fetched lazily and refreshed when a token names an unknown `kid`.
    Jwks { url: String, min_refresh: Duration },
    /// One PEM public key (RSA or EC) from a file.
    Static(DecodingKey),
}

pub struct JwtConfig {
    pub issuer: String,
    pub audience: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySource,
    pub username_claim: String,
    pub groups_claim: String,
    pub id_claim: String,
    pub identity_provider: String,
    pub leeway: Duration,
    pub timeout: Duration,
}

fn secs(value: Option<TextDuration>, default: u64) -> Duration {
    value.map_or(Duration::from_secs(default), |d| d.0)
}

fn static_key(file: &str, path: &str) -> Result<DecodingKey, String> {
    let pem =
        std::fs::read(file).map_err(|e| format!("{path}.key_file: cannot read `{file}`: {e}"))?;
    DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| {
            format!("{path}.key_file: `{file}` is not a PEM RSA, EC or Ed25519 public key")
        })
}

impl JwtConfig {
    pub fn parse(table: &toml::Table, path: &str) -> Result<JwtConfig, String> {
        let f: FileConfig = from_table(table, path)?;
        if f.issuer.is_empty() {
            return Err(format!("{path}.issuer: must not be empty"));
        }
        if f.audience.is_empty() {
            return Err(format!(
                "{path}.audience: list at least one accepted audience"
            ));
        }
        let names = f.algorithms.unwrap_or_else(|| vec!["RS256".into()]);
        if names.is_empty() {
            return Err(format!(
                "{path}.algorithms: `[]` would accept no token; list the issuer's algorithms (e.g. [\"RS256\"]) or omit the key"
            ));
        }
        let mut algorithms = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let alg = Algorithm::from_str(name)
                .map_err(|_| format!("{path}.algorithms[{i}]: `{name}` is not a JWS algorithm (RS256, ES256, EdDSA, ...)"))?;
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(format!(
                    "{path}.algorithms[{i}]: `{name}` needs a shared secret; use the issuer's public keys (RS*, PS*, ES*, EdDSA)"
                ));
            }
            algorithms.push(alg);
        }
        let keys = match (f.jwks_url, f.key_file) {
            (Some(url), None) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(format!("{path}.jwks_url: `{url}` is not an http(s) URL"));
                }
                KeySource::Jwks {
                    url,
                    min_refresh: secs(f.jwks_min_refresh_interval, 60),
                }
            }
            (None, Some(file)) => KeySource::Static(static_key(&file, path)?),
            _ => return Err(format!("{path}: set exactly one of jwks_url and key_file")),
        };
        for (key, value) in [
            ("username_claim", &f.username_claim),
            ("groups_claim", &f.groups_claim),
            ("id_claim", &f.id_claim),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(format!("{path}.{key}: `\"\"` names no claim"));
            }
        }
        Ok(JwtConfig {
            identity_provider: f.identity_provider.unwrap_or_else(|| f.issuer.clone()),
            issuer: f.issuer,
            audience: f.audience,
            algorithms,
            keys,
            username_claim: f
                .username_claim
                .unwrap_or_else(|| "preferred_username".into()),
            groups_claim: f.groups_claim.unwrap_or_else(|| "groups".into()),
            id_claim: f.id_claim.unwrap_or_else(|| "sub".into()),
            leeway: secs(f.leeway, 30),
            timeout: secs(f.timeout, 5),
        })
    }
}

#[cfg(test)]
mod tests;
