//! From the external file model to the internal model, collecting every problem on the way.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::HeaderName;

use super::diagnostics::{ConfigError, Diagnostics, Problem};
use super::file::{FileConfig, ListenerSection, RouteSection, UpstreamSection};
use super::model::*;
use super::spanned::Spanned;
use super::tls_files;

/// How `serde_path_to_error` names the inside of a `toml::Spanned` value.
const SPANNED_FIELD: &str = ".$__serde_spanned_private_value";

/// Parses the TOML text into the external model. Syntax and type errors stop here (a parser
/// cannot go on after them); they are still reported with line, column and key path.
pub fn deserialize(source: &str, file: &Path) -> Result<FileConfig, ConfigError> {
    let deserializer = toml::Deserializer::new(source);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        // A value read through `Spanned` shows the toml crate's private field in the path; the
        // operator wrote `threads`, not `threads.$__serde_spanned_private_value`.
        let path = err.path().to_string().replace(SPANNED_FIELD, "");
        let inner = err.into_inner();
        let position = inner
            .span()
            .map(|span| super::diagnostics::line_column(source, span.start));
        ConfigError {
            file: file.to_path_buf(),
            problems: vec![Problem {
                position,
                key_path: if path == "." { String::new() } else { path },
                message: inner.message().trim().to_string(),
            }],
        }
    })
}

pub fn validate(
    file_config: FileConfig,
    source: &str,
    file: &Path,
    base_dir: &Path,
) -> Result<Config, ConfigError> {
    let mut diag = Diagnostics::new(source);
    let gateway = validate_gateway(&file_config, &mut diag);
    let listeners = validate_listeners(&file_config.listeners, base_dir, &mut diag);
    let upstreams = validate_upstreams(&file_config.upstreams, base_dir, &mut diag);
    check_tcp_upstreams(&file_config.listeners, &upstreams, &mut diag);
    let routes = validate_routes(&file_config.routes, &listeners, &upstreams, &mut diag);
    let etcd = file_config
        .etcd
        .as_ref()
        .map(|section| validate_etcd(section, base_dir, &mut diag));
    super::policy::check_cluster_limits_have_etcd(&file_config.routes, etcd.is_some(), &mut diag);
    let dns = super::dns::validate_dns_section(file_config.dns.as_ref(), &mut diag);
    let access_log = file_config
        .access_log
        .as_ref()
        .map(|section| super::access_log::validate_access_log(section, base_dir, &mut diag));
    let tracing = file_config
        .tracing
        .as_ref()
        .map(|section| super::tracing::validate_tracing(section, &mut diag));
    let transcodes =
        super::web::validate_transcodes(&file_config.transcodes, &listeners, base_dir, &mut diag);
    if etcd.is_none() {
        for (i, (section, upstream)) in file_config.upstreams.iter().zip(&upstreams).enumerate() {
            if matches!(upstream.discovery, Discovery::Etcd { .. }) {
                diag.at(
                    section.discovery.as_ref().map(|d| d.span()),
                    format!("upstream[{i}].discovery"),
                    "discovery = \"etcd\" needs an [etcd] section",
                );
            }
        }
    }
    let admin = file_config.admin.as_ref().and_then(|section| {
        match section.listen.get_ref().parse::<SocketAddr>() {
            Ok(listen) => {
                if let Some(l) = listeners.iter().find(|l| l.listen == listen) {
                    diag.at(
                        span(&section.listen),
                        "admin.listen",
                        format!("address {listen} is already used by listener {:?}", l.name),
                    );
                }
                Some(AdminConfig {
                    listen,
                    endpoint_labels: section.endpoint_labels.unwrap_or(true),
                    max_methods: int_in(
                        &section.max_methods,
                        1..=100_000,
                        DEFAULT_MAX_METHODS,
                        "admin.max_methods".into(),
                        &mut diag,
                    ),
                })
            }
            Err(_) => {
                diag.at(
                    span(&section.listen),
                    "admin.listen",
                    format!("{:?} is not an IP:port address", section.listen.get_ref()),
                );
                None
            }
        }
    });
    let xds = file_config.xds.as_ref().and_then(|section| {
        super::xds::validate_xds(
            section,
            &listeners,
            admin.as_ref(),
            &upstreams,
            base_dir,
            &mut diag,
        )
    });
    if diag.is_empty() {
        Ok(Config {
            gateway,
            listeners,
            routes,
            upstreams,
            etcd,
            dns,
            admin,
            access_log,
            tracing,
            transcodes,
            xds,
        })
    } else {
        Err(diag.into_error(file))
    }
}

fn span<T>(value: &Spanned<T>) -> Option<std::ops::Range<usize>> {
    Some(value.span())
}

fn validate_gateway(file_config: &FileConfig, diag: &mut Diagnostics) -> GatewayConfig {
    let section = &file_config.gateway;
    let region_header = section.region_header.as_ref().and_then(|h| {
        match HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                diag.at(
                    span(h),
                    "gateway.region_header",
                    format!("{:?} is not a valid HTTP header name", h.get_ref()),
                );
                None
            }
        }
    });
    let default_threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = match &section.threads {
        None => default_threads,
        Some(t) if (1..=1024).contains(t.get_ref()) => *t.get_ref() as usize,
        Some(t) => {
            diag.at(
                span(t),
                "gateway.threads",
                format!("must be between 1 and 1024, got {}", t.get_ref()),
            );
            default_threads
        }
    };
    GatewayConfig {
        region: section.region.clone().filter(|r| !r.is_empty()),
        region_header,
        threads,
        shutdown_grace: duration_up_to(
            &section.shutdown_grace,
            DEFAULT_SHUTDOWN_GRACE,
            ONE_HOUR,
            "gateway.shutdown_grace".into(),
            diag,
        ),
    }
}

fn validate_listeners(
    sections: &[ListenerSection],
    base_dir: &Path,
    diag: &mut Diagnostics,
) -> Vec<ListenerConfig> {
    if sections.is_empty() {
        diag.at(
            None,
            "listener",
            "no [[listener]] is defined; the gateway would serve nothing",
        );
    }
    let mut names = HashSet::new();
    let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
    let mut listeners = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let path = format!("listener[{i}]");
        let name = section.name.get_ref();
        check_name(name, span(&section.name), &format!("{path}.name"), diag);
        if !names.insert(name.clone()) {
            diag.at(
                span(&section.name),
                format!("{path}.name"),
                format!("duplicate listener name {name:?}"),
            );
        }
        let listen = match section.listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                if let Some(other) = addresses.insert(addr, name.clone()) {
                    diag.at(
                        span(&section.listen),
                        format!("{path}.listen"),
                        format!("address {addr} is already used by listener {other:?}"),
                    );
                }
                addr
            }
            Err(_) => {
                diag.at(
                    span(&section.listen),
                    format!("{path}.listen"),
                    format!("{:?} is not an IP:port address", section.listen.get_ref()),
                );
                continue;
            }
        };
        let kind = listener_kind(section, &path, diag);
        let tls = section.tls.as_ref().map(|tls| {
            if matches!(kind, ListenerKind::Tcp { .. }) {
                diag.at(
                    span(&tls.cert),
                    format!("{path}.tls"),
                    "tcp listeners pass bytes through untouched (TLS passthrough); terminate TLS \
                     on a grpc listener or in the backend",
                );
            }
            validate_server_tls(
                (&tls.cert, &tls.key, tls.client_ca.as_ref()),
                base_dir,
                &format!("{path}.tls"),
                diag,
            )
        });
        let idle_timeout = match &kind {
            ListenerKind::Tcp { idle_timeout, .. } => *idle_timeout,
            ListenerKind::Grpc => section
                .idle_timeout
                .as_ref()
                .map(|d| d.get_ref().0)
                .unwrap_or(DEFAULT_GRPC_IDLE_TIMEOUT),
        };
        if idle_timeout.is_zero() && matches!(kind, ListenerKind::Grpc) {
            diag.at(
                span(&section.name),
                format!("{path}.idle_timeout"),
                "must be greater than 0",
            );
        }
        let limits = section
            .limits
            .as_ref()
            .map(|l| validate_limits(l, &path, diag))
            .unwrap_or_default();
        let web = super::web::validate_listener_web(section, &kind, &path, diag);
        listeners.push(ListenerConfig {
            name: name.clone(),
            listen,
            kind,
            tls,
            idle_timeout,
            limits,
            web,
        });
    }
    listeners
}

fn validate_limits(
    section: &super::file::LimitsSection,
    path: &str,
    diag: &mut Diagnostics,
) -> ListenerLimits {
    let defaults = ListenerLimits::default();
    let path = format!("{path}.limits");
    let handshake_timeout = duration_up_to(
        &section.handshake_timeout,
        defaults.handshake_timeout,
        ONE_HOUR,
        format!("{path}.handshake_timeout"),
        diag,
    );
    let request_header_timeout = duration_up_to(
        &section.request_header_timeout,
        defaults.request_header_timeout,
        ONE_HOUR,
        format!("{path}.request_header_timeout"),
        diag,
    );
    if request_header_timeout.is_zero() {
        diag.at(
            section.request_header_timeout.as_ref().and_then(span),
            format!("{path}.request_header_timeout"),
            "must be greater than 0",
        );
    }
    if handshake_timeout.is_zero() {
        diag.at(
            None,
            format!("{path}.handshake_timeout"),
            "must be greater than 0",
        );
    }
    let ping_interval = match section.ping_interval.as_ref() {
        None => defaults.ping_interval,
        Some(d) if d.get_ref().0.is_zero() => None,
        // More often than once a second is traffic, not keepalive.
        Some(d) if (std::time::Duration::from_secs(1)..=ONE_HOUR).contains(&d.get_ref().0) => {
            Some(d.get_ref().0)
        }
        Some(d) => {
            diag.at(
                span(d),
                format!("{path}.ping_interval"),
                "must be \"0s\" (off) or from 1s to 3600s",
            );
            defaults.ping_interval
        }
    };
    let ping_timeout = duration_up_to(
        &section.ping_timeout,
        defaults.ping_timeout,
        ONE_HOUR,
        format!("{path}.ping_timeout"),
        diag,
    );
    if ping_timeout.is_zero() {
        diag.at(
            section.ping_timeout.as_ref().and_then(span),
            format!("{path}.ping_timeout"),
            "must be greater than 0",
        );
    }
    ListenerLimits {
        max_connections: int_in(
            &section.max_connections,
            1..=1_000_000,
            defaults.max_connections,
            format!("{path}.max_connections"),
            diag,
        ),
        max_concurrent_streams: int_in(
            &section.max_concurrent_streams,
            1..=100_000,
            defaults.max_concurrent_streams,
            format!("{path}.max_concurrent_streams"),
            diag,
        ),
        max_header_list_size: int_in(
            &section.max_header_list_size,
            1024..=16 * 1024 * 1024,
            defaults.max_header_list_size,
            format!("{path}.max_header_list_size"),
            diag,
        ),
        max_message_size: int_in(
            &section.max_message_size,
            1024..=1024 * 1024 * 1024,
            defaults.max_message_size,
            format!("{path}.max_message_size"),
            diag,
        ),
        handshake_timeout,
        request_header_timeout,
        ping_interval,
        ping_timeout,
        keepalive: match section.keepalive.as_ref().map(|d| d.get_ref()) {
            None => defaults.keepalive,
            Some(d) if d.0.is_zero() => None,
            // The kernel takes whole seconds, 1 to 32767 (TCP_KEEPIDLE).
            Some(d) if d.0.subsec_nanos() == 0 && (1..=32767).contains(&d.0.as_secs()) => Some(d.0),
            Some(_) => {
                diag.at(
                    None,
                    format!("{path}.keepalive"),
                    "must be \"0s\" (off) or whole seconds from 1s to 32767s",
                );
                defaults.keepalive
            }
        },
    }
}

/// "grpc" (the default) or "tcp" with its upstream; settings of the other kind are refused.
fn listener_kind(section: &ListenerSection, path: &str, diag: &mut Diagnostics) -> ListenerKind {
    let protocol = section
        .protocol
        .as_ref()
        .map(|p| p.get_ref().as_str())
        .unwrap_or("grpc");
    match protocol {
        "tcp" => {
            let upstream = match &section.upstream {
                Some(u) => u.get_ref().clone(),
                None => {
                    diag.at(
                        span(&section.name),
                        format!("{path}.upstream"),
                        "a tcp listener needs `upstream = \"NAME\"`: the upstream whose \
                         endpoints receive its connections",
                    );
                    String::new()
                }
            };
            let idle_timeout = section
                .idle_timeout
                .as_ref()
                .map(|d| d.get_ref().0)
                .unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT);
            if idle_timeout.is_zero() {
                diag.at(
                    span(&section.name),
                    format!("{path}.idle_timeout"),
                    "must be greater than 0",
                );
            }
            ListenerKind::Tcp {
                upstream,
                idle_timeout,
            }
        }
        other => {
            if other != "grpc" {
                let p = section.protocol.as_ref().expect("a written protocol");
                diag.at(
                    span(p),
                    format!("{path}.protocol"),
                    format!("unknown protocol {other:?}; use \"grpc\" or \"tcp\""),
                );
            }
            if let Some(u) = &section.upstream {
                diag.at(
                    span(u),
                    format!("{path}.upstream"),
                    "gRPC listeners choose an upstream per call with [[route]]; `upstream` is for \
                     protocol = \"tcp\"",
                );
            }
            ListenerKind::Grpc
        }
    }
}

/// Every tcp listener names an upstream that exists.
fn check_tcp_upstreams(
    sections: &[ListenerSection],
    upstreams: &[UpstreamConfig],
    diag: &mut Diagnostics,
) {
    for (i, section) in sections.iter().enumerate() {
        let Some(upstream) = &section.upstream else {
            continue;
        };
        if !upstreams.iter().any(|u| &u.name == upstream.get_ref()) {
            diag.at(
                span(upstream),
                format!("listener[{i}].upstream"),
                format!("no upstream named {:?}", upstream.get_ref()),
            );
        }
    }
}

fn validate_upstreams(
    sections: &[UpstreamSection],
    base_dir: &Path,
    diag: &mut Diagnostics,
) -> Vec<UpstreamConfig> {
    let mut names = HashSet::new();
    let mut upstreams = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let path = format!("upstream[{i}]");
        let name = section.name.get_ref();
        check_name(name, span(&section.name), &format!("{path}.name"), diag);
        if !names.insert(name.clone()) {
            diag.at(
                span(&section.name),
                format!("{path}.name"),
                format!("duplicate upstream name {name:?}"),
            );
        }
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
        upstreams.push(UpstreamConfig {
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

/// The bound on settings whose natural scale is seconds to minutes (probe intervals, breaker
/// back-off, connect and handshake timeouts, drain). Every other duration is bounded by
/// `MAX_DURATION` (365 days) when it is parsed.
const ONE_HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

/// A duration setting at most `max`, or the default with a problem reported at its place.
fn duration_up_to(
    value: &Option<Spanned<super::duration::ConfigDuration>>,
    default: std::time::Duration,
    max: std::time::Duration,
    key: String,
    diag: &mut Diagnostics,
) -> std::time::Duration {
    match value {
        None => default,
        Some(v) if v.get_ref().0 <= max => v.get_ref().0,
        Some(v) => {
            diag.at(
                span(v),
                key,
                format!(
                    "must be at most {}s, got {:?}",
                    max.as_secs(),
                    v.get_ref().0
                ),
            );
            default
        }
    }
}

/// An integer setting within a range, or the default with a problem reported.
pub(super) fn int_in(
    value: &Option<Spanned<i64>>,
    range: std::ops::RangeInclusive<i64>,
    default: u32,
    key: String,
    diag: &mut Diagnostics,
) -> u32 {
    match value {
        None => default,
        Some(v) if range.contains(v.get_ref()) => *v.get_ref() as u32,
        Some(v) => {
            diag.at(
                span(v),
                key,
                format!(
                    "must be between {} and {}, got {}",
                    range.start(),
                    range.end(),
                    v.get_ref()
                ),
            );
            default
        }
    }
}

fn validate_health(
    h: &super::file::HealthSection,
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

fn validate_breaker(
    b: &super::file::BreakerSection,
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
fn keys_of_other_discoveries(
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

fn validate_etcd_upstream(
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

fn validate_etcd(
    section: &Spanned<super::file::EtcdSection>,
    base_dir: &Path,
    diag: &mut Diagnostics,
) -> EtcdConfig {
    let etcd = section.get_ref();
    if etcd.endpoints.is_empty() {
        diag.at(
            span(section),
            "etcd.endpoints",
            "list at least one etcd member URL",
        );
    }
    let mut endpoints = Vec::new();
    for (i, endpoint) in etcd.endpoints.iter().enumerate() {
        let url = endpoint.get_ref();
        let valid = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
        if !valid {
            diag.at(
                span(endpoint),
                format!("etcd.endpoints[{i}]"),
                format!("{url:?} is not an etcd URL like \"http://127.0.0.1:2379\""),
            );
        }
        endpoints.push(url.clone());
    }
    let prefix = match &etcd.prefix {
        None => DEFAULT_ETCD_PREFIX.to_string(),
        Some(p) if p.get_ref().starts_with('/') => {
            let mut prefix = p.get_ref().clone();
            if !prefix.ends_with('/') {
                prefix.push('/');
            }
            prefix
        }
        Some(p) => {
            diag.at(
                span(p),
                "etcd.prefix",
                "must start with '/' (e.g. \"/services/\")",
            );
            DEFAULT_ETCD_PREFIX.to_string()
        }
    };
    let auth = match (&etcd.username, &etcd.password_file) {
        (None, None) => None,
        (Some(username), Some(file)) => {
            let password_file = resolve(base_dir, file.get_ref());
            if let Err(e) = std::fs::read_to_string(&password_file) {
                diag.at(
                    span(file),
                    "etcd.password_file",
                    format!("cannot read {}: {e}", password_file.display()),
                );
            }
            Some(EtcdAuth {
                username: username.clone(),
                password_file,
            })
        }
        _ => {
            diag.at(
                span(section),
                "etcd",
                "username and password_file go together",
            );
            None
        }
    };
    let tls = etcd.tls.as_ref().map(|tls| {
        let ca = tls.ca.as_ref().map(|ca| {
            let path = resolve(base_dir, ca.get_ref());
            if let Err(e) = tls_files::check_certificates(&path) {
                diag.at(span(ca), "etcd.tls.ca", e);
            }
            path
        });
        let identity = match (&tls.cert, &tls.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                Some(check_cert_and_key(base_dir, cert, key, "etcd.tls", diag))
            }
            _ => {
                diag.at(span(section), "etcd.tls", "cert and key go together");
                None
            }
        };
        EtcdTls { ca, identity }
    });
    let members_prefix =
        super::policy::validate_members_prefix(etcd.members_prefix.as_ref(), &prefix, diag);
    EtcdConfig {
        endpoints,
        prefix,
        members_prefix,
        dial_timeout: duration_up_to(
            &etcd.dial_timeout,
            DEFAULT_ETCD_DIAL_TIMEOUT,
            ONE_HOUR,
            "etcd.dial_timeout".into(),
            diag,
        ),
        auth,
        tls,
    }
}

fn validate_routes(
    sections: &[RouteSection],
    listeners: &[ListenerConfig],
    upstreams: &[UpstreamConfig],
    diag: &mut Diagnostics,
) -> Vec<RouteConfig> {
    let listener_kinds: HashMap<&str, &ListenerKind> = listeners
        .iter()
        .map(|l| (l.name.as_str(), &l.kind))
        .collect();
    let upstream_names: HashSet<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    let mut seen = HashSet::new();
    let mut routes = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let path = format!("route[{i}]");
        let listener = section.listener.get_ref();
        match listener_kinds.get(listener.as_str()) {
            None => diag.at(
                span(&section.listener),
                format!("{path}.listener"),
                format!("no listener named {listener:?}"),
            ),
            Some(ListenerKind::Tcp { .. }) => diag.at(
                span(&section.listener),
                format!("{path}.listener"),
                format!(
                    "listener {listener:?} is a tcp listener: it sends every connection to its \
                     own `upstream`; routes apply to grpc listeners"
                ),
            ),
            Some(ListenerKind::Grpc) => {}
        }
        let destination =
            super::policy::validate_destination(section, &path, &upstream_names, diag);
        let match_headers = super::policy::validate_match(section, &path, diag);
        let rate_limit = super::policy::validate_rate_limit(section, &path, diag);
        let retry = super::policy::validate_retry(section, &path, diag);
        let hedge = super::policy::validate_hedge(section, &path, diag);
        let service_text = section.service.get_ref();
        let service = if service_text == "*" {
            ServiceMatch::Any
        } else {
            if !is_grpc_identifier_path(service_text) {
                diag.at(
                    span(&section.service),
                    format!("{path}.service"),
                    format!(
                        "{service_text:?} is not a gRPC service name (like \"package.Service\") or \"*\""
                    ),
                );
            }
            ServiceMatch::Exact(service_text.clone())
        };
        let method = section.method.as_ref().map(|m| {
            if service == ServiceMatch::Any {
                diag.at(
                    span(m),
                    format!("{path}.method"),
                    "a method needs a named service, not \"*\"",
                );
            }
            if !is_grpc_identifier_path(m.get_ref()) || m.get_ref().contains('.') {
                diag.at(
                    span(m),
                    format!("{path}.method"),
                    format!("{:?} is not a gRPC method name", m.get_ref()),
                );
            }
            m.get_ref().clone()
        });
        // Two routes for the same calls: the second could never be chosen.
        if !seen.insert((
            listener.clone(),
            service.clone(),
            method.clone(),
            match_headers.clone(),
        )) {
            diag.at(
                span(&section.service),
                path.clone(),
                if match_headers.is_empty() {
                    "another route on this listener already takes every call of this service and \
                     method (give this one a `match`, or remove it)"
                } else {
                    "another route on this listener already has the same service, method and \
                     `match`: this one would never be chosen"
                },
            );
        }
        routes.push(RouteConfig {
            listener: listener.clone(),
            service,
            method,
            match_headers,
            destination,
            rate_limit,
            retry,
            hedge,
            timeout: section
                .timeout
                .as_ref()
                .map(|d| d.get_ref().0)
                .filter(|d| !d.is_zero()),
        });
    }
    routes
}

/// Names of listeners and upstreams end up in logs and metric labels: keep them plain.
fn check_name(
    name: &str,
    span: Option<std::ops::Range<usize>>,
    path: &str,
    diag: &mut Diagnostics,
) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        diag.at(
            span,
            path,
            format!("{name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
        );
    }
}

fn is_grpc_identifier_path(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The TLS of a server the gateway runs (a listener, the xDS server): its certificate and key,
/// and the CAs that sign its callers' certificates for mutual TLS.
pub(super) fn validate_server_tls(
    (cert, key, client_ca): (&Spanned<String>, &Spanned<String>, Option<&Spanned<String>>),
    base_dir: &Path,
    path: &str,
    diag: &mut Diagnostics,
) -> ListenerTls {
    let (cert, key) = check_cert_and_key(base_dir, cert, key, path, diag);
    let client_ca = client_ca.map(|ca| {
        let resolved = resolve(base_dir, ca.get_ref());
        if let Err(e) = tls_files::check_certificates(&resolved) {
            diag.at(span(ca), format!("{path}.client_ca"), e);
        }
        resolved
    });
    ListenerTls {
        cert,
        key,
        client_ca,
    }
}

/// A certificate chain and its private key (listener, upstream client, etcd client): both files
/// readable PEM, and the key the certificate's. Problems are reported at `{path}.cert` / `.key`.
fn check_cert_and_key(
    base_dir: &Path,
    cert: &Spanned<String>,
    key: &Spanned<String>,
    path: &str,
    diag: &mut Diagnostics,
) -> (PathBuf, PathBuf) {
    let cert_path = resolve(base_dir, cert.get_ref());
    let key_path = resolve(base_dir, key.get_ref());
    let cert_result = tls_files::check_certificates(&cert_path);
    let key_result = tls_files::check_private_key(&key_path);
    if let Err(e) = &cert_result {
        diag.at(span(cert), format!("{path}.cert"), e.clone());
    }
    if let Err(e) = &key_result {
        diag.at(span(key), format!("{path}.key"), e.clone());
    }
    if cert_result.is_ok() && key_result.is_ok() {
        if let Err(e) = tls_files::check_key_pair(&cert_path, &key_path) {
            diag.at(span(key), format!("{path}.key"), e);
        }
    }
    (cert_path, key_path)
}

pub(super) fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}
