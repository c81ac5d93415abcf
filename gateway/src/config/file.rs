//! The external shape of the TOML file, exactly as an operator writes it.
//!
//! Nothing here is trusted: `validate` turns it into the internal model (`model.rs`). Fields that
//! can be wrong in a way only validation sees keep their source span so the error can point at
//! them. The doc comments become the descriptions of `strait schema`.

use schemars::JsonSchema;
use serde::Deserialize;

use super::duration::ConfigDuration;
use super::spanned::Spanned;

/// A Strait gateway configuration file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Strait configuration")]
pub struct FileConfig {
    #[serde(default)]
    pub gateway: GatewaySection,
    /// Ports the gateway accepts connections on.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerSection>,
    /// Which upstream serves which gRPC service or method, per listener.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSection>,
    /// Named groups of backend endpoints, static or discovered in etcd.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamSection>,
    pub etcd: Option<Spanned<EtcdSection>>,
    /// How `discovery = "dns"` upstreams resolve their names (default: /etc/resolv.conf).
    pub dns: Option<DnsSection>,
    pub admin: Option<AdminSection>,
    pub access_log: Option<AccessLogSection>,
    pub tracing: Option<TracingSection>,
    /// gRPC-JSON transcoding per listener.
    #[serde(default, rename = "transcode")]
    pub transcodes: Vec<TranscodeSection>,
    pub xds: Option<XdsSection>,
    /// Caller authentication providers, referenced by name from routes' `auth`.
    #[serde(default, rename = "auth")]
    pub auth: Vec<AuthSection>,
    /// External authorization services (Envoy's ext_authz gRPC API), referenced by routes.
    #[serde(default, rename = "ext_authz")]
    pub ext_authz: Vec<ExtAuthzSection>,
}

/// An authorization service speaking `envoy.service.auth.v3.Authorization/Check` over h2c
/// (OPA's Envoy plugin, or any other). Reloadable.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzSection {
    /// The name routes use in `ext_authz = "..."`.
    pub name: Spanned<String>,
    /// "IP:port", "host:port" or "http://host:port".
    pub address: Spanned<String>,
    /// Time allowed for one check (default 200ms, at most 10s); then the call is denied.
    pub timeout: Option<Spanned<ConfigDuration>>,
    /// Allow calls when the service cannot answer (default false: deny them).
    pub failure_mode_allow: Option<bool>,
}

/// A caller authentication provider: exactly one of `jwt`, `api_keys` or `mtls`. Reloadable
/// (keys files, JWKS files and secrets are re-read; a JWKS URL whose settings stay keeps its
/// keys).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The name routes use in `auth = [...]`.
    pub name: Spanned<String>,
    pub jwt: Option<JwtSection>,
    pub api_keys: Option<ApiKeysSection>,
    pub mtls: Option<MtlsSection>,
}

/// Bearer JWTs: RS256/384/512, PS256/384/512, ES256/384 and EdDSA from a JWKS (file or HTTPS
/// URL), or HS256 with `secret_file`. `exp`, `nbf`, `iss` and `aud` are checked.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// The `iss` every token must carry.
    pub issuer: Spanned<String>,
    /// A token's `aud` must name one of these (default: `aud` not checked).
    pub audiences: Option<Vec<Spanned<String>>>,
    /// A JWKS document (JSON) holding the verification keys; one of `jwks_file`, `jwks_url`,
    /// `secret_file`.
    pub jwks_file: Option<Spanned<String>>,
    /// An https:// URL the JWKS is fetched from at start and refreshed from.
    pub jwks_url: Option<Spanned<String>>,
    /// CA bundle (PEM) the `jwks_url` server's certificate must chain to (default: the
    /// system's roots).
    pub jwks_ca: Option<Spanned<String>>,
    /// Refetch interval when the response has no Cache-Control max-age (default 10m, 30s to
    /// 24h).
    pub jwks_refresh: Option<Spanned<ConfigDuration>>,
    /// Time allowed for one fetch (default 5s, at most 1m).
    pub jwks_timeout: Option<Spanned<ConfigDuration>>,
    /// A file holding an HS256 secret (HMAC tokens are accepted only this way).
    pub secret_file: Option<Spanned<String>>,
    /// Allowed clock difference for `exp` and `nbf` (default 30s, at most 5m).
    pub clock_skew: Option<Spanned<ConfigDuration>>,
    /// The metadata key holding the token (default "authorization", as `Bearer TOKEN`).
    pub from_header: Option<Spanned<String>>,
    /// Claims copied into request headers sent upstream, like `{ sub = "x-user-id" }`; the
    /// caller's own values of these headers are always removed.
    pub claim_headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    /// Longest token accepted, in bytes (default 8192, 256 to 65536).
    pub max_token_bytes: Option<Spanned<i64>>,
    /// Send the token upstream as well (default false: removed once verified).
    pub forward: Option<bool>,
}

/// Named API keys, stored as SHA-256 hashes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysSection {
    /// One `NAME SHA256-HEX` line per key (`#` comments); the name is the principal.
    pub keys_file: Spanned<String>,
    /// The metadata key holding the key (default "x-api-key").
    pub from_header: Option<Spanned<String>>,
    /// Send the key upstream as well (default false).
    pub forward: Option<bool>,
}

/// The listener's verified client certificate (a TLS listener with `client_ca`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MtlsSection {
    /// URI or DNS SANs allowed, exact or ending in `*` (default: any certificate the listener
    /// accepts).
    pub allowed_sans: Option<Vec<Spanned<String>>>,
    /// Send Envoy's `x-forwarded-client-cert` upstream (default false).
    pub forward_client_cert: Option<bool>,
}

/// The xDS server: publishes upstreams (endpoints, region priority, health) to gRPC clients that
/// call services directly (`xds:///NAME`). Aggregated discovery (ADS), xDS v3, state of the
/// world. Changing it needs a restart.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XdsSection {
    /// IP:port the ADS server listens on (18000 by convention).
    pub listen: Spanned<String>,
    /// The upstreams published, each as the xDS target of the same name (default: every
    /// upstream).
    pub upstreams: Option<Spanned<Vec<Spanned<String>>>>,
    pub tls: Option<XdsTlsSection>,
}

/// TLS for the xDS clients' connections. The files are read when the gateway starts (and when
/// the xDS server's task restarts): rotating them needs a restart.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XdsTlsSection {
    /// Certificate chain (PEM), leaf first.
    pub cert: Spanned<String>,
    /// Private key (PEM).
    pub key: Spanned<String>,
    /// CA bundle (PEM) for mutual TLS: xDS clients must present a certificate it signed.
    pub client_ca: Option<Spanned<String>>,
}

/// OpenTelemetry tracing: W3C trace context in and out, one span per call exported over
/// OTLP/gRPC in batches, off the call path. Reloadable.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    /// The OTLP/gRPC collector, "http://host:port" or "https://host:port" (4317 by convention).
    pub otlp_endpoint: Spanned<String>,
    /// The `service.name` of the exported spans (default "strait").
    pub service_name: Option<Spanned<String>>,
    /// Fraction of calls traced when they arrive without a `traceparent` or from a caller the
    /// listener does not trust (default 0.01); a trusted caller's sampled flag decides for
    /// calls that carry one.
    pub sample: Option<Spanned<f64>>,
}

/// One line per finished call and tcp connection, written off the call path. Reloadable.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// "stderr" (default), "stdout", or a file path (relative to this file); SIGUSR1 reopens a
    /// file after logrotate moved it.
    pub path: Option<Spanned<String>>,
    /// "json" (default: one object per line, every field present) or "text".
    pub format: Option<Spanned<String>>,
    /// Fraction of OK calls written (default 1.0); every call that is not OK is written.
    pub sample: Option<Spanned<f64>>,
}

/// The resolver of DNS discovery. Reloadable.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// Name servers as "IP" or "IP:port" (port 53 by default), asked in order; without it the
    /// system resolver configuration (/etc/resolv.conf: servers, search domains, ndots) is used.
    pub servers: Option<Vec<Spanned<String>>>,
    /// Time allowed for one query to one server (default 2s, at most 1m).
    pub timeout: Option<Spanned<ConfigDuration>>,
}

/// The admin listener: /metrics, /healthz, /readyz, /upstreams, /reload and the status page.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// IP:port to serve on; keep it on a private interface.
    pub listen: Spanned<String>,
    /// Label metrics per endpoint (default true); turn off for very large fleets.
    pub endpoint_labels: Option<bool>,
    /// Distinct gRPC service/method pairs with their own call series, per listener (default
    /// 1000, 1 to 100000); calls of further pairs count under method "other".
    pub max_methods: Option<Spanned<i64>>,
    /// How long the series of an endpoint that left (discovery, reload) stay before they are
    /// removed (default 10m, at most 7 days).
    pub endpoint_series_grace: Option<Spanned<ConfigDuration>>,
    /// A file holding the bearer token every admin endpoint but /healthz and /readyz requires
    /// (`Authorization: Bearer TOKEN`); its content is re-read on reload.
    pub token_file: Option<Spanned<String>>,
    /// HTTPS for the admin listener; with `client_ca`, only callers holding a certificate it
    /// signed get in. Read at start: changing it needs a restart.
    pub tls: Option<ListenerTlsSection>,
}

/// Where discovery reads instances from.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// Member URLs, http:// or https://.
    pub endpoints: Vec<Spanned<String>>,
    /// Namespace root (default "/services/").
    pub prefix: Option<Spanned<String>>,
    /// Where each gateway registers itself on a lease, for cluster-wide rate limits (default
    /// "/strait/gateways/"; outside `prefix`).
    pub members_prefix: Option<Spanned<String>>,
    pub dial_timeout: Option<Spanned<ConfigDuration>>,
    pub username: Option<String>,
    /// File holding the password for `username`.
    pub password_file: Option<Spanned<String>>,
    pub tls: Option<EtcdTlsSection>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdTlsSection {
    /// PEM bundle of CAs trusted for the etcd members.
    pub ca: Option<Spanned<String>>,
    /// Client certificate (PEM) for etcd client-cert authentication; needs `key`.
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

/// Narrows an etcd service to some of its instances.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectSection {
    /// A semver range the instance's version must match, like ">=1.2, <2".
    pub version: Option<Spanned<String>>,
    /// Labels the instance must carry with exactly these values.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Process-wide settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// This gateway's region; endpoints in it are preferred.
    pub region: Option<String>,
    /// Request header through which a caller may state its own region.
    pub region_header: Option<Spanned<String>>,
    /// Worker threads (default: one per CPU). Changing it needs a restart.
    pub threads: Option<Spanned<i64>>,
    /// Longest wait for in-flight calls on SIGTERM (default 15s).
    pub shutdown_grace: Option<Spanned<ConfigDuration>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Unique name, used by routes, logs and metrics.
    pub name: Spanned<String>,
    /// IP:port to accept connections on.
    pub listen: Spanned<String>,
    /// "grpc" (default): HTTP/2 gRPC, routed per call. "tcp": raw TCP connections balanced over
    /// `upstream`'s endpoints.
    #[serde(default)]
    pub protocol: Option<Spanned<String>>,
    /// tcp listeners: the upstream whose endpoints receive the connections.
    pub upstream: Option<Spanned<String>>,
    /// Close a connection after this long with nothing happening: for tcp, no byte either way
    /// (default 10m); for grpc, no call in flight (default 1h).
    pub idle_timeout: Option<Spanned<ConfigDuration>>,
    pub tls: Option<ListenerTlsSection>,
    pub limits: Option<LimitsSection>,
    /// grpc: also accept gRPC-Web calls (application/grpc-web, +proto, -text) over HTTP/1.1
    /// and HTTP/2, translated to native gRPC towards the upstream (default false).
    pub grpc_web: Option<bool>,
    /// grpc: CORS for browser callers: preflights answered by the gateway for these origins.
    pub cors: Option<CorsSection>,
    /// grpc: CIDRs of callers trusted to choose what only operators should (the region header,
    /// forced trace sampling); default loopback only. Authenticated callers (a route's `auth`)
    /// are trusted too.
    pub trusted_sources: Option<Spanned<Vec<Spanned<String>>>>,
    /// Connections from `trusted_sources` (an L4 balancer) start with a PROXY protocol header
    /// (v1 or v2) naming the real client, which logs, rate limits and `x-forwarded-for` then
    /// see (default false). Connections from elsewhere are served as direct clients.
    pub proxy_protocol: Option<bool>,
}

/// CORS of a listener (browsers calling from pages of other origins).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsSection {
    /// Origins allowed to call, as "scheme://host[:port]", or "*" for any.
    pub allow_origins: Vec<Spanned<String>>,
    /// How long a browser may cache a preflight's answer (default 10m, at most 24h).
    pub max_age: Option<Spanned<ConfigDuration>>,
}

/// gRPC-JSON transcoding on a listener: REST routes from the `google.api.http` annotations of
/// a FileDescriptorSet, plus `POST /package.Service/Method` for every exposed method.
/// Reloadable: the file is read again on reload.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TranscodeSection {
    /// The grpc listener whose callers may use JSON.
    pub listener: Spanned<String>,
    /// A FileDescriptorSet (relative to this file), made with
    /// `protoc --include_imports --descriptor_set_out=api.pb ...`.
    pub descriptors: Spanned<String>,
    /// Fully qualified services to expose, e.g. "shop.Cart".
    pub services: Vec<Spanned<String>>,
}

/// Resource bounds of one listener; see docs/security.md for what each protects against.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Open connections at most (default 10000); beyond it new ones are closed at once.
    pub max_connections: Option<Spanned<i64>>,
    /// grpc: concurrent calls (HTTP/2 streams) per connection (default 1024).
    pub max_concurrent_streams: Option<Spanned<i64>>,
    /// grpc: bytes of request headers per call, decoded (default 65536).
    pub max_header_list_size: Option<Spanned<i64>>,
    /// grpc: bytes of one request message; a larger one ends that call with RESOURCE_EXHAUSTED
    /// (default 16777216).
    pub max_message_size: Option<Spanned<i64>>,
    /// grpc: time from accept to the HTTP/2 preface, the TLS handshake included (default 10s).
    pub handshake_timeout: Option<Spanned<ConfigDuration>>,
    /// grpc: once a frame, or a HEADERS block with its CONTINUATION frames, has begun to arrive,
    /// it must be whole within this, or the connection is closed (default 10s, at most 1h).
    /// A connection quiet between frames is not affected.
    pub request_header_timeout: Option<Spanned<ConfigDuration>>,
    /// grpc: a request body the gateway reads whole before forwarding it (JSON calls, hedged
    /// routes) must arrive within this, or the call is answered DEADLINE_EXCEEDED (default
    /// 30s, at most 1h).
    pub request_body_timeout: Option<Spanned<ConfigDuration>>,
    /// TCP keepalive: probe a connection idle this long, so dead peers are noticed (default
    /// 60s; whole seconds up to 32767s; "0s" turns it off).
    pub keepalive: Option<Spanned<ConfigDuration>>,
    /// grpc: send an HTTP/2 PING on each client connection this often (default 30s; "0s" turns
    /// it off; otherwise 1s to 1h).
    pub ping_interval: Option<Spanned<ConfigDuration>>,
    /// grpc: a client that has not answered a PING within this is closed and its calls end
    /// (default 10s, at most 1h).
    pub ping_timeout: Option<Spanned<ConfigDuration>>,
}

/// TLS termination for a gRPC listener (ALPN h2).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSection {
    /// Certificate chain (PEM), leaf first. Re-read on reload.
    pub cert: Spanned<String>,
    /// Private key (PEM). Re-read on reload.
    pub key: Spanned<String>,
    /// CA bundle (PEM) for mutual TLS: callers must present a certificate it signed.
    pub client_ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The gRPC listener this route belongs to.
    pub listener: Spanned<String>,
    /// Fully qualified gRPC service ("package.Service") or "*" for every service.
    pub service: Spanned<String>,
    /// One method of `service`; without it the route covers the whole service.
    pub method: Option<Spanned<String>>,
    /// The upstream that serves the route; a route has either `upstream` or `split`.
    pub upstream: Option<Spanned<String>>,
    /// Weighted shares of the calls across upstreams, like
    /// `[{ upstream = "cart", weight = 90 }, { upstream = "cart-v2", weight = 10 }]`.
    pub split: Option<Spanned<Vec<SplitSection>>>,
    /// With `split`: a stable hash of this request header's value picks the side, so one
    /// value (a user id) always lands on the same upstream; calls without it split by weight.
    pub hash_header: Option<Spanned<String>>,
    /// Only calls whose metadata matches take this route; routes with `match` are tried
    /// before the one without, in file order.
    #[serde(rename = "match")]
    pub match_on: Option<Spanned<MatchSection>>,
    /// Calls per second admitted on this route, per key; beyond: RESOURCE_EXHAUSTED.
    pub rate_limit: Option<Spanned<RateLimitSection>>,
    /// Send a call again when its backend answered trailers-only with one of these statuses.
    pub retry: Option<Spanned<RetrySection>>,
    /// The route's calls may be sent more than once and run to completion (needed by `hedge`).
    pub idempotent: Option<Spanned<bool>>,
    /// `{ delay = "20ms", max_attempts = 2 }`: when no response headers came `delay` after the
    /// latest attempt started, send another to another endpoint; the first to answer wins.
    pub hedge: Option<Spanned<HedgeSection>>,
    /// Deadline for calls that carry no grpc-timeout.
    pub timeout: Option<Spanned<ConfigDuration>>,
    /// `[[auth]]` providers, by name: a caller must be accepted by one of them (default: the
    /// route is open).
    pub auth: Option<Spanned<Vec<Spanned<String>>>>,
    /// Claims the accepted caller must hold, like `{ scope = "cart:write" }`: equal, in an
    /// array, or a word of a space-separated string.
    pub require_claims: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    /// A Rego file (relative to this file) whose `data.strait.allow` must be true for an
    /// accepted caller's call; compiled at load and reload, denies when it fails.
    pub policy: Option<Spanned<String>>,
    /// An `[[ext_authz]]` service asked about every call of the route (after `auth`).
    pub ext_authz: Option<Spanned<String>>,
}

/// One side of a weighted split.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitSection {
    pub upstream: Spanned<String>,
    /// 0-10000; sides share the calls in proportion to their weights (0 takes none).
    pub weight: Spanned<i64>,
}

/// What a call's metadata must carry for a route to take it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchSection {
    /// Request headers that must all match: an exact value, or "*" for "present".
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Spanned<String>>,
    /// The caller the route's `auth` accepts, as `provider:subject`, exact or ending in `*`
    /// (`"partners:*"`). Needs `auth` on the route.
    pub principal: Option<Spanned<String>>,
}

/// A token bucket per key (GCRA): `per_second` tokens refill it, `burst` is its size.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Calls per second, 1 to 1,000,000.
    pub per_second: Spanned<i64>,
    /// Calls admitted at once after a quiet spell (default: `per_second`).
    pub burst: Option<Spanned<i64>>,
    /// "route" (default: one bucket for the route), "peer" (one per client IP) or
    /// "header:NAME" (one per value of that request header).
    pub key: Option<Spanned<String>>,
    /// "gateway" (default: each gateway enforces the whole limit) or "cluster" (the limit is
    /// shared by the gateways registered in etcd: each enforces per_second / N; needs [etcd]).
    pub scope: Option<Spanned<String>>,
}

/// `{ on = ["UNAVAILABLE"], max_attempts = 3, backoff = "25ms", max_backoff = "250ms", buffer = "64KiB" }`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// gRPC status names (like "UNAVAILABLE") of a trailers-only answer that may be retried.
    pub on: Vec<Spanned<String>>,
    /// Attempts per call, first included, 2 to 10 (default 3).
    pub max_attempts: Option<Spanned<i64>>,
    /// Back-off before the first retry, randomised below it and doubled per retry (default 25ms).
    pub backoff: Option<Spanned<ConfigDuration>>,
    /// The back-off's ceiling (default 250ms).
    pub max_backoff: Option<Spanned<ConfigDuration>>,
    /// Request size up to which a call may be retried: "64KiB" (the default and the most),
    /// "16KiB", "512B", or a number of bytes.
    pub buffer: Option<Spanned<ByteSize>>,
}

/// `{ delay = "20ms", max_attempts = 2 }`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HedgeSection {
    /// How long an attempt may go without response headers before the next starts (1ms-60s).
    pub delay: Spanned<ConfigDuration>,
    /// Attempts at most, the first included, 2 to 5 (default 2).
    pub max_attempts: Option<Spanned<i64>>,
}

/// A size in bytes: a number, or a string with B, KiB or MiB.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(i64),
    Text(String),
}

/// `{ percent = 20, min_per_second = 10 }`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSection {
    /// Retries at most this percentage of the calls of the last 10 s, 0 to 100 (default 20).
    pub percent: Option<Spanned<i64>>,
    /// ... plus this many per second, 0 to 100000 (default 10).
    pub min_per_second: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub name: Spanned<String>,
    /// "static" (default): the `endpoints` list. "etcd": instances registered under
    /// `{etcd.prefix}{service}/`. "dns": the addresses the `hosts` names resolve to.
    pub discovery: Option<Spanned<String>>,
    #[serde(default)]
    pub endpoints: Vec<Spanned<EndpointSection>>,
    /// dns discovery: names whose A and AAAA records are the endpoints.
    #[serde(default)]
    pub hosts: Vec<Spanned<HostSection>>,
    /// dns discovery: re-resolve at most this often (default 5s, 1s to 1h); a record TTL
    /// shorter than this shortens it, never below 1s.
    pub refresh: Option<Spanned<ConfigDuration>>,
    /// etcd discovery: instances are the keys under `{prefix}{service}/`.
    pub service: Option<Spanned<String>>,
    pub select: Option<Spanned<SelectSection>>,
    /// etcd and dns discovery: CIDRs discovered addresses must fall in (default: any address
    /// but link-local ones); the gateway's own listening addresses are refused either way.
    pub allowed_networks: Option<Spanned<Vec<Spanned<String>>>>,
    pub health: Option<HealthSection>,
    pub breaker: Option<BreakerSection>,
    /// Time allowed to open a connection to one endpoint (default 1s).
    pub connect_timeout: Option<Spanned<ConfigDuration>>,
    /// Attempts per call, first included, while nothing was sent upstream (default 3).
    pub max_attempts: Option<Spanned<i64>>,
    /// Calls at most in flight at once on this upstream (default: no limit); beyond it a call
    /// is answered UNAVAILABLE at once (shed, not queued).
    pub max_in_flight: Option<Spanned<i64>>,
    /// Region spill: the preferred region keeps min(1, healthy share x this) of its calls, the
    /// rest goes by weight to other regions (default 1.4; 0 = strict region first).
    pub region_overprovision: Option<Spanned<f64>>,
    /// Retries of the routes to this upstream are at most `percent` of its calls of the last
    /// 10 s plus `min_per_second` (default `{ percent = 20, min_per_second = 10 }`).
    pub retry_budget: Option<Spanned<RetryBudgetSection>>,
    pub tls: Option<UpstreamTlsSection>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    /// IP:port of the backend.
    pub addr: Spanned<String>,
    /// 0-100 (default 100); 0 drains the endpoint.
    pub weight: Option<Spanned<i64>>,
    pub region: Option<String>,
}

/// A DNS name of a `discovery = "dns"` upstream: every address it resolves to is an endpoint.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// Host name, like "orders.internal" or a compose service name; not an IP address (those
    /// go in a static upstream's `endpoints`).
    pub name: Spanned<String>,
    /// Port of every address the name resolves to.
    pub port: Spanned<i64>,
    /// 0-100 (default 100), for each address; 0 drains them.
    pub weight: Option<Spanned<i64>>,
    pub region: Option<String>,
}

/// TLS towards the upstream's endpoints.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// CA bundle (PEM) trusted for the backends; system roots without it.
    pub ca: Option<Spanned<String>>,
    /// Name checked against the backend certificate and sent as SNI (default: the endpoint IP).
    pub server_name: Option<String>,
    /// Client certificate (PEM) presented to backends that require one; needs `key`.
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

/// Active gRPC Health v1 probes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    pub interval: Option<Spanned<ConfigDuration>>,
    pub timeout: Option<Spanned<ConfigDuration>>,
    /// Service name sent in HealthCheckRequest ("" = the server as a whole).
    pub service: Option<String>,
    pub unhealthy_after: Option<Spanned<i64>>,
    pub healthy_after: Option<Spanned<i64>>,
}

/// Per-endpoint circuit breaker settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub failure_rate: Option<Spanned<f64>>,
    pub window: Option<Spanned<i64>>,
    pub min_calls: Option<Spanned<i64>>,
    pub open_for: Option<Spanned<ConfigDuration>>,
    /// "fixed", "exponential" or "jittered".
    pub backoff: Option<Spanned<String>>,
    pub max_open_for: Option<Spanned<ConfigDuration>>,
    pub half_open_calls: Option<Spanned<i64>>,
    /// gRPC status names that count as endpoint failures.
    pub failure_codes: Option<Vec<Spanned<String>>>,
    pub max_ejected_percent: Option<Spanned<i64>>,
}
