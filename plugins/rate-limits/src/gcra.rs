//! The limit arithmetic, shared by both stores: GCRA for per-minute budgets, a counter for
//! concurrency. Pure functions of (state, now) so they are tested with a controlled clock.
//!
//! A per-minute limit `L` is a bucket of `L` units refilled continuously at `L` per minute:
//! the state is the theoretical arrival time `tat` (when the bucket is full again). A cost
//! `n` is admitted when `max(tat, now) + n·60/L − now ≤ 60 s`, so bursts are bounded by one
//! minute's budget and there is no window edge to double up on.
//!
//! The state never runs more than one window ahead of `now`: a request that used more than a
//! whole minute's budget empties it and no more, so no wait (`Retry-After`, reset headers)
//! ever exceeds the window, whatever a client asked for or a backend reported.

/// The window all rates are expressed in.
pub const WINDOW: f64 = 60.0;

/// What one limit says about one request: the outcome of one [`crate::store::Check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckOutcome {
    /// Admitted: units left, and seconds until the budget is whole again.
    Admit { remaining: u64, reset: f64 },
    /// Refused: seconds until the cost would be admitted.
    Refuse { retry_after: f64 },
}

/// Admits `cost` against a per-minute `limit` with state `tat`; returns the new state.
/// A cost above the whole budget is charged as the whole budget (a full bucket admits it;
/// settlement then charges the rest), so no request is refused forever.
pub fn rate(tat: f64, now: f64, limit: u64, cost: u64) -> (CheckOutcome, f64) {
    let period = WINDOW / limit.max(1) as f64;
    let cost = cost.min(limit.max(1));
    let tat = bounded(tat, now);
    let new_tat = tat + cost as f64 * period;
    let wait = new_tat - now - WINDOW;
    if wait > 1e-9 {
        return (CheckOutcome::Refuse { retry_after: wait }, tat);
    }
    let remaining = ((WINDOW - (new_tat - now)) / period + 1e-9)
        .floor()
        .max(0.0) as u64;
    (
        CheckOutcome::Admit {
            remaining,
            reset: new_tat - now,
        },
        new_tat,
    )
}

/// Moves a per-minute state by `delta` units after the fact: negative refunds part of a
/// reservation, positive charges usage beyond it.
pub fn settle(tat: f64, now: f64, limit: u64, delta: i64) -> f64 {
    let period = WINDOW / limit.max(1) as f64;
    let tat = bounded(tat, now);
    bounded(tat + delta as f64 * period, now)
}

/// A state as the arithmetic may use it: not in the past (an idle budget is full), not more
/// than one window ahead, and a number (a corrupt stored value counts as a full budget).
fn bounded(tat: f64, now: f64) -> f64 {
    if tat.is_nan() {
        return now;
    }
    tat.clamp(now, now + WINDOW)
}

/// Admits one more concurrent request when fewer than `limit` are in flight.
pub fn concurrency(in_flight: u64, limit: u64) -> CheckOutcome {
    if in_flight < limit {
        CheckOutcome::Admit {
            remaining: limit - in_flight - 1,
            reset: 0.0,
        }
    } else {
        CheckOutcome::Refuse { retry_after: 1.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers one request every `step` seconds for `duration`; returns admission times.
    fn admitted(limit: u64, step: f64, duration: f64) -> Vec<f64> {
        let mut tat = 0.0;
        let mut times = Vec::new();
        let mut now = 0.0;
        while now < duration {
            let (v, next) = rate(tat, now, limit, 1);
            if matches!(v, CheckOutcome::Admit { .. }) {
                times.push(now);
                tat = next;
            }
            now += step;
        }
        times
    }

    #[test]
    fn a_full_budget_is_usable_at_once_then_refills_steadily() {
        let (v, tat) = rate(0.0, 1000.0, 10, 10);
        assert_eq!(
            v,
            CheckOutcome::Admit {
                remaining: 0,
                reset: 60.0
            }
        );
        let (v, _) = rate(tat, 1000.0, 10, 1);
        assert!(
            matches!(v, CheckOutcome::Refuse { retry_after } if (retry_after - 6.0).abs() < 1e-6)
        );
        let (v, _) = rate(tat, 1006.0, 10, 1);
        assert!(matches!(v, CheckOutcome::Admit { remaining: 0, .. }));
    }

    #[test]
    fn no_window_edge_doubles_the_limit() {
        // A client hammering every 10 ms for 5 minutes: in every 60 s window after the first
        // burst, at most the limit (plus one for the boundary instant).
        let times = admitted(60, 0.01, 300.0);
        for start in [60.0, 90.5, 119.99, 200.0, 239.0] {
            let n = times
                .iter()
                .filter(|t| **t >= start && **t < start + 60.0)
                .count();
            assert!(n <= 61, "{n} admitted in the window from {start}");
        }
        // The long-run rate is the limit.
        // One burst of the whole budget, then the steady rate of one a second.
        assert!(
            (times.len() as i64 - (60 + 300)).abs() <= 2,
            "{}",
            times.len()
        );
    }

    #[test]
    fn settlement_refunds_and_charges() {
        let (_, tat) = rate(0.0, 0.0, 600, 500); // reserve 500 of 600 tokens/min
        let refunded = settle(tat, 0.0, 600, -400); // only 100 were used
        let (v, _) = rate(refunded, 0.0, 600, 500);
        assert!(
            matches!(v, CheckOutcome::Admit { remaining: 0, .. }),
            "{v:?}"
        );
        let charged = settle(0.0, 0.0, 600, 600);
        assert!(matches!(
            rate(charged, 0.0, 600, 1).0,
            CheckOutcome::Refuse { .. }
        ));
        assert_eq!(
            settle(0.0, 50.0, 600, -10),
            50.0,
            "a refund never goes below now"
        );
    }

    #[test]
    fn no_wait_ever_exceeds_the_window() {
        // A charge of far more than the whole budget empties it for one window, no more.
        let tat = settle(0.0, 100.0, 10, i64::MAX);
        assert_eq!(tat, 160.0);
        match rate(tat, 100.0, 10, u64::MAX).0 {
            CheckOutcome::Refuse { retry_after } => assert!(retry_after <= WINDOW, "{retry_after}"),
            other => panic!("{other:?}"),
        }
        // Corrupt or far-future stored states are clamped the same way.
        for stored in [f64::NAN, f64::INFINITY, 1e300, -1e300] {
            let (outcome, next) = rate(stored, 100.0, 10, 1);
            assert!(next <= 100.0 + WINDOW, "{stored}: {next}");
            if let CheckOutcome::Refuse { retry_after } = outcome {
                assert!(retry_after <= WINDOW, "{stored}: {retry_after}");
            }
        }
        assert_eq!(settle(100.0, 100.0, 10, i64::MIN), 100.0);
    }

    #[test]
    fn oversized_costs_are_admitted_on_a_full_budget() {
        let (v, _) = rate(0.0, 100.0, 1000, 5000);
        assert!(matches!(v, CheckOutcome::Admit { remaining: 0, .. }));
    }

    #[test]
    fn concurrency_counts() {
        assert_eq!(
            concurrency(0, 2),
            CheckOutcome::Admit {
                remaining: 1,
                reset: 0.0
            }
        );
        assert!(matches!(concurrency(2, 2), CheckOutcome::Refuse { .. }));
    }
}
