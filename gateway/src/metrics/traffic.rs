//! The last minute of traffic of one route or upstream, for the status page: a ring of 60
//! one-second buckets of atomics (calls, calls that were not OK, a latency histogram). Recording
//! is a few relaxed atomic additions; reading merges the buckets of the last 60 seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds kept.
pub const WINDOW_SECONDS: usize = 60;

/// Upper bounds of the latency buckets, in milliseconds (the last is everything beyond).
pub const LATENCY_BOUNDS_MS: [f64; 17] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    10_000.0, 30_000.0,
];
const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

#[derive(Debug, Default)]
struct Second {
    /// Which second (since the epoch) this slot holds; a slot of another second is stale.
    epoch: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Second {
    fn clear(&self) {
        self.calls.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        for b in &self.latency {
            b.store(0, Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
pub struct TrafficWindow {
    seconds: [Second; WINDOW_SECONDS],
}

impl Default for TrafficWindow {
    fn default() -> Self {
        Self {
            seconds: std::array::from_fn(|_| Second::default()),
        }
    }
}

/// What the last minute looked like.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrafficSummary {
    pub calls: u64,
    pub errors: u64,
    pub calls_per_second: f64,
    /// Share of calls that did not end OK, 0 to 1 (0 without calls).
    pub error_share: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Calls in each of the last 60 seconds, oldest first (the current second last).
    pub per_second: Vec<u64>,
    /// Calls that were not OK, per second, aligned with `per_second`.
    pub errors_per_second: Vec<u64>,
}

fn now_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bucket_of(millis: f64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|bound| millis <= *bound)
        .unwrap_or(BUCKETS - 1)
}

impl TrafficWindow {
    pub fn record(&self, ok: bool, duration: Duration) {
        self.record_at(now_second(), ok, duration);
    }

    fn record_at(&self, second: u64, ok: bool, duration: Duration) {
        let slot = &self.seconds[(second % WINDOW_SECONDS as u64) as usize];
        let held = slot.epoch.load(Ordering::Acquire);
        if held != second
            && slot
                .epoch
                .compare_exchange(held, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This call moved the slot to a new second. A call of the same second recording
            // meanwhile may lose its count: the page is a picture, not an account (the exact
            // figures are the Prometheus counters).
            slot.clear();
        }
        slot.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        let millis = duration.as_secs_f64() * 1000.0;
        slot.latency[bucket_of(millis)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn summary(&self) -> TrafficSummary {
        self.summary_at(now_second())
    }

    fn summary_at(&self, now: u64) -> TrafficSummary {
        let mut per_second = Vec::with_capacity(WINDOW_SECONDS);
        let mut errors_per_second = Vec::with_capacity(WINDOW_SECONDS);
        let mut latency = [0u64; BUCKETS];
        for age in (0..WINDOW_SECONDS as u64).rev() {
            let Some(second) = now.checked_sub(age) else {
                per_second.push(0);
                errors_per_second.push(0);
                continue;
            };
            let slot = &self.seconds[(second % WINDOW_SECONDS as u64) as usize];
            if slot.epoch.load(Ordering::Acquire) != second {
                per_second.push(0);
                errors_per_second.push(0);
                continue;
            }
            per_second.push(slot.calls.load(Ordering::Relaxed));
            errors_per_second.push(slot.errors.load(Ordering::Relaxed));
            for (sum, b) in latency.iter_mut().zip(&slot.latency) {
                *sum += b.load(Ordering::Relaxed);
            }
        }
        let calls: u64 = per_second.iter().sum();
        let errors: u64 = errors_per_second.iter().sum();
        TrafficSummary {
            calls,
            errors,
            calls_per_second: calls as f64 / WINDOW_SECONDS as f64,
            error_share: if calls == 0 {
                0.0
            } else {
                errors as f64 / calls as f64
            },
            p50_ms: quantile(&latency, 0.5),
            p99_ms: quantile(&latency, 0.99),
            per_second,
            errors_per_second,
        }
    }
}

/// The `q` quantile of a bucketed distribution, interpolated linearly inside its bucket (as
/// Prometheus' `histogram_quantile`); the open last bucket answers its lower bound.
fn quantile(buckets: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, count) in buckets.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        if (below + count) as f64 >= rank {
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1]
            };
            let Some(upper) = LATENCY_BOUNDS_MS.get(i) else {
                return Some(lower);
            };
            let within = (rank - below as f64) / *count as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        below += count;
    }
    LATENCY_BOUNDS_MS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: u64 = 1_800_000_000;

    #[test]
    fn the_last_minute_is_counted_and_older_seconds_forgotten() {
        let w = TrafficWindow::default();
        for _ in 0..10 {
            w.record_at(T, true, Duration::from_millis(1));
        }
        w.record_at(T + 1, false, Duration::from_millis(30));
        let s = w.summary_at(T + 1);
        assert_eq!((s.calls, s.errors), (11, 1));
        assert_eq!(s.per_second[WINDOW_SECONDS - 2..], [10, 1]);
        assert_eq!(s.errors_per_second[WINDOW_SECONDS - 1], 1);
        assert!((s.error_share - 1.0 / 11.0).abs() < 1e-9);
        assert!((s.calls_per_second - 11.0 / 60.0).abs() < 1e-9);
        // A minute later the first second has left the window; its slot is reused.
        let later = w.summary_at(T + 60);
        assert_eq!((later.calls, later.errors), (1, 1));
        w.record_at(T + 60, true, Duration::from_millis(1));
        let reused = w.summary_at(T + 60);
        assert_eq!(reused.calls, 2, "the slot of T was cleared for T+60");
        assert_eq!(w.summary_at(T + 200).calls, 0);
    }

    #[test]
    fn quantiles_come_from_the_buckets() {
        let w = TrafficWindow::default();
        for _ in 0..99 {
            w.record_at(T, true, Duration::from_micros(800));
        }
        w.record_at(T, true, Duration::from_millis(40));
        let s = w.summary_at(T);
        let p50 = s.p50_ms.unwrap();
        assert!((0.5..=1.0).contains(&p50), "{p50}");
        let p99 = s.p99_ms.unwrap();
        assert!(
            (0.5..=1.0).contains(&p99),
            "{p99}: 99 of 100 calls are under 1 ms"
        );
        assert!(TrafficWindow::default().summary_at(T).p50_ms.is_none());
        w.record_at(T, true, Duration::from_secs(100));
        assert_eq!(
            quantile(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 0.5),
            Some(30_000.0)
        );
    }

    proptest! {
        #[test]
        fn quantiles_stay_within_the_recorded_buckets(
            millis in proptest::collection::vec(0.0f64..40_000.0, 1..200),
            q in 0.01f64..1.0,
        ) {
            let w = TrafficWindow::default();
            for m in &millis {
                w.record_at(T, true, Duration::from_secs_f64(m / 1000.0));
            }
            let s = w.summary_at(T);
            prop_assert_eq!(s.calls, millis.len() as u64);
            let mut buckets = [0u64; BUCKETS];
            for m in &millis {
                buckets[bucket_of(*m)] += 1;
            }
            let v = quantile(&buckets, q).unwrap();
            let lowest = millis.iter().cloned().fold(f64::MAX, f64::min);
            let highest = millis.iter().cloned().fold(0.0, f64::max);
            let lo = if bucket_of(lowest) == 0 { 0.0 } else { LATENCY_BOUNDS_MS[bucket_of(lowest) - 1] };
            let hi = LATENCY_BOUNDS_MS.get(bucket_of(highest)).copied().unwrap_or(30_000.0);
            prop_assert!(v >= lo && v <= hi, "{} not within [{}, {}]", v, lo, hi);
        }
    }
}
