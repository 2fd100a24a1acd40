//! The job store: batches, their lines and uploaded files' metadata, in an SQLite file in WAL
//! mode under the state directory. Every change that must survive a crash is one transaction:
//! a line's result is stored in the same statement that marks it done, so after a SIGKILL a
//! line is either done (its result kept) or sent again, never both.

mod rows;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Sqlite, SqliteConnection, SqlitePool, Transaction};

pub use rows::{BatchRow, ClaimedLine, FileRow, LineOutcome, NewBatch, StoredLine};

const SCHEMA: &str = include_str!("store/schema.sql");

/// Statuses a batch is still being worked on in (and so counts against the per-user cap).
pub const ACTIVE: [&str; 4] = ["validating", "in_progress", "finalizing", "cancelling"];

#[derive(Clone)]
pub struct Store {
    /// Reads (WAL lets them run beside a write).
    db: SqlitePool,
    /// Every write, on one connection: writers queue here in order instead of meeting
    /// SQLite's single write lock and sleeping in its busy handler.
    writer: SqlitePool,
}

pub type StoreError = sqlx::Error;

/// Page of a list: rows after the cursor, newest first.
pub struct Page<T> {
    pub rows: Vec<T>,
    pub has_more: bool,
}

impl Store {
    /// Opens (creating if needed) `batches.sqlite3` in `dir` and creates the tables, on a
    /// runtime of its own (the server's do not exist yet); the returned store's connections
    /// open lazily on whichever runtime first uses them.
    pub fn open_blocking(dir: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(dir.join("batches.sqlite3"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL loses nothing when the process dies (SIGKILL); only a power
            // cut can drop the last commits, never corrupt the file.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut conn = SqliteConnection::connect_with(&options).await?;
            sqlx::raw_sql(SCHEMA).execute(&mut conn).await?;
            conn.close().await
        })?;
        // No idle reaper or connection lifetime: those would need a runtime now.
        let pool = |size| {
            SqlitePoolOptions::new()
                .max_connections(size)
                .min_connections(0)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(Duration::from_secs(60))
                .connect_lazy_with(options.clone())
        };
        Ok(Store {
            db: pool(3),
            writer: pool(1),
        })
    }

    // ---- files ----

    /// Records a file; a second insert of the same id (a finalization run again after a
    /// crash) changes nothing.
    pub async fn insert_file(&self, f: &FileRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO files (id, owner, purpose, filename, bytes, created_ms, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&f.id)
        .bind(&f.owner)
        .bind(&f.purpose)
        .bind(&f.filename)
        .bind(f.bytes)
        .bind(f.created_ms)
        .bind(f.expires_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The file `id` if `owner` owns it: another user's id is as absent as an unknown one.
    pub async fn file(&self, owner: &str, id: &str) -> Result<Option<FileRow>, StoreError> {
        sqlx::query_as("SELECT * FROM files WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.db)
            .await
    }

    pub async fn files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Page<FileRow>, StoreError> {
        let cursor = match after {
            Some(id) => self.file(owner, id).await?.map(|f| (f.created_ms, f.id)),
            None => None,
        };
        let (ms, id) = cursor.unwrap_or((i64::MAX, String::new()));
        let mut rows: Vec<FileRow> = sqlx::query_as(
            "SELECT * FROM files WHERE owner = $1 AND ($2 IS NULL OR purpose = $2)
               AND (created_ms < $3 OR (created_ms = $3 AND id < $4) OR $4 = '')
             ORDER BY created_ms DESC, id DESC LIMIT $5",
        )
        .bind(owner)
        .bind(purpose)
        .bind(ms)
        .bind(id)
        .bind(limit + 1)
        .fetch_all(&self.db)
        .await?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        Ok(Page { rows, has_more })
    }

    /// Deletes the record; `false` when `owner` has no such file.
    pub async fn delete_file(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM files WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ids of files whose expiry has passed (at most `limit`), with their records removed.
    pub async fn take_expired_files(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "DELETE FROM files WHERE id IN
               (SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= $1 LIMIT $2)
             RETURNING id",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.writer)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    // ---- batches ----

    /// Starts storing a new batch: the row and its lines go in one transaction, committed only
    /// when every line passed validation.
    pub async fn begin_batch(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer.begin().await
    }

    pub async fn insert_batch(
        tx: &mut Transaction<'static, Sqlite>,
        b: &NewBatch,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO batches (id, owner, status, endpoint, model, cluster, framework,
                input_file_id, input_file_path, output_folder_path, result_folder, input_key,
                completion_window, metadata, errors, total, failed, created_ms, in_progress_at,
                expires_at, failed_at, owner_name, ended_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                $18, $19, $20, $21, $22, $23)",
        )
        .bind(&b.id)
        .bind(&b.owner)
        .bind(b.status)
        .bind(&b.endpoint)
        .bind(&b.model)
        .bind(&b.cluster)
        .bind(&b.framework)
        .bind(&b.input_file_id)
        .bind(&b.input_file_path)
        .bind(&b.output_folder_path)
        .bind(&b.result_folder)
        .bind(&b.input_key)
        .bind(&b.completion_window)
        .bind(&b.metadata)
        .bind(&b.errors)
        .bind(b.total)
        .bind(b.failed)
        .bind(b.created_ms)
        .bind(b.in_progress_at)
        .bind(b.expires_at)
        .bind(b.failed_at)
        .bind(&b.owner_name)
        .bind(b.failed_at.map(|_| b.created_ms))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Stores a line; `false` when the batch already has a line with its `custom_id` (the
    /// unique index finds duplicates on disk, so validation memory does not grow with them).
    pub async fn insert_line(
        tx: &mut Transaction<'static, Sqlite>,
        batch_id: &str,
        line: &StoredLine,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO lines (batch_id, line_no, custom_id, url, body, state)
             VALUES ($1, $2, $3, $4, $5, 'pending')
             ON CONFLICT (batch_id, custom_id) DO NOTHING",
        )
        .bind(batch_id)
        .bind(line.line_no)
        .bind(&line.custom_id)
        .bind(&line.url)
        .bind(&line.body)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn batch(&self, owner: &str, id: &str) -> Result<Option<BatchRow>, StoreError> {
        sqlx::query_as("SELECT * FROM batches WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.db)
            .await
    }

    pub async fn batches(
        &self,
        owner: &str,
        status: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Page<BatchRow>, StoreError> {
        let cursor = match after {
            Some(id) => self.batch(owner, id).await?.map(|b| (b.created_ms, b.id)),
            None => None,
        };
        let (ms, id) = cursor.unwrap_or((i64::MAX, String::new()));
        let mut rows: Vec<BatchRow> = sqlx::query_as(
            "SELECT * FROM batches WHERE owner = $1 AND ($2 IS NULL OR status = $2)
               AND (created_ms < $3 OR (created_ms = $3 AND id < $4) OR $4 = '')
             ORDER BY created_ms DESC, id DESC LIMIT $5",
        )
        .bind(owner)
        .bind(status)
        .bind(ms)
        .bind(id)
        .bind(limit + 1)
        .fetch_all(&self.db)
        .await?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        Ok(Page { rows, has_more })
    }

    /// A batch by id alone, for the worker.
    pub async fn batch_by_id(&self, id: &str) -> Result<Option<BatchRow>, StoreError> {
        sqlx::query_as("SELECT * FROM batches WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db)
            .await
    }

    /// Ends a batch that cannot go on as `failed`, with OpenAI's `errors` object.
    pub async fn fail(&self, id: &str, errors: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE batches SET status = 'failed', errors = $1, failed_at = $2, ended_ms = $4
             WHERE id = $3 AND status IN ('validating', 'in_progress', 'finalizing', 'cancelling')",
        )
        .bind(errors)
        .bind(now_ms / 1000)
        .bind(id)
        .bind(now_ms)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The owner's batches still being worked on, and whether one of them reads `input_key`.
    pub async fn active_of(&self, owner: &str, input_key: &str) -> Result<(i64, bool), StoreError> {
        let (count, same): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN input_key = $2 THEN 1 ELSE 0 END), 0)
             FROM batches WHERE owner = $1
               AND status IN ('validating', 'in_progress', 'finalizing', 'cancelling')",
        )
        .bind(owner)
        .bind(input_key)
        .fetch_one(&self.db)
        .await?;
        Ok((count, same > 0))
    }

    /// Every batch the worker has something to do for.
    pub async fn working(&self) -> Result<Vec<BatchRow>, StoreError> {
        sqlx::query_as(
            "SELECT * FROM batches WHERE status IN ('in_progress', 'finalizing', 'cancelling')
             ORDER BY created_ms",
        )
        .fetch_all(&self.db)
        .await
    }

    /// Counts of batches by status, for the metrics.
    pub async fn status_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query_as("SELECT status, COUNT(*) FROM batches GROUP BY status")
            .fetch_all(&self.db)
            .await
    }

    /// Moves `id` from one of `from` to `to`, stamping `<to>_at` (and `ended_ms` for a final
    /// status); `false` if it was elsewhere.
    pub async fn transition(
        &self,
        id: &str,
        from: &[&str],
        to: &'static str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let stamp = match to {
            "in_progress" => "in_progress_at",
            "finalizing" => "finalizing_at",
            "completed" => "completed_at",
            "failed" => "failed_at",
            "expired" => "expired_at",
            "cancelling" => "cancelling_at",
            "cancelled" => "cancelled_at",
            _ => return Err(sqlx::Error::Protocol(format!("no batch status `{to}`"))),
        };
        let ended = if matches!(to, "completed" | "failed" | "expired" | "cancelled") {
            "$4"
        } else {
            "ended_ms"
        };
        let placeholders: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 5)).collect();
        let sql = format!(
            "UPDATE batches SET status = $1, {stamp} = $2, ended_ms = {ended}
             WHERE id = $3 AND status IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql)
            .bind(to)
            .bind(now_ms / 1000)
            .bind(id)
            .bind(now_ms);
        for status in from {
            query = query.bind(*status);
        }
        Ok(query.execute(&self.writer).await?.rows_affected() == 1)
    }

    /// Records where a finished batch's output went.
    pub async fn set_outputs(
        &self,
        id: &str,
        output_file_id: Option<&str>,
        error_file_id: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE batches SET output_file_id = $1, error_file_id = $2 WHERE id = $3")
            .bind(output_file_id)
            .bind(error_file_id)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    // ---- lines ----

    /// Lines left `running` by a process that died: sent again (their results were never
    /// stored, so nothing is written twice).
    pub async fn requeue_running(&self) -> Result<u64, StoreError> {
        // Lines of batches that ended but were not yet dropped when the process died.
        sqlx::query(
            "DELETE FROM lines WHERE batch_id IN (SELECT id FROM batches
               WHERE status IN ('completed', 'failed', 'expired', 'cancelled'))",
        )
        .execute(&self.writer)
        .await?;
        let done = sqlx::query("UPDATE lines SET state = 'pending' WHERE state = 'running'")
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    /// Marks up to `limit` pending lines of `batch_id` running, in line order, and returns them.
    pub async fn claim(&self, batch_id: &str, limit: i64) -> Result<Vec<ClaimedLine>, StoreError> {
        sqlx::query_as(
            "UPDATE lines SET state = 'running'
             WHERE batch_id = $1 AND line_no IN
               (SELECT line_no FROM lines WHERE batch_id = $1 AND state = 'pending'
                ORDER BY line_no LIMIT $2)
             RETURNING line_no, custom_id, url, body",
        )
        .bind(batch_id)
        .bind(limit)
        .fetch_all(&self.writer)
        .await
    }

    /// Stores a line's outcome and counts it, once: `false` if it was already done.
    pub async fn finish_line(
        &self,
        batch_id: &str,
        line_no: i64,
        outcome: &LineOutcome,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE lines SET state = 'done', failed = $1, result = $2, body = ''
             WHERE batch_id = $3 AND line_no = $4 AND state != 'done'",
        )
        .bind(i64::from(outcome.failed))
        .bind(&outcome.result)
        .bind(batch_id)
        .bind(line_no)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE batches SET completed = completed + $1, failed = failed + $2,
                prompt_tokens = prompt_tokens + $3, completion_tokens = completion_tokens + $4
             WHERE id = $5",
        )
        .bind(i64::from(!outcome.failed))
        .bind(i64::from(outcome.failed))
        .bind(outcome.prompt_tokens)
        .bind(outcome.completion_tokens)
        .bind(batch_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Up to `limit` lines of `batch_id` not yet done, after `line_no`, for expiry and cancel.
    pub async fn unfinished(
        &self,
        batch_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        sqlx::query_as(
            "SELECT line_no, custom_id FROM lines
             WHERE batch_id = $1 AND state != 'done' AND line_no > $2 ORDER BY line_no LIMIT $3",
        )
        .bind(batch_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.db)
        .await
    }

    /// Lines of `batch_id` in `state`.
    pub async fn count_lines(&self, batch_id: &str, state: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM lines WHERE batch_id = $1 AND state = $2")
                .bind(batch_id)
                .bind(state)
                .fetch_one(&self.db)
                .await?;
        Ok(n)
    }

    /// Done lines after `line_no`, in order, for writing the result files page by page.
    pub async fn results(
        &self,
        batch_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64, String)>, StoreError> {
        sqlx::query_as(
            "SELECT line_no, failed, COALESCE(result, '') FROM lines
             WHERE batch_id = $1 AND state = 'done' AND line_no > $2 ORDER BY line_no LIMIT $3",
        )
        .bind(batch_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.db)
        .await
    }

    /// Drops the lines of a finished batch: their results are in the output files now.
    pub async fn drop_lines(&self, batch_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM lines WHERE batch_id = $1")
            .bind(batch_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
