//! Where endpoints come from. Today: the static list in the config file.

use std::net::SocketAddr;

use crate::config::UpstreamConfig;

/// One endpoint as a discovery source reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub addr: SocketAddr,
    pub weight: u32,
    pub region: Option<String>,
}

/// The endpoints written in the config file for a static upstream.
pub fn static_endpoints(upstream: &UpstreamConfig) -> Vec<EndpointSpec> {
    upstream
        .endpoints
        .iter()
        .map(|e| EndpointSpec {
            addr: e.addr,
            weight: e.weight,
            region: e.region.clone(),
        })
        .collect()
}
