use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::Lasting;
use crate::auth::{
    ApiKeyProvider, ExtAuthz, JwtProvider, KeySource, MtlsProvider, Provider, Providers, RouteAuth,
};
use crate::balancer::{Balancer, Candidate, Claimable, SpillReport};
use crate::config::{
    AuthKind, Config, Destination as RouteDestination, JwtKeys, ListenerKind, RouteConfig,
    ServiceMatch,
};
use crate::discovery::{endpoints_for, EndpointSpec, Endpoints, Views};
use crate::endpoint::EndpointState;
use crate::endpoint::{PeerTemplate, PeerTemplateError, PeerTls};
use crate::policy::{
    self, Admits, Destination, HeaderMatch, HedgePolicy, InFlightCount, InFlightPermit, Refusal,
    RetryBudget, RetryPolicy, RouteChoice, RouteLimit, RoutePolicy, Split,
};

/// One endpoint as the call path sees it: what discovery reported, plus its live state and its
/// prepared connection settings. Derefs to the `EndpointSpec` (address, weight, region, ...).
#[derive(Debug)]
pub struct Endpoint {
    pub spec: EndpointSpec,
    pub state: Arc<EndpointState>,
    /// Connection settings, prepared once per snapshot instead of once per call.
    pub peer: PeerTemplate,
}

impl std::ops::Deref for Endpoint {
    type Target = EndpointSpec;

    fn deref(&self) -> &EndpointSpec {
        &self.spec
    }
}

impl Claimable for Endpoint {
    fn admit(&self, now: std::time::Instant) -> crate::breaker::Admission {
        self.state.admit(now)
    }
}

impl Candidate for Endpoint {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }
    fn is_usable(&self) -> bool {
        self.state.is_usable()
    }
}

/// An upstream's endpoints with their shared balancing sequence.
#[derive(Debug)]
pub struct UpstreamSet {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    /// Why there are no endpoints, when there are none (e.g. waiting for etcd).
    pub empty_reason: Option<String>,
    /// Discovery has not answered yet: the set is unknown rather than empty.
    pub awaiting_discovery: bool,
    pub breaker: crate::breaker::BreakerSettings,
    pub health: Option<crate::config::HealthSettings>,
    /// Where the endpoints come from: "static", "etcd" or "dns".
    pub discovery: &'static str,
    /// dns upstreams: the names resolved, with their ports (empty otherwise).
    pub dns_hosts: Vec<(String, u16)>,
    pub tls: Option<crate::config::UpstreamTls>,
    /// The TLS files as read for this config, reused by discovery-driven rebuilds.
    peer_tls: Option<Arc<PeerTls>>,
    /// Serialises "may another endpoint be ejected?" with the ejection itself.
    ejection: std::sync::Mutex<()>,
    balancer: Balancer,
    load: UpstreamLoad,
    max_in_flight: Option<u32>,
}

/// An upstream's load state and its instruments, which outlive the set (see `PolicyState`).
#[derive(Debug, Default)]
pub struct UpstreamLoad {
    pub in_flight: Arc<InFlightCount>,
    pub shed: Option<prometheus::IntCounter>,
    /// Where the balancer reports the own region's spill.
    pub spill: SpillReport,
    /// How many retries the routes to this upstream may make now.
    pub retry_budget: Option<Arc<RetryBudget>>,
    pub budget_exhausted: Option<prometheus::IntCounter>,
    /// Failures recorded while the failing endpoint's peers failed alike (they eject nothing).
    pub ejections_withheld: Option<prometheus::IntCounter>,
}

impl UpstreamSet {
    pub fn new(
        config: &crate::config::UpstreamConfig,
        endpoints: Vec<Endpoint>,
        empty_reason: Option<String>,
        awaiting_discovery: bool,
        peer_tls: Option<Arc<PeerTls>>,
        mut load: UpstreamLoad,
    ) -> Self {
        let balancer = Balancer::new(
            endpoints.len(),
            config.region_overprovision,
            std::mem::take(&mut load.spill),
        );
        Self {
            name: config.name.clone(),
            endpoints,
            max_attempts: config.max_attempts,
            connect_timeout: config.connect_timeout,
            empty_reason,
            awaiting_discovery,
            breaker: config.breaker.clone(),
            health: config.health.clone(),
            discovery: config.discovery.kind(),
            dns_hosts: match &config.discovery {
                crate::config::Discovery::Dns { hosts, .. } => {
                    hosts.iter().map(|h| (h.name.clone(), h.port)).collect()
                }
                _ => Vec::new(),
            },
            tls: config.tls.clone(),
            peer_tls,
            ejection: std::sync::Mutex::new(()),
            balancer,
            load,
            max_in_flight: config.max_in_flight,
        }
    }

    /// Counts a call towards the retry budget (its first attempt).
    pub fn count_call(&self) {
        if let Some(budget) = &self.load.retry_budget {
            budget.record_call();
        }
    }

    /// The upstream's retry budget (shared by every route to it).
    pub fn retry_budget(&self) -> Option<&RetryBudget> {
        self.load.retry_budget.as_deref()
    }

    /// Counts a status retry the budget refused.
    pub fn note_budget_exhausted(&self) {
        if let Some(counter) = &self.load.budget_exhausted {
            counter.inc();
        }
    }

    /// Calls in flight on this upstream now.
    pub fn in_flight(&self) -> u32 {
        self.load.in_flight.current()
    }

    pub fn max_in_flight(&self) -> Option<u32> {
        self.max_in_flight
    }

    /// Takes an in-flight slot, or sheds the call when `max_in_flight` are taken.
    pub fn enter(&self) -> Result<InFlightPermit, Refusal> {
        policy::try_enter(&self.load.in_flight, self.max_in_flight).ok_or_else(|| {
            if let Some(shed) = &self.load.shed {
                shed.inc();
            }
            Refusal::Shed {
                upstream: self.name.clone(),
                max: self.max_in_flight.unwrap_or(0),
            }
        })
    }

    /// Runs `record` with whether a failure of `failing` may eject it: the cap allows one
    /// more endpoint out, and the endpoint fails clearly more than its peers. Failures every
    /// endpoint shows alike (a caller's malformed requests, a dependency they share) eject
    /// none: ejecting would not help, and would let one caller take endpoints out of rotation
    /// for everyone. A single-endpoint upstream (no peers to compare) keeps its own verdict.
    pub fn with_ejection_rules<R>(
        &self,
        failing: &EndpointState,
        record: impl FnOnce(bool) -> R,
    ) -> R {
        let own = failing.recent.counts();
        let peers = self
            .endpoints
            .iter()
            .filter(|e| !std::ptr::eq(&*e.state, failing) && e.weight > 0 && !e.state.is_ejected())
            .map(|e| e.state.recent.counts())
            .fold((0, 0), |(c, f), (pc, pf)| (c + pc, f + pf));
        // Counts this failure too (it is recorded after the rules are read).
        let own = (own.0 + 1, own.1 + 1);
        if crate::endpoint::clearly_worse_than_peers(own, peers) {
            return self.with_ejection_cap(record);
        }
        if let Some(withheld) = &self.load.ejections_withheld {
            withheld.inc();
        }
        record(false)
    }

    /// Runs `eject` with whether the ejection cap allows one more endpoint out.
    pub fn with_ejection_cap<R>(&self, eject: impl FnOnce(bool) -> R) -> R {
        let _serial = self.ejection.lock().unwrap_or_else(|e| e.into_inner());
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.state.is_ejected())
            .count();
        eject(ejected < self.breaker.max_ejected(self.endpoints.len()))
    }

    /// Counts for "why is nothing usable": (open or half-open, unhealthy, drained).
    pub fn unusable_counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for e in &self.endpoints {
            if e.weight == 0 {
                counts.2 += 1;
            } else if !e.state.healthy() {
                counts.1 += 1;
            } else if e.state.breaker_state() != crate::breaker::State::Closed {
                counts.0 += 1;
            }
        }
        counts
    }

    /// True when `found` describes exactly the endpoints this set already has.
    fn same_endpoints(&self, found: &Endpoints) -> bool {
        self.empty_reason == found.empty_reason
            && self.awaiting_discovery == found.awaiting_discovery
            && self.endpoints.len() == found.specs.len()
            && self
                .endpoints
                .iter()
                .zip(&found.specs)
                .all(|(e, s)| e.spec == *s)
    }

    /// Picks the next endpoint for a call, preferring `region`, never one in `excluded`.
    pub fn pick(&self, region: Option<&str>, excluded: &[usize]) -> Option<usize> {
        self.balancer.pick(&self.endpoints, region, excluded)
    }

    /// Picks an endpoint and claims it from its breaker (`balancer::Balancer::claim`).
    pub fn claim(
        &self,
        region: Option<&str>,
        excluded: &[usize],
    ) -> Option<(usize, crate::breaker::Admission)> {
        self.balancer.claim(&self.endpoints, region, excluded)
    }
}

/// Where a matched call goes.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    /// The route as written in the file (`bench.Echo`, `bench.Echo/Unary`, `*`), for the
    /// access log.
    pub route: Arc<str>,
    pub upstream: Arc<UpstreamSet>,
    pub timeout: Option<Duration>,
    /// Call counters for this route, resolved once per snapshot (none without `[admin]`).
    /// Shared: a target is cloned into every call, and the counters are 35 handles.
    pub metrics: Option<Arc<crate::metrics::RouteMetrics>>,
    /// The route's `retry` (none: only calls no backend saw are tried again).
    pub retry: Option<Arc<RetryPolicy>>,
    /// The route's `hedge`: its calls are carried by the proxy's hedging relay.
    pub hedge: Option<Arc<HedgePolicy>>,
    /// Who may call (none: the route is open).
    pub auth: Option<Arc<RouteAuth>>,
    /// The external authorization service asked about each call.
    pub ext_authz: Option<Arc<ExtAuthz>>,
}

impl Admits for RouteTarget {
    fn enter(&self) -> Result<InFlightPermit, Refusal> {
        self.upstream.enter()
    }
}

/// One `[[route]]` on the call path: its `match`, its upstream or split, its rate limit.
pub type Route = RoutePolicy<RouteTarget>;

/// The routes of one listener. Most specific wins: service+method, then service, then "*";
/// within one of them the first route whose `match` holds, the one without `match` last. A
/// level where no route matches the call's metadata passes it on to the next.
#[derive(Debug, Default)]
pub struct RouteTable {
    services: HashMap<String, ServiceRoutes>,
    any: RouteChoice<RouteTarget>,
}

#[derive(Debug, Default)]
struct ServiceRoutes {
    methods: HashMap<String, RouteChoice<RouteTarget>>,
    whole_service: RouteChoice<RouteTarget>,
}

impl RouteTable {
    /// Every route of the table (for the status page).
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.services
            .values()
            .flat_map(|s| s.methods.values().chain(std::iter::once(&s.whole_service)))
            .chain(std::iter::once(&self.any))
            .flat_map(RouteChoice::routes)
    }

    /// Every place a route of the table can send calls (for the status page).
    pub fn targets(&self) -> impl Iterator<Item = &RouteTarget> {
        self.routes().flat_map(Route::targets)
    }

    pub fn find(&self, service: &str, method: &str, headers: &http::HeaderMap) -> Option<&Route> {
        self.find_with(service, method, headers, &mut |_| None)
    }

    /// `find`, where a route whose `match` names a caller asks `principal` who that route's
    /// `auth` accepts (`provider:subject`).
    pub fn find_with(
        &self,
        service: &str,
        method: &str,
        headers: &http::HeaderMap,
        principal: &mut dyn FnMut(&Route) -> Option<String>,
    ) -> Option<&Route> {
        let by_service = self.services.get(service);
        if let Some(found) = by_service
            .and_then(|s| s.methods.get(method))
            .and_then(|c| c.find_with(headers, principal))
        {
            return Some(found);
        }
        if let Some(found) = by_service.and_then(|s| s.whole_service.find_with(headers, principal))
        {
            return Some(found);
        }
        self.any.find_with(headers, principal)
    }

    fn insert(&mut self, route: &RouteConfig, policy: Route) {
        match (&route.service, &route.method) {
            (ServiceMatch::Exact(s), Some(m)) => {
                let entry = self.services.entry(s.clone()).or_default();
                entry.methods.entry(m.clone()).or_default().push(policy);
            }
            (ServiceMatch::Exact(s), None) => {
                let entry = self.services.entry(s.clone()).or_default();
                entry.whole_service.push(policy);
            }
            (ServiceMatch::Any, _) => self.any.push(policy),
        }
    }
}

/// Where a tcp listener sends its connections.
#[derive(Debug, Clone)]
pub struct TcpRoute {
    pub upstream: Arc<UpstreamSet>,
    pub idle_timeout: Duration,
}

/// Everything a call needs to be routed, frozen at one moment.
#[derive(Debug, Default)]
pub struct RoutingSnapshot {
    /// Bumped by every config reload (not by discovery updates): work that holds files read
    /// from the config (health probes with TLS material) restarts when it changes.
    pub generation: u64,
    listeners: HashMap<String, Arc<RouteTable>>,
    tcp: HashMap<String, TcpRoute>,
    upstreams: HashMap<String, Arc<UpstreamSet>>,
    /// The REST routes of listeners with `[[transcode]]` (read when the config loaded).
    transcoders: HashMap<String, Arc<crate::transcode::TranscodeTable>>,
    /// The `[[auth]]` providers, built when the config loaded (shared by the rebuilds of
    /// discovery changes, so their token caches and fetched keys stay).
    pub auth: Arc<Providers>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("upstream {upstream:?}: {source}")]
    Peer {
        upstream: String,
        source: PeerTemplateError,
    },
    #[error("ext_authz {service:?}: {reason}")]
    ExtAuthz { service: String, reason: String },
    #[error("auth provider {provider:?}: {source}")]
    Auth {
        provider: String,
        source: crate::auth::JwksError,
    },
}

impl RoutingSnapshot {
    /// Builds a snapshot from the config and the latest discovery views.
    ///
    /// `previous` (built from the same config) lets upstreams whose endpoints did not change be
    /// shared as they are: a change to one service of a large registry rebuilds only that
    /// service, and untouched upstreams keep their balancing sequence.
    pub fn build(
        config: &Config,
        views: Views<'_>,
        lasting: &Lasting,
        previous: Option<&RoutingSnapshot>,
    ) -> Result<Self, SnapshotError> {
        lasting.endpoints.prune();
        let auth = match previous {
            Some(previous) => previous.auth.clone(),
            None => Arc::new(build_providers(config, lasting)?),
        };
        let mut upstreams = HashMap::new();
        for upstream in &config.upstreams {
            let found = endpoints_for(upstream, views);
            lasting.refused.note(&upstream.name, &found.refused);
            if let Some(unchanged) = previous
                .and_then(|p| p.upstreams.get(&upstream.name))
                .filter(|prev| prev.same_endpoints(&found))
            {
                upstreams.insert(upstream.name.clone(), unchanged.clone());
                continue;
            }
            // `previous` was built from this same config: its files are the ones to use. A
            // reload passes no `previous`, so the files are read again.
            let peer_tls = match previous.and_then(|p| p.upstreams.get(&upstream.name)) {
                Some(prev) => prev.peer_tls.clone(),
                None => PeerTls::load(upstream).map_err(|source| SnapshotError::Peer {
                    upstream: upstream.name.clone(),
                    source,
                })?,
            };
            let mut endpoints = Vec::with_capacity(found.specs.len());
            for spec in found.specs {
                let peer = PeerTemplate::new(spec.addr, upstream, peer_tls.as_deref());
                endpoints.push(Endpoint {
                    state: lasting.endpoints.state_for(
                        &upstream.name,
                        spec.addr,
                        &upstream.breaker,
                    ),
                    spec,
                    peer,
                });
            }
            upstreams.insert(
                upstream.name.clone(),
                Arc::new(UpstreamSet::new(
                    upstream,
                    endpoints,
                    found.empty_reason,
                    found.awaiting_discovery,
                    peer_tls,
                    UpstreamLoad {
                        in_flight: lasting.policy.in_flight(&upstream.name),
                        shed: lasting.metrics().map(|m| m.shed(&upstream.name)),
                        spill: SpillReport {
                            upstream: upstream.name.clone(),
                            home_region: config.gateway.region.clone(),
                            gauge: lasting
                                .metrics()
                                .map(|m| m.region_spill_ratio(&upstream.name)),
                        },
                        retry_budget: Some(
                            lasting
                                .policy
                                .retry_budget(&upstream.name, &upstream.retry_budget),
                        ),
                        budget_exhausted: lasting
                            .metrics()
                            .map(|m| m.retry_budget_exhausted(&upstream.name)),
                        ejections_withheld: lasting
                            .metrics()
                            .map(|m| m.ejections_withheld(&upstream.name)),
                    },
                )),
            );
        }
        let mut listeners: HashMap<String, RouteTable> = HashMap::new();
        let mut tcp = HashMap::new();
        for listener in &config.listeners {
            match &listener.kind {
                ListenerKind::Grpc => {
                    listeners.insert(listener.name.clone(), RouteTable::default());
                }
                ListenerKind::Tcp {
                    upstream,
                    idle_timeout,
                } => {
                    if let Some(upstream) = upstreams.get(upstream) {
                        let route = TcpRoute {
                            upstream: upstream.clone(),
                            idle_timeout: *idle_timeout,
                        };
                        tcp.insert(listener.name.clone(), route);
                    }
                }
            }
        }
        for route in &config.routes {
            let Some(table) = listeners.get_mut(&route.listener) else {
                continue; // validation already refused dangling references
            };
            let gateways = views.gateways.unwrap_or(1);
            if let Some(policy) = route_policy(route, &upstreams, lasting, gateways, &auth) {
                table.insert(route, policy);
            }
        }
        let listeners = listeners
            .into_iter()
            .map(|(name, table)| (name, Arc::new(table)))
            .collect();
        let transcoders = config
            .transcodes
            .iter()
            .map(|t| (t.listener.clone(), t.table.clone()))
            .collect();
        Ok(Self {
            generation: previous.map(|p| p.generation).unwrap_or(0),
            listeners,
            tcp,
            upstreams,
            transcoders,
            auth,
        })
    }

    /// Copies the routes of `removed` listeners from `previous`: a reload that removes a listener
    /// lets its open connections drain with the routes they were using (until the next
    /// rebuild; by then GOAWAY has long told their clients to go elsewhere).
    pub fn keep_listeners_from(&mut self, previous: &RoutingSnapshot, removed: &[String]) {
        for name in removed {
            if let Some(table) = previous.listeners.get(name) {
                self.listeners.insert(name.clone(), table.clone());
            }
            if let Some(route) = previous.tcp.get(name) {
                self.tcp.insert(name.clone(), route.clone());
            }
            if let Some(table) = previous.transcoders.get(name) {
                self.transcoders.insert(name.clone(), table.clone());
            }
        }
    }

    /// The listener's REST routes, when it transcodes JSON.
    pub fn transcoder(&self, listener: &str) -> Option<&Arc<crate::transcode::TranscodeTable>> {
        self.transcoders.get(listener)
    }

    pub fn tcp_route(&self, listener: &str) -> Option<&TcpRoute> {
        self.tcp.get(listener)
    }

    /// Every gRPC listener's route table, by listener name.
    pub fn route_tables(&self) -> impl Iterator<Item = (&str, &RouteTable)> {
        self.listeners
            .iter()
            .map(|(name, table)| (name.as_str(), table.as_ref()))
    }

    /// The names of the tcp listeners.
    pub fn tcp_listeners(&self) -> impl Iterator<Item = &str> {
        self.tcp.keys().map(String::as_str)
    }

    pub fn routes(&self, listener: &str) -> Option<&RouteTable> {
        self.listeners.get(listener).map(Arc::as_ref)
    }

    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<UpstreamSet>> {
        self.upstreams.values()
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<UpstreamSet>> {
        self.upstreams.get(name)
    }
}

/// The call-path form of one `[[route]]`: its targets (one per upstream it may send to, each
/// with its counters), its `match`, and its rate limit (kept across rebuilds in `Lasting`).
fn route_policy(
    route: &RouteConfig,
    upstreams: &HashMap<String, Arc<UpstreamSet>>,
    lasting: &Lasting,
    gateways: u32,
    providers: &Providers,
) -> Option<Route> {
    let label: Arc<str> = route_label(route).into();
    let auth = route.auth.as_ref().map(|config| {
        Arc::new(RouteAuth {
            providers: config
                .providers
                .iter()
                .filter_map(|name| providers.get(name).cloned())
                .collect(),
            require: config.require_claims.clone(),
            policy: config.policy.clone(),
        })
    });
    let ext_authz = route
        .ext_authz
        .as_ref()
        .and_then(|name| providers.ext_authz(name).cloned());
    let retry = route
        .retry
        .as_ref()
        .map(|config| Arc::new(RetryPolicy::new(config.clone())));
    let hedge = route
        .hedge
        .as_ref()
        .map(|config| Arc::new(HedgePolicy::new(config.clone())));
    let target = |upstream_name: &str| {
        let upstream = upstreams.get(upstream_name)?;
        Some(RouteTarget {
            route: label.clone(),
            upstream: upstream.clone(),
            timeout: route.timeout,
            metrics: lasting
                .metrics()
                .map(|m| m.route(&route.listener, &label, upstream_name)),
            retry: retry.clone(),
            hedge: hedge.clone(),
            auth: auth.clone(),
            ext_authz: ext_authz.clone(),
        })
    };
    let destination = match &route.destination {
        RouteDestination::Upstream(name) => Destination::One(target(name)?),
        RouteDestination::Split { sides, hash_header } => {
            let sides = sides
                .iter()
                .map(|side| Some((target(&side.upstream)?, side.weight)))
                .collect::<Option<Vec<_>>>()?;
            Destination::Split(Split::new(sides, hash_header.clone()))
        }
    };
    let rate_limit = route.rate_limit.as_ref().map(|config| {
        let id = format!("{}|{label}|{:?}", route.listener, route.match_headers);
        RouteLimit {
            limit: lasting.policy.rate_limit(&id, config, gateways),
            refused: lasting.metrics().map(|m| m.rate_limited(&label)),
        }
    });
    Some(RoutePolicy {
        matcher: HeaderMatch::new(route.match_headers.clone())
            .with_principal(route.match_principal.clone()),
        destination,
        rate_limit,
    })
}

/// The config's `[[auth]]` providers; a `jwks_url` provider gets its source from the registry in
/// `Lasting`, so a reload that keeps its settings keeps its keys.
fn build_providers(config: &Config, lasting: &Lasting) -> Result<Providers, SnapshotError> {
    let mut providers = Vec::with_capacity(config.auth.len());
    for auth in &config.auth {
        let provider = match &auth.kind {
            AuthKind::Jwt { settings, keys } => {
                let keys = match keys {
                    JwtKeys::Fixed(set) => KeySource::Fixed(set.clone()),
                    JwtKeys::Remote(spec) => {
                        KeySource::Remote(lasting.jwks.source_for(spec).map_err(|source| {
                            SnapshotError::Auth {
                                provider: auth.name.clone(),
                                source,
                            }
                        })?)
                    }
                };
                Provider::Jwt(Box::new(JwtProvider::new(
                    &auth.name,
                    settings.clone(),
                    keys,
                )))
            }
            AuthKind::ApiKeys {
                keys,
                header,
                forward,
            } => Provider::ApiKeys(ApiKeyProvider::new(
                &auth.name,
                keys.clone(),
                header.clone(),
                *forward,
            )),
            AuthKind::Mtls {
                allowed_sans,
                forward_client_cert,
            } => Provider::Mtls(MtlsProvider::new(
                &auth.name,
                allowed_sans.clone(),
                *forward_client_cert,
            )),
        };
        providers.push(provider);
    }
    let mut services = Vec::with_capacity(config.ext_authz.len());
    for service in &config.ext_authz {
        services.push(
            ExtAuthz::new(
                &service.name,
                service.uri.clone(),
                service.timeout,
                service.failure_mode_allow,
            )
            .map_err(|e| SnapshotError::ExtAuthz {
                service: service.name.clone(),
                reason: e.to_string(),
            })?,
        );
    }
    Ok(Providers::new(providers).with_ext_authz(services))
}

/// The `route` metric label: what the route matches, as written in the config.
fn route_label(route: &RouteConfig) -> String {
    match (&route.service, &route.method) {
        (ServiceMatch::Any, _) => "*".into(),
        (ServiceMatch::Exact(s), None) => s.clone(),
        (ServiceMatch::Exact(s), Some(m)) => format!("{s}/{m}"),
    }
}

/// The handle through which everyone reads the current snapshot and writers replace it.
#[derive(Debug)]
pub struct Routing {
    current: ArcSwap<RoutingSnapshot>,
    /// Bumped on every store, for background work that follows the snapshot (health probes).
    version: tokio::sync::watch::Sender<u64>,
}

impl Routing {
    pub fn new(snapshot: RoutingSnapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(snapshot),
            version: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Notified after every snapshot swap.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingSnapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<RoutingSnapshot> {
        self.current.load_full()
    }

    pub fn store(&self, snapshot: RoutingSnapshot) {
        self.current.store(Arc::new(snapshot));
        self.version.send_modify(|v| *v += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[[listener]]
name = "l"
listen = "127.0.0.1:1"

[[route]]
listener = "l"
service = "a.A"
method = "M"
upstream = "one"

[[route]]
listener = "l"
service = "a.A"
upstream = "two"

[[route]]
listener = "l"
service = "*"
upstream = "one"

[[upstream]]
name = "one"
endpoints = [{ addr = "127.0.0.1:2" }]

[[upstream]]
name = "two"
endpoints = [{ addr = "127.0.0.1:3", weight = 0 }]
"#;

    fn config() -> Config {
        crate::config::parse(CONFIG, Path::new("t.toml"), Path::new(".")).unwrap()
    }

    #[test]
    fn most_specific_route_wins() {
        let lasting = Lasting::default();
        let snap = RoutingSnapshot::build(&config(), Views::default(), &lasting, None).unwrap();
        let table = snap.routes("l").unwrap();
        let upstream_of = |service: &str, method: &str| {
            let route = table
                .find(service, method, &http::HeaderMap::new())
                .unwrap();
            route.targets().next().unwrap().upstream.name.clone()
        };
        assert_eq!(upstream_of("a.A", "M"), "one");
        assert_eq!(upstream_of("a.A", "Other"), "two");
        assert_eq!(upstream_of("b.B", "M"), "one");
        assert!(snap.routes("missing").is_none());
    }

    #[test]
    fn unchanged_upstreams_are_shared_with_the_previous_snapshot() {
        let lasting = Lasting::default();
        let config = config();
        let first = RoutingSnapshot::build(&config, Views::default(), &lasting, None).unwrap();
        let second =
            RoutingSnapshot::build(&config, Views::default(), &lasting, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(
            first.upstream("one").unwrap(),
            second.upstream("one").unwrap()
        ));
        let fresh = RoutingSnapshot::build(&config, Views::default(), &lasting, None).unwrap();
        assert!(!Arc::ptr_eq(
            first.upstream("one").unwrap(),
            fresh.upstream("one").unwrap()
        ));
        assert!(
            Arc::ptr_eq(
                &first.upstream("one").unwrap().endpoints[0].state,
                &fresh.upstream("one").unwrap().endpoints[0].state
            ),
            "per-endpoint state survives a rebuild"
        );
    }

    #[test]
    fn endpoint_state_survives_a_dns_refresh_for_an_address_that_stays() {
        let text = CONFIG.replace(
            "endpoints = [{ addr = \"127.0.0.1:2\" }]",
            "discovery = \"dns\"\nhosts = [{ name = \"one.test\", port = 2 }]",
        );
        let config = crate::config::parse(&text, Path::new("t.toml"), Path::new(".")).unwrap();
        let lasting = Lasting::default();
        let ip = |t: &str| t.parse::<std::net::IpAddr>().unwrap();
        let mut dns = crate::discovery::dns::DnsView::default();
        dns.record("one.test", Ok(vec![ip("10.0.0.1")]));
        fn views(dns: &crate::discovery::dns::DnsView) -> Views<'_> {
            Views {
                etcd: None,
                dns: Some(dns),
                gateways: None,
            }
        }
        let first = RoutingSnapshot::build(&config, views(&dns), &lasting, None).unwrap();
        dns.record("one.test", Ok(vec![ip("10.0.0.1"), ip("10.0.0.2")]));
        let second = RoutingSnapshot::build(&config, views(&dns), &lasting, Some(&first)).unwrap();
        let (before, after) = (
            first.upstream("one").unwrap(),
            second.upstream("one").unwrap(),
        );
        assert_eq!(after.endpoints.len(), 2);
        assert_eq!(after.discovery, "dns");
        assert_eq!(after.dns_hosts, [("one.test".to_string(), 2)]);
        assert!(Arc::ptr_eq(
            &before.endpoints[0].state,
            &after.endpoints[0].state
        ));
        assert!(Arc::ptr_eq(
            first.upstream("two").unwrap(),
            second.upstream("two").unwrap()
        ));
    }
}
