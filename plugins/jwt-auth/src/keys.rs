//! Verification keys from a JWKS URL: fetched on first use, refreshed when a token names a
//! `kid` we do not know (key rotation), at most once per `min_refresh`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::DecodingKey;
use tokio::sync::{Mutex, RwLock};

pub enum KeyError {
    /// The JWKS could not be fetched and no keys are cached.
    Unavailable(String),
    /// The token names a key the issuer does not publish.
    UnknownKey,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    all: Vec<Arc<DecodingKey>>,
    fetched_at: Option<Instant>,
}

pub struct JwksCache {
    url: String,
    min_refresh: Duration,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    /// One refresh at a time; the rest wait and reuse its result.
    refreshing: Mutex<()>,
}

impl JwksCache {
    pub fn new(url: String, min_refresh: Duration, http: reqwest::Client) -> JwksCache {
        JwksCache {
            url,
            min_refresh,
            http,
            keys: RwLock::new(Keys::default()),
            refreshing: Mutex::new(()),
        }
    }

    fn lookup(keys: &Keys, kid: Option<&str>) -> Option<Vec<Arc<DecodingKey>>> {
        match kid {
            Some(kid) => keys.by_kid.get(kid).map(|k| vec![k.clone()]),
            // Issuers that publish one key often omit `kid` (Globus id_tokens do).
            None => (!keys.all.is_empty()).then(|| keys.all.clone()),
        }
    }

    /// Candidate keys for a token whose header names `kid`.
    pub async fn keys_for(&self, kid: Option<&str>) -> Result<Vec<Arc<DecodingKey>>, KeyError> {
        if let Some(found) = Self::lookup(&*self.keys.read().await, kid) {
            return Ok(found);
        }
        let _one_refresh = self.refreshing.lock().await;
        let keys = self.keys.read().await;
        if let Some(found) = Self::lookup(&keys, kid) {
            return Ok(found);
        }
        let due = keys
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.min_refresh);
        let have_any = !keys.all.is_empty();
        drop(keys);
        if !due {
            return Err(KeyError::UnknownKey);
        }
        match self.fetch().await {
            Ok(fresh) => {
                let found = Self::lookup(&fresh, kid);
                *self.keys.write().await = fresh;
                found.ok_or(KeyError::UnknownKey)
            }
            Err(e) => {
                // Rate-limit failures too, so a flood of bad kids cannot hammer the IdP.
                self.keys.write().await.fetched_at = Some(Instant::now());
                log::warn!(target: "jwt_auth", "fetching JWKS from {}: {e}", self.url);
                if have_any {
                    Err(KeyError::UnknownKey)
                } else {
                    Err(KeyError::Unavailable(e))
                }
            }
        }
    }

    async fn fetch(&self) -> Result<Keys, String> {
        let resp = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let set: JwkSet = resp.json().await.map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = Keys {
            fetched_at: Some(Instant::now()),
            ..Keys::default()
        };
        for jwk in &set.keys {
            // Keys of types we cannot use (or encryption keys) are skipped, not fatal.
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let key = Arc::new(key);
            if let Some(kid) = &jwk.common.key_id {
                keys.by_kid.insert(kid.clone(), key.clone());
            }
            keys.all.push(key);
        }
        Ok(keys)
    }
}
