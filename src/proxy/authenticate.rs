//! Phase 2, authenticate: the first plugin that recognises the credential decides; when
//! some plugin authenticates and none did, 401. Only the headers are read.

use std::sync::Arc;

use gateway_plugin_api::{ApiError, Authn, Plugin, RequestCtx, RequestHead};

use crate::errors;
use crate::plugins::credential_hint;

pub async fn authenticate(
    plugins: &[Arc<dyn Plugin>],
    head: &RequestHead<'_>,
    ctx: &mut RequestCtx,
) -> Result<(), ApiError> {
    for plugin in plugins {
        match plugin.authenticate(head, ctx).await {
            Authn::NotMine => continue,
            Authn::Accepted(principal) => {
                ctx.principal = Some(principal);
                return Ok(());
            }
            Authn::Refused(err) => return Err(err),
        }
    }
    if plugins.is_empty() {
        Ok(())
    } else {
        Err(errors::missing_token(credential_hint(plugins)))
    }
}
