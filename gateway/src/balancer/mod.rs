//! Backend choice: the caller's region first, then smooth weighted round robin, skipping what
//! cannot take a call.

mod swrr;

pub use swrr::SmoothWrr;

/// What the balancer needs to know about one endpoint.
pub trait Candidate {
    fn weight(&self) -> u32;
    fn region(&self) -> Option<&str>;
    /// False while the endpoint must not get new calls (drained; later: breaker open, unhealthy).
    fn is_usable(&self) -> bool;
}

/// Picks an endpoint index from `endpoints`, never one listed in `excluded`.
///
/// Endpoints in `preferred_region` are used while at least one of them is usable; otherwise every
/// usable endpoint is eligible by weight. Weight 0 means drained: never picked.
pub fn pick<C: Candidate>(
    wrr: &SmoothWrr,
    endpoints: &[C],
    preferred_region: Option<&str>,
    excluded: &[usize],
) -> Option<usize> {
    let usable = |i: &usize| {
        let e = &endpoints[*i];
        e.weight() > 0 && e.is_usable() && !excluded.contains(i)
    };
    if let Some(region) = preferred_region {
        let in_region = |i: &usize| endpoints[*i].region() == Some(region);
        if (0..endpoints.len()).filter(usable).any(|i| in_region(&i)) {
            return wrr.pick(
                (0..endpoints.len())
                    .filter(usable)
                    .filter(in_region)
                    .map(|i| (i, endpoints[i].weight())),
            );
        }
    }
    wrr.pick(
        (0..endpoints.len())
            .filter(usable)
            .map(|i| (i, endpoints[i].weight())),
    )
}

#[cfg(test)]
mod tests;
