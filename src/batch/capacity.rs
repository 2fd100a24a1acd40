//! Where a batch line may go now: interactive users keep priority. On each backend at most
//! `batch_max_in_flight` batch lines run, and one starts only while the backend's requests in
//! flight (interactive and batch) are fewer than `batch_when_below`. Only healthy backends
//! take batch lines: a backend in panic routing is left to interactive traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::routing::pool::InflightGuard;
use crate::routing::{Backend, Pool};

/// Batch lines in flight per backend address (one server in two pools counts once).
#[derive(Default, Clone)]
pub struct Slots {
    by_backend: Arc<Mutex<HashMap<String, usize>>>,
}

/// A batch line's place on a backend; freed on drop.
pub struct Slot {
    slots: Slots,
    address: String,
    _inflight: InflightGuard,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.slots.by_backend.lock() {
            if let Some(n) = map.get_mut(&self.address) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// A backend picked for one attempt of a line.
pub struct Acquired {
    pub pool: Arc<Pool>,
    pub backend: Arc<Backend>,
    /// Held for the attempt: frees the backend's batch slot when dropped.
    pub _slot: Slot,
}

impl Slots {
    fn room(&self, map: &HashMap<String, usize>, pool: &Pool, backend: &Backend) -> usize {
        if !backend.is_healthy() {
            return 0;
        }
        let ours = map.get(&backend.address).copied().unwrap_or(0);
        let by_batch = pool.batch_max_in_flight.saturating_sub(ours);
        let by_load = pool.batch_when_below.saturating_sub(backend.inflight());
        by_batch.min(by_load)
    }

    /// How many more batch lines the pools could start now.
    pub fn free(&self, pools: &[Arc<Pool>]) -> usize {
        let Ok(map) = self.by_backend.lock() else {
            return 0;
        };
        pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
            .map(|(p, b)| self.room(&map, p, b))
            .sum()
    }

    /// The least busy backend with room, if any.
    pub fn acquire(&self, pools: &[Arc<Pool>]) -> Option<Acquired> {
        let mut map = self.by_backend.lock().ok()?;
        let (pool, backend) = pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
            .filter(|(p, b)| self.room(&map, p, b) > 0)
            .min_by_key(|(_, b)| b.inflight())?;
        *map.entry(backend.address.clone()).or_insert(0) += 1;
        Some(Acquired {
            pool: pool.clone(),
            backend: backend.clone(),
            _slot: Slot {
                slots: self.clone(),
                address: backend.address.clone(),
                _inflight: backend.start_request(),
            },
        })
    }
}
