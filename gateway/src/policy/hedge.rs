//! A route's `hedge`: when no response headers have come `delay` after the latest attempt
//! started, another attempt goes to another endpoint; the first to answer wins (gRPC's hedging,
//! A6). Only routes marked `idempotent` hedge: every attempt may run to completion.

use std::time::{Duration, Instant};

use crate::config::HedgeConfig;

use super::budget::RetryBudget;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HedgePolicy {
    config: HedgeConfig,
}

impl HedgePolicy {
    pub fn new(config: HedgeConfig) -> Self {
        Self { config }
    }

    pub fn max_attempts(&self) -> u32 {
        self.config.max_attempts
    }

    /// When the next attempt is due, given how many have started and when the latest did;
    /// `None` when every attempt is out or the request can no longer be sent again.
    pub fn next_due(&self, started: u32, latest: Instant, resendable: bool) -> Option<Instant> {
        (resendable && started < self.config.max_attempts).then(|| latest + self.config.delay)
    }

    /// Whether a due hedge may go: it spends a retry from the upstream's budget, and the
    /// deadline must leave more than the hedge's delay.
    pub fn may_send(&self, remaining: Option<Duration>, budget: &RetryBudget) -> bool {
        remaining.is_none_or(|left| left > self.config.delay) && budget.try_withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HedgePolicy {
        HedgePolicy::new(HedgeConfig {
            delay: Duration::from_millis(20),
            max_attempts: 3,
        })
    }

    #[test]
    fn hedges_are_due_a_delay_apart_until_the_attempts_are_out() {
        let start = Instant::now();
        let p = policy();
        assert_eq!(p.max_attempts(), 3);
        assert_eq!(
            p.next_due(1, start, true),
            Some(start + Duration::from_millis(20))
        );
        assert_eq!(
            p.next_due(2, start, true),
            Some(start + Duration::from_millis(20))
        );
        assert_eq!(p.next_due(3, start, true), None);
        assert_eq!(
            p.next_due(1, start, false),
            None,
            "a request too large to send again"
        );
    }

    #[test]
    fn a_hedge_needs_time_and_budget() {
        let p = policy();
        let plenty = RetryBudget::new(0, 100);
        assert!(p.may_send(None, &plenty));
        assert!(p.may_send(Some(Duration::from_millis(21)), &plenty));
        assert!(!p.may_send(Some(Duration::from_millis(20)), &plenty));
        let spent = RetryBudget::new(0, 0);
        assert!(!p.may_send(None, &spent));
    }
}
