//! Where limit state lives: in this process (`memory`) or shared by replicas (`redis`).

pub mod memory;
pub mod redis;

use async_trait::async_trait;

use crate::gcra::Verdict;

/// Keys of concurrency counters end with this (the others hold GCRA times).
pub const CONCURRENCY_SUFFIX: &str = ":conc";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A per-minute budget (requests or tokens).
    Rate,
    /// In-flight requests.
    Concurrency,
}

/// One limit to apply to a request.
#[derive(Debug, Clone)]
pub struct Check {
    pub key: String,
    pub kind: Kind,
    pub limit: u64,
    pub cost: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Every check passed and was recorded; one verdict per check, in order.
    Admitted(Vec<Verdict>),
    /// Check `index` refused; nothing was recorded.
    Refused { index: usize, retry_after: f64 },
}

#[derive(Debug)]
pub struct StoreError(pub String);

#[async_trait]
pub trait Store: Send + Sync {
    /// Applies all checks atomically: all are recorded, or none.
    async fn acquire(&self, checks: &[Check]) -> Result<Decision, StoreError>;
    /// Ends a request in one step: moves each `(key, limit)` per-minute budget by `delta`
    /// units (see `gcra::settle`) and frees one slot of each concurrency key.
    async fn finish(
        &self,
        budgets: &[(String, u64)],
        delta: i64,
        slots: &[String],
    ) -> Result<(), StoreError>;

    /// `finish` without waiting, for stores that never wait (memory); `None` means the
    /// caller must run `finish` in a task.
    fn finish_now(
        &self,
        _budgets: &[(String, u64)],
        _delta: i64,
        _slots: &[String],
    ) -> Option<Result<(), StoreError>> {
        None
    }
}
