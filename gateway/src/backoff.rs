//! Capped, jittered exponential back-off ("equal jitter"): etcd reconnects, registrar retries
//! and restarts of supervised background tasks all use it, so a fleet that failed together
//! never retries in lockstep.

use std::time::Duration;

/// etcd reconnects: from 100 ms up to 5 s.
const BASE: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BASE, CAP)
    }
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A random delay in [ceiling/2, ceiling], where ceiling doubles per attempt up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_resets() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= BASE / 2 && first <= BASE);
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(d <= CAP, "{d:?}");
        }
        let late = b.next_delay();
        assert!(late >= CAP / 2);
        b.reset();
        assert!(b.next_delay() <= BASE);
    }

    #[test]
    fn delays_are_spread_not_lockstep() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(8)).next_delay())
            .collect();
        assert!(
            delays.len() > 1,
            "twenty fresh back-offs all chose {delays:?}"
        );
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(500) && *d <= Duration::from_secs(1)));
    }
}
