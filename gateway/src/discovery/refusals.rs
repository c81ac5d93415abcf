//! Discovered addresses an upstream refused (`AddressPolicy`): logged and counted once each
//! time one appears, not at every snapshot build that still sees it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::address_policy::AddressRefusal;
use crate::metrics::Metrics;

#[derive(Default)]
pub struct RefusedAddresses {
    /// Per upstream: the addresses refused in its latest build.
    current: Mutex<HashMap<String, HashSet<SocketAddr>>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for RefusedAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusedAddresses").finish_non_exhaustive()
    }
}

impl RefusedAddresses {
    pub fn with_metrics(metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            current: Mutex::default(),
            metrics,
        }
    }

    /// The addresses `upstream` refuses now; the ones not refused in its previous build are
    /// logged and counted. Returns how many were new.
    pub fn note(&self, upstream: &str, refused: &[(SocketAddr, AddressRefusal)]) -> usize {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if refused.is_empty() && !current.contains_key(upstream) {
            return 0;
        }
        let before = current.remove(upstream).unwrap_or_default();
        let mut new = 0;
        for (addr, why) in refused {
            if before.contains(addr) {
                continue;
            }
            new += 1;
            warn!(upstream, addr = %addr, reason = why.as_str(),
                  "discovered address refused: not routed (see allowed_networks)");
            if let Some(m) = &self.metrics {
                m.discovery_refused(upstream, why.as_str()).inc();
            }
        }
        if !refused.is_empty() {
            current.insert(
                upstream.to_string(),
                refused.iter().map(|(addr, _)| *addr).collect(),
            );
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refused_address_is_told_once_while_it_stays() {
        let log = RefusedAddresses::default();
        let a: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let b: SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert_eq!(log.note("u", &[(a, AddressRefusal::LinkLocal)]), 1);
        assert_eq!(log.note("u", &[(a, AddressRefusal::LinkLocal)]), 0);
        assert_eq!(
            log.note(
                "u",
                &[
                    (a, AddressRefusal::LinkLocal),
                    (b, AddressRefusal::Unspecified)
                ]
            ),
            1
        );
        assert_eq!(
            log.note("v", &[(a, AddressRefusal::LinkLocal)]),
            1,
            "per upstream"
        );
        assert_eq!(log.note("u", &[]), 0);
        assert_eq!(
            log.note("u", &[(a, AddressRefusal::LinkLocal)]),
            1,
            "gone, then back: told again"
        );
    }
}
