//! Batches and files as the OpenAI API shows them (so the `openai` SDK parses them), with
//! the path-based door's own fields added.

use serde_json::{json, Map, Value};

use super::store::{BatchRow, FileRow, Page};

fn parsed(text: &Option<String>) -> Value {
    text.as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

pub fn batch(b: &BatchRow) -> Value {
    let mut v = json!({
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": parsed(&b.errors),
        "input_file_id": b.input_file_id.clone().unwrap_or_default(),
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_at(),
        "in_progress_at": b.in_progress_at,
        "expires_at": b.expires_at,
        "finalizing_at": b.finalizing_at,
        "completed_at": b.completed_at,
        "failed_at": b.failed_at,
        "expired_at": b.expired_at,
        "cancelling_at": b.cancelling_at,
        "cancelled_at": b.cancelled_at,
        "request_counts": {
            "total": b.total,
            "completed": b.completed,
            "failed": b.failed,
        },
        "metadata": parsed(&b.metadata),
        "model": b.model,
        "usage": {
            "input_tokens": b.prompt_tokens,
            "output_tokens": b.completion_tokens,
            "total_tokens": b.prompt_tokens + b.completion_tokens,
        },
    });
    if b.is_path_based() {
        if let Some(map) = v.as_object_mut() {
            map.insert("input_file_path".into(), json!(b.input_file_path));
            map.insert("output_folder_path".into(), json!(b.output_folder_path));
            map.insert("result_folder_path".into(), json!(b.result_folder));
            map.insert("cluster".into(), json!(b.cluster));
            map.insert("framework".into(), json!(b.framework));
        }
    }
    v
}

pub fn file(f: &FileRow) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_ms / 1000,
        "expires_at": f.expires_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": null,
    })
}

/// OpenAI's list page: `data`, `first_id`, `last_id`, `has_more`.
pub fn list<T>(page: &Page<T>, id: impl Fn(&T) -> &str, render: impl Fn(&T) -> Value) -> Value {
    let mut v = Map::new();
    v.insert("object".into(), json!("list"));
    v.insert(
        "data".into(),
        Value::Array(page.rows.iter().map(render).collect()),
    );
    v.insert("first_id".into(), json!(page.rows.first().map(&id)));
    v.insert("last_id".into(), json!(page.rows.last().map(&id)));
    v.insert("has_more".into(), json!(page.has_more));
    Value::Object(v)
}
