//! From the external file model to the internal model, collecting every problem on the way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::diagnostics::{ConfigError, Diagnostics, Problem};
use crate::config::file::FileConfig;
use crate::config::model::*;
use crate::config::spanned::Spanned;

mod access_log;
mod auth;
mod dns;
mod etcd;
mod gateway;
mod listeners;
mod policy;
mod routes;
mod tls_files;
mod tracing;
mod upstreams;
mod web;
mod xds;

pub use policy::MAX_RETRY_BUFFER;

use etcd::validate_etcd;
use gateway::validate_gateway;
use listeners::{check_tcp_upstreams, validate_listeners};
use routes::validate_routes;
use upstreams::validate_upstreams;

/// How `serde_path_to_error` names the inside of a `toml::Spanned` value.
pub(super) const SPANNED_FIELD: &str = ".$__serde_spanned_private_value";

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
            .map(|span| crate::config::diagnostics::line_column(source, span.start));
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
    let mut upstreams = validate_upstreams(&file_config.upstreams, base_dir, &mut diag);
    check_tcp_upstreams(&file_config.listeners, &upstreams, &mut diag);
    let auth = auth::validate_auth(&file_config.auth, base_dir, &mut diag);
    let ext_authz = auth::validate_ext_authz(&file_config.ext_authz, &mut diag);
    let routes = validate_routes(
        &file_config.routes,
        &listeners,
        &upstreams,
        &auth,
        &ext_authz,
        base_dir,
        &mut diag,
    );
    let etcd = file_config
        .etcd
        .as_ref()
        .map(|section| validate_etcd(section, base_dir, &mut diag));
    policy::check_cluster_limits_have_etcd(&file_config.routes, etcd.is_some(), &mut diag);
    let dns = dns::validate_dns_section(file_config.dns.as_ref(), &mut diag);
    let access_log = file_config
        .access_log
        .as_ref()
        .map(|section| access_log::validate_access_log(section, base_dir, &mut diag));
    let tracing = file_config
        .tracing
        .as_ref()
        .map(|section| tracing::validate_tracing(section, &mut diag));
    let transcodes =
        web::validate_transcodes(&file_config.transcodes, &listeners, base_dir, &mut diag);
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
    let mut admin_token = None;
    let admin = file_config.admin.as_ref().and_then(|section| {
        let token_file = section.token_file.as_ref().map(|file| {
            let (path, token) = auth::read_admin_token(file, base_dir, &mut diag);
            admin_token = token;
            path
        });
        let tls = section.tls.as_ref().map(|tls| {
            validate_server_tls(
                (&tls.cert, &tls.key, tls.client_ca.as_ref()),
                base_dir,
                "admin.tls",
                &mut diag,
            )
        });
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
                    endpoint_series_grace: duration_up_to(
                        &section.endpoint_series_grace,
                        DEFAULT_ENDPOINT_SERIES_GRACE,
                        7 * 24 * ONE_HOUR,
                        "admin.endpoint_series_grace".into(),
                        &mut diag,
                    ),
                    token_file,
                    tls,
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
        xds::validate_xds(
            section,
            &listeners,
            admin.as_ref(),
            &upstreams,
            base_dir,
            &mut diag,
        )
    });
    // Discovered addresses are never one of the gateway's own: calls would loop into it.
    let own: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.listen)
        .chain(admin.as_ref().map(|a| a.listen))
        .chain(xds.as_ref().map(|x| x.listen))
        .collect();
    for upstream in &mut upstreams {
        upstream.address_policy.own = own.clone();
    }
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
            auth,
            admin_token,
            ext_authz,
        })
    } else {
        Err(diag.into_error(file))
    }
}

pub(super) fn span<T>(value: &Spanned<T>) -> Option<std::ops::Range<usize>> {
    Some(value.span())
}

/// The bound on settings whose natural scale is seconds to minutes (probe intervals, breaker
/// back-off, connect and handshake timeouts, drain). Every other duration is bounded by
/// `MAX_DURATION` (365 days) when it is parsed.
pub(super) const ONE_HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

/// A duration setting at most `max`, or the default with a problem reported at its place.
pub(super) fn duration_up_to(
    value: &Option<Spanned<crate::config::duration::ConfigDuration>>,
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

/// A list of CIDRs (`10.0.0.0/8`, `fd00::/8`; a bare address is one host), each checked at
/// `key[i]`.
pub(super) fn networks(
    list: &[Spanned<String>],
    key: &str,
    diag: &mut Diagnostics,
) -> Vec<ipnet::IpNet> {
    let mut networks = Vec::new();
    for (k, text) in list.iter().enumerate() {
        let parsed = text.get_ref().parse::<ipnet::IpNet>().or_else(|_| {
            text.get_ref()
                .parse::<std::net::IpAddr>()
                .map(ipnet::IpNet::from)
        });
        match parsed {
            Ok(net) => networks.push(net.trunc()),
            Err(_) => diag.at(
                span(text),
                format!("{key}[{k}]"),
                format!(
                    "{:?} is not a network like \"10.0.0.0/8\" or \"fd00::/8\"",
                    text.get_ref()
                ),
            ),
        }
    }
    networks
}

/// A section's `name`: plain (see `check_name`) and not taken by an earlier section of the same
/// kind (`what`, as in "duplicate listener name").
pub(super) fn check_section_name(
    name: &Spanned<String>,
    taken: &mut std::collections::HashSet<String>,
    path: &str,
    what: &str,
    diag: &mut Diagnostics,
) {
    let text = name.get_ref();
    check_name(text, span(name), &format!("{path}.name"), diag);
    if !taken.insert(text.clone()) {
        diag.at(
            span(name),
            format!("{path}.name"),
            format!("duplicate {what} name {text:?}"),
        );
    }
}

/// Names of listeners and upstreams end up in logs and metric labels: keep them plain.
pub(super) fn check_name(
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

pub(super) fn is_grpc_identifier_path(text: &str) -> bool {
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
pub(super) fn check_cert_and_key(
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
