//! Batches: creation (with their lines, in one transaction), lookups scoped to their owner,
//! and status changes.

use super::rows::{BatchRow, NewBatch, StoredLine};
use super::{on, on_tx, BatchTx, Db, Page, Store, StoreError};

impl Store {
    /// Starts storing a new batch: the row and its lines go in one transaction, committed only
    /// when every line passed validation.
    pub async fn begin_batch(&self) -> Result<BatchTx, StoreError> {
        Ok(match &self.db {
            Db::Sqlite { write, .. } => BatchTx::Sqlite(write.begin().await?),
            Db::Postgres(db) => BatchTx::Postgres(db.begin().await?),
        })
    }

    pub async fn insert_batch(tx: &mut BatchTx, b: &NewBatch) -> Result<(), StoreError> {
        on_tx!(tx, conn => sqlx::query(
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
        .execute(conn)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Stores a line; `false` when the batch already has a line with its `custom_id` (the
    /// unique index finds duplicates on disk, so validation memory does not grow with them).
    pub async fn insert_line(
        tx: &mut BatchTx,
        batch_id: &str,
        line: &StoredLine,
    ) -> Result<bool, StoreError> {
        let done = on_tx!(tx, conn => sqlx::query(
            "INSERT INTO lines (batch_id, line_no, custom_id, url, body, state)
             VALUES ($1, $2, $3, $4, $5, 'pending')
             ON CONFLICT (batch_id, custom_id) DO NOTHING",
        )
        .bind(batch_id)
        .bind(line.line_no)
        .bind(&line.custom_id)
        .bind(&line.url)
        .bind(&line.body)
        .execute(conn)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done == 1)
    }

    pub async fn batch(&self, owner: &str, id: &str) -> Result<Option<BatchRow>, StoreError> {
        on!(self, read, db => sqlx::query_as("SELECT * FROM batches WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(db)
            .await)
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
        let mut rows: Vec<BatchRow> = on!(self, read, db => sqlx::query_as(
            "SELECT * FROM batches WHERE owner = $1 AND ($2 IS NULL OR status = $2)
               AND (created_ms < $3 OR (created_ms = $3 AND id < $4) OR $4 = '')
             ORDER BY created_ms DESC, id DESC LIMIT $5",
        )
        .bind(owner)
        .bind(status)
        .bind(ms)
        .bind(id)
        .bind(limit + 1)
        .fetch_all(db)
        .await)?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        Ok(Page { rows, has_more })
    }

    /// A batch by id alone, for the worker.
    pub async fn batch_by_id(&self, id: &str) -> Result<Option<BatchRow>, StoreError> {
        on!(self, read, db => sqlx::query_as("SELECT * FROM batches WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await)
    }

    /// Ends a batch that cannot go on as `failed`, with OpenAI's `errors` object.
    pub async fn fail(&self, id: &str, errors: &str, now_ms: i64) -> Result<(), StoreError> {
        on!(self, write, db => sqlx::query(
            "UPDATE batches SET status = 'failed', errors = $1, failed_at = $2, ended_ms = $4
             WHERE id = $3 AND status IN ('validating', 'in_progress', 'finalizing', 'cancelling')",
        )
        .bind(errors)
        .bind(now_ms / 1000)
        .bind(id)
        .bind(now_ms)
        .execute(db)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The owner's batches still being worked on, and whether one of them reads `input_key`.
    pub async fn active_of(&self, owner: &str, input_key: &str) -> Result<(i64, bool), StoreError> {
        let (count, same): (i64, i64) = on!(self, read, db => sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN input_key = $2 THEN 1 ELSE 0 END), 0)
             FROM batches WHERE owner = $1
               AND status IN ('validating', 'in_progress', 'finalizing', 'cancelling')",
        )
        .bind(owner)
        .bind(input_key)
        .fetch_one(db)
        .await)?;
        Ok((count, same > 0))
    }

    /// Every batch the worker has something to do for.
    pub async fn working(&self) -> Result<Vec<BatchRow>, StoreError> {
        on!(self, read, db => sqlx::query_as(
            "SELECT * FROM batches WHERE status IN ('in_progress', 'finalizing', 'cancelling')
             ORDER BY created_ms",
        )
        .fetch_all(db)
        .await)
    }

    /// Counts of batches by status, for the metrics.
    pub async fn status_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        on!(self, read, db => sqlx::query_as("SELECT status, COUNT(*) FROM batches GROUP BY status")
            .fetch_all(db)
            .await)
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
        let done = on!(self, write, db => {
            let mut query = sqlx::query(&sql)
                .bind(to)
                .bind(now_ms / 1000)
                .bind(id)
                .bind(now_ms);
            for status in from {
                query = query.bind(*status);
            }
            query.execute(db).await.map(|r| r.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Records where a finished batch's output went.
    pub async fn set_outputs(
        &self,
        id: &str,
        output_file_id: Option<&str>,
        error_file_id: Option<&str>,
    ) -> Result<(), StoreError> {
        on!(self, write, db => sqlx::query("UPDATE batches SET output_file_id = $1, error_file_id = $2 WHERE id = $3")
            .bind(output_file_id)
            .bind(error_file_id)
            .bind(id)
            .execute(db)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Takes the right to write a batch's results for `hold_ms`: one replica finalizes at a
    /// time, and another takes over if it dies meanwhile.
    pub async fn claim_finalization(
        &self,
        id: &str,
        now_ms: i64,
        hold_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = on!(self, write, db => sqlx::query(
            "UPDATE batches SET finalizer_until = $2
             WHERE id = $1 AND (finalizer_until IS NULL OR finalizer_until < $3)
               AND status IN ('in_progress', 'finalizing', 'cancelling')",
        )
        .bind(id)
        .bind(now_ms + hold_ms)
        .bind(now_ms)
        .execute(db)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done == 1)
    }
}
