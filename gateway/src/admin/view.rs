//! What `/upstreams` and the status page show: one serialisable picture of the routing state.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::breaker::State;
use crate::discovery::etcd::DiscoveryStatus;
use crate::discovery::EndpointSource;
use crate::routing::RoutingSnapshot;

#[derive(Debug, Serialize)]
pub struct GatewayView {
    pub ready: bool,
    pub not_ready_reason: Option<String>,
    pub discovery: Option<DiscoveryView>,
    pub upstreams: Vec<UpstreamView>,
}

#[derive(Debug, Serialize)]
pub struct DiscoveryView {
    pub connected: bool,
    pub synced: bool,
    pub staleness_seconds: Option<f64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct UpstreamView {
    pub name: String,
    pub discovery: &'static str,
    pub probed: bool,
    pub empty_reason: Option<String>,
    pub staleness_seconds: Option<f64>,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Serialize)]
pub struct EndpointView {
    pub addr: String,
    pub region: Option<String>,
    pub weight: u32,
    pub version: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub source: SourceView,
    pub health: &'static str,
    #[serde(serialize_with = "serialize_state")]
    pub breaker_state: State,
    pub last_transition: Option<TransitionView>,
    pub in_flight: u64,
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceView {
    Static,
    Etcd { key: String, revision: i64 },
}

#[derive(Debug, Serialize)]
pub struct TransitionView {
    pub from: &'static str,
    pub to: &'static str,
    pub reason: &'static str,
    pub at_unix_ms: u64,
    pub open_ms: Option<u64>,
}

fn serialize_state<S: serde::Serializer>(state: &State, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.as_str())
}

impl EndpointView {
    /// One word for dashboards: usable, open, half_open, unhealthy or drained.
    pub fn summary_state(&self) -> &'static str {
        if self.weight == 0 {
            "drained"
        } else if self.health == "unhealthy" {
            "unhealthy"
        } else {
            match self.breaker_state {
                State::Closed => "usable",
                State::Open => "open",
                State::HalfOpen => "half_open",
            }
        }
    }
}

pub fn gateway_view(
    snapshot: &RoutingSnapshot,
    discovery: Option<&DiscoveryStatus>,
    not_ready: Option<String>,
) -> GatewayView {
    let staleness = discovery.map(|d| {
        let s = d.staleness();
        if s == std::time::Duration::MAX {
            f64::INFINITY
        } else {
            s.as_secs_f64()
        }
    });
    let mut upstreams: Vec<UpstreamView> = snapshot
        .upstreams()
        .map(|u| {
            let is_etcd = u.from_etcd;
            UpstreamView {
                name: u.name.clone(),
                discovery: if is_etcd { "etcd" } else { "static" },
                probed: u.health.is_some(),
                empty_reason: u.empty_reason.clone(),
                staleness_seconds: if is_etcd {
                    staleness.map(|s| if s.is_finite() { s } else { -1.0 })
                } else {
                    None
                },
                endpoints: u
                    .endpoints
                    .iter()
                    .map(|e| EndpointView {
                        addr: e.addr.to_string(),
                        region: e.region.clone(),
                        weight: e.weight,
                        version: e.version.clone(),
                        labels: e.labels.clone(),
                        source: match &e.source {
                            EndpointSource::Static => SourceView::Static,
                            EndpointSource::Etcd { key, mod_revision } => SourceView::Etcd {
                                key: key.clone(),
                                revision: *mod_revision,
                            },
                        },
                        health: match (u.health.is_some(), e.state.healthy()) {
                            (false, _) => "not_probed",
                            (true, true) => "healthy",
                            (true, false) => "unhealthy",
                        },
                        breaker_state: e.state.breaker_state(),
                        last_transition: e.state.last_transition().map(|r| TransitionView {
                            from: r.transition.from.as_str(),
                            to: r.transition.to.as_str(),
                            reason: r.transition.reason.as_str(),
                            at_unix_ms: r
                                .at
                                .duration_since(UNIX_EPOCH)
                                .map(|d| d.as_millis() as u64)
                                .unwrap_or(0),
                            open_ms: r.transition.open_for.map(|d| d.as_millis() as u64),
                        }),
                        in_flight: e.state.in_flight(),
                    })
                    .collect(),
            }
        })
        .collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    GatewayView {
        ready: not_ready.is_none(),
        not_ready_reason: not_ready,
        discovery: discovery.map(|d| DiscoveryView {
            connected: d.connected(),
            synced: d.synced_once(),
            staleness_seconds: staleness.filter(|s| s.is_finite()),
            last_error: d.last_error(),
        }),
        upstreams,
    }
}
