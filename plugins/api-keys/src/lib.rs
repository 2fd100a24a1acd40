//! `api_keys`: service accounts with static bearer keys. The config holds only each key's
//! SHA-256, so a leaked config file does not leak a key.
//!
//! ```toml
//! [[plugins]]
//! kind = "api_keys"
//! [[plugins.keys]]
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # printf %s "$KEY" | sha256sum
//! username = "svc-batch@anl.gov"
//! groups = ["batch-users"]   # optional
//! ```
//! A token whose hash is not listed is left to the next plugin in the chain.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use gateway_plugin_api::config::from_table;
use gateway_plugin_api::{
    bearer_token, Authn, BuildContext, Phase, Plugin, PluginFactory, Principal, RequestCtx,
    RequestHead,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub struct ApiKeysFactory;

pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Arc<Principal>>,
}

/// The `[[plugins]]` table of `kind = "api_keys"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// One `[[plugins.keys]]` table: a key's hash and whose it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    sha256: String,
    username: String,
    id: Option<String>,
    name: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

impl KeyEntry {
    /// The key's hash and its principal; `path` is the entry's TOML path.
    fn validate(self, path: &str) -> Result<([u8; 32], Principal), String> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&self.sha256, &mut hash).map_err(|_| {
            format!(
                "{path}.sha256: `{:?}` is not 64 hex digits (a SHA-256)",
                self.sha256
            )
        })?;
        let non_empty = |key: &str, value: String| {
            if value.is_empty() {
                Err(format!("{path}.{key}: `\"\"` must be a non-empty string"))
            } else {
                Ok(value)
            }
        };
        let username = non_empty("username", self.username)?;
        let id = match self.id {
            Some(id) => non_empty("id", id)?,
            None => username.clone(),
        };
        let principal = Principal {
            identity_provider: username
                .split_once('@')
                .map(|(_, domain)| domain.to_string()),
            id,
            username,
            name: self.name,
            groups: self.groups,
            auth_method: "api_key".into(),
        };
        Ok((hash, principal))
    }
}

impl PluginFactory for ApiKeysFactory {
    fn kind(&self) -> &'static str {
        "api_keys"
    }

    fn build(
        &self,
        config: &toml::Table,
        path: &str,
        _cx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, String> {
        let file: FileConfig = from_table(config, path)?;
        let mut by_hash = HashMap::new();
        for (i, entry) in file.keys.into_iter().enumerate() {
            let at = format!("{path}.keys[{i}]");
            let (hash, principal) = entry.validate(&at)?;
            if by_hash.insert(hash, Arc::new(principal)).is_some() {
                return Err(format!("{at}.sha256: the same key is listed twice"));
            }
        }
        Ok(Arc::new(ApiKeys { by_hash }))
    }
}

#[async_trait]
impl Plugin for ApiKeys {
    fn name(&self) -> &str {
        "api_keys"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn credential_hint(&self) -> Option<&str> {
        Some("an API key issued by this gateway's operators")
    }

    async fn authenticate(&self, head: &RequestHead<'_>, _ctx: &RequestCtx) -> Authn {
        let Some(token) = bearer_token(head.headers) else {
            return Authn::NotMine;
        };
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self.by_hash.get(&hash) {
            Some(principal) => Authn::Accepted(principal.clone()),
            None => Authn::NotMine,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // "test"

    fn build(src: &str) -> Result<Arc<dyn Plugin>, String> {
        let table: toml::Table = src.parse().expect("toml");
        ApiKeysFactory.build(&table, "plugins[1]", &BuildContext::default())
    }

    async fn principal_for(plugin: &Arc<dyn Plugin>, auth: &str) -> Option<Arc<Principal>> {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", auth.parse().expect("header"));
        let (method, uri) = (http::Method::POST, http::Uri::from_static("/"));
        let head = RequestHead {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        let ctx = RequestCtx::new("r".into(), None);
        match plugin.authenticate(&head, &ctx).await {
            Authn::Accepted(p) => Some(p),
            Authn::NotMine => None,
            Authn::Refused(e) => panic!("api keys never refuse: {e}"),
        }
    }

    #[tokio::test]
    async fn recognises_listed_keys_only() {
        let src = format!("kind = \"api_keys\"\n[[keys]]\nsha256 = \"{KEY_HASH}\"\nusername = \"svc@anl.gov\"\ngroups = [\"g1\"]\n");
        let plugin = build(&src).expect("build");
        let p = principal_for(&plugin, "Bearer test")
            .await
            .expect("principal");
        assert_eq!(p.username, "svc@anl.gov");
        assert_eq!(p.id, "svc@anl.gov");
        assert_eq!(p.groups, ["g1"]);
        assert_eq!(p.auth_method, "api_key");
        assert_eq!(p.identity_provider.as_deref(), Some("anl.gov"));
        assert!(principal_for(&plugin, "Bearer other").await.is_none());
        assert!(principal_for(&plugin, "Basic test").await.is_none());
    }

    #[test]
    fn config_errors_name_the_path() {
        let err =
            build("kind = \"api_keys\"\n[[keys]]\nsha256 = \"abc\"\nusername = \"u\"\n").err();
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("plugins[1].keys[0].sha256: `\"abc\"`")),
            "{err:?}"
        );
        let err = build(&format!(
            "kind = \"api_keys\"\n[[keys]]\nsha256 = \"{KEY_HASH}\"\n"
        ))
        .err();
        assert_eq!(err.as_deref(), Some("plugins[1].keys[0].username: missing"));
        let err = build("kind = \"api_keys\"\nkey = 1\n").err();
        assert!(err
            .as_deref()
            .is_some_and(|e| e.starts_with("plugins[1].key: unknown key")));
    }
}
