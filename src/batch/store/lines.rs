//! Lines: claimed under a lease by the replica that sends them, finished exactly once, and
//! read back in order for the result files.
//!
//! A claim marks lines `running` with the claiming replica's name and a lease; the replica
//! renews its leases while it lives. A line whose lease ran out (its replica died) is pending
//! again to every replica. A result is stored only on a line not yet done, in the same
//! transaction that counts it, so two replicas that both sent a line (one too slow to renew,
//! say) still write it once.

use super::rows::{ClaimedLine, LineOutcome};
use super::{on, Db, Store, StoreError};

impl Store {
    /// At start: lines this replica (by name) was sending when it stopped are pending again,
    /// and lines of batches that ended before their rows were dropped go. With SQLite there is
    /// one replica, so every running line is its own.
    pub async fn requeue_own(&self, worker: &str) -> Result<u64, StoreError> {
        on!(self, write, db => sqlx::query(
            "DELETE FROM lines WHERE batch_id IN (SELECT id FROM batches
               WHERE status IN ('completed', 'failed', 'expired', 'cancelled'))",
        )
        .execute(db)
        .await
        .map(|r| r.rows_affected()))?;
        let done = on!(self, write, db => sqlx::query(
            "UPDATE lines SET state = 'pending', worker = NULL, lease_until = NULL
             WHERE state = 'running' AND (worker = $1 OR $2 = 1)",
        )
        .bind(worker)
        .bind(i64::from(!self.is_shared()))
        .execute(db)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done)
    }

    /// Claims up to `limit` lines of an in-progress, unexpired batch, in line order: pending
    /// ones and running ones whose lease ran out. On PostgreSQL the rows are locked with
    /// `FOR UPDATE SKIP LOCKED`, so replicas claiming at once get different lines.
    pub async fn claim(
        &self,
        batch_id: &str,
        limit: i64,
        worker: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<ClaimedLine>, StoreError> {
        let lock = match self.db {
            Db::Postgres(_) => "FOR UPDATE SKIP LOCKED",
            Db::Sqlite { .. } => "",
        };
        let sql = format!(
            "UPDATE lines SET state = 'running', worker = $3, lease_until = $4
             WHERE batch_id = $1 AND line_no IN
               (SELECT line_no FROM lines
                WHERE batch_id = $1
                  AND (state = 'pending' OR (state = 'running' AND lease_until < $5))
                  AND EXISTS (SELECT 1 FROM batches
                              WHERE id = $1 AND status = 'in_progress' AND expires_at * 1000 > $5)
                ORDER BY line_no LIMIT $2 {lock})
             RETURNING line_no, custom_id, url, body"
        );
        on!(self, write, db => sqlx::query_as(&sql)
            .bind(batch_id)
            .bind(limit)
            .bind(worker)
            .bind(now_ms + lease_ms)
            .bind(now_ms)
            .fetch_all(db)
            .await)
    }

    /// Extends the leases of every line this replica is sending.
    pub async fn renew(&self, worker: &str, until_ms: i64) -> Result<u64, StoreError> {
        let done = on!(self, write, db => sqlx::query(
            "UPDATE lines SET lease_until = $1 WHERE worker = $2 AND state = 'running'",
        )
        .bind(until_ms)
        .bind(worker)
        .execute(db)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done)
    }

    /// Gives back a line this replica claimed but will not send (its batch stopped, or the
    /// gateway is stopping): pending again, for any replica.
    pub async fn release(
        &self,
        batch_id: &str,
        line_no: i64,
        worker: &str,
    ) -> Result<(), StoreError> {
        on!(self, write, db => sqlx::query(
            "UPDATE lines SET state = 'pending', worker = NULL, lease_until = NULL
             WHERE batch_id = $1 AND line_no = $2 AND state = 'running' AND worker = $3",
        )
        .bind(batch_id)
        .bind(line_no)
        .bind(worker)
        .execute(db)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Stores a line's outcome and counts it, once: `false` if it was already done.
    pub async fn finish_line(
        &self,
        batch_id: &str,
        line_no: i64,
        outcome: &LineOutcome,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_batch().await?;
        let done = super::on_tx!(&mut tx, conn => sqlx::query(
            "UPDATE lines SET state = 'done', failed = $1, result = $2, body = '',
                worker = NULL, lease_until = NULL
             WHERE batch_id = $3 AND line_no = $4 AND state != 'done'",
        )
        .bind(i64::from(outcome.failed))
        .bind(&outcome.result)
        .bind(batch_id)
        .bind(line_no)
        .execute(conn)
        .await
        .map(|r| r.rows_affected()))?;
        if done != 1 {
            return Ok(false);
        }
        super::on_tx!(&mut tx, conn => sqlx::query(
            "UPDATE batches SET completed = completed + $1, failed = failed + $2,
                prompt_tokens = prompt_tokens + $3, completion_tokens = completion_tokens + $4
             WHERE id = $5",
        )
        .bind(i64::from(!outcome.failed))
        .bind(i64::from(outcome.failed))
        .bind(outcome.prompt_tokens)
        .bind(outcome.completion_tokens)
        .bind(batch_id)
        .execute(conn)
        .await
        .map(|r| r.rows_affected()))?;
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
        on!(self, read, db => sqlx::query_as(
            "SELECT line_no, custom_id FROM lines
             WHERE batch_id = $1 AND state != 'done' AND line_no > $2 ORDER BY line_no LIMIT $3",
        )
        .bind(batch_id)
        .bind(after)
        .bind(limit)
        .fetch_all(db)
        .await)
    }

    /// Lines of `batch_id` not done, and of those, running under a lease still valid at
    /// `now_ms` (on some replica).
    pub async fn open_lines(&self, batch_id: &str, now_ms: i64) -> Result<(i64, i64), StoreError> {
        on!(self, read, db => sqlx::query_as(
            "SELECT COUNT(*),
                    COALESCE(SUM(CASE WHEN state = 'running' AND lease_until >= $2 THEN 1 ELSE 0 END), 0)
             FROM lines WHERE batch_id = $1 AND state != 'done'",
        )
        .bind(batch_id)
        .bind(now_ms)
        .fetch_one(db)
        .await)
    }

    /// Done lines after `line_no`, in order, for writing the result files page by page.
    pub async fn results(
        &self,
        batch_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64, String)>, StoreError> {
        on!(self, read, db => sqlx::query_as(
            "SELECT line_no, failed, COALESCE(result, '') FROM lines
             WHERE batch_id = $1 AND state = 'done' AND line_no > $2 ORDER BY line_no LIMIT $3",
        )
        .bind(batch_id)
        .bind(after)
        .bind(limit)
        .fetch_all(db)
        .await)
    }

    /// Drops the lines of a finished batch: their results are in the output files now.
    pub async fn drop_lines(&self, batch_id: &str) -> Result<(), StoreError> {
        on!(self, write, db => sqlx::query("DELETE FROM lines WHERE batch_id = $1")
            .bind(batch_id)
            .execute(db)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }
}
