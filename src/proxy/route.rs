//! Phase 1, route: which of the gateway's routes the path names, and whether the method
//! fits it. Nothing else of the request has been read.

use gateway_plugin_api::{ApiError, RequestCtx};

use crate::errors;
use crate::routing::{match_route, Route};

pub fn route<'p>(
    base_path: &str,
    method: &str,
    path: &'p str,
    ctx: &mut RequestCtx,
) -> Result<Route<'p>, ApiError> {
    let route = match_route(base_path, path);
    ctx.route = route.name();
    if let Route::Inference {
        target: Some(t), ..
    }
    | Route::Models { target: Some(t) }
    | Route::Batches {
        target: Some(t), ..
    } = route
    {
        ctx.cluster = Some(t.cluster.to_string());
        ctx.framework = Some(t.framework.to_string());
    }
    match route {
        Route::NotFound => Err(errors::not_found(path)),
        _ => match route.method() {
            Some(allowed) if method != allowed => Err(errors::method_not_allowed(method, allowed)),
            _ => Ok(route),
        },
    }
}
