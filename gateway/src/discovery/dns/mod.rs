//! DNS discovery: the names of `discovery = "dns"` upstreams, resolved to A and AAAA records on a
//! background thread (never on the call path), each re-asked every `refresh` or sooner when the
//! answer's TTL says so. A failed or empty answer keeps the last good set; a name that never
//! resolved leaves its upstream empty, with the reason.

mod schedule;
mod status;
mod view;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolverConfig, ServerOrderingStrategy,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

pub use schedule::next_refresh;
pub use status::{DnsStatus, NameStatus, Outcome};
pub use view::{endpoints, DnsView, NameAddrs};

use crate::background::Supervisor;
use crate::config::{Config, Discovery, DnsConfig};

/// Tries per server before a resolution counts as failed.
const ATTEMPTS: usize = 2;
/// A failing name is logged again at most this often (it may be asked every second).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);
/// Addresses kept per name: an answer of thousands of records must not become thousands of
/// endpoints, each with its own state and connections.
pub const MAX_ADDRESSES_PER_NAME: usize = 512;

/// What the DNS task resolves, and how: derived from the running config, replaced on reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsPlan {
    pub resolver: DnsConfig,
    /// Every name of every dns upstream, with the shortest `refresh` among the upstreams that
    /// list it.
    pub names: BTreeMap<String, Duration>,
}

impl DnsPlan {
    pub fn from_config(config: &Config) -> Self {
        let mut names = BTreeMap::new();
        for upstream in &config.upstreams {
            if let Discovery::Dns { hosts, refresh } = &upstream.discovery {
                for host in hosts {
                    names
                        .entry(host.name.clone())
                        .and_modify(|r: &mut Duration| *r = (*r).min(*refresh))
                        .or_insert(*refresh);
                }
            }
        }
        Self {
            resolver: config.dns.clone(),
            names,
        }
    }
}

/// Runs DNS discovery on its own supervised thread until the process exits. `publish` gets
/// every view that changes what routing sees. The view outlives a restart of the task, so a
/// panic never forgets the last good addresses.
pub fn spawn(
    supervisor: &Supervisor,
    plan: watch::Receiver<DnsPlan>,
    status: Arc<DnsStatus>,
    publish: impl Fn(Arc<DnsView>) + Send + Sync + 'static,
) {
    let publish = Arc::new(publish);
    let view = Arc::new(Mutex::new(DnsView::default()));
    supervisor.spawn(
        crate::background::DNS_DISCOVERY,
        "strait-dns",
        || {},
        move || {
            let publish = publish.clone();
            run(plan.clone(), status.clone(), view.clone(), move |v| {
                publish(v)
            })
        },
    );
}

/// The resolver for `config`, or why there is none (an unreadable /etc/resolv.conf): then every
/// resolution fails with that reason until a reload brings a usable one.
fn build_resolver(config: &DnsConfig) -> Result<TokioResolver, String> {
    let mut builder = if config.servers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
    } else {
        let mut servers = ResolverConfig::new();
        for addr in &config.servers {
            // UDP first; TCP for answers too large for a datagram.
            servers.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
            servers.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(servers, TokioConnectionProvider::default())
    };
    let options = builder.options_mut();
    options.timeout = config.timeout;
    options.attempts = ATTEMPTS;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    if !config.servers.is_empty() {
        options.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
    }
    // Every refresh asks the servers: TTLs are honoured by the schedule, not by a cache that
    // would hide a change until its own expiry.
    options.cache_size = 0;
    options.positive_max_ttl = Some(Duration::ZERO);
    options.negative_max_ttl = Some(Duration::ZERO);
    Ok(builder.build())
}

/// A good answer: the addresses and the smallest TTL among their records.
struct Answer {
    addrs: Vec<IpAddr>,
    ttl: Option<Duration>,
}

async fn resolve(
    resolver: &Result<TokioResolver, String>,
    name: &str,
    bound: Duration,
) -> Result<Answer, (Outcome, String)> {
    let resolver = resolver.as_ref().map_err(|e| (Outcome::Error, e.clone()))?;
    let lookup = match tokio::time::timeout(bound, resolver.lookup_ip(name)).await {
        Err(_) => return Err((Outcome::Error, format!("no answer within {bound:?}"))),
        Ok(Err(e)) => return Err(classify(&e)),
        Ok(Ok(lookup)) => lookup,
    };
    let answered = lookup.iter().count();
    // 0.0.0.0, :: and multicast are never a backend (0.0.0.0 would dial this very host).
    let mut addrs: Vec<IpAddr> = lookup
        .iter()
        .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
        .collect();
    if addrs.is_empty() {
        return Err((
            Outcome::NoRecords,
            if answered == 0 {
                "no A or AAAA records".into()
            } else {
                format!("none of the {answered} addresses is usable (unspecified or multicast)")
            },
        ));
    }
    if addrs.len() > MAX_ADDRESSES_PER_NAME {
        warn!(
            name,
            answered = addrs.len(),
            kept = MAX_ADDRESSES_PER_NAME,
            "dns answer has more addresses than a name may have; keeping the lowest"
        );
        addrs.sort();
        addrs.truncate(MAX_ADDRESSES_PER_NAME);
    }
    let ttl = lookup
        .as_lookup()
        .records()
        .iter()
        .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
        .map(|r| Duration::from_secs(u64::from(r.ttl())))
        .min();
    Ok(Answer { addrs, ttl })
}

fn classify(e: &ResolveError) -> (Outcome, String) {
    if e.is_nx_domain() {
        (Outcome::NoRecords, "NXDOMAIN (no such name)".into())
    } else if e.is_no_records_found() {
        (Outcome::NoRecords, "no A or AAAA records".into())
    } else {
        (Outcome::Error, e.to_string())
    }
}

/// Per name: when to ask next, and when a failure was last logged.
#[derive(Debug)]
struct Schedule {
    due: Instant,
    refresh: Duration,
    logged_failure: Option<Instant>,
}

async fn run(
    mut plans: watch::Receiver<DnsPlan>,
    status: Arc<DnsStatus>,
    view: Arc<Mutex<DnsView>>,
    publish: impl Fn(Arc<DnsView>),
) {
    let mut plan = plans.borrow_and_update().clone();
    let mut resolver = build_resolver(&plan.resolver);
    let mut schedule: BTreeMap<String, Schedule> = BTreeMap::new();
    let mut plan_open = true;
    loop {
        let now = Instant::now();
        schedule.retain(|name, _| plan.names.contains_key(name));
        for (name, refresh) in &plan.names {
            let entry = schedule.entry(name.clone()).or_insert(Schedule {
                due: now,
                refresh: *refresh,
                logged_failure: None,
            });
            entry.refresh = *refresh;
        }
        let forgotten = lock(&view).retain(|name| plan.names.contains_key(name));
        status.retain(|name| plan.names.contains_key(name));
        if forgotten {
            publish(Arc::new(lock(&view).clone()));
        }

        let next_due = schedule.values().map(|s| s.due).min();
        tokio::select! {
            changed = plans.changed(), if plan_open => {
                if changed.is_err() {
                    // The control plane is gone (shutdown): keep the names we have.
                    plan_open = false;
                    continue;
                }
                let next = plans.borrow_and_update().clone();
                if next.resolver != plan.resolver {
                    info!(servers = ?next.resolver.servers, "dns resolver settings changed");
                    resolver = build_resolver(&next.resolver);
                    for entry in schedule.values_mut() {
                        entry.due = Instant::now();
                    }
                }
                plan = next;
                continue;
            }
            _ = sleep_until(next_due) => {}
        }

        let now = Instant::now();
        let bound =
            plan.resolver.timeout * (ATTEMPTS as u32) * (plan.resolver.servers.len().max(1) as u32)
                + Duration::from_secs(1);
        let mut asked = tokio::task::JoinSet::new();
        for (name, entry) in schedule.iter_mut().filter(|(_, s)| s.due <= now) {
            // Asked again at `refresh` even if this resolution never reports back.
            entry.due = now + entry.refresh;
            let resolver = resolver.clone();
            let name = name.clone();
            asked.spawn(async move {
                let outcome = resolve(&resolver, &name, bound).await;
                (name, outcome)
            });
        }
        let mut changed = false;
        while let Some(joined) = asked.join_next().await {
            let Ok((name, outcome)) = joined else {
                continue;
            };
            let Some(entry) = schedule.get_mut(&name) else {
                continue;
            };
            let mut view = lock(&view);
            match outcome {
                Ok(answer) => {
                    let count = answer.addrs.len();
                    entry.due = now + next_refresh(entry.refresh, answer.ttl);
                    entry.logged_failure = None;
                    status.resolved(&name, count, answer.ttl);
                    if view.record(&name, Ok(answer.addrs)) {
                        changed = true;
                        info!(name = %name, addresses = count, ttl_s = answer.ttl.map(|t| t.as_secs()),
                              "dns name resolved to a new set of addresses");
                    }
                }
                Err((outcome, reason)) => {
                    entry.due = now + next_refresh(entry.refresh, None);
                    let log_now = entry
                        .logged_failure
                        .is_none_or(|at| at.elapsed() >= FAILURE_LOG_EVERY);
                    status.failed(&name, outcome, reason.clone());
                    let keeps = match view.get(&name) {
                        Some(NameAddrs::Resolved(addrs)) => addrs.len(),
                        _ => 0,
                    };
                    if log_now {
                        entry.logged_failure = Some(Instant::now());
                        let stale_seconds = status
                            .get(&name)
                            .and_then(|s| s.staleness(std::time::SystemTime::now()))
                            .map(|d| d.as_secs());
                        warn!(name = %name, error = %reason, kept_addresses = keeps, stale_seconds,
                              "dns resolution failed; the last good addresses (if any) stay");
                    }
                    changed |= view.record(&name, Err(reason));
                }
            }
        }
        if changed {
            publish(Arc::new(lock(&view).clone()));
        }
    }
}

fn lock(view: &Mutex<DnsView>) -> std::sync::MutexGuard<'_, DnsView> {
    view.lock().unwrap_or_else(|e| e.into_inner())
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
