//! An upstream's retry budget: retries at most `percent` of the calls of the last 10 seconds,
//! plus `min_per_second` (Linkerd's and Finagle's model), so retries cannot multiply the load
//! of a backend that is already failing.
//!
//! Written here rather than taken from tower's `TpsBudget`: that one takes a mutex on every
//! call and rounds the percentage to a whole number of calls per retry (30% becomes 33%); this
//! one is ten one-second slots of atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Seconds the budget looks back.
pub const WINDOW_SECS: u64 = 10;

#[derive(Debug, Default)]
struct Slot {
    /// Which second (since the budget's start) the counts belong to.
    second: AtomicU64,
    calls: AtomicU64,
    retries: AtomicU64,
}

#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min_per_second: u64,
    origin: Instant,
    slots: [Slot; WINDOW_SECS as usize],
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        Self {
            percent: u64::from(percent),
            min_per_second: u64::from(min_per_second),
            origin: Instant::now(),
            slots: Default::default(),
        }
    }

    pub fn settings(&self) -> (u32, u32) {
        (self.percent as u32, self.min_per_second as u32)
    }

    /// Counts a call (its first attempt): each one earns `percent`/100 of a retry.
    pub fn record_call(&self) {
        self.slot(self.now()).calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, or says it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(self.now())
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    fn try_withdraw_at(&self, second: u64) -> bool {
        let (calls, retries) = self.totals(second);
        let allowed = calls * self.percent / 100 + self.min_per_second * WINDOW_SECS;
        if retries >= allowed {
            return false;
        }
        // Two callers may both pass the check at the edge: one retry over, never more than
        // one per thread, which a budget of this kind tolerates.
        self.slot(second).retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The slot of `second`, emptied first when it still holds an older second's counts.
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % WINDOW_SECS) as usize];
        let held = slot.second.load(Ordering::Acquire);
        if held != second
            && slot
                .second
                .compare_exchange(held, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // Counts another thread adds between the exchange and these stores are lost:
            // at most a few calls at the turn of a second.
            slot.calls.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Calls and retries of the window ending at `second`.
    fn totals(&self, second: u64) -> (u64, u64) {
        let oldest = second.saturating_sub(WINDOW_SECS - 1);
        self.slots
            .iter()
            .filter(|s| (oldest..=second).contains(&s.second.load(Ordering::Acquire)))
            .fold((0, 0), |(c, r), s| {
                (
                    c + s.calls.load(Ordering::Relaxed),
                    r + s.retries.load(Ordering::Relaxed),
                )
            })
    }

    #[cfg(test)]
    fn record_call_at(&self, second: u64) {
        self.slot(second).calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn withdrawn(budget: &RetryBudget, second: u64, tries: u64) -> u64 {
        (0..tries)
            .filter(|_| budget.try_withdraw_at(second))
            .count() as u64
    }

    #[test]
    fn percent_of_the_calls_plus_the_floor() {
        let budget = RetryBudget::new(20, 1);
        for _ in 0..100 {
            budget.record_call_at(3);
        }
        // 20 of 100 calls, plus 1/s over the 10 s window.
        assert_eq!(withdrawn(&budget, 3, 1000), 30);
    }

    #[test]
    fn calls_older_than_the_window_earn_nothing() {
        let budget = RetryBudget::new(50, 0);
        for _ in 0..100 {
            budget.record_call_at(0);
        }
        assert_eq!(withdrawn(&budget, 9, 100), 50);
        // At second 10 the calls of second 0 have left the window, the retries of second 9
        // have not: new calls earn nothing until those retries leave too.
        for _ in 0..10 {
            budget.record_call_at(10);
        }
        assert_eq!(withdrawn(&budget, 10, 10), 0);
        // At second 19 only the calls of second 10 are left: 5 retries.
        assert_eq!(withdrawn(&budget, 19, 10), 5);
    }

    #[test]
    fn calls_recorded_now_earn_their_share() {
        // On the real clock: the calls and the withdrawals fall in the same 10 s window.
        let budget = RetryBudget::new(10, 0);
        for _ in 0..100 {
            budget.record_call();
        }
        assert_eq!((0..20).filter(|_| budget.try_withdraw()).count(), 10);
        assert_eq!(budget.settings(), (10, 0));
    }

    #[test]
    fn a_zero_budget_allows_nothing() {
        let budget = RetryBudget::new(0, 0);
        for s in 0..30 {
            budget.record_call_at(s);
            assert!(!budget.try_withdraw_at(s));
        }
    }

    proptest! {
        /// Whenever a retry is granted, the retries of the window (it included) are within
        /// `percent` of the window's calls plus the floor.
        #[test]
        fn the_window_never_exceeds_its_budget(
            percent in 0u32..=100,
            floor in 0u32..5,
            seconds in proptest::collection::vec((0u64..50, 0u64..50), 1..40),
        ) {
            let budget = RetryBudget::new(percent, floor);
            let mut log: Vec<(u64, u64, u64)> = Vec::new(); // (second, calls, retries)
            let mut second = 0;
            for (gap, calls) in seconds {
                second += gap % 3;
                for _ in 0..calls {
                    budget.record_call_at(second);
                }
                let retries = withdrawn(&budget, second, 100);
                log.push((second, calls, retries));
            }
            for (i, &(end, _, granted)) in log.iter().enumerate() {
                if granted == 0 {
                    continue;
                }
                let in_window = |s: u64| s + WINDOW_SECS > end && s <= end;
                let so_far = &log[..=i];
                let calls: u64 = so_far.iter().filter(|e| in_window(e.0)).map(|e| e.1).sum();
                let retries: u64 = so_far.iter().filter(|e| in_window(e.0)).map(|e| e.2).sum();
                let allowed = calls * u64::from(percent) / 100 + u64::from(floor) * WINDOW_SECS;
                prop_assert!(retries <= allowed, "{retries} retries > {allowed} at {end}");
            }
        }
    }
}
