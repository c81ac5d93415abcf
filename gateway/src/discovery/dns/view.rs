//! What DNS discovery knows about each name, as far as routing cares: the last good set of
//! addresses, or why the name has none. Timestamps and counters live in `DnsStatus`, so a
//! re-resolution that finds the same addresses changes nothing here and rebuilds nothing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::super::{EndpointSource, EndpointSpec, Endpoints};
use crate::config::DnsHost;

/// The routing-relevant state of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameAddrs {
    /// The last good answer, sorted; kept through failed and empty resolutions.
    Resolved(Vec<IpAddr>),
    /// Never resolved; the reason of the latest attempt.
    Unresolved(String),
}

/// Every name DNS discovery resolves, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsView {
    names: BTreeMap<String, NameAddrs>,
}

impl DnsView {
    pub fn get(&self, name: &str) -> Option<&NameAddrs> {
        self.names.get(name)
    }

    /// Records the outcome of one resolution; true when routing must be rebuilt. A failure
    /// never replaces addresses that were once resolved.
    pub fn record(&mut self, name: &str, outcome: Result<Vec<IpAddr>, String>) -> bool {
        let next = match (outcome, self.names.get(name)) {
            (Ok(mut addrs), _) if !addrs.is_empty() => {
                addrs.sort();
                addrs.dedup();
                NameAddrs::Resolved(addrs)
            }
            (_, Some(NameAddrs::Resolved(last_good))) => NameAddrs::Resolved(last_good.clone()),
            (Ok(_), _) => NameAddrs::Unresolved("no A or AAAA records".into()),
            (Err(reason), _) => NameAddrs::Unresolved(reason),
        };
        let changed = self.names.get(name) != Some(&next);
        self.names.insert(name.to_string(), next);
        changed
    }

    /// Forgets names no upstream uses any more; true when something was removed.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) -> bool {
        let before = self.names.len();
        self.names.retain(|name, _| keep(name));
        self.names.len() != before
    }
}

/// The endpoints of a dns upstream: each address of each host, with the host's port, weight and
/// region. Two hosts resolving to one address: the first listed wins.
pub fn endpoints(hosts: &[DnsHost], view: Option<&DnsView>) -> Endpoints {
    let mut specs: Vec<EndpointSpec> = Vec::new();
    let mut unresolved = Vec::new();
    for host in hosts {
        match view.and_then(|v| v.get(&host.name)) {
            Some(NameAddrs::Resolved(addrs)) => {
                for ip in addrs {
                    let addr = SocketAddr::new(*ip, host.port);
                    if specs.iter().any(|s| s.addr == addr) {
                        continue;
                    }
                    specs.push(EndpointSpec {
                        addr,
                        weight: host.weight,
                        region: host.region.clone(),
                        version: None,
                        labels: Default::default(),
                        source: EndpointSource::Dns {
                            name: host.name.clone(),
                        },
                    });
                }
            }
            Some(NameAddrs::Unresolved(reason)) => {
                unresolved.push(format!("{} has not resolved: {reason}", host.name))
            }
            None => unresolved.push(format!("{} is waiting for its first resolution", host.name)),
        }
    }
    let empty_reason = specs
        .is_empty()
        .then(|| format!("dns: {}", unresolved.join("; ")));
    Endpoints {
        // No name has ever resolved (a kept last good set is never empty): the set is unknown,
        // whether the names are still pending or the resolver fails.
        awaiting_discovery: specs.is_empty(),
        specs,
        empty_reason,
        refused: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, port: u16) -> DnsHost {
        DnsHost {
            name: name.into(),
            port,
            weight: 100,
            region: Some("eu".into()),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_address_becomes_an_endpoint_with_the_hosts_port() {
        let mut view = DnsView::default();
        view.record(
            "a.test",
            Ok(vec![ip("10.0.0.2"), ip("10.0.0.1"), ip("fd00::1")]),
        );
        let found = endpoints(&[host("a.test", 50051)], Some(&view));
        let addrs: Vec<String> = found.specs.iter().map(|s| s.addr.to_string()).collect();
        assert_eq!(
            addrs,
            ["10.0.0.1:50051", "10.0.0.2:50051", "[fd00::1]:50051"]
        );
        assert!(found
            .specs
            .iter()
            .all(|s| s.region.as_deref() == Some("eu")));
        assert_eq!(
            found.specs[0].source,
            EndpointSource::Dns {
                name: "a.test".into()
            }
        );
        assert_eq!(found.empty_reason, None);
    }

    #[test]
    fn failures_and_empty_answers_keep_the_last_good_set() {
        let mut view = DnsView::default();
        assert!(view.record("a.test", Ok(vec![ip("10.0.0.1")])));
        assert!(!view.record("a.test", Err("timed out".into())));
        assert!(!view.record("a.test", Ok(vec![])));
        assert_eq!(
            view.get("a.test"),
            Some(&NameAddrs::Resolved(vec![ip("10.0.0.1")]))
        );
        assert!(view.record("a.test", Ok(vec![ip("10.0.0.2")])));
        assert!(!view.record("a.test", Ok(vec![ip("10.0.0.2"), ip("10.0.0.2")])));
    }

    #[test]
    fn a_name_that_never_resolved_says_why() {
        let mut view = DnsView::default();
        view.record("a.test", Err("NXDOMAIN".into()));
        let found = endpoints(&[host("a.test", 1), host("b.test", 2)], Some(&view));
        assert!(found.specs.is_empty());
        assert_eq!(
            found.empty_reason.as_deref(),
            Some("dns: a.test has not resolved: NXDOMAIN; b.test is waiting for its first resolution")
        );
        assert!(
            view.record("a.test", Err("timed out".into())),
            "a new reason is shown"
        );
    }

    #[test]
    fn a_resolved_host_serves_while_another_has_not_resolved() {
        let mut view = DnsView::default();
        view.record("a.test", Ok(vec![ip("10.0.0.1")]));
        view.record("b.test", Err("NXDOMAIN".into()));
        let found = endpoints(&[host("a.test", 1), host("b.test", 2)], Some(&view));
        assert_eq!(found.specs.len(), 1);
        assert_eq!(found.empty_reason, None);
    }

    #[test]
    fn one_address_from_two_names_is_one_endpoint() {
        let mut view = DnsView::default();
        view.record("a.test", Ok(vec![ip("10.0.0.1")]));
        view.record("b.test", Ok(vec![ip("10.0.0.1")]));
        let found = endpoints(&[host("a.test", 7), host("b.test", 7)], Some(&view));
        assert_eq!(found.specs.len(), 1);
    }

    #[test]
    fn retain_forgets_names_no_longer_used() {
        let mut view = DnsView::default();
        view.record("a.test", Ok(vec![ip("10.0.0.1")]));
        view.record("b.test", Ok(vec![ip("10.0.0.2")]));
        assert!(view.retain(|n| n == "a.test"));
        assert!(view.get("b.test").is_none());
        assert!(!view.retain(|n| n == "a.test"));
    }
}
