//! `[[upstream]]`: discovery (static, etcd, DNS), TLS, health probes, the breaker and the
//! load-shaping keys.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use super::{
    check_cert_and_key, check_section_name, duration_up_to, int_in, resolve, span, tls_files,
    ONE_HOUR,
};
use crate::config::diagnostics::Diagnostics;
use crate::config::file::UpstreamSection;
use crate::config::model::*;

pub(super) fn validate_upstreams(
    sections: &[UpstreamSection],
    base_dir: &Path,
    diag: &mut Diagnostics,
) -> Vec<UpstreamConfig> {
    let mut names = HashSet::new();
    let mut upstreams = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let path = format!("upstream[{i}]");
        let name = section.name.get_ref();
        check_section_name(&section.name, &mut names, &path, "upstream", diag);
        let discovery = match section.discovery.as_ref().map(|d| d.get_ref().as_str()) {
            None | Some("static") => {
                if section.endpoints.is_empty() {
                    diag.at(
                        span(&section.name),
                        format!("{path}.endpoints"),
                        "a static upstream needs at least one endpoint",
                    );
                }
                keys_of_other_discoveries(section, "static", &path, diag);
                Discovery::Static
            }
            Some("etcd") => {
                keys_of_other_discoveries(section, "etcd", &path, diag);
                validate_etcd_upstream(section, &path, diag)
            }
            Some("dns") => {
                keys_of_other_discoveries(section, "dns", &path, diag);
                super::dns::validate_dns_upstream(section, &path, diag)
            }
            Some(other) => {
                diag.at(
                    section.discovery.as_ref().map(|d| d.span()),
                    format!("{path}.discovery"),
                    format!("unknown discovery {other:?}; use \"static\", \"etcd\" or \"dns\""),
                );
                Discovery::Static
            }
        };
        let mut seen = HashSet::new();
        let mut endpoints = Vec::new();
        for (j, endpoint) in section.endpoints.iter().enumerate() {
            let epath = format!("{path}.endpoints[{j}]");
            let e = endpoint.get_ref();
            let addr = match e.addr.get_ref().parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    diag.at(
                        span(&e.addr),
                        format!("{epath}.addr"),
                        format!("{:?} is not an IP:port address", e.addr.get_ref()),
                    );
                    continue;
                }
            };
            if !seen.insert(addr) {
                diag.at(
                    span(&e.addr),
                    format!("{epath}.addr"),
                    format!("endpoint {addr} is listed twice"),
                );
            }
            let weight = match &e.weight {
                None => DEFAULT_WEIGHT,
                Some(w) if (0..=MAX_WEIGHT).contains(w.get_ref()) => *w.get_ref() as u32,
                Some(w) => {
                    diag.at(
                        span(w),
                        format!("{epath}.weight"),
                        format!(
                            "weight must be between 0 and {MAX_WEIGHT}, got {}",
                            w.get_ref()
                        ),
                    );
                    continue;
                }
            };
            endpoints.push(StaticEndpoint {
                addr,
                weight,
                region: e.region.clone().filter(|r| !r.is_empty()),
            });
        }
        let max_attempts = match &section.max_attempts {
            None => DEFAULT_MAX_ATTEMPTS,
            Some(n) if (1..=10).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => {
                diag.at(
                    span(n),
                    format!("{path}.max_attempts"),
                    format!("must be between 1 and 10, got {}", n.get_ref()),
                );
                DEFAULT_MAX_ATTEMPTS
            }
        };
        let (max_in_flight, region_overprovision) =
            super::policy::validate_load_shaping(section, &path, diag);
        let retry_budget = super::policy::validate_retry_budget(section, &path, diag);
        let connect_timeout = duration_up_to(
            &section.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
            ONE_HOUR,
            format!("{path}.connect_timeout"),
            diag,
        );
        if connect_timeout.is_zero() {
            diag.at(
                span(&section.name),
                format!("{path}.connect_timeout"),
                "must be greater than 0",
            );
        }
        let tls = section.tls.as_ref().map(|tls| {
            let ca = tls.ca.as_ref().map(|ca| {
                let resolved = resolve(base_dir, ca.get_ref());
                if let Err(e) = tls_files::check_certificates(&resolved) {
                    diag.at(span(ca), format!("{path}.tls.ca"), e);
                }
                resolved
            });
            // Empty: each endpoint is verified against its own IP address.
            let server_name = tls.server_name.clone().unwrap_or_default();
            let identity = match (&tls.cert, &tls.key) {
                (None, None) => None,
                (Some(cert), Some(key)) => Some(check_cert_and_key(
                    base_dir,
                    cert,
                    key,
                    &format!("{path}.tls"),
                    diag,
                )),
                (Some(only), None) | (None, Some(only)) => {
                    diag.at(
                        span(only),
                        format!("{path}.tls"),
                        "cert and key go together",
                    );
                    None
                }
            };
            UpstreamTls {
                ca,
                server_name,
                identity,
            }
        });
        let health = section
            .health
            .as_ref()
            .map(|h| validate_health(h, &path, diag));
        let breaker = section
            .breaker
            .as_ref()
            .map(|b| validate_breaker(b, &path, diag))
            .unwrap_or_default();
        let address_policy = crate::address_policy::AddressPolicy {
            allowed: allowed_networks(section, &path, diag),
            // Filled in once the admin and xDS addresses are known (`own_addresses`).
            own: Vec::new(),
        };
        upstreams.push(UpstreamConfig {
            address_policy,
            name: name.clone(),
            discovery,
            endpoints,
            connect_timeout,
            max_attempts,
            max_in_flight,
            region_overprovision,
            retry_budget,
            tls,
            health,
            breaker,
        });
    }
    upstreams
}

pub(super) fn validate_health(
    h: &crate::config::file::HealthSection,
    path: &str,
    diag: &mut Diagnostics,
) -> HealthSettings {
    let d = HealthSettings::default();
    let settings = HealthSettings {
        interval: duration_up_to(
            &h.interval,
            d.interval,
            ONE_HOUR,
            format!("{path}.health.interval"),
            diag,
        ),
        timeout: duration_up_to(
            &h.timeout,
            d.timeout,
            ONE_HOUR,
            format!("{path}.health.timeout"),
            diag,
        ),
        service: h.service.clone().unwrap_or_default(),
        unhealthy_after: int_in(
            &h.unhealthy_after,
            1..=100,
            d.unhealthy_after,
            format!("{path}.health.unhealthy_after"),
            diag,
        ),
        healthy_after: int_in(
            &h.healthy_after,
            1..=100,
            d.healthy_after,
            format!("{path}.health.healthy_after"),
            diag,
        ),
    };
    if settings.interval < std::time::Duration::from_millis(100) {
        diag.at(
            None,
            format!("{path}.health.interval"),
            "must be at least 100ms",
        );
    }
    if settings.timeout.is_zero() || settings.timeout > settings.interval {
        diag.at(
            None,
            format!("{path}.health.timeout"),
            "must be greater than 0 and at most the interval",
        );
    }
    settings
}

pub(super) fn validate_breaker(
    b: &crate::config::file::BreakerSection,
    path: &str,
    diag: &mut Diagnostics,
) -> crate::breaker::BreakerSettings {
    use crate::breaker::{Backoff, BreakerSettings};
    let d = BreakerSettings::default();
    let key = |k: &str| format!("{path}.breaker.{k}");
    let failure_rate = match &b.failure_rate {
        None => d.failure_rate,
        Some(r) if *r.get_ref() > 0.0 && *r.get_ref() <= 1.0 => *r.get_ref(),
        Some(r) => {
            diag.at(
                span(r),
                key("failure_rate"),
                format!("must be in (0, 1], got {}", r.get_ref()),
            );
            d.failure_rate
        }
    };
    let backoff = match b.backoff.as_ref().map(|v| v.get_ref().as_str()) {
        None => d.backoff,
        Some("fixed") => Backoff::Fixed,
        Some("exponential") => Backoff::Exponential,
        Some("jittered") => Backoff::Jittered,
        Some(other) => {
            diag.at(
                b.backoff.as_ref().map(|v| v.span()),
                key("backoff"),
                format!("unknown backoff {other:?}; use fixed, exponential or jittered"),
            );
            d.backoff
        }
    };
    let failure_codes = match &b.failure_codes {
        None => d.failure_codes.clone(),
        Some(codes) => codes
            .iter()
            .filter_map(|c| match c.get_ref().parse::<crate::grpc::Code>() {
                Ok(code) if code != crate::grpc::Code::Ok => Some(code),
                Ok(_) => {
                    diag.at(span(c), key("failure_codes"), "OK cannot be a failure");
                    None
                }
                Err(e) => {
                    diag.at(span(c), key("failure_codes"), e);
                    None
                }
            })
            .collect(),
    };
    let settings = BreakerSettings {
        consecutive_failures: int_in(
            &b.consecutive_failures,
            1..=1000,
            d.consecutive_failures,
            key("consecutive_failures"),
            diag,
        ),
        failure_rate,
        window: int_in(&b.window, 1..=10_000, d.window, key("window"), diag),
        min_calls: int_in(
            &b.min_calls,
            1..=10_000,
            d.min_calls,
            key("min_calls"),
            diag,
        ),
        open_for: duration_up_to(&b.open_for, d.open_for, ONE_HOUR, key("open_for"), diag),
        backoff,
        max_open_for: duration_up_to(
            &b.max_open_for,
            d.max_open_for,
            ONE_HOUR,
            key("max_open_for"),
            diag,
        ),
        half_open_calls: int_in(
            &b.half_open_calls,
            1..=1000,
            d.half_open_calls,
            key("half_open_calls"),
            diag,
        ),
        failure_codes,
        max_ejected_percent: int_in(
            &b.max_ejected_percent,
            0..=100,
            d.max_ejected_percent,
            key("max_ejected_percent"),
            diag,
        ),
    };
    if settings.open_for.is_zero() {
        diag.at(None, key("open_for"), "must be greater than 0");
    }
    if settings.max_open_for < settings.open_for {
        diag.at(None, key("max_open_for"), "must be at least open_for");
    }
    if settings.min_calls > settings.window {
        diag.at(None, key("min_calls"), "cannot exceed window");
    }
    settings
}

/// Keys that belong to another kind of discovery than `kind`: each one is a mistake worth naming
/// (an etcd upstream with `endpoints` would otherwise silently ignore them).
/// `allowed_networks`: CIDRs (`10.0.0.0/8`, `fd00::/8`); a bare address is one host.
fn allowed_networks(
    section: &UpstreamSection,
    path: &str,
    diag: &mut Diagnostics,
) -> Option<Vec<ipnet::IpNet>> {
    let list = section.allowed_networks.as_ref()?;
    if list.get_ref().is_empty() {
        diag.at(
            span(list),
            format!("{path}.allowed_networks"),
            "an empty list would refuse every discovered address; leave the key out for the default",
        );
    }
    Some(super::networks(
        list.get_ref(),
        &format!("{path}.allowed_networks"),
        diag,
    ))
}

pub(super) fn keys_of_other_discoveries(
    section: &UpstreamSection,
    kind: &str,
    path: &str,
    diag: &mut Diagnostics,
) {
    let keys = [
        (
            "endpoints",
            "static",
            section.endpoints.first().map(|e| e.span()),
        ),
        (
            "service",
            "etcd",
            section.service.as_ref().map(|s| s.span()),
        ),
        ("select", "etcd", section.select.as_ref().map(|s| s.span())),
        ("hosts", "dns", section.hosts.first().map(|h| h.span())),
        ("refresh", "dns", section.refresh.as_ref().map(|r| r.span())),
        (
            "allowed_networks",
            // Discovered addresses only: the operator wrote the static ones.
            if kind == "static" {
                "etcd and dns"
            } else {
                kind
            },
            section.allowed_networks.as_ref().map(|a| a.span()),
        ),
    ];
    for (key, owner, at) in keys {
        if owner != kind && at.is_some() {
            diag.at(
                at,
                format!("{path}.{key}"),
                format!("`{key}` belongs to {owner} upstreams; this one is {kind}"),
            );
        }
    }
}

pub(super) fn validate_etcd_upstream(
    section: &UpstreamSection,
    path: &str,
    diag: &mut Diagnostics,
) -> Discovery {
    let service = match &section.service {
        Some(s) if !s.get_ref().is_empty() && !s.get_ref().contains('/') => s.get_ref().clone(),
        Some(s) => {
            diag.at(
                span(s),
                format!("{path}.service"),
                "must be a non-empty name without '/'",
            );
            String::new()
        }
        None => {
            diag.at(
                span(&section.name),
                format!("{path}.service"),
                "an etcd upstream needs `service` (instances live under {prefix}{service}/)",
            );
            String::new()
        }
    };
    let mut select = Selector::default();
    if let Some(sel) = &section.select {
        let sel_ref = sel.get_ref();
        if let Some(version) = &sel_ref.version {
            match semver::VersionReq::parse(version.get_ref()) {
                Ok(req) => select.version = Some(req),
                Err(e) => diag.at(
                    span(version),
                    format!("{path}.select.version"),
                    format!("{:?} is not a semver range: {e}", version.get_ref()),
                ),
            }
        }
        select.labels = sel_ref.labels.clone();
    }
    Discovery::Etcd { service, select }
}
