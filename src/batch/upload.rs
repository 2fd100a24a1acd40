//! `POST {base}/v1/files`: a multipart upload (`purpose`, `file`) streamed to disk as it
//! arrives, never held in memory, bounded by `max_file_size` and in time.

use std::time::Duration;

use bytes::Bytes;
use gateway_plugin_api::ApiError;
use pingora_core::protocols::http::ServerSession;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::api::{bad_request, store_down, Who};
use super::store::FileRow;
use super::{new_id, now, now_ms, object, Engine};
use crate::errors;

/// The longest an upload may take (a slow link moving 200 MB).
const UPLOAD_TIME: Duration = Duration::from_secs(30 * 60);

pub async fn receive(
    engine: &Engine,
    session: &mut ServerSession,
    who: &Who,
) -> Result<Value, ApiError> {
    let max = engine.config.max_file_size;
    let content_type = session
        .get_header("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let boundary = multer::parse_boundary(&content_type).map_err(|_| {
        bad_request(
            "invalid_content_type",
            "Upload files as multipart/form-data with `purpose` and `file` fields.".into(),
            "file",
        )
    })?;
    // The form's own fields and boundaries on top of the file: a little slack.
    let limit = max.saturating_add(64 * 1024);
    crate::proxy::expect_body(session, limit, max).await?;
    let id = new_id("file-");
    let tmp = engine
        .config
        .state_dir
        .join("files")
        .join(format!(".upload-{id}"));
    let received =
        tokio::time::timeout(UPLOAD_TIME, read_form(session, &boundary, limit, max, &tmp)).await;
    let (purpose, filename, bytes) = match received {
        Ok(Ok(form)) => form,
        Ok(Err(e)) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Err(_) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(errors::body_timeout(UPLOAD_TIME));
        }
    };
    let row = FileRow {
        id: id.clone(),
        owner: who.owner.clone(),
        purpose,
        filename,
        bytes: bytes as i64,
        created_ms: now_ms(),
        expires_at: Some(now() + engine.config.file_expiry.as_secs() as i64),
    };
    let kept = std::fs::rename(&tmp, engine.file_path(&id));
    if let Err(e) = kept {
        let _ = std::fs::remove_file(&tmp);
        return Err(errors::internal(&format!("storing the upload: {e}")));
    }
    if let Err(e) = engine.store.insert_file(&row).await {
        let _ = std::fs::remove_file(engine.file_path(&id));
        return Err(store_down(e));
    }
    Ok(object::file(&row))
}

/// Reads the form, writing `file` to `tmp`: (purpose, filename, bytes).
async fn read_form(
    session: &mut ServerSession,
    boundary: &str,
    limit: u64,
    max: u64,
    tmp: &std::path::Path,
) -> Result<(String, String, u64), ApiError> {
    let body = futures_util::stream::unfold(session, |s| async move {
        match s.read_request_body().await {
            Ok(Some(chunk)) => Some((Ok::<Bytes, std::io::Error>(chunk), s)),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), s)),
        }
    });
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(limit)
            .per_field(limit),
    );
    let mut form = multer::Multipart::with_constraints(body, boundary, constraints);
    let bad_form = |e: multer::Error| match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            errors::body_too_large(max)
        }
        other => bad_request(
            "invalid_multipart",
            format!("The upload is not a readable multipart form: {other}"),
            "file",
        ),
    };
    let mut purpose = None;
    let mut file = None;
    while let Some(mut field) = form.next_field().await.map_err(bad_form)? {
        match field.name() {
            Some("purpose") => {
                let text = field.text().await.map_err(bad_form)?;
                purpose = Some(text.chars().take(64).collect::<String>());
            }
            Some("file") if file.is_none() => {
                let filename = plain_filename(field.file_name());
                let mut out = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(tmp)
                    .await
                    .map_err(|e| errors::internal(&format!("storing the upload: {e}")))?;
                let mut bytes: u64 = 0;
                while let Some(chunk) = field.chunk().await.map_err(bad_form)? {
                    bytes += chunk.len() as u64;
                    if bytes > max {
                        return Err(errors::body_too_large(max));
                    }
                    out.write_all(&chunk)
                        .await
                        .map_err(|e| errors::internal(&format!("storing the upload: {e}")))?;
                }
                out.sync_all()
                    .await
                    .map_err(|e| errors::internal(&format!("storing the upload: {e}")))?;
                file = Some((filename, bytes));
            }
            // Other fields are read past, bounded by the stream limit.
            _ => while field.chunk().await.map_err(bad_form)?.is_some() {},
        }
    }
    let (filename, bytes) = file.ok_or_else(|| {
        bad_request(
            "missing_required_parameter",
            "The form has no `file` field.".into(),
            "file",
        )
    })?;
    match purpose.as_deref() {
        Some("batch") => Ok(("batch".into(), filename, bytes)),
        Some(other) => Err(bad_request(
            "invalid_purpose",
            format!("`purpose` `{other}` is not supported here; use `batch`."),
            "purpose",
        )),
        None => Err(bad_request(
            "missing_required_parameter",
            "The form has no `purpose` field (use `batch`).".into(),
            "purpose",
        )),
    }
}

/// The last path part of the client's file name, plain characters only, bounded.
fn plain_filename(name: Option<&str>) -> String {
    let base = name
        .and_then(|n| n.rsplit(['/', '\\']).next())
        .unwrap_or_default();
    let plain: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    if plain.is_empty() || plain == "." || plain == ".." {
        "upload.jsonl".into()
    } else {
        plain
    }
}
