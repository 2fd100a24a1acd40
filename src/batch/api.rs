//! The batch routes: `{base}/v1/batches[/<id>[/cancel|/result]]` (also under
//! `{base}/{cluster}/{framework}`, which pins the pools of new batches) and
//! `{base}/v1/files[/<id>[/content]]`. A user only ever sees their own batches and files:
//! another user's id is answered exactly like an unknown one (404).

use std::path::PathBuf;
use std::sync::Arc;

use gateway_plugin_api::{ApiError, Principal, RequestCtx};
use pingora_core::protocols::http::ServerSession;
use serde_json::Value;

use super::output::summary;
use super::{files_api, object, paths, plain_id, submit, Engine};
use crate::errors;
use crate::routing::{Route, Target};

/// What a batch route answers.
pub enum Answer {
    Json(u16, Value),
    /// A stored file's bytes, streamed from disk.
    File {
        path: PathBuf,
        bytes: u64,
    },
}

/// Who is asking: the owner key (the stable identity id) and the username.
pub struct Who {
    pub owner: String,
    pub name: String,
    pub principal: Option<Arc<Principal>>,
}

impl Who {
    fn of(ctx: &RequestCtx) -> Who {
        match &ctx.principal {
            Some(p) => Who {
                owner: p.id.clone(),
                name: p.username.clone(),
                principal: Some(p.clone()),
            },
            // No authenticator configured: one shared anonymous owner.
            None => Who {
                owner: "anonymous".into(),
                name: "anonymous".into(),
                principal: None,
            },
        }
    }

    pub fn local_user(&self) -> Option<&str> {
        self.principal.as_deref().and_then(paths::local_user)
    }
}

pub fn bad_request(code: &'static str, message: String, param: &'static str) -> ApiError {
    ApiError::new(400, "invalid_request_error", code, message).with_param(param)
}

pub fn not_found(kind: &str, id: &str) -> ApiError {
    let shown: String = id.chars().take(80).collect();
    ApiError::new(
        404,
        "invalid_request_error",
        "not_found",
        format!("No {kind} found with id `{shown}`."),
    )
}

/// The job store failed: 503, nothing was changed.
pub fn store_down(e: sqlx::Error) -> ApiError {
    log::error!(target: "batch", "batch store: {e}");
    ApiError::new(
        503,
        "server_error",
        "batch_store_unavailable",
        "The batch store is unavailable right now; try again shortly.".into(),
    )
    .with_header("retry-after", "5".into())
}

pub fn disabled() -> ApiError {
    ApiError::new(
        404,
        "invalid_request_error",
        "batches_disabled",
        "Batch jobs are not enabled on this gateway.".into(),
    )
}

/// `?key=value&...` of the request, undecoded (ids and statuses are plain words).
pub fn query<'q>(session: &'q ServerSession, key: &str) -> Option<&'q str> {
    session
        .req_header()
        .uri
        .query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `limit`: 1 to 100, 20 by default (OpenAI's).
pub fn limit(session: &ServerSession) -> Result<i64, ApiError> {
    match query(session, "limit") {
        None => Ok(20),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                bad_request(
                    "invalid_limit",
                    "`limit` must be from 1 to 100.".into(),
                    "limit",
                )
            }),
    }
}

pub async fn answer(
    engine: Option<&Arc<Engine>>,
    session: &mut ServerSession,
    ctx: &RequestCtx,
    route: Route<'_>,
) -> Result<Answer, ApiError> {
    let engine = engine.ok_or_else(disabled)?;
    let who = Who::of(ctx);
    let method = session.req_header().method.as_str().to_string();
    match route {
        Route::Batches { target, rest } => {
            batches(engine, session, &who, &method, target, rest).await
        }
        Route::Files { rest } => files_api::files(engine, session, &who, &method, rest).await,
        other => Err(errors::internal(&format!(
            "{} is not a batch route",
            other.name()
        ))),
    }
}

async fn batches(
    engine: &Arc<Engine>,
    session: &mut ServerSession,
    who: &Who,
    method: &str,
    target: Option<Target<'_>>,
    rest: &str,
) -> Result<Answer, ApiError> {
    let parts: Vec<&str> = rest.split('/').skip(1).collect();
    match (method, parts.as_slice()) {
        ("POST", []) => {
            let body = crate::proxy::read_body(session, 1 << 20, engine.server.client_body_timeout)
                .await?;
            Ok(Answer::Json(
                200,
                submit::create(engine, who, target, &body).await?,
            ))
        }
        ("GET", []) => list(engine, session, who).await,
        ("GET", [id]) => Ok(Answer::Json(
            200,
            object::batch(&owned(engine, who, id).await?),
        )),
        ("POST", [id, "cancel"]) => cancel(engine, who, id).await,
        ("GET", [id, "result"]) => {
            let b = owned(engine, who, id).await?;
            match b.ended_ms {
                Some(at) => Ok(Answer::Json(200, summary(&b, &b.status, at))),
                None => Err(ApiError::new(
                    409,
                    "invalid_request_error",
                    "batch_not_finished",
                    format!(
                        "Batch `{id}` is {}; its result is ready when it has finished.",
                        b.status
                    ),
                )),
            }
        }
        (_, []) => Err(errors::method_not_allowed(method, "GET, POST")),
        (_, [_] | [_, "result"]) => Err(errors::method_not_allowed(method, "GET")),
        (_, [_, "cancel"]) => Err(errors::method_not_allowed(method, "POST")),
        _ => Err(errors::not_found(session.req_header().uri.path())),
    }
}

async fn owned(engine: &Engine, who: &Who, id: &str) -> Result<super::store::BatchRow, ApiError> {
    if !plain_id(id) {
        return Err(not_found("batch", id));
    }
    engine
        .store
        .batch(&who.owner, id)
        .await
        .map_err(store_down)?
        .ok_or_else(|| not_found("batch", id))
}

async fn list(engine: &Engine, session: &ServerSession, who: &Who) -> Result<Answer, ApiError> {
    const STATUSES: [&str; 8] = [
        "validating",
        "in_progress",
        "finalizing",
        "completed",
        "failed",
        "expired",
        "cancelling",
        "cancelled",
    ];
    let status = query(session, "status");
    if let Some(s) = status {
        if !STATUSES.contains(&s) {
            return Err(bad_request(
                "invalid_status",
                format!("`status` must be one of {}.", STATUSES.join(", ")),
                "status",
            ));
        }
    }
    let after = query(session, "after").filter(|a| plain_id(a));
    let page = engine
        .store
        .batches(&who.owner, status, after, limit(session)?)
        .await
        .map_err(store_down)?;
    Ok(Answer::Json(
        200,
        object::list(&page, |b| &b.id, object::batch),
    ))
}

async fn cancel(engine: &Engine, who: &Who, id: &str) -> Result<Answer, ApiError> {
    let b = owned(engine, who, id).await?;
    let moved = engine
        .store
        .transition(
            id,
            &["validating", "in_progress"],
            "cancelling",
            super::now_ms(),
        )
        .await
        .map_err(store_down)?;
    if !moved && !matches!(b.status.as_str(), "cancelling" | "cancelled") {
        return Err(ApiError::new(
            409,
            "invalid_request_error",
            "batch_not_cancellable",
            format!(
                "Batch `{id}` is {}; only a running batch can be cancelled.",
                b.status
            ),
        ));
    }
    engine.wake.notify_one();
    let b = owned(engine, who, id).await?;
    Ok(Answer::Json(200, object::batch(&b)))
}
