//! `[etcd]`: endpoints, prefix, TLS, credentials, timeouts.

use std::path::Path;

use super::{check_cert_and_key, duration_up_to, resolve, span, tls_files, ONE_HOUR};
use crate::config::diagnostics::Diagnostics;
use crate::config::model::*;
use crate::config::spanned::Spanned;

pub(super) fn validate_etcd(
    section: &Spanned<crate::config::file::EtcdSection>,
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
