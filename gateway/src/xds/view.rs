//! What the xDS server publishes, read from the routing snapshot: per upstream, its endpoints
//! with region, zone, weight and the health the gateway itself acts on.
//!
//! A plain value compared with the previous one: when nothing changed, nothing is pushed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::routing::RoutingSnapshot;

/// How an endpoint is published (EDS `health_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Probed and passing, breaker closed.
    Healthy,
    /// Not probed, breaker closed: gRPC clients use it as they would a healthy one.
    Unknown,
    /// Probes fail or the breaker is open: clients stop calling it.
    Unhealthy,
    /// Weight 0 in the registry: finish what is running, send nothing new.
    Draining,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unknown => "unknown",
            Health::Unhealthy => "unhealthy",
            Health::Draining => "draining",
        }
    }

    /// Counts towards its locality's weight and may take calls.
    pub fn serves(self) -> bool {
        matches!(self, Health::Healthy | Health::Unknown)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedEndpoint {
    pub region: Option<String>,
    /// The instance's `zone` label: a second level of locality within a region.
    pub zone: Option<String>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub health: Health,
}

/// Every published upstream by name, each with its endpoints in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishedView {
    pub upstreams: BTreeMap<String, Vec<PublishedEndpoint>>,
}

impl PublishedView {
    /// The upstreams `published` names (every upstream when `None`), as the gateway sees them
    /// now. An endpoint is unhealthy exactly when the gateway itself would not send it a call:
    /// probes fail, or its breaker is open and its open period has not run out. (Once it has, the
    /// endpoint is published again, so direct clients make the trial calls a half-open breaker
    /// waits for when the gateway has no traffic of its own to that upstream.)
    pub fn from_snapshot(snapshot: &RoutingSnapshot, published: Option<&[String]>) -> Self {
        let upstreams = snapshot
            .upstreams()
            .filter(|u| published.is_none_or(|names| names.contains(&u.name)))
            .map(|u| {
                let mut endpoints: Vec<PublishedEndpoint> = u
                    .endpoints
                    .iter()
                    .map(|e| PublishedEndpoint {
                        region: e.region.clone(),
                        zone: e.labels.get("zone").cloned(),
                        addr: e.addr,
                        weight: e.weight,
                        health: if e.weight == 0 {
                            Health::Draining
                        } else if !e.state.is_usable() {
                            Health::Unhealthy
                        } else if u.health.is_some() {
                            Health::Healthy
                        } else {
                            Health::Unknown
                        },
                    })
                    .collect();
                endpoints.sort();
                (u.name.clone(), endpoints)
            })
            .collect();
        Self { upstreams }
    }
}
