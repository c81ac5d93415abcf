//! The raw ADS requests the xDS tests and the xDS bench send.

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// A request for upstream `echo`'s ClusterLoadAssignment from client `node` in `region`,
/// answering the response `nonce` (empty on the first request) with `version`.
pub fn eds_request(node: &str, region: &str, version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: node.to_string(),
            locality: Some(Locality {
                region: region.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        type_url: EDS.to_string(),
        resource_names: vec!["echo".to_string()],
        version_info: version.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}
