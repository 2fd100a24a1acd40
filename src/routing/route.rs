//! Maps a request path to what the gateway does with it.

/// The OpenAI APIs the gateway proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Api {
    pub fn route_name(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
            Api::Embeddings => "/v1/embeddings",
        }
    }

    pub const ALL: [Api; 3] = [Api::ChatCompletions, Api::Completions, Api::Embeddings];

    /// The backend's URI for this API, parsed once: `Uri::from_static` parses its argument
    /// on every call (~280 instructions a request), a clone of a parsed one copies pointers.
    pub fn uri(self) -> http::Uri {
        static URIS: std::sync::LazyLock<[http::Uri; 3]> =
            std::sync::LazyLock::new(|| Api::ALL.map(|api| http::Uri::from_static(api.path())));
        let [chat, completions, embeddings] = &*URIS;
        match self {
            Api::ChatCompletions => chat,
            Api::Completions => completions,
            Api::Embeddings => embeddings,
        }
        .clone()
    }
}

/// `/{cluster}/{framework}/v1/...` narrows a request to the pools tagged with both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub cluster: &'a str,
    pub framework: &'a str,
}

impl Target<'_> {
    /// Whether a pool tagged `cluster`/`framework` is in this target; `None` targets all.
    pub fn admits(target: Option<Target<'_>>, cluster: &str, framework: &str) -> bool {
        target.is_none_or(|t| t.cluster == cluster && t.framework == framework)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Inference {
        api: Api,
        target: Option<Target<'a>>,
    },
    Models {
        target: Option<Target<'a>>,
    },
    ListEndpoints,
    Whoami,
    /// `{base}/{cluster}/jobs`: status of the models a cluster serves.
    Jobs {
        cluster: &'a str,
    },
    /// `{base}[/{cluster}/{framework}]/v1/batches...`: `rest` is what follows `/v1/batches`
    /// (`""`, `/<id>`, `/<id>/cancel`, `/<id>/result`).
    Batches {
        target: Option<Target<'a>>,
        rest: &'a str,
    },
    /// `{base}/v1/files...`: `rest` follows `/v1/files`.
    Files {
        rest: &'a str,
    },
    Health,
    /// Readiness: the configuration is loaded and some pool has a backend to route to.
    Ready,
    NotFound,
}

impl Route<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Route::Inference { api, .. } => api.route_name(),
            Route::Models { .. } => "models",
            Route::ListEndpoints => "list_endpoints",
            Route::Whoami => "whoami",
            Route::Jobs { .. } => "jobs",
            Route::Batches { .. } => "batches",
            Route::Files { .. } => "files",
            Route::Ready => "ready",
            Route::Health => "health",
            Route::NotFound => "not_found",
        }
    }

    /// The one method the route answers to; `None` for the batch routes, which answer
    /// several and check them themselves.
    pub fn method(&self) -> Option<&'static str> {
        match self {
            Route::Inference { .. } => Some("POST"),
            Route::Batches { .. } | Route::Files { .. } => None,
            _ => Some("GET"),
        }
    }
}

/// The longest cluster, framework or pool name.
pub const MAX_SEGMENT: usize = 128;

/// A plain path segment as cluster and framework names are written: these reach logs, so
/// anything else in their place is no route at all.
pub fn is_segment(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_SEGMENT
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
}

/// Matches `path` (without query) under `base_path` (`""` or `/prefix`).
pub fn match_route<'a>(base_path: &str, path: &'a str) -> Route<'a> {
    let Some(rest) = path.strip_prefix(base_path) else {
        return Route::NotFound;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    match rest {
        "/health" => return Route::Health,
        "/list-endpoints" => return Route::ListEndpoints,
        "/whoami" => return Route::Whoami,
        "/ready" => return Route::Ready,
        _ => {}
    }
    if let Some(route) = match_v1(rest, None) {
        return route;
    }
    if let Some(cluster) = rest.strip_prefix('/').and_then(|r| r.strip_suffix("/jobs")) {
        if is_segment(cluster) {
            return Route::Jobs { cluster };
        }
    }
    // `/{cluster}/{framework}/v1/...`
    let mut parts = rest.splitn(4, '/');
    let (Some(""), Some(cluster), Some(framework), Some(tail)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::NotFound;
    };
    if !is_segment(cluster) || !is_segment(framework) {
        return Route::NotFound;
    }
    // The tail with its leading `/`: it is a suffix of `rest` that follows a `/`.
    let tail = rest
        .get(rest.len().saturating_sub(tail.len() + 1)..)
        .unwrap_or_default();
    match_v1(tail, Some(Target { cluster, framework })).unwrap_or(Route::NotFound)
}

fn match_v1<'a>(rest: &'a str, target: Option<Target<'a>>) -> Option<Route<'a>> {
    if rest == "/v1/models" {
        return Some(Route::Models { target });
    }
    let under = |prefix: &str| {
        rest.strip_prefix(prefix)
            .filter(|tail| tail.is_empty() || tail.starts_with('/'))
    };
    if let Some(tail) = under("/v1/batches") {
        return Some(Route::Batches { target, rest: tail });
    }
    if let (Some(tail), None) = (under("/v1/files"), target) {
        return Some(Route::Files { rest: tail });
    }
    Api::ALL
        .into_iter()
        .find(|api| api.path() == rest)
        .map(|api| Route::Inference { api, target })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "/resource_server";

    #[test]
    fn each_api_has_its_own_backend_uri() {
        for api in Api::ALL {
            assert_eq!(api.uri().path(), api.path());
            assert_eq!(api.uri().query(), None);
        }
    }

    #[test]
    fn federated_and_targeted_routes() {
        assert_eq!(
            match_route(BASE, "/resource_server/v1/chat/completions"),
            Route::Inference {
                api: Api::ChatCompletions,
                target: None
            }
        );
        assert_eq!(
            match_route(BASE, "/resource_server/local/vllm/v1/embeddings"),
            Route::Inference {
                api: Api::Embeddings,
                target: Some(Target {
                    cluster: "local",
                    framework: "vllm"
                })
            }
        );
        assert_eq!(
            match_route(BASE, "/resource_server/local/vllm/v1/models"),
            Route::Models {
                target: Some(Target {
                    cluster: "local",
                    framework: "vllm"
                })
            }
        );
        assert_eq!(
            match_route(BASE, "/resource_server/v1/models/"),
            Route::Models { target: None }
        );
        assert_eq!(match_route(BASE, "/resource_server/health"), Route::Health);
        assert_eq!(
            match_route(BASE, "/resource_server/list-endpoints"),
            Route::ListEndpoints
        );
    }

    #[test]
    fn status_routes() {
        assert_eq!(
            match_route(BASE, "/resource_server/polaris/jobs"),
            Route::Jobs { cluster: "polaris" }
        );
        assert_eq!(match_route(BASE, "/resource_server/ready"), Route::Ready);
        assert_eq!(
            match_route(BASE, "/resource_server/a/b/jobs"),
            Route::NotFound
        );
    }

    #[test]
    fn unknown_paths() {
        assert_eq!(match_route(BASE, "/v1/chat/completions"), Route::NotFound);
        assert_eq!(
            match_route(BASE, "/resource_serverx/v1/models"),
            Route::NotFound
        );
        assert_eq!(
            match_route(BASE, "/resource_server/a/b/c/v1/models"),
            Route::NotFound
        );
        assert_eq!(
            match_route(BASE, "/resource_server//vllm/v1/models"),
            Route::NotFound
        );
        assert_eq!(
            match_route(BASE, "/resource_server/v1/chat"),
            Route::NotFound
        );
        let long = format!("/resource_server/{}/vllm/v1/models", "c".repeat(129));
        assert_eq!(match_route(BASE, &long), Route::NotFound);
        assert_eq!(
            match_route(BASE, "/resource_server/a%0a/vllm/v1/models"),
            Route::NotFound
        );
        assert_eq!(
            match_route(BASE, "/resource_server/a b/jobs"),
            Route::NotFound
        );
    }

    #[test]
    fn empty_base_path_serves_at_root() {
        assert_eq!(
            match_route("", "/v1/completions"),
            Route::Inference {
                api: Api::Completions,
                target: None
            }
        );
        assert_eq!(match_route("", "/health"), Route::Health);
    }
}
