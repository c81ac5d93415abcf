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
    /// Present when any upstream uses etcd discovery.
    pub etcd: Option<EtcdConfig>,
    /// The resolver of dns upstreams (defaults when the file has no `[dns]`).
    pub dns: DnsConfig,
    /// The admin listener (metrics, health, status); none without `[admin]`.
    pub admin: Option<AdminConfig>,
    /// One line per call; none without `[access_log]`.
    pub access_log: Option<AccessLogConfig>,
    /// Spans exported over OTLP; none without `[tracing]`.
    pub tracing: Option<TracingConfig>,
    /// gRPC-JSON transcoding: the REST routes of each listener that has any.
    pub transcodes: Vec<TranscodeConfig>,
    /// The xDS server for proxyless gRPC clients; none without `[xds]`.
    pub xds: Option<XdsConfig>,
    /// Caller authentication providers (`[[auth]]`), with their keys read.
    pub auth: Vec<AuthConfig>,
    /// The admin API's bearer token (`[admin] token_file`, read): reloadable, unlike the rest
    /// of `[admin]`.
    pub admin_token: Option<AdminToken>,
    /// External authorization services (`[[ext_authz]]`).
    pub ext_authz: Vec<ExtAuthzConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthzConfig {
    pub name: String,
    /// `http://host:port`.
    pub uri: http::Uri,
    pub timeout: Duration,
    pub failure_mode_allow: bool,
}

/// One `[[auth]]` provider.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub name: String,
    pub kind: AuthKind,
}

#[derive(Debug, Clone)]
pub enum AuthKind {
    Jwt {
        settings: crate::auth::JwtSettings,
        keys: JwtKeys,
    },
    ApiKeys {
        keys: std::sync::Arc<crate::auth::ApiKeyTable>,
        header: http::HeaderName,
        forward: bool,
    },
    Mtls {
        allowed_sans: Vec<crate::auth::SanPattern>,
        forward_client_cert: bool,
    },
}

/// Where a jwt provider's keys come from.
#[derive(Debug, Clone)]
pub enum JwtKeys {
    /// A JWKS file or an HS256 secret, read at load.
    Fixed(std::sync::Arc<crate::auth::KeySet>),
    /// Fetched from a URL in the background.
    Remote(crate::auth::JwksSpec),
}

/// A route's `auth`, `require_claims` and `policy`.
#[derive(Debug, Clone)]
pub struct RouteAuthConfig {
    pub providers: Vec<String>,
    pub require_claims: crate::auth::RequiredClaims,
    /// The route's Rego policy, compiled.
    pub policy: Option<std::sync::Arc<crate::auth::RegoPolicy>>,
}

/// The admin API's bearer token; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub std::sync::Arc<[u8]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsConfig {
    pub listen: SocketAddr,
    /// The upstreams published; `None` publishes every upstream.
    pub upstreams: Option<Vec<String>>,
    pub tls: Option<ListenerTls>,
}

/// The REST routes of one listener, read from its `[[transcode]]` sections' descriptors.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscodeConfig {
    pub listener: String,
    pub table: std::sync::Arc<crate::transcode::TranscodeTable>,
}

/// A listener's browser-facing settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebConfig {
    pub grpc_web: bool,
    pub cors: Option<CorsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    pub allow_origins: AllowedOrigins,
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    Any,
    /// Exact origins, compared without regard to case.
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// `http://` or `https://` host and port of an OTLP/gRPC collector.
    pub otlp_endpoint: String,
    pub service_name: String,
    /// Ratio of calls without a caller's sampling decision that are traced, 0 to 1.
    pub sample: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    pub sink: AccessLogSink,
    pub format: AccessLogFormat,
    /// Fraction of OK calls written, 0 to 1.
    pub sample: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogSink {
    Stderr,
    Stdout,
    File(PathBuf),
}

impl std::fmt::Display for AccessLogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessLogSink::Stderr => f.write_str("stderr"),
            AccessLogSink::Stdout => f.write_str("stdout"),
            AccessLogSink::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Per-endpoint label on metrics; false for very large fleets.
    pub endpoint_labels: bool,
    /// Service/method pairs with their own series, per listener.
    pub max_methods: u32,
    /// How long an endpoint's series stay after it left (then they are removed).
    pub endpoint_series_grace: Duration,
    /// Every endpoint but /healthz and /readyz requires `[admin] token_file`'s token (the
    /// token itself is `Config::admin_token`, reloadable).
    pub token_file: Option<PathBuf>,
    /// HTTPS, and with `client_ca` mutual TLS, on the admin listener.
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    /// Member URLs (`http://` or `https://`); the client fails over between them.
    pub endpoints: Vec<String>,
    /// Namespace root, always ending in `/`.
    pub prefix: String,
    /// Where gateways register themselves (cluster-wide rate limits), ending in `/`.
    pub members_prefix: String,
    pub dial_timeout: Duration,
    pub auth: Option<EtcdAuth>,
    pub tls: Option<EtcdTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdAuth {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdTls {
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for etcd's client-cert authentication.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Where an upstream's endpoints come from.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// The `endpoints` list in the file.
    Static,
    /// Instances registered under `{etcd.prefix}{service}/`, optionally narrowed by `select`.
    Etcd { service: String, select: Selector },
    /// The A and AAAA records of `hosts`, re-resolved every `refresh` (or TTL, if shorter).
    Dns {
        hosts: Vec<DnsHost>,
        refresh: Duration,
    },
}

impl Discovery {
    /// The word `/upstreams`, the status page and logs use.
    pub fn kind(&self) -> &'static str {
        match self {
            Discovery::Static => "static",
            Discovery::Etcd { .. } => "etcd",
            Discovery::Dns { .. } => "dns",
        }
    }
}

/// One name of a dns upstream; each address it resolves to becomes an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsHost {
    /// Lower case, as written otherwise (a trailing dot keeps it absolute).
    pub name: String,
    pub port: u16,
    pub weight: u32,
    pub region: Option<String>,
}

/// How dns upstreams resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Asked in order; empty means the system configuration (/etc/resolv.conf).
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            timeout: DEFAULT_DNS_TIMEOUT,
        }
    }
}

/// A subset of an etcd service's instances: a semver range and label equality.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub version: Option<semver::VersionReq>,
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// This gateway's own region; endpoints in it are preferred.
    pub region: Option<String>,
    /// Request header through which a caller may state its own region.
    pub region_header: Option<HeaderName>,
    pub threads: usize,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub kind: ListenerKind,
    pub tls: Option<ListenerTls>,
    /// grpc: close a connection with no call in flight for this long.
    pub idle_timeout: Duration,
    pub limits: ListenerLimits,
    /// gRPC-Web and CORS (grpc listeners).
    pub web: WebConfig,
    /// Callers from these networks may set the region header and force trace sampling, and
    /// send a PROXY header where `proxy_protocol` is on.
    pub trusted_sources: Vec<ipnet::IpNet>,
    /// Connections from `trusted_sources` begin with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// Without `trusted_sources`: loopback only (sidecars and local tools on the gateway's host).
pub fn default_trusted_sources() -> Vec<ipnet::IpNet> {
    vec![
        "127.0.0.0/8".parse().expect("a network"),
        "::1/128".parse().expect("a network"),
    ]
}

/// Resource bounds of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerLimits {
    pub max_connections: u32,
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    pub max_message_size: u32,
    pub handshake_timeout: Duration,
    /// A frame, or a HEADERS block with its CONTINUATION frames, that has begun to arrive must
    /// be whole within this.
    pub request_header_timeout: Duration,
    /// A request body the gateway reads whole before forwarding (JSON calls, hedged routes)
    /// must have arrived within this.
    pub request_body_timeout: Duration,
    /// TCP keepalive idle time; `None` turns keepalive off.
    pub keepalive: Option<Duration>,
    /// HTTP/2 PING keepalive towards clients; `None` turns it off.
    pub ping_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub ping_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_concurrent_streams: 1024,
            max_header_list_size: 64 * 1024,
            max_message_size: 16 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            request_header_timeout: Duration::from_secs(10),
            request_body_timeout: Duration::from_secs(30),
            keepalive: Some(Duration::from_secs(60)),
            ping_interval: Some(Duration::from_secs(30)),
            ping_timeout: Duration::from_secs(10),
        }
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerKind {
    /// HTTP/2 gRPC, routed per call by `[[route]]`.
    Grpc,
    /// Raw TCP: each connection goes to one endpoint of `upstream`.
    Tcp {
        upstream: String,
        idle_timeout: Duration,
    },
}

impl ListenerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ListenerKind::Grpc => "grpc",
            ListenerKind::Tcp { .. } => "tcp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: callers must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

impl ListenerTls {
    /// The files, as `crate::tls` reads them.
    pub fn files(&self) -> crate::tls::ListenerTlsFiles<'_> {
        crate::tls::ListenerTlsFiles {
            cert: &self.cert,
            key: &self.key,
            client_ca: self.client_ca.as_deref(),
        }
    }
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
    /// Only calls carrying these headers take the route (none: every call).
    pub match_headers: Vec<HeaderCondition>,
    /// Only calls whose accepted caller (`provider:subject`) matches take the route.
    pub match_principal: Option<String>,
    pub destination: Destination,
    pub rate_limit: Option<RateLimitConfig>,
    /// Retries of calls answered trailers-only with a listed status.
    pub retry: Option<RetryConfig>,
    /// Hedged attempts (only on routes marked `idempotent`).
    pub hedge: Option<HedgeConfig>,
    /// Deadline applied when the caller sends no `grpc-timeout`.
    pub timeout: Option<Duration>,
    /// Who may call (none: the route is open).
    pub auth: Option<RouteAuthConfig>,
    /// The `[[ext_authz]]` service asked about every call.
    pub ext_authz: Option<String>,
}

impl RouteConfig {
    /// Every upstream the route may send a call to.
    pub fn upstreams(&self) -> impl Iterator<Item = &str> {
        let (single, sides) = match &self.destination {
            Destination::Upstream(name) => (Some(name.as_str()), &[][..]),
            Destination::Split { sides, .. } => (None, sides.as_slice()),
        };
        single
            .into_iter()
            .chain(sides.iter().map(|s| s.upstream.as_str()))
    }
}

/// One header a route's `match` requires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderCondition {
    pub name: HeaderName,
    /// `None`: present with any value.
    pub value: Option<String>,
}

/// Where a route sends its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Upstream(String),
    Split {
        sides: Vec<SplitSide>,
        /// The request header whose value pins a caller to one side.
        hash_header: Option<HeaderName>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSide {
    pub upstream: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub per_second: u32,
    pub burst: u32,
    pub key: RateLimitKey,
    pub scope: RateLimitScope,
}

/// Who shares a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitScope {
    /// Each gateway enforces the whole limit.
    Gateway,
    /// The gateways registered in etcd share it: each enforces 1/N of it.
    Cluster,
}

impl RateLimitConfig {
    /// This gateway's part of the limit when `gateways` share it (rounded up, at least 1).
    pub fn share(&self, gateways: u32) -> RateLimitConfig {
        let n = match self.scope {
            RateLimitScope::Gateway => 1,
            RateLimitScope::Cluster => gateways.max(1),
        };
        RateLimitConfig {
            per_second: self.per_second.div_ceil(n).max(1),
            burst: self.burst.div_ceil(n).max(1),
            ..self.clone()
        }
    }
}

/// A route's `retry` (gRPC's retry design, A6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Status codes of a trailers-only answer that make a call worth sending again.
    pub on: Vec<crate::grpc::Code>,
    /// Attempts per call, the first included; connect-level retries count too.
    pub max_attempts: u32,
    /// The first retry waits a random time below this, doubling per retry up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Calls whose request grew past this many bytes are not retried (the gateway keeps a
    /// copy of at most this much to send again).
    pub buffer: u32,
}

/// A route's `hedge` (gRPC's hedging, A6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HedgeConfig {
    /// An attempt without response headers this long after it started gets a companion.
    pub delay: Duration,
    /// Attempts at most, the first included.
    pub max_attempts: u32,
}

/// An upstream's `retry_budget`: retries at most `percent` of the last 10 s of calls, plus
/// `min_per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudgetConfig {
    pub percent: u32,
    pub min_per_second: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: 20,
            min_per_second: 10,
        }
    }
}

/// What the calls of one rate-limit bucket have in common.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    Route,
    Peer,
    Header(HeaderName),
    /// The caller the route's `auth` accepted (checked after authentication).
    Principal,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub discovery: Discovery,
    /// The static endpoints (empty for etcd upstreams).
    pub endpoints: Vec<StaticEndpoint>,
    pub connect_timeout: Duration,
    /// Total attempts per call (first try included) while nothing has been sent upstream.
    pub max_attempts: u32,
    /// Calls in flight at once beyond which new ones are shed (none: unbounded).
    pub max_in_flight: Option<u32>,
    /// The preferred region keeps min(1, healthy share x this) of its calls; 0 = strict.
    pub region_overprovision: f64,
    pub retry_budget: RetryBudgetConfig,
    pub tls: Option<UpstreamTls>,
    /// Active gRPC health probes; none without `[upstream.health]`.
    pub health: Option<HealthSettings>,
    /// Always on; `[upstream.breaker]` only changes the defaults.
    pub breaker: crate::breaker::BreakerSettings,
    /// Which discovered addresses may be endpoints (`allowed_networks`, the gateway's own
    /// addresses); static endpoints are not checked.
    pub address_policy: crate::address_policy::AddressPolicy,
}

/// Active probing with grpc.health.v1.Health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub interval: Duration,
    pub timeout: Duration,
    /// Service name sent in HealthCheckRequest ("" = the server as a whole).
    pub service: String,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            service: String::new(),
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticEndpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// PEM bundle of trusted roots; `None` uses the system roots.
    pub ca: Option<PathBuf>,
    /// Name checked against the backend certificate and sent as SNI; empty means each
    /// endpoint's own IP address.
    pub server_name: String,
    /// Client certificate chain and key presented to backends that require one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_GRPC_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MAX_WEIGHT: i64 = 100;
pub const DEFAULT_WEIGHT: u32 = 100;
pub const DEFAULT_ETCD_PREFIX: &str = "/services/";
pub const DEFAULT_MEMBERS_PREFIX: &str = "/strait/gateways/";
pub const DEFAULT_MAX_METHODS: u32 = 1000;
/// Ten minutes: several scrape intervals at any usual setting, so the last scrapes see an
/// endpoint's final counts; an endpoint back within it keeps its series.
pub const DEFAULT_ENDPOINT_SERIES_GRACE: Duration = Duration::from_secs(600);
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
/// Re-resolving more often than this is refused, whatever the TTL says.
pub const MIN_DNS_REFRESH: Duration = Duration::from_secs(1);
pub const DEFAULT_ETCD_DIAL_TIMEOUT: Duration = Duration::from_secs(2);
