use std::collections::HashSet;
use std::time::Duration;

use crate::grpc::Code;

/// How the open period grows with consecutive trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// Always `open_for`.
    Fixed,
    /// `open_for` doubled per consecutive trip, up to `max_open_for`.
    Exponential,
    /// Exponential, then spread by ±25% at random (never above `max_open_for`), so endpoints that
    /// failed together do not all come back at the same instant.
    Jittered,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub window: u32,
    pub min_calls: u32,
    pub open_for: Duration,
    pub backoff: Backoff,
    pub max_open_for: Duration,
    pub half_open_calls: u32,
    pub failure_codes: HashSet<Code>,
    pub max_ejected_percent: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: 20,
            min_calls: 10,
            open_for: Duration::from_secs(5),
            backoff: Backoff::Exponential,
            max_open_for: Duration::from_secs(60),
            half_open_calls: 3,
            failure_codes: [
                Code::Unavailable,
                Code::Internal,
                Code::Unknown,
                Code::DeadlineExceeded,
            ]
            .into_iter()
            .collect(),
            max_ejected_percent: 50,
        }
    }
}

impl BreakerSettings {
    /// Open period for the `trip`-th consecutive trip (1-based); `random` in [0, 1).
    pub fn open_period(&self, trip: u32, random: f64) -> Duration {
        let doublings = trip.saturating_sub(1).min(30);
        let exponential = self
            .open_for
            .saturating_mul(1u32 << doublings)
            .min(self.max_open_for.max(self.open_for));
        match self.backoff {
            Backoff::Fixed => self.open_for,
            Backoff::Exponential => exponential,
            Backoff::Jittered => exponential
                .mul_f64(0.75 + 0.5 * random.clamp(0.0, 1.0))
                .min(self.max_open_for.max(self.open_for)),
        }
    }

    /// How many of `endpoints` may be ejected at once.
    pub fn max_ejected(&self, endpoints: usize) -> usize {
        endpoints * self.max_ejected_percent as usize / 100
    }
}
