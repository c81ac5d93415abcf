//! `[[route]]`: listener, service and method, destination, timeout and traffic policy.

use std::collections::{HashMap, HashSet};

use super::{is_grpc_identifier_path, span};
use crate::config::diagnostics::Diagnostics;
use crate::config::file::RouteSection;
use crate::config::model::{
    ListenerConfig, ListenerKind, RouteConfig, ServiceMatch, UpstreamConfig,
};

pub(super) fn validate_routes(
    sections: &[RouteSection],
    listeners: &[ListenerConfig],
    upstreams: &[UpstreamConfig],
    providers: &[crate::config::model::AuthConfig],
    ext_authz: &[crate::config::model::ExtAuthzConfig],
    base_dir: &std::path::Path,
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
        let match_principal = super::auth::validate_match_principal(section, &path, diag);
        let rate_limit = super::policy::validate_rate_limit(section, &path, diag);
        let retry = super::policy::validate_retry(section, &path, diag);
        let hedge = super::policy::validate_hedge(section, &path, diag);
        let auth = super::auth::validate_route_auth(
            section,
            &path,
            providers,
            listeners.iter().find(|l| &l.name == listener),
            base_dir,
            diag,
        );
        let ext_authz = super::auth::validate_route_ext_authz(section, &path, ext_authz, diag);
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
            match_principal.clone(),
        )) {
            diag.at(
                span(&section.service),
                path.clone(),
                if match_headers.is_empty() && match_principal.is_none() {
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
            match_principal,
            destination,
            rate_limit,
            retry,
            hedge,
            timeout: section
                .timeout
                .as_ref()
                .map(|d| d.get_ref().0)
                .filter(|d| !d.is_zero()),
            auth,
            ext_authz,
        });
    }
    routes
}
