//! What the xDS server publishes, read from the routing snapshot: per upstream, its endpoints
//! with region, zone, weight and the health the gateway itself acts on.
//!
//! A plain value compared with the previous one: when nothing changed, nothing is pushed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::breaker::State;
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

/// Every published upstream by name, each with its endpoints in a stable order, or `None`
/// while discovery has not answered for it yet (etcd before its first sync): its
/// ClusterLoadAssignment is then left out of answers, which in state of the world keeps the
/// one a client already has, instead of replacing it with an empty set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishedView {
    pub upstreams: BTreeMap<String, Option<Vec<PublishedEndpoint>>>,
}

impl PublishedView {
    /// The upstreams `published` names (every upstream when `None`), as the gateway sees them
    /// now. An endpoint is unhealthy when probes fail, or when its breaker is open and its open
    /// period has not run out. Once the period is over (and while the breaker is half-open) it
    /// is published as serving again: the gateway's own trial calls or its probes decide from
    /// there, and direct clients skip an endpoint they cannot reach by themselves.
    pub fn from_snapshot(snapshot: &RoutingSnapshot, published: Option<&[String]>) -> Self {
        let upstreams = snapshot
            .upstreams()
            .filter(|u| published.is_none_or(|names| names.contains(&u.name)))
            .map(|u| {
                if u.awaiting_discovery {
                    return (u.name.clone(), None);
                }
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
                        } else if !e.state.healthy()
                            || (e.state.breaker_state() == State::Open && !e.state.is_usable())
                        {
                            Health::Unhealthy
                        } else if u.health.is_some() {
                            Health::Healthy
                        } else {
                            Health::Unknown
                        },
                    })
                    .collect();
                endpoints.sort();
                (u.name.clone(), Some(endpoints))
            })
            .collect();
        Self { upstreams }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Lasting;
    use std::path::Path;

    const CONFIG: &str = r#"
[etcd]
endpoints = ["http://127.0.0.1:2379"]

[[listener]]
name = "l"
listen = "127.0.0.1:1"

[[route]]
listener = "l"
service = "*"
upstream = "fixed"

[[upstream]]
name = "fixed"
endpoints = [{ addr = "127.0.0.1:10", weight = 0, region = "eu" }, { addr = "127.0.0.1:11", region = "us" }]

[upstream.health]
interval = "1s"

[[upstream]]
name = "registered"
discovery = "etcd"
service = "registered"
"#;

    fn snapshot() -> RoutingSnapshot {
        let config = crate::config::parse(CONFIG, Path::new("t.toml"), Path::new(".")).unwrap();
        RoutingSnapshot::build(&config, Default::default(), &Lasting::default(), None).unwrap()
    }

    #[test]
    fn endpoints_carry_the_gateways_health_and_unsynced_upstreams_have_none() {
        let snapshot = snapshot();
        let view = PublishedView::from_snapshot(&snapshot, None);
        assert_eq!(
            view.upstreams["registered"], None,
            "etcd has not answered yet"
        );
        let fixed = view.upstreams["fixed"].as_ref().unwrap();
        assert_eq!(
            fixed.iter().map(|e| e.health).collect::<Vec<_>>(),
            vec![Health::Draining, Health::Healthy]
        );
        // Probes fail: unhealthy, at once.
        let state = &snapshot.upstream("fixed").unwrap().endpoints[1].state;
        state.set_probe_health(false, true);
        let view = PublishedView::from_snapshot(&snapshot, Some(&["fixed".to_string()]));
        assert_eq!(view.upstreams.len(), 1, "only the upstreams listed");
        assert_eq!(
            view.upstreams["fixed"].as_ref().unwrap()[1].health,
            Health::Unhealthy
        );
    }
}
