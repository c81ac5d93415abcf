//! Validation of `[xds]`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::diagnostics::Diagnostics;
use crate::config::file::XdsSection;
use crate::config::model::{AdminConfig, ListenerConfig, UpstreamConfig, XdsConfig};

pub(super) fn validate_xds(
    section: &XdsSection,
    listeners: &[ListenerConfig],
    admin: Option<&AdminConfig>,
    upstreams: &[UpstreamConfig],
    base_dir: &Path,
    diag: &mut Diagnostics,
) -> Option<XdsConfig> {
    let listen = match section.listen.get_ref().parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => {
            diag.at(
                Some(section.listen.span()),
                "xds.listen",
                "port 0 is not an address clients can be given",
            );
            return None;
        }
        Ok(addr) => addr,
        Err(_) => {
            diag.at(
                Some(section.listen.span()),
                "xds.listen",
                format!("{:?} is not an IP:port address", section.listen.get_ref()),
            );
            return None;
        }
    };
    if let Some(l) = listeners.iter().find(|l| l.listen == listen) {
        diag.at(
            Some(section.listen.span()),
            "xds.listen",
            format!("address {listen} is already used by listener {:?}", l.name),
        );
    }
    if admin.is_some_and(|a| a.listen == listen) {
        diag.at(
            Some(section.listen.span()),
            "xds.listen",
            format!("address {listen} is already used by the admin listener"),
        );
    }
    let published = section.upstreams.as_ref().map(|list| {
        let names = list.get_ref();
        if names.is_empty() {
            diag.at(
                Some(list.span()),
                "xds.upstreams",
                "lists no upstream, so nothing would be published; leave it out to publish every \
                 upstream",
            );
        }
        let known: HashSet<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let mut seen = HashSet::new();
        for (i, name) in names.iter().enumerate() {
            let value = name.get_ref().as_str();
            if !known.contains(value) {
                diag.at(
                    Some(name.span()),
                    format!("xds.upstreams[{i}]"),
                    format!("no upstream is named {value:?}"),
                );
            } else if !seen.insert(value) {
                diag.at(
                    Some(name.span()),
                    format!("xds.upstreams[{i}]"),
                    format!("upstream {value:?} is listed twice"),
                );
            }
        }
        names.iter().map(|n| n.get_ref().clone()).collect()
    });
    let tls = section.tls.as_ref().map(|tls| {
        super::validate_server_tls(
            (&tls.cert, &tls.key, tls.client_ca.as_ref()),
            base_dir,
            "xds.tls",
            diag,
        )
    });
    // Every published upstream's endpoints go to whoever connects: beyond loopback, only to
    // clients holding a certificate the operator's CA signed.
    let mutual = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if !listen.ip().is_loopback() && !mutual {
        diag.at(
            Some(section.listen.span()),
            "xds.listen",
            format!(
                "{listen} is reachable beyond this host, and xDS clients are not authenticated: \
                 set [xds] tls with client_ca (mutual TLS), or listen on 127.0.0.1"
            ),
        );
    }
    Some(XdsConfig {
        listen,
        upstreams: published,
        tls,
    })
}
