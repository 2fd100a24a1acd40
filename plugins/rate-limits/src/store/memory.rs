//! Limit state in this process: one map behind a mutex held for a few hundred nanoseconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{Check, Decision, Kind, Store, StoreError};
use crate::gcra::{self, Verdict};

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
/// ~35 instead of ~244 instructions a key). A request hashes its five keys twice: check all,
/// then commit all.
type KeyMap = HashMap<String, f64, foldhash::fast::RandomState>;

pub struct MemoryStore {
    /// GCRA `tat` for rate keys, the in-flight count for concurrency keys.
    state: Mutex<KeyMap>,
    clock: Clock,
    acquisitions: AtomicU64,
}

fn is_concurrency_key(key: &str) -> bool {
    key.ends_with(super::CONCURRENCY_SUFFIX)
}

/// Every this many acquisitions, idle entries are dropped so that the map holds only
/// users active within the last minute.
const PRUNE_EVERY: u64 = 4096;

impl MemoryStore {
    pub fn new(clock: Clock) -> MemoryStore {
        MemoryStore {
            state: Mutex::new(KeyMap::default()),
            clock,
            acquisitions: AtomicU64::new(0),
        }
    }

    fn locked(&self) -> Result<std::sync::MutexGuard<'_, KeyMap>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError("limit state lock poisoned".into()))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn acquire(&self, checks: &[Check]) -> Result<Decision, StoreError> {
        let now = (self.clock)();
        let mut state = self.locked()?;
        if self.acquisitions.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            state.retain(|key, v| {
                if is_concurrency_key(key) {
                    *v > 0.0
                } else {
                    *v > now
                }
            });
        }
        let mut verdicts = Vec::with_capacity(checks.len());
        let mut updates = Vec::with_capacity(checks.len());
        for (index, check) in checks.iter().enumerate() {
            let current = state.get(&check.key).copied().unwrap_or(0.0);
            let (verdict, next) = match check.kind {
                Kind::Rate => gcra::rate(current, now, check.limit, check.cost),
                Kind::Concurrency => (
                    gcra::concurrency(current as u64, check.limit),
                    current + 1.0,
                ),
            };
            if let Verdict::Refuse { retry_after } = verdict {
                return Ok(Decision::Refused { index, retry_after });
            }
            verdicts.push(verdict);
            updates.push(next);
        }
        for (check, next) in checks.iter().zip(updates) {
            // Known keys are updated in place: no key copy on the hot path.
            match state.get_mut(&check.key) {
                Some(value) => *value = next,
                None => {
                    state.insert(check.key.clone(), next);
                }
            }
        }
        Ok(Decision::Admitted(verdicts))
    }

    fn finish_now(
        &self,
        budgets: &[(String, u64)],
        delta: i64,
        slots: &[String],
    ) -> Option<Result<(), StoreError>> {
        Some(self.finish_locked(budgets, delta, slots))
    }

    async fn finish(
        &self,
        budgets: &[(String, u64)],
        delta: i64,
        slots: &[String],
    ) -> Result<(), StoreError> {
        self.finish_locked(budgets, delta, slots)
    }
}

impl MemoryStore {
    fn finish_locked(
        &self,
        budgets: &[(String, u64)],
        delta: i64,
        slots: &[String],
    ) -> Result<(), StoreError> {
        let now = (self.clock)();
        let mut state = self.locked()?;
        if delta != 0 {
            for (key, limit) in budgets {
                let tat = state.get(key).copied().unwrap_or(now);
                state.insert(key.clone(), gcra::settle(tat, now, *limit, delta));
            }
        }
        for key in slots {
            if let Some(count) = state.get_mut(key) {
                *count = (*count - 1.0).max(0.0);
            }
        }
        Ok(())
    }
}
