//! Region spill: a preferred region that lost endpoints keeps only the share of its calls its
//! remaining capacity can take (Envoy's priority levels with an overprovisioning factor), and
//! the rest goes to the other regions by weight, instead of piling all of it on the survivors.

use std::sync::atomic::{AtomicU64, Ordering};

/// The share of calls kept in a region: min(1, usable weight / total weight x overprovision).
/// 0 as the factor keeps strict region-first (everything while anything is usable).
pub fn kept_share(usable_weight: u64, total_weight: u64, overprovision: f64) -> f64 {
    if overprovision <= 0.0 || total_weight == 0 {
        return 1.0;
    }
    (usable_weight as f64 / total_weight as f64 * overprovision).min(1.0)
}

/// Shares are applied in steps of 1/10,000.
const STEPS: u64 = 10_000;

/// Decides call by call which ones stay, spreading the spilled calls evenly over time (like a
/// line drawn on a pixel grid) instead of at random, so even 100 calls split as asked.
#[derive(Debug, Default)]
pub struct SpillSequence {
    calls: AtomicU64,
}

impl SpillSequence {
    /// True when this call stays in the preferred region, given the share kept.
    pub fn stays(&self, kept: f64) -> bool {
        let kept = (kept.clamp(0.0, 1.0) * STEPS as f64).round() as u64;
        if kept >= STEPS {
            return true; // nothing spills: no shared counter touched
        }
        let n = self.calls.fetch_add(1, Ordering::Relaxed) % (STEPS * 1_000_000);
        (n + 1) * kept / STEPS > n * kept / STEPS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_all_healthy_region_keeps_everything() {
        assert_eq!(kept_share(300, 300, 1.4), 1.0);
    }

    #[test]
    fn losing_two_of_three_keeps_a_third_times_the_factor() {
        let kept = kept_share(100, 300, 1.4);
        assert!((kept - 0.4667).abs() < 0.001, "{kept}");
    }

    #[test]
    fn a_factor_of_zero_is_strict_region_first() {
        assert_eq!(kept_share(1, 300, 0.0), 1.0);
    }

    proptest! {
        #[test]
        fn the_sequence_keeps_the_share_it_is_given(kept in 0.0f64..=1.0, n in 1u64..3000) {
            let sequence = SpillSequence::default();
            let stayed = (0..n).filter(|_| sequence.stays(kept)).count() as f64;
            // Exact up to one call and the 1/10,000 rounding of the share.
            prop_assert!((stayed - kept * n as f64).abs() <= 1.0 + n as f64 / 10_000.0,
                "{stayed} of {n} stayed at {kept}");
        }

        #[test]
        fn the_kept_share_is_a_share(usable in 0u64..1000, extra in 0u64..1000, factor in 0.0f64..10.0) {
            let kept = kept_share(usable, usable + extra, factor);
            prop_assert!((0.0..=1.0).contains(&kept));
        }
    }
}
