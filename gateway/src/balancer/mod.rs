//! Backend choice: the caller's region first, then smooth weighted round robin, skipping what
//! cannot take a call. `front.rs` is what the call path meets (an upstream's `Balancer`: pick,
//! claim from the breaker, spill reporting); the rest are its algorithms.

mod front;
mod spill;
mod swrr;

pub use front::{Balancer, Claimable, SpillReport};
pub use spill::{kept_share, SpillSequence};
pub use swrr::SmoothWrr;

/// What the balancer needs to know about one endpoint.
pub trait Candidate {
    fn weight(&self) -> u32;
    fn region(&self) -> Option<&str>;
    /// False while the endpoint must not get new calls (drained; later: breaker open, unhealthy).
    fn is_usable(&self) -> bool;
}

/// The caller's region and how it spills when it has lost capacity.
#[derive(Debug, Clone, Copy)]
pub struct Preference<'a> {
    pub region: &'a str,
    /// 0: strict region first; otherwise see `kept_share`.
    pub overprovision: f64,
    pub spill: &'a SpillSequence,
}

/// The endpoint chosen, and the share of the preferred region's calls spilling elsewhere now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    pub index: Option<usize>,
    pub spilled: f64,
}

/// Strict region first: endpoints in `preferred_region` while one of them is usable.
pub fn pick<C: Candidate>(
    wrr: &SmoothWrr,
    endpoints: &[C],
    preferred_region: Option<&str>,
    excluded: &[usize],
) -> Option<usize> {
    let strict = SpillSequence::default();
    let preference = preferred_region.map(|region| Preference {
        region,
        overprovision: 0.0,
        spill: &strict,
    });
    pick_spilling(wrr, endpoints, preference, excluded).index
}

/// Picks an endpoint index from `endpoints`, never one listed in `excluded`.
///
/// The preferred region keeps `kept_share` of the calls while one of its endpoints is usable;
/// the rest, and everything once none is, goes by weight to the usable endpoints elsewhere.
/// Weight 0 means drained: never picked.
pub fn pick_spilling<C: Candidate>(
    wrr: &SmoothWrr,
    endpoints: &[C],
    preference: Option<Preference<'_>>,
    excluded: &[usize],
) -> Pick {
    let healthy = |i: &usize| endpoints[*i].weight() > 0 && endpoints[*i].is_usable();
    let usable = |i: &usize| healthy(i) && !excluded.contains(i);
    let by_weight = |i: usize| (i, endpoints[i].weight());
    let all = || (0..endpoints.len()).filter(usable);
    if let Some(p) = preference {
        let in_region = |i: &usize| endpoints[*i].region() == Some(p.region);
        let (mut usable_weight, mut total_weight) = (0u64, 0u64);
        for i in (0..endpoints.len()).filter(in_region) {
            total_weight += u64::from(endpoints[i].weight());
            if healthy(&i) {
                usable_weight += u64::from(endpoints[i].weight());
            }
        }
        if usable_weight > 0 {
            let kept = kept_share(usable_weight, total_weight, p.overprovision);
            let spilled = 1.0 - kept;
            let elsewhere = || all().filter(|i| !in_region(i));
            if !p.spill.stays(kept) && elsewhere().next().is_some() {
                let index = wrr.pick(elsewhere().map(by_weight));
                return Pick { index, spilled };
            }
            if let Some(index) = wrr.pick(all().filter(in_region).map(by_weight)) {
                return Pick {
                    index: Some(index),
                    spilled,
                };
            }
            // Every usable local endpoint was already tried by this call.
            return Pick {
                index: wrr.pick(all().map(by_weight)),
                spilled,
            };
        }
    }
    Pick {
        index: wrr.pick(all().map(by_weight)),
        spilled: if preference.is_some() { 1.0 } else { 0.0 },
    }
}

#[cfg(test)]
mod tests;
