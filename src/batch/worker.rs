//! The background worker: a Pingora background service that, every tick or when woken, walks
//! the batches being worked on, starts lines where backends have room for them (see
//! `capacity`), and ends batches (completed, expired, cancelled) once their lines are done.
//!
//! A line is claimed (`running`) before it is sent and its result stored with `done` in one
//! transaction after, so a process killed at any moment leaves each line either done, with
//! its result, or running without one; `running` lines are sent again at the next start.
//! On SIGTERM no line starts; lines being sent finish (the process waits for them, up to
//! the grace period); lines waiting for a retry stay claimed and are sent after the restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::capacity::Acquired;
use super::line::Tries;
use super::output::{self, Ending};
use super::store::{BatchRow, ClaimedLine, StoreError};
use super::{now, now_ms, Engine};
use crate::routing::{Pool, Target};

const TICK: Duration = Duration::from_millis(250);

/// How long a replica holds the right to write a batch's results; another takes over after it
/// if the first died while writing.
const FINALIZE_HOLD_MS: i64 = 120_000;

pub struct Worker {
    engine: Arc<Engine>,
}

impl Worker {
    pub fn new(engine: Arc<Engine>) -> Worker {
        Worker { engine }
    }
}

/// A batch the worker is sending lines of.
pub(super) struct Run {
    pub id: String,
    pub model: String,
    pub owner: String,
    pub owner_name: String,
    /// The pools its lines go to, from the table in force (refreshed every tick, so a reload
    /// that adds, moves or removes backends reaches running batches).
    pools: std::sync::Mutex<Arc<[Arc<Pool>]>>,
    target: Option<(String, String)>,
    /// Set when the batch is cancelled or expires, or the gateway stops: lines waiting for a
    /// backend or a retry give up (they stay claimed).
    pub stop: AtomicBool,
    /// Line tasks alive.
    pub tasks: AtomicUsize,
}

impl Run {
    fn new(engine: &Engine, b: &BatchRow) -> Run {
        let run = Run {
            target: b.cluster.clone().zip(b.framework.clone()),
            pools: std::sync::Mutex::new(Arc::new([])),
            id: b.id.clone(),
            model: b.model.clone(),
            owner: b.owner.clone(),
            owner_name: b.owner_name.clone(),
            stop: AtomicBool::new(false),
            tasks: AtomicUsize::new(0),
        };
        run.refresh(engine);
        run
    }

    /// Every pool of the table in force that serves the model on the target and takes
    /// batches: the owner was authorized for the model when the batch was submitted.
    fn refresh(&self, engine: &Engine) {
        let table = (engine.table)();
        let target = self
            .target
            .as_ref()
            .map(|(cluster, framework)| Target { cluster, framework });
        let pools: Arc<[Arc<Pool>]> = table
            .pools_for(target)
            .filter(|p| p.models.contains(&self.model) && engine.accepts(p))
            .cloned()
            .collect();
        if let Ok(mut current) = self.pools.lock() {
            *current = pools;
        }
    }

    pub fn pools(&self) -> Arc<[Arc<Pool>]> {
        self.pools
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|_| Arc::new([]))
    }

    fn idle(&self) -> bool {
        self.tasks.load(Ordering::SeqCst) == 0
    }
}

#[async_trait]
impl BackgroundService for Worker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let engine = &self.engine;
        match engine.store.requeue_own(&engine.worker).await {
            Ok(0) => {}
            Ok(n) => {
                log::info!(target: "batch", "{n} batch lines were being sent when this gateway stopped; sending them again")
            }
            Err(e) => log::error!(target: "batch", "batch store unavailable at start: {e}"),
        }
        let mut runs: HashMap<String, Arc<Run>> = HashMap::new();
        let mut ticks: u64 = 0;
        let mut outage = false;
        let mut renewed = Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let lease = engine.config.lease;
            let mut result = self.tick(&mut runs).await;
            if result.is_ok() && renewed.elapsed() >= lease / 3 {
                let until = now_ms() + lease.as_millis() as i64;
                result = engine.store.renew(&engine.worker, until).await.map(|_| ());
                renewed = Instant::now();
            }
            // Housekeeping's failures are the outage's too: it can take the whole of a short
            // outage (two store calls, each waiting out the pool's acquire timeout), and then
            // the ticks around it never saw the store down.
            if ticks % 20 == 0 {
                let kept = self.housekeeping().await;
                if result.is_ok() {
                    result = kept;
                }
            }
            // An outage is logged when it starts and when it ends, not every tick; meanwhile
            // no line starts, and lines in flight keep trying to store their results.
            match (result, outage) {
                (Err(e), false) => {
                    log::error!(target: "batch", "batch store unavailable; batch work paused: {e}");
                    outage = true;
                }
                (Ok(()), true) => {
                    log::info!(target: "batch", "batch store available again; batch work resumes");
                    outage = false;
                }
                _ => {}
            }
            ticks += 1;
            tokio::select! {
                _ = engine.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => {}
            }
        }
        for run in runs.values() {
            run.stop.store(true, Ordering::SeqCst);
        }
        // Lines being sent finish; the process exits when none is left (exit_when_drained),
        // or when the grace period ends.
        while engine.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        log::info!(target: "batch", "batch worker stopped; unfinished lines resume at the next start");
    }
}

impl Worker {
    async fn tick(&self, runs: &mut HashMap<String, Arc<Run>>) -> Result<(), StoreError> {
        let engine = &self.engine;
        let working = engine.store.working().await?;
        runs.retain(|id, run| !run.idle() || working.iter().any(|b| &b.id == id));
        for batch in working {
            let run = runs
                .entry(batch.id.clone())
                .or_insert_with(|| Arc::new(Run::new(engine, &batch)))
                .clone();
            run.refresh(engine);
            let ending = match batch.status.as_str() {
                "cancelling" => Some(Ending::Cancelled),
                "finalizing" => Some(Ending::Completed),
                _ if now() >= batch.expires_at => Some(Ending::Expired),
                _ => None,
            };
            if let Some(ending) = ending {
                run.stop.store(true, Ordering::SeqCst);
                // Ends once no replica is sending one of its lines (a dead replica's leases
                // run out); the lines never sent get their error line.
                let (open, live) = engine.store.open_lines(&batch.id, now_ms()).await?;
                let ready = live == 0 && (ending != Ending::Completed || open == 0);
                if run.idle() && ready {
                    self.finalize(&batch, ending).await?;
                    runs.remove(&batch.id);
                }
                continue;
            }
            let started = self.start_lines(&run).await?;
            if started == 0
                && run.idle()
                && engine.store.open_lines(&batch.id, now_ms()).await?.0 == 0
            {
                // Every line is done, on this replica or another.
                self.finalize(&batch, Ending::Completed).await?;
                runs.remove(&batch.id);
            }
        }
        Ok(())
    }

    /// Ends the batch if no other replica is ending it (one writes the results).
    async fn finalize(&self, batch: &BatchRow, ending: Ending) -> Result<(), StoreError> {
        let store = &self.engine.store;
        if store
            .claim_finalization(&batch.id, now_ms(), FINALIZE_HOLD_MS)
            .await?
        {
            output::finish(&self.engine, batch, ending).await?;
        }
        Ok(())
    }

    /// Claims as many lines as backends have room for and starts them.
    async fn start_lines(&self, run: &Arc<Run>) -> Result<usize, StoreError> {
        let engine = &self.engine;
        let free = engine.slots.free(&run.pools());
        if free == 0 {
            return Ok(0);
        }
        let lease = engine.config.lease.as_millis() as i64;
        let lines = engine
            .store
            .claim(&run.id, free as i64, &engine.worker, lease, now_ms())
            .await?;
        let started = lines.len();
        for line in lines {
            let slot = engine.slots.acquire(&run.pools());
            run.tasks.fetch_add(1, Ordering::SeqCst);
            engine.in_flight.fetch_add(1, Ordering::SeqCst);
            let (engine, run) = (engine.clone(), run.clone());
            tokio::spawn(async move {
                send_line(&engine, &run, line, slot).await;
                run.tasks.fetch_sub(1, Ordering::SeqCst);
                engine.in_flight.fetch_sub(1, Ordering::SeqCst);
                engine.wake.notify_one();
            });
        }
        Ok(started)
    }

    /// Expired uploads go; the batch gauges are refreshed.
    async fn housekeeping(&self) -> Result<(), StoreError> {
        let engine = &self.engine;
        for id in engine.store.take_expired_files(now(), 1000).await? {
            let _ = std::fs::remove_file(engine.file_path(&id));
        }
        let counts = engine.store.status_counts().await?;
        if let Some(m) = &engine.metrics {
            m.set_statuses(&counts);
        }
        Ok(())
    }
}

/// Sends one line (retrying transient failures) and stores its outcome. Gives up without an
/// outcome, leaving the line claimed, when its batch stops while it waits.
async fn send_line(engine: &Arc<Engine>, run: &Run, line: ClaimedLine, slot: Option<Acquired>) {
    let mut slot = slot;
    let mut tries = Tries::new(engine, run, &line);
    loop {
        let acquired = match slot.take() {
            Some(a) => a,
            None => match wait_for_room(engine, run).await {
                Some(a) => a,
                None => return give_back(engine, run, &line).await,
            },
        };
        let next = tries.attempt(acquired).await;
        match next {
            Some(backoff) => {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = wait_stop(run) => return give_back(engine, run, &line).await,
                }
            }
            None => break,
        }
    }
    tries.store().await;
}

/// A line this replica will not send after all: pending again for any replica (if the store
/// is unreachable, its lease runs out instead).
async fn give_back(engine: &Engine, run: &Run, line: &ClaimedLine) {
    if let Err(e) = engine
        .store
        .release(&run.id, line.line_no, &engine.worker)
        .await
    {
        log::warn!(target: "batch", batch_id = run.id.as_str(); "giving back line {}: {e}", line.line_no);
    }
}

async fn wait_for_room(engine: &Engine, run: &Run) -> Option<Acquired> {
    loop {
        if run.stop.load(Ordering::SeqCst) {
            return None;
        }
        if let Some(a) = engine.slots.acquire(&run.pools()) {
            return Some(a);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_stop(run: &Run) {
    while !run.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
