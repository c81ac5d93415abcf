//! An upstream's balancer as the call path meets it: one per upstream set, shared by every
//! thread. It picks (region first with its spill, then smooth WRR), claims the pick from the
//! endpoint's breaker, and reports the own region's spilled share.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use crate::breaker::Admission;

use super::{pick_spilling, Candidate, Preference, SmoothWrr, SpillSequence};

/// An endpoint that can be claimed: its breaker admits an attempt, or refuses it.
pub trait Claimable: Candidate {
    fn admit(&self, now: Instant) -> Admission;
}

/// Where an upstream's spill is reported: the gateway's own region, its gauge.
#[derive(Debug, Default)]
pub struct SpillReport {
    /// The upstream, for the log line.
    pub upstream: String,
    /// The gateway's own region: its spill is the one reported.
    pub home_region: Option<String>,
    pub gauge: Option<prometheus::Gauge>,
}

#[derive(Debug)]
pub struct Balancer {
    wrr: SmoothWrr,
    region_overprovision: f64,
    spill: SpillSequence,
    report: SpillReport,
    /// The spilled share last reported for the gateway's own region, in thousandths
    /// (`SPILL_UNSET` before the first call).
    spilled_permille: AtomicU32,
}

const SPILL_UNSET: u32 = u32::MAX;

impl Balancer {
    /// A balancer over `len` endpoints.
    pub fn new(len: usize, region_overprovision: f64, report: SpillReport) -> Self {
        Self {
            wrr: SmoothWrr::new(len),
            region_overprovision,
            spill: SpillSequence::default(),
            report,
            spilled_permille: AtomicU32::new(SPILL_UNSET),
        }
    }

    /// Picks the next endpoint for a call, preferring `region`, never one in `excluded`.
    pub fn pick<C: Candidate>(
        &self,
        endpoints: &[C],
        region: Option<&str>,
        excluded: &[usize],
    ) -> Option<usize> {
        let preference = region.map(|region| Preference {
            region,
            overprovision: self.region_overprovision,
            spill: &self.spill,
        });
        let pick = pick_spilling(&self.wrr, endpoints, preference, excluded);
        if region.is_some() && region == self.report.home_region.as_deref() {
            self.note_spill(pick.spilled);
        }
        pick.index
    }

    /// Picks an endpoint and claims it from its breaker: a breaker can refuse between the two
    /// (its half-open quota used up by a concurrent call), and then the pick goes on without
    /// it. `None` when no endpoint outside `excluded` admits the attempt.
    pub fn claim<C: Claimable>(
        &self,
        endpoints: &[C],
        region: Option<&str>,
        excluded: &[usize],
    ) -> Option<(usize, Admission)> {
        let now = Instant::now();
        let mut skip = excluded.to_vec();
        loop {
            let index = self.pick(endpoints, region, &skip)?;
            match endpoints[index].admit(now) {
                Admission::Rejected => skip.push(index),
                admission => return Some((index, admission)),
            }
        }
    }

    /// Reports a change of the own region's spilled share (gauge and one log line).
    fn note_spill(&self, spilled: f64) {
        let permille = (spilled.clamp(0.0, 1.0) * 1000.0).round() as u32;
        let before = self.spilled_permille.swap(permille, Ordering::Relaxed);
        let news = spill_news(before, permille);
        if news == SpillNews::Unchanged {
            return;
        }
        if let Some(gauge) = &self.report.gauge {
            gauge.set(f64::from(permille) / 1000.0);
        }
        if news == SpillNews::Logged {
            tracing::info!(
                upstream = %self.report.upstream,
                region = self.report.home_region.as_deref().unwrap_or_default(),
                spilled_percent = f64::from(permille) / 10.0,
                "region spill changed: this share of the region's calls goes to other regions"
            );
        }
    }
}

/// What a new spilled share (in thousandths) means for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpillNews {
    Unchanged,
    /// The gauge only: the first report, and nothing spills.
    Quiet,
    /// The gauge and a log line.
    Logged,
}

fn spill_news(before: u32, now: u32) -> SpillNews {
    if before == now {
        SpillNews::Unchanged
    } else if before == SPILL_UNSET && now == 0 {
        SpillNews::Quiet
    } else {
        SpillNews::Logged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spill_is_logged_when_it_changes_but_not_when_it_starts_at_nothing() {
        assert_eq!(spill_news(SPILL_UNSET, 0), SpillNews::Quiet);
        assert_eq!(spill_news(SPILL_UNSET, 5), SpillNews::Logged);
        assert_eq!(spill_news(0, 5), SpillNews::Logged);
        assert_eq!(spill_news(5, 0), SpillNews::Logged);
        assert_eq!(spill_news(5, 5), SpillNews::Unchanged);
        assert_eq!(spill_news(0, 0), SpillNews::Unchanged);
    }
}
