//! Creating a batch, through either door: the input is found (an uploaded file, or a path
//! confined to the user's roots), every line validated and stored in one transaction, and
//! only a batch whose every line passed is handed to the worker.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use gateway_plugin_api::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::BufReader;

use super::api::{bad_request, not_found, store_down, Who};
use super::input::{next_line, LineError, Rules, Validator, ENDPOINTS};
use super::store::{NewBatch, Store};
use super::{new_id, now, now_ms, object, paths, Engine};
use crate::config::MAX_MODEL_NAME;
use crate::errors;
use crate::routing::Target;

#[derive(Deserialize)]
struct CreateRequest {
    input_file_id: Option<String>,
    input_file_path: Option<String>,
    /// The reference deployment's name for `input_file_path`.
    input_file: Option<String>,
    output_folder_path: Option<String>,
    model: Option<String>,
    endpoint: Option<String>,
    completion_window: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
}

/// Where the lines come from and what the batch row records about it.
struct Input {
    path: PathBuf,
    key: String,
    file_id: Option<String>,
    input_path: Option<String>,
    output_folder: Option<PathBuf>,
}

pub async fn create(
    engine: &Arc<Engine>,
    who: &Who,
    target: Option<Target<'_>>,
    body: &[u8],
) -> Result<Value, ApiError> {
    let req: CreateRequest =
        serde_json::from_slice(body).map_err(|e| errors::invalid_json(&e.to_string()))?;
    let window = req.completion_window.as_deref().unwrap_or("24h");
    let window_secs = humantime::parse_duration(window)
        .ok()
        .filter(|d| d.as_secs() >= 1 && d.as_secs() <= 7 * 24 * 3600)
        .ok_or_else(|| bad_request("invalid_completion_window", format!("`completion_window` `{window}` must be a duration from 1s to 7 days, like \"24h\"."), "completion_window"))?
        .as_secs() as i64;
    let metadata = check_metadata(req.metadata.as_ref())?;
    let path_based = req.input_file_path.as_deref().or(req.input_file.as_deref());
    let (input, model) = match (&req.input_file_id, path_based) {
        (Some(id), _) => (uploaded(engine, who, id).await?, None),
        (None, Some(raw)) => {
            let model = checked_model(req.model.as_deref())?;
            authorized(engine, who, &model, target)?;
            (
                confined(engine, who, raw, req.output_folder_path.as_deref())?,
                Some(model),
            )
        }
        (None, None) => {
            return Err(bad_request(
                "missing_required_parameter",
                "Name the input: `input_file_id` (an uploaded file) or `input_file_path`.".into(),
                "input_file_id",
            ))
        }
    };
    let endpoint = match (&req.endpoint, &input.file_id) {
        (Some(e), _) if !ENDPOINTS.contains(&e.as_str()) => {
            return Err(bad_request(
                "invalid_endpoint",
                format!("`endpoint` must be one of {}.", ENDPOINTS.join(", ")),
                "endpoint",
            ))
        }
        (Some(e), _) => Some(e.clone()),
        (None, Some(_)) => {
            return Err(bad_request(
                "missing_required_parameter",
                "`endpoint` is required with `input_file_id`.".into(),
                "endpoint",
            ))
        }
        (None, None) => None,
    };
    let (active, same) = engine
        .store
        .active_of(&who.owner, &input.key)
        .await
        .map_err(store_down)?;
    if same {
        return Err(ApiError::new(
            409,
            "invalid_request_error",
            "batch_already_active",
            "A batch of this input file is still running; wait for it or cancel it first.".into(),
        ));
    }
    if active >= engine.config.max_active_per_user as i64 {
        return Err(ApiError::new(429, "rate_limit_error", "too_many_active_batches", format!("You have {active} batches running, the most this gateway allows at once; wait for one to finish.")));
    }

    let id = new_id("batch_");
    let mut validator = Validator::new(Rules {
        endpoint,
        model,
        max_lines: engine.config.max_lines,
        max_tokens_limit: engine.server.max_tokens_limit,
    });
    let mut tx = engine.store.begin_batch().await.map_err(store_down)?;
    read_lines(engine, &input, &id, &mut validator, &mut tx).await?;
    let created_ms = now_ms();
    let mut row = NewBatch {
        id: id.clone(),
        owner: who.owner.clone(),
        owner_name: who.name.clone(),
        status: "in_progress",
        endpoint: validator.endpoint().unwrap_or(ENDPOINTS[0]).to_string(),
        model: validator.model().unwrap_or_default().to_string(),
        cluster: target.map(|t| t.cluster.to_string()),
        framework: target.map(|t| t.framework.to_string()),
        input_file_id: input.file_id.clone(),
        input_file_path: input.input_path.clone(),
        output_folder_path: input
            .output_folder
            .as_ref()
            .map(|p| p.display().to_string()),
        result_folder: None,
        input_key: input.key.clone(),
        completion_window: window.to_string(),
        metadata,
        errors: None,
        total: validator.lines as i64,
        failed: 0,
        created_ms,
        in_progress_at: Some(created_ms / 1000),
        expires_at: created_ms / 1000 + window_secs,
        failed_at: None,
    };
    if validator.failed() {
        drop(tx);
        let listed = json!({"object": "list", "data": validator.errors});
        if input.file_id.is_none() {
            let each: Vec<&str> = validator
                .errors
                .iter()
                .map(|e| e.message.as_str())
                .collect();
            let message = format!("{} {}", summary_of(&validator), each.join(" "));
            return Err(bad_request(
                "invalid_input_file",
                message,
                "input_file_path",
            ));
        }
        // OpenAI's way: the batch exists, `failed`, its `errors` naming the lines.
        row.status = "failed";
        row.errors = Some(listed.to_string());
        row.failed_at = Some(now());
        row.in_progress_at = None;
        let mut tx = engine.store.begin_batch().await.map_err(store_down)?;
        Store::insert_batch(&mut tx, &row)
            .await
            .map_err(store_down)?;
        tx.commit().await.map_err(store_down)?;
        return stored(engine, who, &id).await;
    }
    if input.file_id.is_some() {
        authorized(engine, who, &row.model, target)?;
    }
    if let (Some(folder), Some(raw)) = (&input.output_folder, &input.input_path) {
        let name = paths::result_folder_name(std::path::Path::new(raw), &row.model, &id);
        let made = paths::create_result_folder(folder, &name, engine.config.result_file_mode)
            .map_err(|e| {
                ApiError::new(
                    409,
                    "invalid_request_error",
                    "output_folder_unusable",
                    format!("Cannot create the result folder `{name}` in the output folder: {e}"),
                )
            })?;
        row.result_folder = Some(made.display().to_string());
    }
    Store::insert_batch(&mut tx, &row)
        .await
        .map_err(store_down)?;
    tx.commit().await.map_err(store_down)?;
    engine.wake.notify_one();
    log::info!(target: "batch", batch_id = id.as_str(), user = who.name.as_str(); "batch accepted: {} lines for {}", row.total, row.model);
    stored(engine, who, &id).await
}

async fn stored(engine: &Engine, who: &Who, id: &str) -> Result<Value, ApiError> {
    let b = engine
        .store
        .batch(&who.owner, id)
        .await
        .map_err(store_down)?;
    b.map(|b| object::batch(&b))
        .ok_or_else(|| not_found("batch", id))
}

fn summary_of(v: &Validator) -> String {
    let more = if v.more_errors > 0 {
        format!(" (and {} more)", v.more_errors)
    } else {
        String::new()
    };
    format!(
        "The input file has {} invalid lines{more}; nothing was sent.",
        v.errors.len()
    )
}

/// Reads and validates every line, storing good ones in `tx` while no line has failed.
async fn read_lines(
    engine: &Engine,
    input: &Input,
    batch_id: &str,
    v: &mut Validator,
    tx: &mut super::store::BatchTx,
) -> Result<(), ApiError> {
    let file = tokio::fs::File::open(&input.path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            ApiError::permission_denied(
                "The gateway may not read this input file (its account needs read access).".into(),
            )
        } else {
            errors::internal(&format!("opening the input file: {e}"))
        }
    })?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or_default();
    if size > engine.config.max_file_size {
        v.record(LineError::file(
            "file_too_large",
            format!(
                "The input file is {size} bytes, over this gateway's limit of {}.",
                engine.config.max_file_size
            ),
        ));
        return Ok(());
    }
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut buf = Vec::new();
    let mut line_no: i64 = 0;
    let max = engine.server.max_request_body;
    while let Some(whole) = next_line(&mut reader, &mut buf, max)
        .await
        .map_err(|e| errors::internal(&format!("reading the input file: {e}")))?
    {
        line_no += 1;
        if !whole {
            v.record(LineError {
                code: "line_too_large",
                message: format!("Line {line_no} is longer than {max} bytes."),
                param: None,
                line: Some(line_no),
            });
            continue;
        }
        let Ok(text) = std::str::from_utf8(&buf) else {
            v.record(LineError {
                code: "invalid_json",
                message: format!("Line {line_no} is not UTF-8."),
                param: None,
                line: Some(line_no),
            });
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        // Stored even after a bad line (the transaction is rolled back then), so that
        // later duplicates are still found and named.
        if let Some(line) = v.check(line_no, text) {
            if !Store::insert_line(tx, batch_id, &line)
                .await
                .map_err(store_down)?
            {
                v.record(super::input::duplicate(line_no));
            }
        }
        if v.errors.len() >= super::input::MAX_LISTED_ERRORS {
            break;
        }
    }
    if v.lines == 0 && !v.failed() {
        v.record(LineError::file(
            "empty_file",
            "The input file has no lines.".into(),
        ));
    }
    Ok(())
}

async fn uploaded(engine: &Engine, who: &Who, id: &str) -> Result<Input, ApiError> {
    let file = match super::plain_id(id) {
        true => engine
            .store
            .file(&who.owner, id)
            .await
            .map_err(store_down)?,
        false => None,
    };
    let file = file.ok_or_else(|| not_found("file", id))?;
    if file.purpose != "batch" {
        return Err(bad_request(
            "invalid_input_file",
            format!(
                "File `{id}` was uploaded for `{}`, not `batch`.",
                file.purpose
            ),
            "input_file_id",
        ));
    }
    Ok(Input {
        path: engine.file_path(id),
        key: id.to_string(),
        file_id: Some(id.to_string()),
        input_path: None,
        output_folder: None,
    })
}

fn confined(
    engine: &Engine,
    who: &Who,
    raw: &str,
    output: Option<&str>,
) -> Result<Input, ApiError> {
    let user = who.local_user().ok_or_else(|| {
        ApiError::permission_denied(
            "Path-based batches need an identity with a plain local username; yours has none."
                .into(),
        )
    })?;
    let path = paths::input_file(&engine.config, user, raw)?;
    let folder = paths::output_folder(&engine.config, user, output)?;
    Ok(Input {
        key: path.display().to_string(),
        input_path: Some(path.display().to_string()),
        path,
        file_id: None,
        output_folder: Some(folder),
    })
}

fn checked_model(model: Option<&str>) -> Result<String, ApiError> {
    match model {
        Some(m) if m.len() > MAX_MODEL_NAME => Err(errors::model_name_too_long(MAX_MODEL_NAME)),
        Some(m) if !m.trim().is_empty() => Ok(m.to_string()),
        _ => Err(errors::missing_model()),
    }
}

/// The owner may use `model` on `target`, and some pool there takes batches.
fn authorized(
    engine: &Engine,
    who: &Who,
    model: &str,
    target: Option<Target<'_>>,
) -> Result<(), ApiError> {
    let principal = who.principal.as_deref();
    let table = (engine.table)();
    table
        .resolve(model, target, principal)
        .map_err(|why| errors::unresolved(why, model, target, principal))?;
    let takes_batches = table
        .pools_for(target)
        .any(|p| p.models.iter().any(|m| m == model) && p.permits(principal) && engine.accepts(p));
    if !takes_batches {
        return Err(bad_request("model_not_batchable", format!("The model `{model}` is served here, but not for batches (its pools set batch_max_in_flight = 0)."), "model"));
    }
    Ok(())
}

fn check_metadata(m: Option<&BTreeMap<String, String>>) -> Result<Option<String>, ApiError> {
    let Some(m) = m else { return Ok(None) };
    let fits = m.len() <= 16 && m.iter().all(|(k, v)| k.len() <= 64 && v.len() <= 512);
    if !fits {
        return Err(bad_request(
            "invalid_metadata",
            "`metadata` takes at most 16 pairs, keys up to 64 and values up to 512 characters."
                .into(),
            "metadata",
        ));
    }
    Ok(serde_json::to_string(m).ok())
}
