//! `strait register`: arguments (or a TOML file) to a `Registration`, then run until SIGTERM/SIGINT.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{default_instance_id, Registrar, Registration};
use crate::config::{
    parse_duration, EtcdAuth, EtcdConfig, EtcdTls, DEFAULT_ETCD_DIAL_TIMEOUT, DEFAULT_ETCD_PREFIX,
};

#[derive(Debug, clap::Args, Default)]
pub struct RegisterArgs {
    /// etcd member URL (repeat for several members).
    #[arg(long = "etcd")]
    pub etcd: Vec<String>,
    /// Namespace root [default: /services/].
    #[arg(long)]
    pub prefix: Option<String>,
    /// etcd user (with --etcd-password-file).
    #[arg(long)]
    pub etcd_username: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long)]
    pub etcd_password_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify https:// etcd members.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for etcd's client-certificate authentication.
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Service name: the key is {prefix}{service}/{id}.
    #[arg(long)]
    pub service: Option<String>,
    /// The backend's address as gateways should dial it (IP:port).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    #[arg(long)]
    pub version: Option<String>,
    /// 0-100 [default: 100].
    #[arg(long)]
    pub weight: Option<u32>,
    /// key=value, repeatable (region=eu-west is the instance's region).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Lease time to live, e.g. 10s [default: 10s].
    #[arg(long)]
    pub ttl: Option<String>,
    /// Register only while the backend's gRPC health Check answers SERVING (optionally for a
    /// named service).
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub health_check: Option<String>,
    /// On SIGTERM/SIGINT: weight 0 for this long before deregistering, e.g. 5s.
    #[arg(long)]
    pub drain: Option<String>,
    /// Instance id [default: {service}-{version}-{env}-{8 random hex}].
    #[arg(long)]
    pub id: Option<String>,
    /// Read the same settings from a TOML file (flags given as well win).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterFile {
    #[serde(default)]
    etcd: Vec<String>,
    prefix: Option<String>,
    service: Option<String>,
    addr: Option<SocketAddr>,
    version: Option<String>,
    weight: Option<u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    ttl: Option<String>,
    health_check: Option<String>,
    drain: Option<String>,
    id: Option<String>,
}

fn duration(
    name: &str,
    text: Option<String>,
    default: Option<Duration>,
) -> Result<Option<Duration>, String> {
    match text {
        None => Ok(default),
        Some(t) => parse_duration(&t)
            .map(Some)
            .map_err(|e| format!("--{name}: {e}")),
    }
}

/// Turns arguments (and the optional file) into a registration, or says what is wrong.
pub fn registration(args: RegisterArgs) -> Result<Registration, String> {
    let file: RegisterFile = match &args.config {
        None => RegisterFile::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    let etcd = if args.etcd.is_empty() {
        file.etcd
    } else {
        args.etcd
    };
    if etcd.is_empty() {
        return Err("--etcd is required (an etcd member URL such as http://127.0.0.1:2379)".into());
    }
    let service = args
        .service
        .or(file.service)
        .ok_or("--service is required")?;
    if service.is_empty() || service.contains('/') {
        return Err(format!(
            "--service {service:?} must be a non-empty name without '/'"
        ));
    }
    let addr = args
        .addr
        .or(file.addr)
        .ok_or("--addr is required (IP:port)")?;
    let weight = args.weight.or(file.weight).unwrap_or(100);
    if weight > 100 {
        return Err(format!("--weight must be 0-100, got {weight}"));
    }
    let mut labels = file.labels;
    for label in args.labels {
        let (k, v) = label
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| format!("--label {label:?} must look like key=value"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let version = args.version.or(file.version);
    if let Some(v) = &version {
        semver::Version::parse(v.strip_prefix('v').unwrap_or(v))
            .map_err(|e| format!("--version {v:?}: {e}"))?;
    }
    let ttl = duration("ttl", args.ttl.or(file.ttl), Some(Duration::from_secs(10)))?
        .unwrap_or(Duration::from_secs(10));
    if ttl < Duration::from_secs(2) {
        return Err("--ttl must be at least 2s (etcd's minimum lease)".into());
    }
    let drain = duration("drain", args.drain.or(file.drain), None)?;
    let mut prefix = args
        .prefix
        .or(file.prefix)
        .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.to_string());
    if !prefix.starts_with('/') {
        return Err(format!("--prefix {prefix:?} must start with '/'"));
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let id = args.id.or(file.id).unwrap_or_else(|| {
        default_instance_id(
            &service,
            version.as_deref(),
            labels.get("env").map(String::as_str),
        )
    });
    if id.is_empty() || id.contains('/') {
        return Err(format!("--id {id:?} must be a non-empty name without '/'"));
    }
    let auth = match (args.etcd_username, args.etcd_password_file) {
        (None, None) => None,
        (Some(username), Some(password_file)) => Some(EtcdAuth {
            username,
            password_file,
        }),
        _ => return Err("--etcd-username and --etcd-password-file go together".into()),
    };
    let identity = args.etcd_cert.zip(args.etcd_key);
    let tls = (args.etcd_ca.is_some() || identity.is_some()).then_some(EtcdTls {
        ca: args.etcd_ca,
        identity,
    });
    Ok(Registration {
        etcd: EtcdConfig {
            endpoints: etcd,
            prefix,
            // Unused by the registrar: it registers a backend, not a gateway.
            members_prefix: crate::config::DEFAULT_MEMBERS_PREFIX.to_string(),
            dial_timeout: DEFAULT_ETCD_DIAL_TIMEOUT,
            auth,
            tls,
        },
        service,
        addr,
        version,
        weight,
        labels,
        ttl,
        health_check: args.health_check.or(file.health_check),
        drain,
        id,
    })
}

/// Runs a registration until SIGTERM or SIGINT, then drains and deregisters. Exit status 0 on a
/// clean deregistration, 1 when the registration was refused.
pub fn run(registration: Registration) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let key = registration.key();
        println!("registering {key} -> {}", registration.addr);
        let mut registrar = Registrar::start(registration);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            result = registrar.wait() => return result.map_err(|e| e.to_string()),
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        registrar.shutdown().await.map_err(|e| e.to_string())
    })
}
