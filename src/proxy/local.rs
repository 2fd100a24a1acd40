//! Routes the gateway answers itself: model lists, the endpoint catalogue, liveness.

use std::collections::BTreeMap;

use gateway_plugin_api::{ApiError, Principal};
use serde_json::{json, Value};

use crate::errors;
use crate::routing::pool::Routing;
use crate::routing::{Api, ModelTable, Route, Target};

/// What the routes the gateway answers itself may show.
pub struct LocalView<'a> {
    pub table: &'a ModelTable,
    pub base_path: &'a str,
    /// `created` of every model in `/v1/models`: when this configuration was loaded.
    pub loaded_at: u64,
    /// Whether `[batch]` is configured (pools then show their batch endpoint).
    pub batches: bool,
}

/// The body of a local route, for an authenticated caller.
pub fn answer(
    view: &LocalView<'_>,
    route: Route<'_>,
    principal: Option<&Principal>,
) -> Result<Value, ApiError> {
    Ok(match route {
        Route::Models { target } => models(view.table, target, principal, view.loaded_at),
        Route::ListEndpoints => list_endpoints(view, principal),
        Route::Jobs { cluster } => jobs(view.table, cluster, principal),
        Route::Whoami => match principal {
            Some(p) => whoami(p),
            // Only without authenticators (any would have answered 401): no hint to give.
            None => return Err(errors::missing_token(None)),
        },
        other => {
            return Err(errors::internal(&format!(
                "{} is not a local route",
                other.name()
            )))
        }
    })
}

/// `GET {base}/health`: liveness.
pub fn health() -> Value {
    json!({"status": "ok"})
}

/// `GET {base}/ready`: 200 when some pool has a backend to route to (healthy, or in panic
/// routing), else 503.
pub fn ready(table: &ModelTable) -> (u16, Value) {
    if table.pools.iter().any(|p| p.routing() != Routing::Nothing) {
        (200, json!({"status": "ready"}))
    } else {
        (503, json!({"status": "no healthy backend"}))
    }
}

/// `GET {base}/whoami`: the principal the auth plugins established.
pub fn whoami(p: &Principal) -> Value {
    json!({
        "id": p.id,
        "username": p.username,
        "name": p.name,
        "identity_provider": p.identity_provider,
        "groups": p.groups,
        "auth_method": p.auth_method,
    })
}

/// OpenAI's list format, so `client.models.list()` works. Lists the models of the pools the
/// principal may use; a model served by several pools appears once.
pub fn models(
    table: &ModelTable,
    target: Option<Target<'_>>,
    principal: Option<&Principal>,
    created: u64,
) -> Value {
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for pool in table.pools_for(target).filter(|p| p.permits(principal)) {
        for model in &pool.models {
            if seen.insert(model.as_str()) {
                data.push(json!({
                    "id": model,
                    "object": "model",
                    "created": created,
                    "owned_by": pool.cluster,
                }));
            }
        }
    }
    json!({ "object": "list", "data": data })
}

/// `{base}/{cluster}/jobs`: per model of the cluster, whether it is ready (every backend
/// healthy), degraded or down, and since when. Only pools the principal may use are shown.
pub fn jobs(table: &ModelTable, cluster: &str, principal: Option<&Principal>) -> Value {
    let mut models = Vec::new();
    let visible = table
        .pools
        .iter()
        .filter(|p| p.cluster == cluster && p.permits(principal));
    for pool in visible {
        let (status, since) = pool.status();
        for model in &pool.models {
            models.push(json!({
                "model": model,
                "framework": pool.framework,
                "pool": pool.name,
                "status": status.as_str(),
                "since": since,
                "backends_healthy": pool.healthy_count(),
                "backends_total": pool.backends.len(),
            }));
        }
    }
    json!({ "cluster": cluster, "models": models })
}

/// clusters → frameworks → models, endpoint paths and backend health, of the pools the
/// principal may use; `accepts_batches` and a `batches` endpoint where batches run.
pub fn list_endpoints(view: &LocalView<'_>, principal: Option<&Principal>) -> Value {
    let base_path = view.base_path;
    let mut clusters: BTreeMap<&str, BTreeMap<&str, Vec<Value>>> = BTreeMap::new();
    for pool in view.table.pools.iter().filter(|p| p.permits(principal)) {
        let (status, since) = pool.status();
        let accepts_batches = view.batches && pool.batch_max_in_flight > 0;
        let mut endpoints: serde_json::Map<String, Value> = Api::ALL
            .into_iter()
            .map(|api| {
                let path = format!(
                    "{base_path}/{}/{}{}",
                    pool.cluster,
                    pool.framework,
                    api.path()
                );
                (api.route_name().to_string(), Value::from(path))
            })
            .collect();
        if accepts_batches {
            let path = format!("{base_path}/{}/{}/v1/batches", pool.cluster, pool.framework);
            endpoints.insert("batches".into(), Value::from(path));
        }
        clusters
            .entry(&pool.cluster)
            .or_default()
            .entry(&pool.framework)
            .or_default()
            .push(json!({
                "pool": pool.name,
                "models": pool.models,
                "endpoints": endpoints,
                "accepts_batches": accepts_batches,
                "backends_total": pool.backends.len(),
                "backends_healthy": pool.healthy_count(),
                "status": status.as_str(),
                "status_since": since,
            }));
    }
    json!({ "clusters": clusters })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::pool_toml;

    fn table() -> ModelTable {
        crate::test_support::table(&format!(
            "{}{}",
            pool_toml("a", ("local", "vllm"), &["m1", "m2"], 1, ""),
            pool_toml("b", ("remote", "sglang"), &["m2"], 2, "")
        ))
    }

    #[test]
    fn models_are_listed_once_in_openai_format() {
        let v = models(&table(), None, None, 7);
        assert_eq!(v["object"], "list");
        let ids: Vec<&str> = v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, ["m1", "m2"]);
        assert_eq!(v["data"][0]["object"], "model");
        assert_eq!(v["data"][0]["created"], 7);
        let only_remote = models(
            &table(),
            Some(Target {
                cluster: "remote",
                framework: "sglang",
            }),
            None,
            7,
        );
        assert_eq!(only_remote["data"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn endpoints_name_full_paths() {
        let table = table();
        let view = LocalView {
            table: &table,
            base_path: "/resource_server",
            loaded_at: 0,
            batches: true,
        };
        let v = list_endpoints(&view, None);
        let pool = &v["clusters"]["local"]["vllm"][0];
        assert_eq!(
            pool["endpoints"]["chat_completions"],
            "/resource_server/local/vllm/v1/chat/completions"
        );
        assert_eq!(pool["backends_healthy"], 1);
        assert_eq!(pool["accepts_batches"], true);
        assert_eq!(
            pool["endpoints"]["batches"],
            "/resource_server/local/vllm/v1/batches"
        );
    }
}
