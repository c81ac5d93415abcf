//! Per-endpoint series of endpoints that left: kept for a while so the last scrapes see their
//! final counts, then removed, so months of rolling deploys do not grow `/metrics` without
//! bound (each deploy brings new addresses).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};

/// Endpoints (upstream, endpoint label) that left, and when.
#[derive(Debug, Default)]
pub struct Departures {
    left: Mutex<HashMap<(String, String), Instant>>,
}

impl Departures {
    /// The endpoint left: its series go once `ENDPOINT_SERIES_GRACE` has passed.
    pub fn left(&self, upstream: &str, endpoint: &str, now: Instant) {
        self.lock()
            .entry((upstream.to_string(), endpoint.to_string()))
            .or_insert(now);
    }

    /// The endpoint is back before its series went: they stay.
    pub fn returned(&self, upstream: &str, endpoint: &str) {
        let mut left = self.lock();
        if !left.is_empty() {
            left.remove(&(upstream.to_string(), endpoint.to_string()));
        }
    }

    /// Takes the endpoints whose grace has run out by `now`.
    pub fn due(&self, now: Instant, grace: Duration) -> Vec<(String, String)> {
        let mut left = self.lock();
        let due: Vec<_> = left
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= grace)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &due {
            left.remove(key);
        }
        due
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        self.left.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes every series of `vec` whose `upstream` and `endpoint` labels are these, whatever its
/// other labels (outcomes, breaker transitions, probe results: whichever were ever counted).
pub fn remove_endpoint_series<T: MetricVecBuilder>(
    vec: &MetricVec<T>,
    upstream: &str,
    endpoint: &str,
) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if labels.get("upstream") == Some(&upstream)
                && labels.get("endpoint") == Some(&endpoint)
            {
                let _ = vec.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, Opts};

    #[test]
    fn departures_come_due_after_the_grace_unless_they_return() {
        let d = Departures::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(600);
        d.left("u", "10.0.0.1:1", t0);
        d.left("u", "10.0.0.2:1", t0 + Duration::from_secs(100));
        // Leaving again does not restart the clock.
        d.left("u", "10.0.0.1:1", t0 + Duration::from_secs(300));
        assert!(d.due(t0 + Duration::from_secs(599), grace).is_empty());
        d.returned("u", "10.0.0.2:1");
        assert_eq!(
            d.due(t0 + Duration::from_secs(700), grace),
            vec![("u".to_string(), "10.0.0.1:1".to_string())]
        );
        assert!(d.due(t0 + Duration::from_secs(10_000), grace).is_empty());
    }

    #[test]
    fn only_the_endpoints_series_are_removed() {
        let vec = IntCounterVec::new(
            Opts::new("t_total", "t"),
            &["upstream", "endpoint", "from", "to"],
        )
        .unwrap();
        vec.with_label_values(&["u", "a", "closed", "open"]).inc();
        vec.with_label_values(&["u", "a", "open", "half_open"])
            .inc();
        vec.with_label_values(&["u", "b", "closed", "open"]).inc();
        vec.with_label_values(&["v", "a", "closed", "open"]).inc();
        remove_endpoint_series(&vec, "u", "a");
        let left: Vec<Vec<String>> = vec.collect()[0]
            .get_metric()
            .iter()
            .map(|m| {
                m.get_label()
                    .iter()
                    .filter(|p| matches!(p.name(), "upstream" | "endpoint"))
                    .map(|p| p.value().to_string())
                    .collect()
            })
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.iter().all(|l| l != &["u", "a"]), "{left:?}");
    }
}

#[cfg(test)]
mod endpoint_tests {
    use std::time::{Duration, Instant};

    use crate::metrics::{AttemptOutcome, Metrics};

    #[test]
    fn a_departed_endpoints_series_go_after_the_grace_and_a_returning_one_keeps_them() {
        let grace = Duration::from_secs(600);
        let m = Metrics::new(true, 16, grace);
        let (gone, stays, back) = (
            "10.0.0.1:50051".parse().unwrap(),
            "10.0.0.2:50051".parse().unwrap(),
            "10.0.0.3:50051".parse().unwrap(),
        );
        let series = |addr: &str| {
            m.render()
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains(&format!("endpoint=\"{addr}\"")))
                .count()
        };
        let stays = m.endpoint("u", stays);
        stays.attempt(AttemptOutcome::Ok);
        let e = m.endpoint("u", gone);
        e.attempt(AttemptOutcome::Ok);
        e.probe(false);
        let r = m.endpoint("u", back);
        r.attempt(AttemptOutcome::Reset);
        assert!(series("10.0.0.1:50051") >= 2);
        drop(e);
        drop(r);
        let back_again = m.endpoint("u", back);
        let now = Instant::now();
        assert_eq!(m.sweep_departed_endpoints(now), 0, "within the grace");
        assert!(series("10.0.0.1:50051") >= 2, "kept for the last scrapes");
        assert_eq!(m.sweep_departed_endpoints(now + grace), 1);
        assert_eq!(series("10.0.0.1:50051"), 0, "gone after the grace");
        assert!(
            series("10.0.0.2:50051") > 0,
            "a present endpoint keeps its series"
        );
        assert!(
            series("10.0.0.3:50051") > 0,
            "a returning endpoint keeps its series"
        );
        drop(back_again);
    }

    #[test]
    fn without_endpoint_labels_nothing_is_tracked() {
        let m = Metrics::new(false, 16, Duration::ZERO);
        let e = m.endpoint("u", "10.0.0.1:1".parse().unwrap());
        e.attempt(AttemptOutcome::Ok);
        drop(e);
        assert_eq!(m.sweep_departed_endpoints(Instant::now()), 0);
        assert!(
            m.render().contains("endpoint=\"-\""),
            "the shared series stays"
        );
    }
}
