//! The external shape of the TOML file, exactly as an operator writes it.
//!
//! Nothing here is trusted: `validate` turns it into the internal model (`model.rs`). Fields that
//! can be wrong in a way only validation sees keep their source span so the error can point at
//! them.

use serde::Deserialize;
use toml::Spanned;

use super::duration::ConfigDuration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerSection>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSection>,
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamSection>,
    pub etcd: Option<Spanned<EtcdSection>>,
    pub admin: Option<AdminSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Spanned<String>,
    pub endpoint_labels: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    pub endpoints: Vec<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub dial_timeout: Option<ConfigDuration>,
    pub username: Option<String>,
    pub password_file: Option<Spanned<String>>,
    pub tls: Option<EtcdTlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTlsSection {
    pub ca: Option<Spanned<String>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectSection {
    pub version: Option<Spanned<String>>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    pub region: Option<String>,
    pub region_header: Option<Spanned<String>>,
    pub threads: Option<Spanned<i64>>,
    pub shutdown_grace: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub name: Spanned<String>,
    pub listen: Spanned<String>,
    #[serde(default)]
    pub protocol: Option<Spanned<String>>,
    pub tls: Option<ListenerTlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSection {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub listener: Spanned<String>,
    pub service: Spanned<String>,
    pub method: Option<Spanned<String>>,
    pub upstream: Spanned<String>,
    pub timeout: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub name: Spanned<String>,
    pub discovery: Option<Spanned<String>>,
    #[serde(default)]
    pub endpoints: Vec<Spanned<EndpointSection>>,
    /// etcd discovery: instances are the keys under `{prefix}{service}/`.
    pub service: Option<Spanned<String>>,
    pub select: Option<Spanned<SelectSection>>,
    pub health: Option<HealthSection>,
    pub breaker: Option<BreakerSection>,
    pub connect_timeout: Option<ConfigDuration>,
    pub max_attempts: Option<Spanned<i64>>,
    pub tls: Option<UpstreamTlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    pub addr: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
    pub region: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    pub interval: Option<ConfigDuration>,
    pub timeout: Option<ConfigDuration>,
    pub service: Option<String>,
    pub unhealthy_after: Option<Spanned<i64>>,
    pub healthy_after: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub failure_rate: Option<Spanned<f64>>,
    pub window: Option<Spanned<i64>>,
    pub min_calls: Option<Spanned<i64>>,
    pub open_for: Option<ConfigDuration>,
    pub backoff: Option<Spanned<String>>,
    pub max_open_for: Option<ConfigDuration>,
    pub half_open_calls: Option<Spanned<i64>>,
    pub failure_codes: Option<Vec<Spanned<String>>>,
    pub max_ejected_percent: Option<Spanned<i64>>,
}
