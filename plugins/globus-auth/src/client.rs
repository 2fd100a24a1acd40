//! Calls to Globus Auth and the Groups API (control plane only; never on the data path).

use serde::Deserialize;

use crate::config::GlobusConfig;
use crate::verdict::Introspection;

/// Globus could not give an answer: not the user's fault, never cached.
#[derive(Debug)]
pub struct Outage(pub String);

const DEPENDENT_GRANT: &str = "urn:globus:auth:grant_type:dependent_token";
const GROUPS_RESOURCE_SERVER: &str = "groups.api.globus.org";

pub struct GlobusClient {
    http: reqwest::Client,
    cfg: GlobusConfig,
}

#[derive(Deserialize)]
struct DependentToken {
    access_token: String,
    #[serde(default)]
    resource_server: String,
}

#[derive(Deserialize)]
struct Group {
    id: String,
    #[serde(default)]
    my_memberships: Vec<Membership>,
}

#[derive(Deserialize)]
struct Membership {
    #[serde(default)]
    status: String,
}

impl GlobusClient {
    pub fn new(cfg: GlobusConfig) -> Result<GlobusClient, String> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent("inference-gateway")
            .build()
            .map_err(|e| format!("building the Globus HTTP client: {e}"))?;
        Ok(GlobusClient { http, cfg })
    }

    pub fn config(&self) -> &GlobusConfig {
        &self.cfg
    }

    async fn send(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Outage> {
        let resp = req
            .send()
            .await
            .map_err(|e| Outage(format!("{what}: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            // Our own client credentials were refused: an operator problem, not the user's.
            log::error!(
                target: "globus_auth",
                "{what}: Globus Auth refused the gateway's client credentials (client_id {}); check client_id and the client secret",
                self.cfg.client_id
            );
        }
        Err(Outage(format!("{what}: HTTP {status}")))
    }

    pub async fn introspect(&self, token: &str) -> Result<Introspection, Outage> {
        let mut form = vec![
            ("token", token.to_string()),
            ("include", "session_info,identity_set_detail".to_string()),
        ];
        if !self.cfg.policies.is_empty() {
            form.push(("authentication_policies", self.cfg.policies.join(",")));
        }
        let req = self
            .http
            .post(&self.cfg.introspect_url)
            .basic_auth(&self.cfg.client_id, Some(&self.cfg.client_secret))
            .form(&form);
        let resp = self.send("introspect", req).await?;
        resp.json::<Introspection>()
            .await
            .map_err(|e| Outage(format!("introspect: unreadable answer: {e}")))
    }

    /// Group ids the token's user is an active member of, via a dependent Groups token.
    pub async fn groups(&self, token: &str) -> Result<Vec<String>, Outage> {
        let req = self
            .http
            .post(&self.cfg.token_url)
            .basic_auth(&self.cfg.client_id, Some(&self.cfg.client_secret))
            .form(&[("grant_type", DEPENDENT_GRANT), ("token", token)]);
        let tokens: Vec<DependentToken> = self
            .send("dependent token grant", req)
            .await?
            .json()
            .await
            .map_err(|e| Outage(format!("dependent token grant: unreadable answer: {e}")))?;
        let Some(groups_token) = tokens
            .iter()
            .find(|t| t.resource_server == GROUPS_RESOURCE_SERVER)
        else {
            // The user's token carries no consent for the Groups API: no groups, not an outage.
            return Ok(Vec::new());
        };
        let req = self
            .http
            .get(&self.cfg.groups_url)
            .bearer_auth(&groups_token.access_token);
        let groups: Vec<Group> = self
            .send("my_groups", req)
            .await?
            .json()
            .await
            .map_err(|e| Outage(format!("my_groups: unreadable answer: {e}")))?;
        Ok(groups
            .into_iter()
            .filter(|g| g.my_memberships.iter().any(|m| m.status == "active"))
            .map(|g| g.id)
            .collect())
    }
}
