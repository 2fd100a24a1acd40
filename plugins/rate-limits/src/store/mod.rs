//! Where limit state lives: in this process (`memory`) or shared by replicas (`redis`).

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::gcra::CheckOutcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A per-minute budget (requests or tokens).
    Rate,
    /// In-flight requests, each holding a slot until it ends.
    Concurrency,
}

/// One limit to apply to a request. `cost` is at most `limit`, and `limit` at most
/// [`crate::config::MAX_LIMIT`], so a store's arithmetic only ever sees bounded integers.
/// Where a limit's state lives in a store. Shared, not copied: a (user, model) pair's keys
/// are written once and every request of the pair, its settlement and its leases use them.
pub type Key = Arc<str>;

#[derive(Debug, Clone)]
pub struct Check {
    pub key: Key,
    pub kind: Kind,
    pub limit: u64,
    pub cost: u64,
}

/// Moves a per-minute budget after the fact: `delta` in `-limit..=limit` units (negative
/// refunds part of a reservation, positive charges usage beyond it; see `gcra::settle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    pub key: Key,
    pub limit: u64,
    pub delta: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Every check passed and was recorded; one outcome per check, in order.
    Admitted(Vec<CheckOutcome>),
    /// Check `index` refused; nothing was recorded.
    Refused { index: usize, retry_after: f64 },
}

#[derive(Debug)]
pub struct StoreError(pub String);

#[async_trait]
pub trait Store: Send + Sync {
    /// Applies all checks atomically: all are recorded, or none. Concurrency slots are held
    /// by `holder`, an id unique to this request.
    async fn acquire(&self, checks: &[Check], holder: &str) -> Result<Decision, StoreError>;

    /// Ends a request in one step: settles each budget and frees `holder`'s slot in each
    /// concurrency key.
    async fn finish(
        &self,
        budgets: &[Settle],
        slots: &[Key],
        holder: &str,
    ) -> Result<(), StoreError>;

    /// `finish` without waiting, for stores that never wait (memory); `None` means the
    /// caller must run `finish` in a task.
    fn finish_now(
        &self,
        _budgets: &[Settle],
        _slots: &[Key],
        _holder: &str,
    ) -> Option<Result<(), StoreError>> {
        None
    }

    /// How often a request must call [`Store::refresh`] while it holds slots: stores whose
    /// slots are leases that expire (so a replica that dies cannot hold one forever) say how
    /// often; `None` means slots last until `finish`.
    fn lease_refresh_interval(&self) -> Option<Duration> {
        None
    }

    /// Extends `holder`'s leases on `slots` (see [`Store::lease_refresh_interval`]).
    async fn refresh(&self, _slots: &[Key], _holder: &str) -> Result<(), StoreError> {
        Ok(())
    }
}
