//! The internal, validated configuration. Everything downstream of `config` reads only this.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub upstreams: Vec<UpstreamConfig>,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This gateway's own region; endpoints in it are preferred.
    pub region: Option<String>,
    /// Request header through which a caller may state its own region.
    pub region_header: Option<HeaderName>,
    pub threads: usize,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which gRPC services a route applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceMatch {
    Any,
    Exact(String),
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub listener: String,
    pub service: ServiceMatch,
    pub method: Option<String>,
    pub upstream: String,
    /// Deadline applied when the caller sends no `grpc-timeout`.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub endpoints: Vec<StaticEndpoint>,
    pub connect_timeout: Duration,
    /// Total attempts per call (first try included) while nothing has been sent upstream.
    pub max_attempts: u32,
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticEndpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub region: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// PEM bundle of trusted roots; `None` uses the system roots.
    pub ca: Option<PathBuf>,
    /// Name checked against the backend certificate and sent as SNI.
    pub server_name: String,
}

pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MAX_WEIGHT: i64 = 100;
pub const DEFAULT_WEIGHT: u32 = 100;
