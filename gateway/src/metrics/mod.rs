//! Prometheus metrics. One `Metrics` handle is created per process and passed to whoever
//! records (no global registry). Label handles are resolved once per route and per endpoint
//! (`RouteMetrics`, `EndpointMetrics`), so the call path only increments atomics. Label values
//! come only from configured names, endpoint addresses and gRPC codes: the sets are bounded.
//! Gauges that describe state (breakers, endpoints, discovery) are filled at scrape time.

mod departed;
mod methods;
pub mod traffic;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use departed::{remove_endpoint_series, Departures};
use methods::MethodFamilies;
pub use methods::{MethodMetrics, RouteMethods, OTHER};
use traffic::TrafficWindow;

use crate::breaker::{State, Transition};
use crate::grpc::Code;

/// How an attempt on an endpoint ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Ok,
    GrpcFailure,
    ConnectError,
    Reset,
    Timeout,
}

impl AttemptOutcome {
    const ALL: [AttemptOutcome; 5] = [
        AttemptOutcome::Ok,
        AttemptOutcome::GrpcFailure,
        AttemptOutcome::ConnectError,
        AttemptOutcome::Reset,
        AttemptOutcome::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::GrpcFailure => "grpc_failure",
            AttemptOutcome::ConnectError => "connect_error",
            AttemptOutcome::Reset => "reset",
            AttemptOutcome::Timeout => "timeout",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    endpoint_labels: bool,
    methods: Arc<MethodFamilies>,
    /// One per (listener, route, upstream), kept across snapshots and reloads so a method's
    /// handles are created once.
    routes: Mutex<HashMap<(String, String, String), Arc<RouteMetrics>>>,
    /// The status page's last minute per upstream, kept across snapshots.
    upstream_traffic: Mutex<HashMap<String, Arc<TrafficWindow>>>,
    attempts: IntCounterVec,
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    ejections_withheld: IntCounterVec,
    in_flight: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    probes: IntCounterVec,
    pub(crate) breaker_state: IntGaugeVec,
    pub(crate) endpoints: IntGaugeVec,
    pub(crate) discovery_events: IntCounterVec,
    pub(crate) discovery_rejected: IntCounterVec,
    discovery_refused: IntCounterVec,
    pub(crate) etcd_connected: IntGauge,
    pub(crate) staleness: prometheus::GaugeVec,
    pub(crate) dns_resolutions: IntCounterVec,
    pub(crate) dns_addresses: IntGaugeVec,
    pub(crate) config_loads: IntCounterVec,
    config_reloads: IntCounterVec,
    tcp_connections: IntCounterVec,
    tcp_active: IntGaugeVec,
    tcp_bytes: IntCounterVec,
    listener_connections: IntGaugeVec,
    listener_rejected: IntCounterVec,
    background_restarts: IntCounterVec,
    pub(crate) access_log_dropped: IntCounter,
    pub(crate) log_lines_dropped: IntCounter,
    pub(crate) trace_spans: IntCounterVec,
    rate_limited: IntCounterVec,
    pub(crate) cluster_gateways: prometheus::IntGauge,
    pub(crate) cluster_registered: prometheus::IntGauge,
    pub(crate) cluster_foreign: prometheus::IntGauge,
    shed: IntCounterVec,
    region_spill: prometheus::GaugeVec,
    pub(crate) xds: XdsMetrics,
    auth: AuthMetrics,
    /// Endpoints whose series go once `endpoint_series_grace` has passed since they left.
    departures: Arc<Departures>,
    endpoint_series_grace: std::time::Duration,
}

/// Caller authentication's instruments (auth/).
#[derive(Clone, Debug)]
pub struct AuthMetrics {
    /// Calls refused by a route's `auth`, by listener, route and reason.
    pub denied: IntCounterVec,
    /// JWKS fetches by provider and result (`ok`, `unchanged`, `error`).
    pub jwks_fetches: IntCounterVec,
    /// Keys held from each provider's JWKS URL (0 before the first good fetch).
    pub jwks_keys: IntGaugeVec,
    /// Unix time of each provider's last good JWKS fetch.
    pub jwks_last_success: prometheus::GaugeVec,
}

/// The xDS server's instruments (xds/).
#[derive(Clone)]
pub struct XdsMetrics {
    /// ADS streams open now.
    pub clients: IntGauge,
    pub pushes: IntCounterVec,
    pub nacks: IntCounterVec,
    pub rejected: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn plain_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    pub fn xds(&self) -> &XdsMetrics {
        &self.xds
    }

    pub fn auth(&self) -> &AuthMetrics {
        &self.auth
    }

    /// `max_methods`: distinct service/method pairs with their own series, per listener.
    /// `endpoint_series_grace`: how long an endpoint's series stay after it left.
    pub fn new(
        endpoint_labels: bool,
        max_methods: usize,
        endpoint_series_grace: std::time::Duration,
    ) -> Arc<Metrics> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registered once");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "strait_call_duration_seconds",
                "Call duration seen by the gateway, by upstream, service and method.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["upstream", "service", "method"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(duration.clone()))
            .expect("registered once");
        let staleness = prometheus::GaugeVec::new(
            Opts::new("strait_discovery_staleness_seconds", "Seconds since the upstream's discovery view was last known current (0 while the etcd watch is live or the latest DNS answers were good; -1 before the first)."),
            &["upstream"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(staleness.clone()))
            .expect("registered once");
        let etcd_connected =
            IntGauge::new("strait_etcd_connected", "1 while the etcd watch is live.")
                .expect("valid gauge");
        registry
            .register(Box::new(etcd_connected.clone()))
            .expect("registered once");
        let methods = Arc::new(MethodFamilies {
            calls: counter(
                &registry,
                "strait_calls_total",
                "Calls by listener, route, upstream, gRPC service and method, final gRPC code, and protocol (grpc, grpc-web, json).",
                &["listener", "route", "upstream", "service", "method", "code", "protocol"],
            ),
            duration,
            messages: counter(
                &registry,
                "strait_messages_total",
                "gRPC messages by upstream, service, method and direction (request: from the caller; response: from the backend).",
                &["upstream", "service", "method", "direction"],
            ),
            max_methods,
            seen: Default::default(),
        });
        Arc::new(Metrics {
            endpoint_labels,
            methods,
            routes: Default::default(),
            upstream_traffic: Default::default(),
            attempts: counter(
                &registry,
                "strait_upstream_attempts_total",
                "Attempts on upstream endpoints by outcome.",
                &["upstream", "endpoint", "outcome"],
            ),
            retries: counter(
                &registry,
                "strait_retries_total",
                "Attempts after the first, by upstream and reason: unprocessed (nothing reached a backend) or status (a retry policy's status).",
                &["upstream", "reason"],
            ),
            retry_budget_exhausted: counter(
                &registry,
                "strait_retry_budget_exhausted_total",
                "Retries a route's retry policy allowed but the upstream's retry_budget refused.",
                &["upstream"],
            ),
            ejections_withheld: counter(
                &registry,
                "strait_ejections_withheld_total",
                "Endpoint failures recorded while the endpoint's peers failed alike (at least half as often): they may not eject it.",
                &["upstream"],
            ),
            in_flight: gauge(
                &registry,
                "strait_calls_in_flight",
                "Calls being served, by listener.",
                &["listener"],
            ),
            breaker_transitions: counter(
                &registry,
                "strait_breaker_transitions_total",
                "Breaker transitions by endpoint, from, to and reason.",
                &["upstream", "endpoint", "from", "to", "reason"],
            ),
            probes: counter(
                &registry,
                "strait_health_probes_total",
                "Health probe results by endpoint.",
                &["upstream", "endpoint", "result"],
            ),
            breaker_state: gauge(
                &registry,
                "strait_breaker_state",
                "Breaker state per endpoint: 0 closed, 1 open, 2 half-open.",
                &["upstream", "endpoint"],
            ),
            endpoints: gauge(
                &registry,
                "strait_endpoints",
                "Endpoints per upstream by state (usable, open, half_open, unhealthy, drained).",
                &["upstream", "state"],
            ),
            discovery_events: counter(
                &registry,
                "strait_discovery_events_total",
                "etcd events applied and rejected.",
                &["result"],
            ),
            discovery_refused: counter(
                &registry,
                "strait_discovery_refused_total",
                "Discovered addresses an upstream refused to route to (allowed_networks, link-local, the gateway's own address), counted when each appears.",
                &["upstream", "reason"],
            ),
            discovery_rejected: counter(
                &registry,
                "strait_discovery_rejected_total",
                "etcd entries skipped, by reason.",
                &["reason"],
            ),
            etcd_connected,
            staleness,
            dns_resolutions: counter(
                &registry,
                "strait_dns_resolutions_total",
                "DNS resolutions of dns upstreams' names, by result (ok, no_records, error).",
                &["name", "result"],
            ),
            dns_addresses: gauge(
                &registry,
                "strait_dns_addresses",
                "Addresses in the set a DNS name serves (the last good answer).",
                &["name"],
            ),
            config_loads: counter(
                &registry,
                "strait_config_loads_total",
                "Config loads and reloads by result.",
                &["result"],
            ),
            trace_spans: counter(
                &registry,
                "strait_trace_spans_total",
                "Finished trace spans by what became of them: exported to the OTLP collector, or dropped (queue_full: the exporter fell behind; export_failed: the collector refused or could not be reached).",
                &["result"],
            ),
            access_log_dropped: {
                let c = IntCounter::new(
                    "strait_access_log_dropped_total",
                    "Access log lines dropped because the writer's queue was full (the disk is slower than the calls).",
                )
                .expect("valid counter");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            log_lines_dropped: {
                let c = IntCounter::new(
                    "strait_log_lines_dropped_total",
                    "Log lines dropped because stderr did not keep up (the queue to it was full); the workers never wait for it.",
                )
                .expect("valid counter");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            config_reloads: counter(
                &registry,
                "strait_config_reloads_total",
                "Reloads (SIGHUP or POST /reload) by result; an error keeps the running config.",
                &["result"],
            ),
            tcp_connections: counter(
                &registry,
                "strait_tcp_connections_total",
                "Connections accepted on tcp listeners, by how they ended.",
                &["listener", "outcome"],
            ),
            tcp_active: gauge(
                &registry,
                "strait_tcp_active_connections",
                "Open connections on tcp listeners.",
                &["listener"],
            ),
            listener_connections: gauge(
                &registry,
                "strait_listener_connections",
                "Open downstream connections, by listener.",
                &["listener"],
            ),
            listener_rejected: counter(
                &registry,
                "strait_listener_rejected_total",
                "Connections refused or closed by the listener's limits, by listener and reason.",
                &["listener", "reason"],
            ),
            background_restarts: counter(
                &registry,
                "strait_background_restarts_total",
                "Background tasks (etcd_watch, dns_discovery, health_probes, health_probe, control) that panicked or returned and were restarted.",
                &["task"],
            ),
            tcp_bytes: counter(
                &registry,
                "strait_tcp_bytes_total",
                "Bytes relayed by tcp listeners; upstream = client to backend.",
                &["listener", "direction"],
            ),
            cluster_gateways: {
                let g = prometheus::IntGauge::new(
                    "strait_cluster_gateways",
                    "Gateways registered under [etcd] members_prefix, this one included; cluster-wide rate limits divide by it (0 before the first count).",
                )
                .expect("valid gauge");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registered once");
                g
            },
            cluster_registered: plain_gauge(
                &registry,
                "strait_cluster_registered",
                "1 while this gateway's key is under [etcd] members_prefix; 0 when it cannot register (cluster-wide rate limits then count it alone).",
            ),
            cluster_foreign: plain_gauge(
                &registry,
                "strait_cluster_foreign_gateways",
                "Gateways of another fleet (another [etcd] prefix) registered under the same members_prefix; not counted.",
            ),
            rate_limited: counter(
                &registry,
                "strait_rate_limited_total",
                "Calls refused with RESOURCE_EXHAUSTED by their route's rate_limit.",
                &["route"],
            ),
            shed: counter(
                &registry,
                "strait_shed_total",
                "Calls refused with UNAVAILABLE because the upstream had max_in_flight calls in flight.",
                &["upstream"],
            ),
            xds: XdsMetrics {
                clients: {
                    let g = IntGauge::new(
                        "strait_xds_clients",
                        "xDS clients with an ADS stream open now.",
                    )
                    .expect("valid gauge");
                    registry
                        .register(Box::new(g.clone()))
                        .expect("registered once");
                    g
                },
                pushes: counter(
                    &registry,
                    "strait_xds_pushes_total",
                    "xDS responses sent, by resource type (lds, rds, cds, eds).",
                    &["type"],
                ),
                nacks: counter(
                    &registry,
                    "strait_xds_nacks_total",
                    "xDS responses a client rejected (NACK), by resource type.",
                    &["type"],
                ),
                rejected: counter(
                    &registry,
                    "strait_xds_requests_rejected_total",
                    "xDS requests, streams or connections the server refused, by reason (unknown_type, stream_error, delta, max_connections).",
                    &["reason"],
                ),
            },
            auth: AuthMetrics {
                denied: counter(
                    &registry,
                    "strait_auth_denied_total",
                    "Calls refused by their route's auth before reaching a backend, by reason (missing, invalid, expired, forbidden, keys_unavailable).",
                    &["listener", "route", "reason"],
                ),
                jwks_fetches: counter(
                    &registry,
                    "strait_jwks_fetches_total",
                    "Fetches of a jwt provider's jwks_url, by result (ok: new keys, unchanged, error).",
                    &["provider", "result"],
                ),
                jwks_keys: gauge(
                    &registry,
                    "strait_jwks_keys",
                    "Verification keys held from a jwt provider's jwks_url (the last good set is kept when a fetch fails).",
                    &["provider"],
                ),
                jwks_last_success: {
                    let g = prometheus::GaugeVec::new(
                        Opts::new(
                            "strait_jwks_last_success_timestamp_seconds",
                            "Unix time of the last good fetch of a jwt provider's jwks_url.",
                        ),
                        &["provider"],
                    )
                    .expect("valid gauge");
                    registry
                        .register(Box::new(g.clone()))
                        .expect("registered once");
                    g
                },
            },
            departures: Arc::default(),
            endpoint_series_grace,
            region_spill: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "strait_region_spill_ratio",
                        "Share of the gateway's own region's calls currently sent to other regions (region_overprovision), as of the latest call.",
                    ),
                    &["upstream"],
                )
                .expect("valid gauge");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registered once");
                g
            },
            registry,
        })
    }

    /// Refusals by a route's rate limit.
    pub fn rate_limited(&self, route: &str) -> IntCounter {
        self.rate_limited.with_label_values(&[route])
    }

    /// Retries refused by an upstream's retry budget.
    pub fn retry_budget_exhausted(&self, upstream: &str) -> IntCounter {
        self.retry_budget_exhausted.with_label_values(&[upstream])
    }

    /// Discovered addresses `upstream` refused, by reason.
    pub fn discovery_refused(&self, upstream: &str, reason: &str) -> IntCounter {
        self.discovery_refused
            .with_label_values(&[upstream, reason])
    }

    /// Failures of `upstream`'s endpoints recorded while their peers failed alike (no ejection).
    pub fn ejections_withheld(&self, upstream: &str) -> IntCounter {
        self.ejections_withheld.with_label_values(&[upstream])
    }

    /// Calls shed by an upstream's max_in_flight.
    pub fn shed(&self, upstream: &str) -> IntCounter {
        self.shed.with_label_values(&[upstream])
    }

    pub fn region_spill_ratio(&self, upstream: &str) -> prometheus::Gauge {
        self.region_spill.with_label_values(&[upstream])
    }

    /// The endpoint label value: its address, or "-" when per-endpoint labels are off.
    pub fn endpoint_label(&self, addr: std::net::SocketAddr) -> String {
        if self.endpoint_labels {
            addr.to_string()
        } else {
            "-".into()
        }
    }

    /// A route's handles; the same ones for every snapshot that has this route.
    pub fn route(&self, listener: &str, route: &str, upstream: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let key = (
            listener.to_string(),
            route.to_string(),
            upstream.to_string(),
        );
        routes
            .entry(key)
            .or_insert_with(|| {
                Arc::new(RouteMetrics {
                    methods: RouteMethods::new(self.methods.clone(), listener, route, upstream),
                    retries_unprocessed: self.retries.with_label_values(&[upstream, "unprocessed"]),
                    retries_on_status: self.retries.with_label_values(&[upstream, "status"]),
                    hedges: self.retries.with_label_values(&[upstream, "hedge"]),
                    traffic: Default::default(),
                    upstream_traffic: self.upstream_traffic(upstream),
                })
            })
            .clone()
    }

    /// The last minute of traffic of `upstream` (all its routes together).
    pub fn upstream_traffic(&self, upstream: &str) -> Arc<TrafficWindow> {
        let mut all = self
            .upstream_traffic
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.entry(upstream.to_string()).or_default().clone()
    }

    /// Open connections and rejections by reason of one listener, for the status page.
    pub fn listener_figures(&self, listener: &str) -> (i64, Vec<(&'static str, u64)>) {
        let open = self
            .listener_connections
            .with_label_values(&[listener])
            .get();
        let rejected = Rejection::ALL
            .iter()
            .map(|r| {
                let n = self
                    .listener_rejected
                    .with_label_values(&[listener, r.as_str()])
                    .get();
                (r.as_str(), n)
            })
            .collect();
        (open, rejected)
    }

    /// Counter for calls that matched no route (answered by the gateway itself).
    pub fn unrouted_call(&self, listener: &str, code: Code, protocol: crate::grpc::Protocol) {
        self.methods
            .calls
            .with_label_values(&[
                listener,
                "-",
                "-",
                "-",
                "-",
                code.as_str(),
                protocol.as_str(),
            ])
            .inc();
    }

    /// Removes the series of endpoints that left at least `endpoint_series_grace` before
    /// `now`; returns how many endpoints' series went. Called at every scrape and snapshot
    /// build.
    pub fn sweep_departed_endpoints(&self, now: Instant) -> usize {
        let due = self.departures.due(now, self.endpoint_series_grace);
        for (upstream, endpoint) in &due {
            remove_endpoint_series(&self.attempts, upstream, endpoint);
            remove_endpoint_series(&self.probes, upstream, endpoint);
            remove_endpoint_series(&self.breaker_transitions, upstream, endpoint);
            remove_endpoint_series(&self.breaker_state, upstream, endpoint);
        }
        due.len()
    }

    pub fn endpoint(&self, upstream: &str, addr: std::net::SocketAddr) -> EndpointMetrics {
        let endpoint = self.endpoint_label(addr);
        self.departures.returned(upstream, &endpoint);
        EndpointMetrics {
            attempts: AttemptOutcome::ALL.map(|o| {
                self.attempts
                    .with_label_values(&[upstream, &endpoint, o.as_str()])
            }),
            probe_ok: self.probes.with_label_values(&[upstream, &endpoint, "ok"]),
            probe_failed: self
                .probes
                .with_label_values(&[upstream, &endpoint, "failed"]),
            transitions: self.breaker_transitions.clone(),
            upstream: upstream.to_string(),
            // With per-endpoint labels off every endpoint shares "-": nothing to remove.
            departures: self.endpoint_labels.then(|| self.departures.clone()),
            endpoint,
        }
    }

    pub fn in_flight(&self, listener: &str) -> IntGauge {
        self.in_flight.with_label_values(&[listener])
    }

    pub fn config_loaded(&self, ok: bool) {
        self.config_loads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// A reload attempt: applied (`ok`) or refused (`error`, the running config stays).
    pub fn config_reloaded(&self, ok: bool) {
        self.config_loaded(ok);
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// A supervised background task failed and is being restarted.
    pub fn background_restarted(&self, task: &str) {
        self.background_restarts.with_label_values(&[task]).inc();
    }

    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        ListenerMetrics {
            open: self.listener_connections.with_label_values(&[listener]),
            rejected: Rejection::ALL.map(|r| {
                self.listener_rejected
                    .with_label_values(&[listener, r.as_str()])
            }),
        }
    }

    pub fn tcp(&self, listener: &str) -> TcpMetrics {
        TcpMetrics {
            connections: TcpOutcome::ALL.map(|o| {
                self.tcp_connections
                    .with_label_values(&[listener, o.as_str()])
            }),
            active: self.tcp_active.with_label_values(&[listener]),
            bytes_upstream: self.tcp_bytes.with_label_values(&[listener, "upstream"]),
            bytes_downstream: self.tcp_bytes.with_label_values(&[listener, "downstream"]),
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// A route's call counters: per method (created on a method's first call) and its retries.
#[derive(Debug)]
pub struct RouteMetrics {
    pub methods: RouteMethods,
    retries_unprocessed: IntCounter,
    retries_on_status: IntCounter,
    hedges: IntCounter,
    /// The last minute of this route's calls (status page).
    pub traffic: TrafficWindow,
    /// The same for its upstream, shared by every route to it.
    pub upstream_traffic: Arc<TrafficWindow>,
}

impl RouteMetrics {
    /// A further attempt; `on_status` when a retry policy sent the call again after the
    /// backend's status, else the backend never saw the previous attempt.
    /// A hedged attempt after the first.
    pub fn hedge(&self) {
        self.hedges.inc();
    }

    pub fn retry(&self, on_status: bool) {
        if on_status {
            self.retries_on_status.inc();
        } else {
            self.retries_unprocessed.inc();
        }
    }
}

/// An endpoint's counters, resolved when its state is created. Dropped with the state (the
/// endpoint left every snapshot and its last call ended), it marks the series for removal.
#[derive(Debug)]
pub struct EndpointMetrics {
    attempts: [IntCounter; 5],
    probe_ok: IntCounter,
    probe_failed: IntCounter,
    transitions: IntCounterVec,
    upstream: String,
    endpoint: String,
    departures: Option<Arc<Departures>>,
}

impl Drop for EndpointMetrics {
    fn drop(&mut self) {
        if let Some(departures) = &self.departures {
            departures.left(&self.upstream, &self.endpoint, Instant::now());
        }
    }
}

impl EndpointMetrics {
    pub fn attempt(&self, outcome: AttemptOutcome) {
        self.attempts[outcome as usize].inc();
    }

    pub fn probe(&self, ok: bool) {
        if ok {
            &self.probe_ok
        } else {
            &self.probe_failed
        }
        .inc();
    }

    pub fn transition(&self, t: &Transition) {
        self.transitions
            .with_label_values(&[
                &self.upstream,
                &self.endpoint,
                t.from.as_str(),
                t.to.as_str(),
                t.reason.as_str(),
            ])
            .inc();
    }
}

pub fn breaker_state_value(state: State) -> i64 {
    match state {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
    }
}

/// How a tcp listener's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOutcome {
    /// Relayed until one side closed.
    Closed,
    /// No byte either way for `idle_timeout`.
    Idle,
    /// Still open when a drain's grace period ended.
    Drained,
    /// A side reset the connection or an I/O error ended it.
    Error,
    /// No endpoint could be reached.
    NoEndpoint,
}

impl TcpOutcome {
    pub const ALL: [TcpOutcome; 5] = [
        TcpOutcome::Closed,
        TcpOutcome::Idle,
        TcpOutcome::Drained,
        TcpOutcome::Error,
        TcpOutcome::NoEndpoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TcpOutcome::Closed => "closed",
            TcpOutcome::Idle => "idle_timeout",
            TcpOutcome::Drained => "drained",
            TcpOutcome::Error => "error",
            TcpOutcome::NoEndpoint => "no_endpoint",
        }
    }
}

/// One tcp listener's counters, resolved when the listener starts.
#[derive(Debug, Clone)]
pub struct TcpMetrics {
    connections: [prometheus::IntCounter; 5],
    pub active: IntGauge,
    pub bytes_upstream: prometheus::IntCounter,
    pub bytes_downstream: prometheus::IntCounter,
}

impl TcpMetrics {
    pub fn finished(&self, outcome: TcpOutcome) {
        let index = TcpOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.connections[index].inc();
    }
}

/// Why a connection was closed before it reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    MaxConnections,
    HandshakeTimeout,
    HandshakeError,
    /// Closed later: the client reset streams faster than allowed.
    RapidReset,
    /// Closed later: a begun frame or header block did not arrive whole in time.
    HeaderTimeout,
    /// Closed later: the client did not answer an HTTP/2 PING in time.
    PingTimeout,
    /// A trusted source on a `proxy_protocol` listener sent no valid PROXY header in time.
    ProxyProtocol,
}

impl Rejection {
    pub const ALL: [Rejection; 7] = [
        Rejection::MaxConnections,
        Rejection::HandshakeTimeout,
        Rejection::HandshakeError,
        Rejection::RapidReset,
        Rejection::HeaderTimeout,
        Rejection::PingTimeout,
        Rejection::ProxyProtocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::MaxConnections => "max_connections",
            Rejection::HandshakeTimeout => "handshake_timeout",
            Rejection::HandshakeError => "handshake_error",
            Rejection::RapidReset => "rapid_reset",
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::PingTimeout => "ping_timeout",
            Rejection::ProxyProtocol => "proxy_protocol",
        }
    }
}

/// One listener's connection gauge and rejection counters.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    pub open: IntGauge,
    rejected: [prometheus::IntCounter; Rejection::ALL.len()],
}

impl ListenerMetrics {
    pub fn rejected(&self, reason: Rejection) {
        let index = Rejection::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.rejected[index].inc();
    }
}
