//! What a request was admitted with, how its concurrency leases are kept alive, and how it
//! is settled when it ends.

use std::sync::Arc;
use std::time::Duration;

use gateway_plugin_api::{RequestCtx, RequestSummary};

use crate::store::{Key, Settle, Store};

/// One tokens-per-minute budget a request was charged: its key, its limit, and what it was
/// actually charged up front (the reservation, capped at the limit).
#[derive(Clone)]
pub struct Budget {
    pub key: Key,
    pub limit: u64,
    pub charged: u64,
}

/// What an admitted request leaves of one per-minute budget, as OpenAI's `x-ratelimit-*`
/// headers report it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allowance {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the budget is whole again.
    pub reset: f64,
}

impl Allowance {
    /// The tighter of `current` and `self`: the one with fewer units left (`current` on a tie).
    pub fn tighter_than(self, current: Option<Allowance>) -> Option<Allowance> {
        match current {
            Some(c) if c.remaining <= self.remaining => Some(c),
            _ => Some(self),
        }
    }
}

/// Keeps a request's concurrency leases alive while it lives; stops when the last clone of
/// its admission drops (the request's context, then the settlement task).
pub struct LeaseKeeper(tokio::task::JoinHandle<()>);

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What was admitted, kept in the request context until the request ends.
#[derive(Clone)]
pub struct Admission {
    pub store: Arc<dyn Store>,
    pub budgets: Vec<Budget>,
    pub reserved: u64,
    pub slots: Vec<Key>,
    pub holder: String,
    /// The tightest of the request budgets, and of the token budgets.
    pub requests: Option<Allowance>,
    pub tokens: Option<Allowance>,
    pub leases: Option<Arc<LeaseKeeper>>,
}

impl Admission {
    /// What the request consumed, budget by budget. A backend's own error answer (not 2xx)
    /// consumes nothing: it generated nothing. A 2xx is charged the usage the backend
    /// reported, or, when no usage could be read (an estimate, or none at all), its whole
    /// reservation: a user never pays less because the gateway could not count. So is a
    /// request the gateway ended after sending it (the client left, the backend went silent
    /// or broke off): the backend may have generated all of it.
    pub fn settlements(&self, summary: &RequestSummary, ctx: &RequestCtx) -> Vec<Settle> {
        let ended_after_sending = matches!(
            summary.error_code,
            Some("client_closed_request" | "upstream_error" | "upstream_timeout")
        );
        let used = match ctx.usage {
            _ if ended_after_sending && !(200..300).contains(&summary.status) => self.reserved,
            _ if !(200..300).contains(&summary.status) => 0,
            Some(u) if !u.estimated => u.prompt_tokens.saturating_add(u.completion_tokens),
            _ => self.reserved,
        };
        self.budgets
            .iter()
            .map(|b| {
                let used = i64::try_from(used.min(b.limit)).unwrap_or(i64::MAX);
                let charged = i64::try_from(b.charged).unwrap_or(i64::MAX);
                Settle {
                    key: b.key.clone(),
                    limit: b.limit,
                    delta: used - charged,
                }
            })
            .collect()
    }
}

/// Refreshes `slots` every `every` until aborted (see [`LeaseKeeper`]).
pub fn keep_leases(
    store: Arc<dyn Store>,
    slots: Vec<Key>,
    holder: String,
    every: Duration,
) -> LeaseKeeper {
    LeaseKeeper(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = store.refresh(&slots, &holder).await {
                log::debug!(target: "rate_limits", "refreshing concurrency leases: {}", e.0);
            }
        }
    }))
}

/// Settles in the background, retrying a few times: a settlement that never lands leaves the
/// reservation charged (never too little) and the slots to expire with their leases.
pub async fn settle_with_retries(admission: Admission, budgets: Vec<Settle>, request_id: String) {
    let mut wait = Duration::from_millis(100);
    for attempt in 1..=3 {
        let store = &admission.store;
        match store
            .finish(&budgets, &admission.slots, &admission.holder)
            .await
        {
            Ok(()) => return,
            Err(e) if attempt == 3 => {
                log::warn!(
                    target: "rate_limits",
                    request_id = request_id.as_str();
                    "settling a request failed ({}); its reservation stays charged and its slots expire with their lease",
                    e.0
                );
            }
            Err(e) => {
                log::debug!(target: "rate_limits", request_id = request_id.as_str(); "settling a request: {}", e.0);
                tokio::time::sleep(wait).await;
                wait *= 4;
            }
        }
    }
}
