//! Uploaded and produced files' records (their bytes are files in the state directory).

use super::rows::FileRow;
use super::{on, Page, Store, StoreError};

impl Store {
    /// Records a file; a second insert of the same id (a finalization run again after a
    /// crash) changes nothing.
    pub async fn insert_file(&self, f: &FileRow) -> Result<(), StoreError> {
        on!(self, write, db => sqlx::query(
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
        .execute(db)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The file `id` if `owner` owns it: another user's id is as absent as an unknown one.
    pub async fn file(&self, owner: &str, id: &str) -> Result<Option<FileRow>, StoreError> {
        on!(self, read, db => sqlx::query_as("SELECT * FROM files WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(db)
            .await)
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
        let mut rows: Vec<FileRow> = on!(self, read, db => sqlx::query_as(
            "SELECT * FROM files WHERE owner = $1 AND ($2 IS NULL OR purpose = $2)
               AND (created_ms < $3 OR (created_ms = $3 AND id < $4) OR $4 = '')
             ORDER BY created_ms DESC, id DESC LIMIT $5",
        )
        .bind(owner)
        .bind(purpose)
        .bind(ms)
        .bind(id)
        .bind(limit + 1)
        .fetch_all(db)
        .await)?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        Ok(Page { rows, has_more })
    }

    /// Deletes the record; `false` when `owner` has no such file.
    pub async fn delete_file(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let done = on!(self, write, db => sqlx::query("DELETE FROM files WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .execute(db)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(done == 1)
    }

    /// Ids of files whose expiry has passed (at most `limit`), with their records removed.
    pub async fn take_expired_files(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let ids: Vec<(String,)> = on!(self, write, db => sqlx::query_as(
            "DELETE FROM files WHERE id IN
               (SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= $1 LIMIT $2)
             RETURNING id",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(db)
        .await)?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }
}
