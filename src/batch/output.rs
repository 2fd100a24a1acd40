//! Ending a batch: lines that never ran get their error line (`batch_expired`,
//! `batch_cancelled`), the results are written from the store in line order (each line's
//! result was stored exactly once, so each `custom_id` appears exactly once in output ∪
//! errors), and only then does the batch reach its final status. A crash in between writes
//! the same files again at the next start.
//!
//! Path-based batches get `results.jsonl`, `errors.jsonl` and `summary.json` in their result
//! folder; Files-API batches get an output and an error file (ids derived from the batch's,
//! so a second run does not make new ones).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::line::output_line;
use super::paths;
use super::store::{BatchRow, FileRow, LineOutcome, StoreError};
use super::{now, now_ms, Engine};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Expired,
    Cancelled,
}

impl Ending {
    fn status(self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::Expired => "expired",
            Ending::Cancelled => "cancelled",
        }
    }
}

const PAGE: i64 = 500;

pub async fn finish(engine: &Engine, batch: &BatchRow, ending: Ending) -> Result<(), StoreError> {
    let store = &engine.store;
    let id = batch.id.as_str();
    match ending {
        Ending::Completed => {
            store
                .transition(id, &["in_progress"], "finalizing", now_ms())
                .await?;
        }
        Ending::Expired => {
            close_unfinished(
                engine,
                id,
                "batch_expired",
                "The batch's completion window ended before this line ran.",
            )
            .await?;
        }
        Ending::Cancelled => {
            close_unfinished(
                engine,
                id,
                "batch_cancelled",
                "The batch was cancelled before this line ran.",
            )
            .await?;
        }
    }
    let Some(batch) = store.batch_by_id(id).await? else {
        return Ok(());
    };
    let ended_ms = now_ms();
    let written = if batch.is_path_based() {
        write_folder(engine, &batch, ending, ended_ms).await
    } else {
        write_files(engine, &batch).await
    };
    if let Err(e) = written {
        log::error!(target: "batch", batch_id = id; "writing the batch's results failed: {e}");
        let errors = json!({"object": "list", "data": [{
            "code": "output_failed", "message": format!("Writing the results failed: {e}"),
            "param": null, "line": null}]});
        return store.fail(id, &errors.to_string(), now_ms()).await;
    }
    store
        .transition(
            id,
            &["in_progress", "finalizing", "cancelling"],
            ending.status(),
            ended_ms,
        )
        .await?;
    log::info!(target: "batch", batch_id = id; "batch {}: {} completed, {} failed", ending.status(), batch.completed, batch.failed);
    store.drop_lines(id).await
}

/// Gives every line not done the error `code`.
async fn close_unfinished(
    engine: &Engine,
    id: &str,
    code: &str,
    message: &str,
) -> Result<(), StoreError> {
    let mut after = 0;
    loop {
        let lines = engine.store.unfinished(id, after, PAGE).await?;
        let Some((last, _)) = lines.last() else {
            return Ok(());
        };
        after = *last;
        for (line_no, custom_id) in lines {
            let outcome = LineOutcome {
                failed: true,
                result: output_line(&custom_id, None, Some((code, message))),
                prompt_tokens: 0,
                completion_tokens: 0,
            };
            engine.store.finish_line(id, line_no, &outcome).await?;
        }
    }
}

/// The summary of a batch (`summary.json`, and `GET .../result`): from its submission to
/// `ended_ms`.
pub fn summary(b: &BatchRow, status: &str, ended_ms: i64) -> Value {
    let seconds = (ended_ms - b.created_ms).max(0) as f64 / 1000.0;
    json!({
        "batch_id": b.id,
        "status": status,
        "model": b.model,
        "input_file_path": b.input_file_path,
        "result_folder_path": b.result_folder,
        "lines": b.total,
        "completed": b.completed,
        "failed": b.failed,
        "prompt_tokens": b.prompt_tokens,
        "completion_tokens": b.completion_tokens,
        "total_tokens": b.prompt_tokens + b.completion_tokens,
        "duration_seconds": seconds,
        "tokens_per_second": if seconds > 0.0 { b.completion_tokens as f64 / seconds } else { 0.0 },
    })
}

async fn write_folder(
    engine: &Engine,
    b: &BatchRow,
    ending: Ending,
    ended_ms: i64,
) -> std::io::Result<()> {
    let folder = Path::new(b.result_folder.as_deref().unwrap_or_default());
    if !paths::still_ours(folder) {
        return Err(std::io::Error::other(
            "the result folder was removed or replaced by a symlink",
        ));
    }
    let mode = engine.config.result_file_mode;
    write_results(engine, &b.id, &folder.join("results.jsonl"), mode, false).await?;
    write_results(engine, &b.id, &folder.join("errors.jsonl"), mode, true).await?;
    let text = serde_json::to_vec_pretty(&summary(b, ending.status(), ended_ms))?;
    let mut file = AtomicFile::create(&folder.join("summary.json"), mode)?;
    file.writer.write_all(&text).await?;
    file.commit().await
}

async fn write_files(engine: &Engine, b: &BatchRow) -> std::io::Result<()> {
    let stem = b.id.trim_start_matches("batch_");
    let mut ids = [None, None];
    for (slot, failed, kind, count) in [
        (0, false, "output", b.completed),
        (1, true, "errors", b.failed),
    ] {
        if count == 0 {
            continue;
        }
        let id = format!("file-{stem}-{kind}");
        let path = engine.file_path(&id);
        write_results(engine, &b.id, &path, 0o600, failed).await?;
        let bytes = std::fs::metadata(&path)?.len() as i64;
        let row = FileRow {
            id: id.clone(),
            owner: b.owner.clone(),
            purpose: "batch_output".into(),
            filename: format!("{}_{kind}.jsonl", b.id),
            bytes,
            created_ms: now_ms(),
            expires_at: Some(now() + engine.config.file_expiry.as_secs() as i64),
        };
        engine
            .store
            .insert_file(&row)
            .await
            .map_err(std::io::Error::other)?;
        if let Some(s) = ids.get_mut(slot) {
            *s = Some(id);
        }
    }
    let [output, errors] = ids;
    engine
        .store
        .set_outputs(&b.id, output.as_deref(), errors.as_deref())
        .await
        .map_err(std::io::Error::other)
}

/// Writes the done lines that `failed` (or not), in line order, page by page.
async fn write_results(
    engine: &Engine,
    batch_id: &str,
    path: &Path,
    mode: u32,
    failed: bool,
) -> std::io::Result<()> {
    let mut file = AtomicFile::create(path, mode)?;
    let mut after = 0;
    loop {
        let page = engine
            .store
            .results(batch_id, after, PAGE)
            .await
            .map_err(std::io::Error::other)?;
        let Some((last, _, _)) = page.last() else {
            break;
        };
        after = *last;
        for (_, line_failed, result) in page {
            if (line_failed != 0) == failed {
                file.writer.write_all(result.as_bytes()).await?;
                file.writer.write_all(b"\n").await?;
            }
        }
    }
    file.commit().await
}

/// A file written through a new temporary file beside it (created exclusively, never
/// through a symlink), synced, then renamed over: readers see no file or the whole one.
struct AtomicFile {
    tmp: PathBuf,
    path: PathBuf,
    writer: tokio::io::BufWriter<tokio::fs::File>,
}

impl AtomicFile {
    fn create(path: &Path, mode: u32) -> std::io::Result<AtomicFile> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        // Left by a run that died: ours to replace (removing a symlink removes only the link).
        let _ = std::fs::remove_file(&tmp);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        Ok(AtomicFile {
            tmp,
            path: path.to_path_buf(),
            writer: tokio::io::BufWriter::with_capacity(
                256 * 1024,
                tokio::fs::File::from_std(file),
            ),
        })
    }

    async fn commit(mut self) -> std::io::Result<()> {
        self.writer.flush().await?;
        self.writer.get_ref().sync_all().await?;
        std::fs::rename(&self.tmp, &self.path)
    }
}
