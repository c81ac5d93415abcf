//! Where endpoints come from: the static list in the config file, instances registered in etcd,
//! or the addresses DNS names resolve to. All produce the same `EndpointSpec`s; the routing
//! snapshot does not care which.

pub mod dns;
pub mod etcd;
pub mod instance;
pub mod members;
mod refusals;

pub use refusals::RefusedAddresses;

use std::net::SocketAddr;

use crate::address_policy::{AddressPolicy, AddressRefusal};
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
    /// Discovered addresses the upstream's `AddressPolicy` refused, and why.
    pub refused: Vec<(SocketAddr, AddressRefusal)>,
}

/// The endpoints of `upstream`, given the latest views of discovery. Discovered addresses
/// pass the upstream's `AddressPolicy` first.
pub fn endpoints_for(upstream: &UpstreamConfig, views: Views<'_>) -> Endpoints {
    let mut found = discovered(upstream, views);
    if !matches!(upstream.discovery, Discovery::Static) {
        admit(&upstream.address_policy, &mut found);
    }
    found
}

/// Moves the addresses `policy` refuses from `found.specs` to `found.refused`.
fn admit(policy: &AddressPolicy, found: &mut Endpoints) {
    let before = found.specs.len();
    found.specs.retain(|spec| match policy.check(spec.addr) {
        Ok(()) => true,
        Err(why) => {
            found.refused.push((spec.addr, why));
            false
        }
    });
    if before > 0 && found.specs.is_empty() {
        let mut reasons: Vec<&str> = found.refused.iter().map(|(_, why)| why.as_str()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        found.empty_reason = Some(format!(
            "all {before} discovered addresses were refused ({}); see allowed_networks",
            reasons.join(", ")
        ));
    }
}

fn discovered(upstream: &UpstreamConfig, views: Views<'_>) -> Endpoints {
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
            refused: Vec::new(),
        },
        Discovery::Etcd { service, select } => {
            let Some(view) = views.etcd else {
                return Endpoints {
                    specs: Vec::new(),
                    empty_reason: Some("waiting for the first sync from etcd".into()),
                    awaiting_discovery: true,
                    refused: Vec::new(),
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
                refused: Vec::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_addresses_leave_the_set_and_an_emptied_set_says_why() {
        let mut view = DnsView::default();
        view.record(
            "api.test",
            Ok(vec![
                "169.254.169.254".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
            ]),
        );
        let host = crate::config::DnsHost {
            name: "api.test".into(),
            port: 80,
            weight: 100,
            region: None,
        };
        let mut found = dns::endpoints(std::slice::from_ref(&host), Some(&view));
        admit(&AddressPolicy::default(), &mut found);
        let kept: Vec<String> = found.specs.iter().map(|s| s.addr.to_string()).collect();
        assert_eq!(kept, ["10.0.0.1:80"]);
        assert_eq!(
            found.refused,
            [(
                "169.254.169.254:80".parse().unwrap(),
                AddressRefusal::LinkLocal
            )]
        );
        assert_eq!(found.empty_reason, None);

        let mut found = dns::endpoints(&[host], Some(&view));
        let only_elsewhere = AddressPolicy {
            allowed: Some(vec!["192.168.0.0/16".parse().unwrap()]),
            own: Vec::new(),
        };
        admit(&only_elsewhere, &mut found);
        assert!(found.specs.is_empty());
        assert_eq!(
            found.empty_reason.as_deref(),
            Some("all 2 discovered addresses were refused (not_allowed); see allowed_networks")
        );
    }
}
