//! The job store: batches, their lines and uploaded files' metadata. One replica keeps it in an
//! SQLite file in WAL mode under the state directory; replicas that share batches keep it in
//! PostgreSQL. Both run the same SQL (`$n` parameters, TEXT and BIGINT columns, versioned
//! migrations in `store/migrations/`); the few differences (row locks) are named where they
//! are. Every change that must survive a crash is one transaction: a line's result is stored
//! in the same statement that marks it done, so after a crash a line is either done (its result
//! kept) or sent again, never both.

mod batches;
mod files;
mod lines;
mod rows;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Transaction;
use sqlx::{Connection, PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool};

pub use rows::{BatchRow, ClaimedLine, FileRow, LineOutcome, NewBatch, StoredLine};

/// Schema versions, applied in order, each once (recorded in `schema_version`).
const MIGRATIONS: [(i64, &str); 1] = [(1, include_str!("store/migrations/001_batches.sql"))];

/// Any number, the same in every replica: the PostgreSQL advisory lock that makes replicas
/// starting together apply migrations one at a time.
const MIGRATION_LOCK: i64 = 0x1a7e_3a7c_b47c;

/// Statuses a batch is still being worked on in (and so counts against the per-user cap).
pub const ACTIVE: [&str; 4] = ["validating", "in_progress", "finalizing", "cancelling"];

/// Where the store lives.
pub enum Location<'a> {
    /// `batches.sqlite3` in this directory.
    Sqlite(&'a Path),
    /// A PostgreSQL URL without a password, and the password (from a file or the environment).
    Postgres {
        url: &'a str,
        password: Option<&'a str>,
    },
}

#[derive(Clone)]
enum Db {
    Sqlite {
        /// Reads (WAL lets them run beside a write).
        read: SqlitePool,
        /// Every write, on one connection: writers queue here in order instead of meeting
        /// SQLite's single write lock and sleeping in its busy handler.
        write: SqlitePool,
    },
    Postgres(PgPool),
}

#[derive(Clone)]
pub struct Store {
    db: Db,
}

pub type StoreError = sqlx::Error;

/// Page of a list: rows after the cursor, newest first.
pub struct Page<T> {
    pub rows: Vec<T>,
    pub has_more: bool,
}

/// A batch being stored: its row and lines commit together.
pub enum BatchTx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl BatchTx {
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            BatchTx::Sqlite(tx) => tx.commit().await,
            BatchTx::Postgres(tx) => tx.commit().await,
        }
    }
}

/// Runs `$body` with `$db` bound to the pool for this kind of statement (`read` or `write`):
/// the same SQL on either engine, type-checked once for each.
macro_rules! on {
    ($store:expr, read, $db:ident => $body:expr) => {
        match &$store.db {
            $crate::batch::store::Db::Sqlite { read: $db, .. } => $body,
            $crate::batch::store::Db::Postgres($db) => $body,
        }
    };
    ($store:expr, write, $db:ident => $body:expr) => {
        match &$store.db {
            $crate::batch::store::Db::Sqlite { write: $db, .. } => $body,
            $crate::batch::store::Db::Postgres($db) => $body,
        }
    };
}

/// `on!` for a statement inside a [`BatchTx`].
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::batch::store::BatchTx::Sqlite(t) => {
                let $conn = &mut **t;
                $body
            }
            $crate::batch::store::BatchTx::Postgres(t) => {
                let $conn = &mut **t;
                $body
            }
        }
    };
}

use {on, on_tx};

impl Store {
    /// Opens the store and brings its schema up to date, on a runtime of its own (the
    /// server's do not exist yet); the returned store's connections open lazily on whichever
    /// runtime first uses them. No idle reaper or connection lifetime: those need a runtime.
    pub fn open_blocking(at: Location<'_>) -> Result<Store, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        match at {
            Location::Sqlite(dir) => {
                let options = SqliteConnectOptions::from_str("sqlite:")?
                    .filename(dir.join("batches.sqlite3"))
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // WAL with NORMAL loses nothing when the process dies (SIGKILL); only a
                    // power cut can drop the last commits, never corrupt the file.
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10));
                runtime.block_on(async {
                    let mut conn = SqliteConnection::connect_with(&options).await?;
                    migrate_sqlite(&mut conn).await?;
                    conn.close().await
                })?;
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
                    db: Db::Sqlite {
                        read: pool(3),
                        write: pool(1),
                    },
                })
            }
            Location::Postgres { url, password } => {
                let mut options = PgConnectOptions::from_str(url)?;
                if let Some(password) = password {
                    options = options.password(password);
                }
                runtime.block_on(async {
                    let mut conn = PgConnection::connect_with(&options).await?;
                    migrate_postgres(&mut conn).await?;
                    conn.close().await
                })?;
                // A short acquire timeout: while the database is down, submissions answer 503
                // quickly and the worker pauses, instead of piling up waiting requests.
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .min_connections(0)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_lazy_with(options);
                Ok(Store {
                    db: Db::Postgres(pool),
                })
            }
        }
    }

    /// Whether replicas may share this store (PostgreSQL): then lines are claimed under row
    /// locks and only a replica's own running lines are its to requeue.
    pub fn is_shared(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }
}

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)";

/// Applies the migrations `$tx` (a transaction on either engine) has not seen yet, each once.
macro_rules! apply_migrations {
    ($tx:expr) => {{
        sqlx::raw_sql(VERSION_TABLE).execute(&mut *$tx).await?;
        let (current,): (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut *$tx)
            .await?;
        for (version, sql) in MIGRATIONS {
            if version > current.unwrap_or(0) {
                sqlx::raw_sql(sql).execute(&mut *$tx).await?;
                sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                    .bind(version)
                    .execute(&mut *$tx)
                    .await?;
            }
        }
    }};
}

async fn migrate_sqlite(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let mut tx = conn.begin().await?;
    apply_migrations!(tx);
    tx.commit().await
}

/// As `migrate_sqlite`, under an advisory lock held to the end of the transaction: replicas
/// that start together wait for each other, and the later ones find nothing left to do.
async fn migrate_postgres(conn: &mut PgConnection) -> Result<(), StoreError> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    apply_migrations!(tx);
    tx.commit().await
}
