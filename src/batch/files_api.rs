//! OpenAI's Files API, for batch inputs and outputs: upload, list, retrieve, delete, content.

use gateway_plugin_api::ApiError;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;

use super::api::{bad_request, limit, not_found, query, store_down, Answer, Who};
use super::store::FileRow;
use super::{object, plain_id, upload, Engine};
use crate::errors;

pub async fn files(
    engine: &Engine,
    session: &mut ServerSession,
    who: &Who,
    method: &str,
    rest: &str,
) -> Result<Answer, ApiError> {
    let parts: Vec<&str> = rest.split('/').skip(1).collect();
    match (method, parts.as_slice()) {
        ("POST", []) => Ok(Answer::Json(
            200,
            upload::receive(engine, session, who).await?,
        )),
        ("GET", []) => {
            let purpose = query(session, "purpose");
            if purpose.is_some_and(|p| !matches!(p, "batch" | "batch_output")) {
                return Err(bad_request(
                    "invalid_purpose",
                    "`purpose` filters by `batch` or `batch_output`.".into(),
                    "purpose",
                ));
            }
            let after = query(session, "after").filter(|a| plain_id(a));
            let page = engine
                .store
                .files(&who.owner, purpose, after, limit(session)?)
                .await
                .map_err(store_down)?;
            Ok(Answer::Json(
                200,
                object::list(&page, |f| &f.id, object::file),
            ))
        }
        ("GET", [id]) => Ok(Answer::Json(
            200,
            object::file(&owned(engine, who, id).await?),
        )),
        ("DELETE", [id]) => {
            owned(engine, who, id).await?;
            engine
                .store
                .delete_file(&who.owner, id)
                .await
                .map_err(store_down)?;
            let _ = std::fs::remove_file(engine.file_path(id));
            Ok(Answer::Json(
                200,
                json!({"id": id, "object": "file", "deleted": true}),
            ))
        }
        ("GET", [id, "content"]) => {
            let f = owned(engine, who, id).await?;
            Ok(Answer::File {
                path: engine.file_path(&f.id),
                bytes: f.bytes as u64,
            })
        }
        (_, []) => Err(errors::method_not_allowed(method, "GET, POST")),
        (_, [_]) => Err(errors::method_not_allowed(method, "GET, DELETE")),
        (_, [_, "content"]) => Err(errors::method_not_allowed(method, "GET")),
        _ => Err(errors::not_found(session.req_header().uri.path())),
    }
}

async fn owned(engine: &Engine, who: &Who, id: &str) -> Result<FileRow, ApiError> {
    if !plain_id(id) {
        return Err(not_found("file", id));
    }
    engine
        .store
        .file(&who.owner, id)
        .await
        .map_err(store_down)?
        .ok_or_else(|| not_found("file", id))
}
