//! Limit state in this process: two maps behind a mutex held for a few hundred nanoseconds.
//! Slots need no lease here: a process that dies takes its counters with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{Check, Decision, Kind, Settle, Store, StoreError};
use crate::gcra::{self, CheckOutcome};

/// Seconds since the epoch; replaceable in tests.
pub type Clock = Arc<dyn Fn() -> f64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default()
    })
}

/// Keys hashed with foldhash: randomly seeded like std's SipHash (keys hold user-chosen
/// model names, so the hash must not be predictable) at a seventh of its cost (callgrind:
/// ~35 instead of ~244 instructions a key). A request hashes its keys twice: check all,
/// then commit all.
type KeyMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct State {
    /// GCRA `tat` of each per-minute budget.
    rates: KeyMap<f64>,
    /// Requests in flight per concurrency key.
    slots: KeyMap<u64>,
}

pub struct MemoryStore {
    state: Mutex<State>,
    clock: Clock,
    acquisitions: AtomicU64,
}

/// Every this many acquisitions, idle entries are dropped so that the maps hold only
/// users active within the last minute.
const PRUNE_EVERY: u64 = 4096;

impl MemoryStore {
    pub fn new(clock: Clock) -> MemoryStore {
        MemoryStore {
            state: Mutex::new(State::default()),
            clock,
            acquisitions: AtomicU64::new(0),
        }
    }

    fn locked(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError("limit state lock poisoned".into()))
    }

    fn finish_locked(&self, budgets: &[Settle], slots: &[String]) -> Result<(), StoreError> {
        let now = (self.clock)();
        let mut state = self.locked()?;
        for budget in budgets.iter().filter(|b| b.delta != 0) {
            let tat = state.rates.get(&budget.key).copied().unwrap_or(now);
            let settled = gcra::settle(tat, now, budget.limit, budget.delta);
            match state.rates.get_mut(&budget.key) {
                Some(value) => *value = settled,
                None => {
                    state.rates.insert(budget.key.clone(), settled);
                }
            }
        }
        for key in slots {
            if let Some(count) = state.slots.get_mut(key) {
                *count = count.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// [`Store::acquire`] without a future: this store never waits, and the limiter calls
    /// it directly on every admission (the trait's boxed future cost an allocation a request).
    pub fn acquire_now(&self, checks: &[Check]) -> Result<Decision, StoreError> {
        let now = (self.clock)();
        let mut state = self.locked()?;
        if self.acquisitions.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            state.rates.retain(|_, tat| *tat > now);
            state.slots.retain(|_, n| *n > 0);
        }
        let mut outcomes = Vec::with_capacity(checks.len());
        let mut updates = Vec::with_capacity(checks.len());
        for (index, check) in checks.iter().enumerate() {
            let (outcome, next) = match check.kind {
                Kind::Rate => {
                    let tat = state.rates.get(&check.key).copied().unwrap_or(0.0);
                    let (outcome, next) = gcra::rate(tat, now, check.limit, check.cost);
                    (outcome, next)
                }
                Kind::Concurrency => {
                    let held = state.slots.get(&check.key).copied().unwrap_or(0);
                    (gcra::concurrency(held, check.limit), 0.0)
                }
            };
            if let CheckOutcome::Refuse { retry_after } = outcome {
                return Ok(Decision::Refused { index, retry_after });
            }
            outcomes.push(outcome);
            updates.push(next);
        }
        for (check, next) in checks.iter().zip(updates) {
            // Known keys are updated in place: no key copy on the hot path.
            match check.kind {
                Kind::Rate => match state.rates.get_mut(&check.key) {
                    Some(value) => *value = next,
                    None => {
                        state.rates.insert(check.key.clone(), next);
                    }
                },
                Kind::Concurrency => match state.slots.get_mut(&check.key) {
                    Some(count) => *count = count.saturating_add(1),
                    None => {
                        state.slots.insert(check.key.clone(), 1);
                    }
                },
            }
        }
        Ok(Decision::Admitted(outcomes))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn acquire(&self, checks: &[Check], _holder: &str) -> Result<Decision, StoreError> {
        self.acquire_now(checks)
    }

    fn finish_now(
        &self,
        budgets: &[Settle],
        slots: &[String],
        _holder: &str,
    ) -> Option<Result<(), StoreError>> {
        Some(self.finish_locked(budgets, slots))
    }

    async fn finish(
        &self,
        budgets: &[Settle],
        slots: &[String],
        _holder: &str,
    ) -> Result<(), StoreError> {
        self.finish_locked(budgets, slots)
    }
}
