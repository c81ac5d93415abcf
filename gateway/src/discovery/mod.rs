//! Where endpoints come from: the static list in the config file, instances registered in etcd,
//! or the addresses DNS names resolve to. All produce the same `EndpointSpec`s; the routing
//! snapshot does not care which.

pub mod dns;
pub mod etcd;
pub mod instance;
pub mod members;

use std::net::SocketAddr;

use crate::config::{Discovery, UpstreamConfig};
use dns::DnsView;
use etcd::EtcdView;

/// The latest view of each discovery source (`None` before its first result).
#[derive(Debug, Clone, Copy, Default)]
pub struct Views<'a> {
    pub etcd: Option<&'a EtcdView>,
    pub dns: Option<&'a DnsView>,
    /// Gateways registered under `[etcd] members_prefix`, this one included (`None` before
    /// the first count): cluster-wide rate limits divide by it.
    pub gateways: Option<u32>,
}

/// One endpoint as a discovery source reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub addr: SocketAddr,
    pub weight: u32,
    pub region: Option<String>,
    pub version: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub source: EndpointSource,
}

/// Where an endpoint came from, for operators reading `/upstreams` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSource {
    Static,
    Etcd {
        key: String,
        mod_revision: i64,
    },
    /// One of the addresses `name` resolved to.
    Dns {
        name: String,
    },
}

/// An upstream's endpoints right now, or why it has none.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub specs: Vec<EndpointSpec>,
    /// Said to callers when `specs` is empty.
    pub empty_reason: Option<String>,
    /// Discovery has not answered yet (etcd before its first sync, DNS before any of the names
    /// has resolved): the set is unknown, not empty. The xDS server publishes nothing for it, so
    /// clients keep the endpoints they had.
    pub awaiting_discovery: bool,
}

/// The endpoints of `upstream`, given the latest views of discovery.
pub fn endpoints_for(upstream: &UpstreamConfig, views: Views<'_>) -> Endpoints {
    match &upstream.discovery {
        Discovery::Dns { hosts, .. } => dns::endpoints(hosts, views.dns),
        Discovery::Static => Endpoints {
            specs: upstream
                .endpoints
                .iter()
                .map(|e| EndpointSpec {
                    addr: e.addr,
                    weight: e.weight,
                    region: e.region.clone(),
                    version: None,
                    labels: Default::default(),
                    source: EndpointSource::Static,
                })
                .collect(),
            empty_reason: None,
            awaiting_discovery: false,
        },
        Discovery::Etcd { service, select } => {
            let Some(view) = views.etcd else {
                return Endpoints {
                    specs: Vec::new(),
                    empty_reason: Some("waiting for the first sync from etcd".into()),
                    awaiting_discovery: true,
                };
            };
            let mut specs: Vec<EndpointSpec> = Vec::new();
            let mut registered = 0;
            for (key, entry) in view.service(service) {
                registered += 1;
                let instance = &entry.instance;
                if !instance.matches(select) {
                    continue;
                }
                // Two keys with one address would double its share; the first key wins.
                if specs.iter().any(|s| s.addr == instance.addr) {
                    continue;
                }
                specs.push(EndpointSpec {
                    addr: instance.addr,
                    weight: instance.weight,
                    region: instance.region().map(str::to_string),
                    version: instance.version.clone(),
                    labels: instance.labels.clone(),
                    source: EndpointSource::Etcd {
                        key: key.to_string(),
                        mod_revision: entry.mod_revision,
                    },
                });
            }
            let empty_reason = specs.is_empty().then(|| {
                if registered == 0 {
                    format!("no instance registered under {}{service}/", view.prefix)
                } else {
                    format!(
                        "none of the {registered} instances under {}{service}/ matches `select`",
                        view.prefix
                    )
                }
            });
            Endpoints {
                specs,
                empty_reason,
                awaiting_discovery: false,
            }
        }
    }
}
