//! Capped, jittered exponential back-off between etcd reconnects ("full jitter").

use std::time::Duration;

const BASE: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A random delay in [ceiling/2, ceiling], where ceiling doubles per attempt up to `CAP`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = BASE.saturating_mul(1 << self.attempt.min(16)).min(CAP);
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
}
