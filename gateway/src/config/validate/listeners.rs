//! `[[listener]]`: gRPC and tcp listeners, their TLS, limits and browser settings.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use super::{check_section_name, duration_up_to, int_in, span, validate_server_tls, ONE_HOUR};
use crate::config::diagnostics::Diagnostics;
use crate::config::file::ListenerSection;
use crate::config::model::*;

pub(super) fn validate_listeners(
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
        check_section_name(&section.name, &mut names, &path, "listener", diag);
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
        let trusted_sources = match &section.trusted_sources {
            None => crate::config::model::default_trusted_sources(),
            Some(list) => super::networks(list.get_ref(), &format!("{path}.trusted_sources"), diag),
        };
        listeners.push(ListenerConfig {
            name: name.clone(),
            listen,
            kind,
            tls,
            idle_timeout,
            limits,
            web,
            trusted_sources,
            proxy_protocol: section.proxy_protocol.unwrap_or(false),
        });
    }
    listeners
}

pub(super) fn validate_limits(
    section: &crate::config::file::LimitsSection,
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
    let request_body_timeout = duration_up_to(
        &section.request_body_timeout,
        defaults.request_body_timeout,
        ONE_HOUR,
        format!("{path}.request_body_timeout"),
        diag,
    );
    if request_body_timeout.is_zero() {
        diag.at(
            section.request_body_timeout.as_ref().and_then(span),
            format!("{path}.request_body_timeout"),
            "must be greater than 0",
        );
    }
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
        request_body_timeout,
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
pub(super) fn listener_kind(
    section: &ListenerSection,
    path: &str,
    diag: &mut Diagnostics,
) -> ListenerKind {
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
pub(super) fn check_tcp_upstreams(
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
