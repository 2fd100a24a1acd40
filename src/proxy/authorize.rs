//! Phase 4, authorize: a pool that serves the model and admits the principal (404, 403),
//! then the authorize plugins.

use std::sync::Arc;

use gateway_plugin_api::{ApiError, Flow, Plugin, RequestCtx, RequestHead};

use crate::errors;
use crate::routing::{ModelTable, Pool, Target};

pub async fn authorize(
    table: &ModelTable,
    plugins: &[Arc<dyn Plugin>],
    head: &RequestHead<'_>,
    ctx: &mut RequestCtx,
    target: Option<Target<'_>>,
) -> Result<Arc<Pool>, ApiError> {
    let model = ctx.model.as_deref().unwrap_or_default();
    let principal = ctx.principal.as_deref();
    let pool = table
        .resolve(model, target, principal)
        .map_err(|why| errors::unresolved(why, model, target, principal))?;
    ctx.pool = Some(pool.name.clone());
    for plugin in plugins {
        if let Flow::Respond(err) = plugin.authorize(head, ctx).await {
            return Err(err);
        }
    }
    Ok(pool)
}
