//! The four xDS resources a proxyless gRPC client needs for target `xds:///NAME` (gRFC A27),
//! built from one published upstream:
//!
//! - Listener `NAME`: an API listener whose HttpConnectionManager takes its routes over RDS
//!   (through ADS) and ends in the router filter;
//! - RouteConfiguration `NAME`: every call to Cluster `NAME`;
//! - Cluster `NAME`: type EDS through ADS, round robin;
//! - ClusterLoadAssignment `NAME`: the endpoints, one locality per (region, zone), the client's
//!   own region at priority 0 and every other region at priority 1.
//!
//! Pure functions of the published view and the client's region, so each is unit-tested by
//! decoding what it built.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::{PortSpecifier, Protocol};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality,
    SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use envoy_types::util::pack_any;
use prost::Name;

use super::view::{Health, PublishedEndpoint};

/// The resource types served, in the order a client asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Listener,
    Route,
    Cluster,
    Endpoint,
}

impl ResourceType {
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Cluster,
        ResourceType::Endpoint,
    ];

    pub fn type_url(self) -> String {
        match self {
            ResourceType::Listener => Listener::type_url(),
            ResourceType::Route => RouteConfiguration::type_url(),
            ResourceType::Cluster => Cluster::type_url(),
            ResourceType::Endpoint => ClusterLoadAssignment::type_url(),
        }
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// The metric label: lds, rds, cds or eds.
    pub fn label(self) -> &'static str {
        match self {
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
        }
    }

    /// In state of the world, a Listener or Cluster missing from a response has been removed;
    /// a RouteConfiguration or ClusterLoadAssignment missing has not (A27).
    pub fn absence_means_removal(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster)
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub fn listener(name: &str) -> Any {
    let manager = HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.to_string(),
        })),
        // gRPC requires the router as the last HTTP filter.
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_string(),
            config_type: Some(ConfigType::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    pack_any(Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(manager)),
        }),
        ..Default::default()
    })
}

pub fn route_configuration(name: &str) -> Any {
    pack_any(RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(name.to_string())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

pub fn cluster(name: &str) -> Any {
    pack_any(Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_string(),
        }),
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    })
}

fn health_status(health: Health) -> HealthStatus {
    match health {
        Health::Healthy => HealthStatus::Healthy,
        Health::Unknown => HealthStatus::Unknown,
        Health::Unhealthy => HealthStatus::Unhealthy,
        Health::Draining => HealthStatus::Draining,
    }
}

/// The priority of `region` for a client in `client_region`: its own region first.
fn priority(region: Option<&str>, client_region: Option<&str>, local_exists: bool) -> u32 {
    match client_region {
        Some(own) if local_exists && region != Some(own) => 1,
        _ => 0,
    }
}

/// The endpoints of upstream `name` as a client in `client_region` should use them. Without a
/// region, or when no endpoint is in the client's region, every locality is priority 0
/// (priorities must start at 0 and have no gaps).
pub fn load_assignment(
    name: &str,
    endpoints: &[PublishedEndpoint],
    client_region: Option<&str>,
) -> Any {
    let local_exists =
        client_region.is_some_and(|own| endpoints.iter().any(|e| e.region.as_deref() == Some(own)));
    let mut localities: BTreeMap<(Option<&str>, Option<&str>), Vec<&PublishedEndpoint>> =
        BTreeMap::new();
    for e in endpoints {
        localities
            .entry((e.region.as_deref(), e.zone.as_deref()))
            .or_default()
            .push(e);
    }
    let endpoints = localities
        .into_iter()
        .map(|((region, zone), members)| {
            let serving_weight: u32 = members
                .iter()
                .filter(|e| e.health.serves())
                .map(|e| e.weight)
                .sum();
            LocalityLbEndpoints {
                locality: Some(Locality {
                    region: region.unwrap_or_default().to_string(),
                    zone: zone.unwrap_or_default().to_string(),
                    sub_zone: String::new(),
                }),
                lb_endpoints: members.iter().map(|e| lb_endpoint(e)).collect(),
                // gRPC ignores a locality without a weight, and 0 is not a valid one: a
                // locality with nothing to serve keeps weight 1, and its endpoints' health
                // keeps calls away from it.
                load_balancing_weight: Some(UInt32Value {
                    value: serving_weight.max(1),
                }),
                priority: priority(region, client_region, local_exists),
                ..Default::default()
            }
        })
        .collect();
    pack_any(ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints,
        ..Default::default()
    })
}

fn lb_endpoint(e: &PublishedEndpoint) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(AddressKind::SocketAddress(SocketAddress {
                    protocol: Protocol::Tcp as i32,
                    address: e.addr.ip().to_string(),
                    port_specifier: Some(PortSpecifier::PortValue(u32::from(e.addr.port()))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        health_status: health_status(e.health) as i32,
        // Weights are 1 or more; a drained endpoint (weight 0) is DRAINING instead.
        load_balancing_weight: (e.weight > 0).then_some(UInt32Value { value: e.weight }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn ep(region: &str, port: u16, weight: u32, health: Health) -> PublishedEndpoint {
        PublishedEndpoint {
            region: Some(region.to_string()),
            zone: None,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            weight,
            health,
        }
    }

    fn decode(any: &Any) -> ClusterLoadAssignment {
        assert_eq!(any.type_url, ClusterLoadAssignment::type_url());
        ClusterLoadAssignment::decode(any.value.as_slice()).unwrap()
    }

    /// (region, priority, locality weight, [(port, health, weight)])
    type Row = (String, u32, u32, Vec<(u32, i32, Option<u32>)>);

    fn rows(cla: &ClusterLoadAssignment) -> Vec<Row> {
        cla.endpoints
            .iter()
            .map(|l| {
                (
                    l.locality.as_ref().unwrap().region.clone(),
                    l.priority,
                    l.load_balancing_weight.as_ref().unwrap().value,
                    l.lb_endpoints
                        .iter()
                        .map(|e| {
                            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                                panic!("endpoint")
                            };
                            let Some(AddressKind::SocketAddress(sa)) =
                                &ep.address.as_ref().unwrap().address
                            else {
                                panic!("socket address")
                            };
                            let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
                                panic!("port")
                            };
                            assert_eq!(sa.address, "127.0.0.1");
                            (
                                port,
                                e.health_status,
                                e.load_balancing_weight.as_ref().map(|w| w.value),
                            )
                        })
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn own_region_first_other_regions_second() {
        let endpoints = [
            ep("eu-west", 1, 80, Health::Healthy),
            ep("eu-west", 2, 20, Health::Healthy),
            ep("us-east", 3, 100, Health::Unknown),
        ];
        let eu = rows(&decode(&load_assignment(
            "echo",
            &endpoints,
            Some("eu-west"),
        )));
        assert_eq!(
            eu,
            vec![
                (
                    "eu-west".into(),
                    0,
                    100,
                    vec![
                        (1, HealthStatus::Healthy as i32, Some(80)),
                        (2, HealthStatus::Healthy as i32, Some(20))
                    ]
                ),
                (
                    "us-east".into(),
                    1,
                    100,
                    vec![(3, HealthStatus::Unknown as i32, Some(100))]
                ),
            ]
        );
        let us = rows(&decode(&load_assignment(
            "echo",
            &endpoints,
            Some("us-east"),
        )));
        assert_eq!((us[0].1, us[1].1), (1, 0), "the client's own region leads");
    }

    #[test]
    fn no_local_endpoints_or_no_region_puts_everything_at_priority_zero() {
        let endpoints = [
            ep("eu-west", 1, 30, Health::Healthy),
            ep("us-east", 2, 10, Health::Healthy),
        ];
        for region in [Some("ap-south"), None] {
            let got = rows(&decode(&load_assignment("echo", &endpoints, region)));
            assert!(got.iter().all(|r| r.1 == 0), "{region:?}: {got:?}");
            assert_eq!(
                got.iter().map(|r| r.2).collect::<Vec<_>>(),
                vec![30, 10],
                "locality weight is the sum of its endpoints' weights"
            );
        }
    }

    #[test]
    fn unhealthy_and_drained_endpoints_are_marked_and_leave_the_locality_weight() {
        let endpoints = [
            ep("eu-west", 1, 50, Health::Unhealthy),
            ep("eu-west", 2, 0, Health::Draining),
            ep("eu-west", 3, 40, Health::Healthy),
        ];
        let got = rows(&decode(&load_assignment(
            "echo",
            &endpoints,
            Some("eu-west"),
        )));
        assert_eq!(
            got,
            vec![(
                "eu-west".into(),
                0,
                40,
                vec![
                    (1, HealthStatus::Unhealthy as i32, Some(50)),
                    (2, HealthStatus::Draining as i32, None),
                    (3, HealthStatus::Healthy as i32, Some(40)),
                ]
            )]
        );
        // A locality with nothing serving keeps a valid weight; health keeps calls away.
        let down = [ep("eu-west", 1, 50, Health::Unhealthy)];
        assert_eq!(
            rows(&decode(&load_assignment("echo", &down, Some("eu-west"))))[0].2,
            1
        );
    }

    #[test]
    fn zones_are_localities_of_their_region() {
        let mut a = ep("eu-west", 1, 10, Health::Healthy);
        a.zone = Some("a".into());
        let mut b = ep("eu-west", 2, 10, Health::Healthy);
        b.zone = Some("b".into());
        let cla = decode(&load_assignment("echo", &[a, b], Some("eu-west")));
        let zones: Vec<_> = cla
            .endpoints
            .iter()
            .map(|l| {
                let loc = l.locality.as_ref().unwrap();
                (loc.region.as_str(), loc.zone.as_str(), l.priority)
            })
            .collect();
        assert_eq!(zones, vec![("eu-west", "a", 0), ("eu-west", "b", 0)]);
    }

    #[test]
    fn listener_routes_over_rds_to_the_router_and_the_cluster_over_eds() {
        let l = Listener::decode(listener("echo").value.as_slice()).unwrap();
        assert_eq!(l.name, "echo");
        let api = l.api_listener.unwrap().api_listener.unwrap();
        assert_eq!(api.type_url, HttpConnectionManager::type_url());
        let hcm = HttpConnectionManager::decode(api.value.as_slice()).unwrap();
        let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
            panic!("rds")
        };
        assert_eq!(rds.route_config_name, "echo");
        assert!(matches!(
            rds.config_source.unwrap().config_source_specifier,
            Some(ConfigSourceSpecifier::Ads(_))
        ));
        let Some(ConfigType::TypedConfig(router)) = &hcm.http_filters.last().unwrap().config_type
        else {
            panic!("router")
        };
        assert_eq!(router.type_url, Router::type_url());

        let rc = RouteConfiguration::decode(route_configuration("echo").value.as_slice()).unwrap();
        let action = rc.virtual_hosts[0].routes[0].action.clone().unwrap();
        let Action::Route(action) = action else {
            panic!("route action")
        };
        assert_eq!(
            action.cluster_specifier,
            Some(ClusterSpecifier::Cluster("echo".into()))
        );

        let c = Cluster::decode(cluster("echo").value.as_slice()).unwrap();
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        );
        let eds = c.eds_cluster_config.unwrap();
        assert_eq!(eds.service_name, "echo");
        assert!(matches!(
            eds.eds_config.unwrap().config_source_specifier,
            Some(ConfigSourceSpecifier::Ads(_))
        ));
    }

    #[test]
    fn type_urls_round_trip() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(&t.type_url()), Some(t));
        }
        assert_eq!(
            ResourceType::Endpoint.type_url(),
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
        );
        assert_eq!(ResourceType::from_type_url("type.googleapis.com/x.Y"), None);
    }
}
