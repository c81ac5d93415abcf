//! An endpoint's latest outcomes, in one atomic, so an upstream can compare its endpoints
//! with each other without taking any breaker's lock: a shift register of the last
//! `WINDOW` calls (1 = failed) and how many of them there are. A window of calls rather than of
//! time: once good traffic resumes, failures the endpoints showed alike leave every window
//! after a few dozen calls, and an endpoint still failing on its own stands out.

use std::sync::atomic::{AtomicU64, Ordering};

/// Calls remembered per endpoint.
pub const WINDOW: u32 = 32;

const OUTCOMES: u64 = (1 << WINDOW) - 1;

#[derive(Debug, Default)]
pub struct RecentOutcomes {
    /// Bits 0..32: the last calls, newest in bit 0; bits 32..: how many (at most `WINDOW`).
    packed: AtomicU64,
}

impl RecentOutcomes {
    /// Counts a call that ended `failed` or not.
    pub fn record(&self, failed: bool) {
        let _ = self
            .packed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                let calls = (packed >> WINDOW).min(u64::from(WINDOW));
                let outcomes = ((packed << 1) | u64::from(failed)) & OUTCOMES;
                Some(((calls + 1).min(u64::from(WINDOW)) << WINDOW) | outcomes)
            });
    }

    /// (calls, failures) among the last `WINDOW` calls.
    pub fn counts(&self) -> (u64, u64) {
        let packed = self.packed.load(Ordering::Relaxed);
        let calls = (packed >> WINDOW).min(u64::from(WINDOW));
        let failures = u64::from((packed & OUTCOMES).count_ones());
        (calls, failures)
    }
}

/// Whether an endpoint failing at `own` = (calls, failures) is clearly worse than its `peers`
/// (their summed (calls, failures)): true unless the peers fail at least half as often. With
/// too few peer calls to compare (a single-endpoint upstream, idle peers) it is, as before
/// peers were compared: its own failures decide.
pub fn clearly_worse_than_peers(own: (u64, u64), peers: (u64, u64)) -> bool {
    const MIN_PEER_CALLS: u64 = 10;
    let (calls, failures) = own;
    let (peer_calls, peer_failures) = peers;
    if peer_calls < MIN_PEER_CALLS || calls == 0 {
        return true;
    }
    // peer_failures / peer_calls < (failures / calls) / 2, without division.
    u128::from(peer_failures) * u128::from(calls) * 2
        < u128::from(failures) * u128::from(peer_calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_window_holds_the_last_calls() {
        let r = RecentOutcomes::default();
        assert_eq!(r.counts(), (0, 0));
        r.record(true);
        r.record(false);
        assert_eq!(r.counts(), (2, 1));
        for _ in 0..WINDOW {
            r.record(true);
        }
        assert_eq!(r.counts(), (32, 32));
        for _ in 0..20 {
            r.record(false);
        }
        assert_eq!(r.counts(), (32, 12), "old failures leave the window");
    }

    #[test]
    fn alike_failures_are_not_an_outlier_and_lone_ones_are() {
        // A caller's bad requests: every endpoint fails alike.
        assert!(!clearly_worse_than_peers((40, 40), (80, 80)));
        assert!(!clearly_worse_than_peers((40, 12), (80, 20)));
        // A dead or broken endpoint among healthy peers.
        assert!(clearly_worse_than_peers((40, 40), (80, 0)));
        assert!(clearly_worse_than_peers((500, 10), (1000, 2)));
        // Nobody to compare with: its own failures decide.
        assert!(clearly_worse_than_peers((40, 40), (0, 0)));
        assert!(clearly_worse_than_peers((40, 40), (9, 9)));
    }

    proptest! {
        #[test]
        fn failing_no_more_than_the_peers_is_never_an_outlier(
            calls in 1u64..10_000, peer_calls in 10u64..10_000, share in 0.0f64..=1.0
        ) {
            let failures = (calls as f64 * share) as u64;
            let peer_failures = (peer_calls as f64 * share).ceil() as u64;
            prop_assert!(!clearly_worse_than_peers((calls, failures), (peer_calls, peer_failures)));
        }
    }
}
