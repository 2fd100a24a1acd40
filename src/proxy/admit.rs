//! Phase 5, admit: budgets (rate and concurrency limits). Only requests every earlier phase
//! let through get here, so a refused request never consumes one.

use std::sync::Arc;

use gateway_plugin_api::{ApiError, Flow, Plugin, RequestCtx, RequestHead};

pub async fn admit(
    plugins: &[Arc<dyn Plugin>],
    head: &RequestHead<'_>,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    for plugin in plugins {
        if let Flow::Respond(err) = plugin.admit(head, ctx).await {
            return Err(err);
        }
    }
    Ok(())
}
