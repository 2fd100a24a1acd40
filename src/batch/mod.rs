//! Batch jobs: two doors (the usage guide's path-based API and OpenAI's Files + Batches), one
//! engine. A batch is validated line by line and stored (`input`, `store`) before any line is
//! sent; a background worker (`worker`) sends its lines through the pools with less priority
//! than interactive traffic (`capacity`, `send`) and writes the results (`output`).

mod api;
mod capacity;
mod files_api;
mod input;
mod line;
mod metrics;
mod object;
mod output;
mod paths;
mod send;
mod store;
mod submit;
mod upload;
mod worker;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gateway_plugin_api::Plugin;

use crate::config::{BatchConfig, ServerConfig};
use crate::proxy::PeerSettings;
use crate::routing::CurrentTable;
pub use api::{answer, Answer};
pub use metrics::BatchMetrics;
use store::Store;
pub use worker::Worker;

/// What both doors and the worker share.
pub struct Engine {
    pub config: BatchConfig,
    /// Bounds lines are held to, as interactive requests are (`max_request_body`,
    /// `max_tokens_limit`).
    server: ServerConfig,
    store: Store,
    /// The table in force (a reload replaces it).
    table: CurrentTable,
    sender: send::LineSender,
    slots: capacity::Slots,
    /// Woken when a batch is submitted or cancelled, so the worker does not wait a tick.
    wake: tokio::sync::Notify,
    /// Batch lines being sent right now; shutdown waits for them (`server::exit_when_drained`).
    pub in_flight: Arc<AtomicUsize>,
    metrics: Option<BatchMetrics>,
    /// Every plugin: batch lines are reported to `on_done` (the access log) as requests are.
    plugins: Arc<[Arc<dyn Plugin>]>,
    /// This replica's name on the lines it claims: the host and the first listen address, the
    /// same after a restart, so a restarted replica takes back its own lines at once.
    worker: String,
}

impl Engine {
    /// Opens the job store (creating the state directory, the database and its tables) and
    /// builds the engine. Called before the server's runtimes exist, so the store is opened
    /// on a short-lived runtime of its own and the engine's pool connects lazily.
    pub fn open(
        config: BatchConfig,
        server: &ServerConfig,
        table: CurrentTable,
        plugins: Arc<[Arc<dyn Plugin>]>,
        registry: Option<&prometheus::Registry>,
    ) -> Result<Engine, String> {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let metrics = match registry {
            Some(r) => Some(
                BatchMetrics::register(r, in_flight.clone())
                    .map_err(|e| format!("registering batch metrics: {e}"))?,
            ),
            None => None,
        };
        let files = config.state_dir.join("files");
        std::fs::create_dir_all(&files)
            .map_err(|e| format!("creating {}: {e}", files.display()))?;
        let location = match &config.store {
            Some(shared) => store::Location::Postgres {
                url: &shared.url,
                password: shared.password.as_deref(),
            },
            None => store::Location::Sqlite(&config.state_dir),
        };
        let store = Store::open_blocking(location).map_err(|e| match &config.store {
            Some(shared) => format!("opening the batch store at {}: {e}", shared.url),
            None => format!(
                "opening the batch store in {}: {e}",
                config.state_dir.display()
            ),
        })?;
        Ok(Engine {
            sender: send::LineSender::new(PeerSettings::new(server), &config),
            server: server.clone(),
            config,
            store,
            table,
            slots: capacity::Slots::default(),
            wake: tokio::sync::Notify::new(),
            in_flight,
            metrics,
            plugins,
            worker: replica_name(server),
        })
    }

    /// Where an uploaded or produced file's bytes are.
    fn file_path(&self, id: &str) -> std::path::PathBuf {
        self.config.state_dir.join("files").join(id)
    }

    /// Which pools accept batches for `model` (those with `batch_max_in_flight > 0`).
    fn accepts(&self, pool: &crate::routing::Pool) -> bool {
        pool.batch_max_in_flight > 0
    }
}

fn replica_name(server: &ServerConfig) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    match server.listen.first() {
        Some(addr) => format!("{host}/{addr}"),
        None => host,
    }
}

/// Unix seconds.
pub fn now() -> i64 {
    now_ms() / 1000
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A fresh id with OpenAI's prefix (`batch_`, `file-`), 32 hex digits after it.
fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Ids in paths are only ever ones this gateway made: anything else is not found, before any
/// lookup (and never reaches a file name).
fn plain_id(id: &str) -> bool {
    (1..=80).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}
