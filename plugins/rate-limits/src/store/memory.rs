//! Limit state in this process: two maps behind a mutex held for a few hundred nanoseconds.
//! Slots need no lease here: a process that dies takes its counters with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{Check, Decision, Key, Kind, Settle, Store, StoreError};
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
/// ~35 instead of ~244 instructions a key). A request looks each key up once when it is
/// admitted, and its token budgets and slots once more when it ends.
type KeyMap<V> = HashMap<Key, V, foldhash::fast::RandomState>;

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

    fn finish_locked(&self, budgets: &[Settle], slots: &[Key]) -> Result<(), StoreError> {
        let now = (self.clock)();
        let mut state = self.locked()?;
        for budget in budgets.iter().filter(|b| b.delta != 0) {
            match state.rates.get_mut(&*budget.key) {
                Some(tat) => *tat = gcra::settle(*tat, now, budget.limit, budget.delta),
                None => {
                    let settled = gcra::settle(now, now, budget.limit, budget.delta);
                    state.rates.insert(budget.key.clone(), settled);
                }
            }
        }
        for key in slots {
            if let Some(count) = state.slots.get_mut(&**key) {
                *count = count.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// [`Store::acquire`] without a future: this store never waits, and the limiter calls
    /// it directly on every admission (the trait's boxed future cost an allocation a request).
    ///
    /// One pass, one map lookup a check: each check is recorded as it passes, and a refusal
    /// puts back what the checks before it recorded (refusals are the rare case; checking
    /// all and then recording all looked every key up twice).
    pub fn acquire_now(&self, checks: &[Check]) -> Result<Decision, StoreError> {
        let now = (self.clock)();
        let mut state = self.locked()?;
        if self.acquisitions.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            state.rates.retain(|_, tat| *tat > now);
            state.slots.retain(|_, n| *n > 0);
        }
        let mut outcomes = Vec::with_capacity(checks.len());
        let mut priors = Vec::with_capacity(checks.len());
        for (index, check) in checks.iter().enumerate() {
            let (outcome, prior) = state.record(check, now);
            if let CheckOutcome::Refuse { retry_after } = outcome {
                for (earlier, prior) in checks.iter().zip(priors).rev() {
                    state.undo(earlier, prior);
                }
                return Ok(Decision::Refused { index, retry_after });
            }
            outcomes.push(outcome);
            priors.push(prior);
        }
        Ok(Decision::Admitted(outcomes))
    }
}

/// What a key held before a check was recorded, to put back if a later check refuses.
enum Prior {
    Absent,
    Rate(f64),
    Slots(u64),
}

impl State {
    /// Applies one check: records it when it passes, changes nothing when it refuses.
    /// Known keys are updated in place: no key copy on the hot path.
    fn record(&mut self, check: &Check, now: f64) -> (CheckOutcome, Prior) {
        match check.kind {
            Kind::Rate => {
                let known = self.rates.get_mut(&*check.key);
                let tat = known.as_deref().copied();
                let (outcome, next) = gcra::rate(tat.unwrap_or(0.0), now, check.limit, check.cost);
                if let CheckOutcome::Admit { .. } = outcome {
                    match known {
                        Some(value) => *value = next,
                        None => {
                            self.rates.insert(check.key.clone(), next);
                        }
                    }
                }
                (outcome, tat.map_or(Prior::Absent, Prior::Rate))
            }
            Kind::Concurrency => {
                let known = self.slots.get_mut(&*check.key);
                let held = known.as_deref().copied();
                let outcome = gcra::concurrency(held.unwrap_or(0), check.limit);
                if let CheckOutcome::Admit { .. } = outcome {
                    match known {
                        Some(count) => *count = count.saturating_add(1),
                        None => {
                            self.slots.insert(check.key.clone(), 1);
                        }
                    }
                }
                (outcome, held.map_or(Prior::Absent, Prior::Slots))
            }
        }
    }

    /// Puts back what an admitted check's key held before `record` (the lock is held
    /// throughout, so nothing else has touched it).
    fn undo(&mut self, check: &Check, prior: Prior) {
        match (check.kind, prior) {
            (Kind::Rate, Prior::Rate(tat)) => {
                self.rates.insert(check.key.clone(), tat);
            }
            (Kind::Rate, _) => {
                self.rates.remove(&*check.key);
            }
            (Kind::Concurrency, Prior::Slots(held)) => {
                self.slots.insert(check.key.clone(), held);
            }
            (Kind::Concurrency, _) => {
                self.slots.remove(&*check.key);
            }
        }
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
        slots: &[Key],
        _holder: &str,
    ) -> Option<Result<(), StoreError>> {
        Some(self.finish_locked(budgets, slots))
    }

    async fn finish(
        &self,
        budgets: &[Settle],
        slots: &[Key],
        _holder: &str,
    ) -> Result<(), StoreError> {
        self.finish_locked(budgets, slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &str, kind: Kind, limit: u64) -> Check {
        Check {
            key: key.into(),
            kind,
            limit,
            cost: 1,
        }
    }

    #[test]
    fn a_refusal_puts_back_exactly_what_the_checks_before_it_recorded() {
        let store = MemoryStore::new(Arc::new(|| 1_800_000_000.123));
        let full = check("full", Kind::Concurrency, 1);
        store
            .acquire_now(&[check("known", Kind::Rate, 7), full.clone()])
            .expect("admitted");
        let before = store.locked().expect("lock").rates.get("known").copied();
        let checks = [
            check("known", Kind::Rate, 7),
            check("new-rate", Kind::Rate, 7),
            check("new-slot", Kind::Concurrency, 3),
            full,
        ];
        let decision = store.acquire_now(&checks).expect("decided");
        assert!(
            matches!(decision, Decision::Refused { index: 3, .. }),
            "{decision:?}"
        );
        let state = store.locked().expect("lock");
        assert_eq!(state.rates.get("known").copied(), before);
        assert!(!state.rates.contains_key("new-rate"));
        assert!(!state.slots.contains_key("new-slot"));
        assert_eq!(state.slots.get("full"), Some(&1));
    }
}
