//! What `/upstreams` and the status page show: one serialisable picture of the routing state.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::breaker::State;
use crate::discovery::dns::{DnsStatus, Outcome};
use crate::discovery::etcd::DiscoveryStatus;
use crate::discovery::EndpointSource;
use crate::metrics::traffic::TrafficSummary;
use crate::metrics::Metrics;
use crate::routing::RoutingSnapshot;

#[derive(Debug, Serialize)]
pub struct GatewayView {
    pub ready: bool,
    pub not_ready_reason: Option<String>,
    pub discovery: Option<DiscoveryView>,
    pub listeners: Vec<ListenerView>,
    /// Every route with its last minute of traffic.
    pub routes: Vec<RouteView>,
    pub upstreams: Vec<UpstreamView>,
    /// The xDS server's clients connected now (with `[xds]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xds_clients: Option<Vec<crate::xds::XdsClientView>>,
}

#[derive(Debug, Serialize)]
pub struct ListenerView {
    pub name: String,
    pub protocol: &'static str,
    pub open_connections: i64,
    /// Connections refused or closed by the gateway's limits, by reason, since start.
    pub rejected: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub struct RouteView {
    pub listener: String,
    pub route: String,
    pub upstream: String,
    pub traffic: TrafficSummary,
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
    /// Calls in flight on the upstream now (every route to it), and the bound that sheds.
    pub calls_in_flight: u32,
    pub max_in_flight: Option<u32>,
    /// The last minute of calls to this upstream, all routes together (none without metrics).
    pub traffic: Option<TrafficSummary>,
    /// dns upstreams: each name's resolution state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<DnsNameView>>,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Serialize)]
pub struct DnsNameView {
    pub name: String,
    pub port: u16,
    /// "pending", "resolved", "stale" (last good set served while resolution fails) or
    /// "unresolved" (never resolved).
    pub state: &'static str,
    pub addresses: usize,
    pub ttl_seconds: Option<u64>,
    pub last_resolved_unix_ms: Option<u64>,
    pub staleness_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub resolutions: BTreeMap<&'static str, u64>,
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
    Dns { name: String },
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

fn unix_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn dns_names(hosts: &[(String, u16)], status: Option<&DnsStatus>) -> Vec<DnsNameView> {
    let now = std::time::SystemTime::now();
    hosts
        .iter()
        .map(|(name, port)| {
            let s = status.and_then(|s| s.get(name)).unwrap_or_default();
            DnsNameView {
                name: name.clone(),
                port: *port,
                state: s.state(),
                addresses: s.addresses,
                ttl_seconds: s.ttl.map(|t| t.as_secs()),
                last_resolved_unix_ms: s.last_ok.map(unix_ms),
                staleness_seconds: s.staleness(now).map(|d| d.as_secs_f64()),
                last_error: s.last_error.clone(),
                resolutions: Outcome::ALL
                    .iter()
                    .map(|o| (o.as_str(), s.count(*o)))
                    .collect(),
            }
        })
        .collect()
}

/// A dns upstream is as stale as its stalest name; -1 while one has never resolved.
fn dns_staleness(names: &[DnsNameView]) -> Option<f64> {
    names
        .iter()
        .map(|n| n.staleness_seconds.unwrap_or(-1.0))
        .reduce(|a, b| if a < 0.0 || b < 0.0 { -1.0 } else { a.max(b) })
}

pub fn gateway_view(
    snapshot: &RoutingSnapshot,
    discovery: Option<&DiscoveryStatus>,
    dns: Option<&DnsStatus>,
    metrics: Option<&Metrics>,
    xds: Option<&crate::xds::XdsClients>,
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
            let dns = (u.discovery == "dns").then(|| dns_names(&u.dns_hosts, dns));
            UpstreamView {
                name: u.name.clone(),
                discovery: u.discovery,
                probed: u.health.is_some(),
                empty_reason: u.empty_reason.clone(),
                calls_in_flight: u.in_flight(),
                max_in_flight: u.max_in_flight(),
                staleness_seconds: match u.discovery {
                    "etcd" => staleness.map(|s| if s.is_finite() { s } else { -1.0 }),
                    "dns" => dns.as_deref().and_then(dns_staleness),
                    _ => None,
                },
                traffic: metrics.map(|m| m.upstream_traffic(&u.name).summary()),
                dns,
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
                            EndpointSource::Dns { name } => SourceView::Dns { name: name.clone() },
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
                            at_unix_ms: unix_ms(r.at),
                            open_ms: r.transition.open_for.map(|d| d.as_millis() as u64),
                        }),
                        in_flight: e.state.in_flight(),
                    })
                    .collect(),
            }
        })
        .collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    let mut routes: Vec<RouteView> = snapshot
        .route_tables()
        .flat_map(|(listener, table)| {
            table.targets().filter_map(move |t| {
                Some(RouteView {
                    listener: listener.to_string(),
                    route: t.route.to_string(),
                    upstream: t.upstream.name.clone(),
                    traffic: t.metrics.as_ref()?.traffic.summary(),
                })
            })
        })
        .collect();
    routes.sort_by(|a, b| {
        (&a.listener, &a.route, &a.upstream).cmp(&(&b.listener, &b.route, &b.upstream))
    });
    // Routes told apart only by `match` share their counters: one row each.
    routes.dedup_by(|a, b| {
        (&a.listener, &a.route, &a.upstream) == (&b.listener, &b.route, &b.upstream)
    });
    let mut listeners: Vec<ListenerView> = snapshot
        .route_tables()
        .map(|(name, _)| (name, "grpc"))
        .chain(snapshot.tcp_listeners().map(|name| (name, "tcp")))
        .filter_map(|(name, protocol)| {
            let (open, rejected) = metrics?.listener_figures(name);
            Some(ListenerView {
                name: name.to_string(),
                protocol,
                open_connections: open,
                rejected: rejected.into_iter().collect(),
            })
        })
        .collect();
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    GatewayView {
        listeners,
        routes,
        ready: not_ready.is_none(),
        not_ready_reason: not_ready,
        discovery: discovery.map(|d| DiscoveryView {
            connected: d.connected(),
            synced: d.synced_once(),
            staleness_seconds: staleness.filter(|s| s.is_finite()),
            last_error: d.last_error(),
        }),
        upstreams,
        xds_clients: xds.map(|x| x.list()),
    }
}
