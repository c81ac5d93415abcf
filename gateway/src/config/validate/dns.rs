//! Validation of DNS discovery: the `hosts` of `discovery = "dns"` upstreams and `[dns]`.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::diagnostics::Diagnostics;
use crate::config::file::{DnsSection, UpstreamSection};
use crate::config::model::{
    Discovery, DnsConfig, DnsHost, DEFAULT_DNS_REFRESH, DEFAULT_DNS_TIMEOUT, DEFAULT_WEIGHT,
    MAX_WEIGHT, MIN_DNS_REFRESH,
};

const MAX_DNS_REFRESH: Duration = Duration::from_secs(3600);
const MAX_DNS_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn validate_dns_upstream(
    section: &UpstreamSection,
    path: &str,
    diag: &mut Diagnostics,
) -> Discovery {
    if section.hosts.is_empty() {
        diag.at(
            Some(section.name.span()),
            format!("{path}.hosts"),
            "a dns upstream needs at least one entry in `hosts`",
        );
    }
    let mut seen = HashSet::new();
    let mut hosts = Vec::new();
    for (j, host) in section.hosts.iter().enumerate() {
        let hpath = format!("{path}.hosts[{j}]");
        let h = host.get_ref();
        let name = match host_name(h.name.get_ref()) {
            Ok(name) => name,
            Err(why) => {
                diag.at(Some(h.name.span()), format!("{hpath}.name"), why);
                continue;
            }
        };
        let port = match u16::try_from(*h.port.get_ref()) {
            Ok(port) if port > 0 => port,
            _ => {
                diag.at(
                    Some(h.port.span()),
                    format!("{hpath}.port"),
                    format!("must be between 1 and 65535, got {}", h.port.get_ref()),
                );
                continue;
            }
        };
        if !seen.insert((name.trim_end_matches('.').to_string(), port)) {
            diag.at(
                Some(h.name.span()),
                format!("{hpath}.name"),
                format!("{name}:{port} is listed twice"),
            );
        }
        let weight = match &h.weight {
            None => DEFAULT_WEIGHT,
            Some(w) if (0..=MAX_WEIGHT).contains(w.get_ref()) => *w.get_ref() as u32,
            Some(w) => {
                diag.at(
                    Some(w.span()),
                    format!("{hpath}.weight"),
                    format!(
                        "weight must be between 0 and {MAX_WEIGHT}, got {}",
                        w.get_ref()
                    ),
                );
                continue;
            }
        };
        hosts.push(DnsHost {
            name,
            port,
            weight,
            region: h.region.clone().filter(|r| !r.is_empty()),
        });
    }
    let refresh = match &section.refresh {
        None => DEFAULT_DNS_REFRESH,
        Some(r) if (MIN_DNS_REFRESH..=MAX_DNS_REFRESH).contains(&r.get_ref().0) => r.get_ref().0,
        Some(r) => {
            diag.at(
                Some(r.span()),
                format!("{path}.refresh"),
                format!("must be between 1s and 1h, got {:?}", r.get_ref().0),
            );
            DEFAULT_DNS_REFRESH
        }
    };
    Discovery::Dns { hosts, refresh }
}

pub(super) fn validate_dns_section(
    section: Option<&DnsSection>,
    diag: &mut Diagnostics,
) -> DnsConfig {
    let Some(section) = section else {
        return DnsConfig::default();
    };
    let mut servers = Vec::new();
    for (i, server) in section.servers.iter().flatten().enumerate() {
        let text = server.get_ref();
        let parsed = text
            .parse::<SocketAddr>()
            .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
        match parsed {
            Ok(addr) if addr.port() != 0 => servers.push(addr),
            _ => diag.at(
                Some(server.span()),
                format!("dns.servers[{i}]"),
                format!("{text:?} is not an IP address or IP:port"),
            ),
        }
    }
    if section.servers.as_ref().is_some_and(|s| s.is_empty()) {
        diag.at(
            None,
            "dns.servers",
            "an empty list names no server; leave `servers` out to use /etc/resolv.conf",
        );
    }
    let timeout = match &section.timeout {
        None => DEFAULT_DNS_TIMEOUT,
        Some(t) if !t.get_ref().0.is_zero() && t.get_ref().0 <= MAX_DNS_TIMEOUT => t.get_ref().0,
        Some(t) => {
            diag.at(
                Some(t.span()),
                "dns.timeout",
                format!(
                    "must be greater than 0 and at most 1m, got {:?}",
                    t.get_ref().0
                ),
            );
            DEFAULT_DNS_TIMEOUT
        }
    };
    DnsConfig { servers, timeout }
}

/// A host name as DNS accepts it (RFC 1123 labels; '_' allowed as resolvers do), lower-cased.
/// An IP address is refused: it never changes, so it belongs in a static upstream.
pub(super) fn host_name(text: &str) -> Result<String, String> {
    if text.parse::<IpAddr>().is_ok() || text.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{text:?} is an IP address; list it in a static upstream's `endpoints`"
        ));
    }
    let bare = text.strip_suffix('.').unwrap_or(text);
    if bare.is_empty() || bare.len() > 253 {
        return Err(format!(
            "{text:?} must be a host name of 1 to 253 characters"
        ));
    }
    for label in bare.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{text:?} is not a host name: each dot-separated label must be 1-63 letters, \
                 digits, '-' or '_', not starting or ending with '-'"
            ));
        }
    }
    if bare
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!(
            "{text:?} is not a host name (its last label is all digits)"
        ));
    }
    Ok(text.to_ascii_lowercase())
}
