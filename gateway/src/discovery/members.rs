//! The gateways of a fleet, through etcd: this gateway registers itself under
//! `[etcd] members_prefix` on a lease kept alive at a third of its TTL, and counts the live
//! registrations there (list at revision R, watch from R+1). Cluster-wide rate limits divide by
//! that count, so a fleet behind an L4 balancer holds one limit without a shared counter on the
//! call path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions};
use tracing::{error, info, warn};

use crate::background::{Supervisor, GATEWAY_MEMBERS};
use crate::backoff::Backoff;
use crate::config::EtcdConfig;

use super::etcd::{connect, DiscoveryError};

/// A gateway that stops without revoking its lease (killed) leaves the count after this long.
pub const LEASE_TTL: i64 = 10;

/// This process's registration key below the members prefix: host, process id and a random
/// part, so a restarted process never takes over the key of its predecessor's lease.
pub fn member_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "strait".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// What operators must know about this gateway's membership: a gateway that cannot register
/// (an etcd role without write access to `members_prefix`) counts itself alone, so each
/// gateway enforces the whole of a cluster-wide limit and the fleet N times it; gateways of
/// another fleet under the same `members_prefix` would be counted as this fleet's.
#[derive(Debug, Default)]
pub struct MembershipStatus {
    registered: AtomicBool,
    foreign: AtomicU32,
    unregistered_because: Mutex<Option<String>>,
    foreign_prefixes: Mutex<Vec<String>>,
}

impl MembershipStatus {
    /// This gateway's key is under `members_prefix` now.
    pub fn registered(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }

    /// Gateways of another fleet (another `[etcd] prefix`) registered under `members_prefix`.
    pub fn foreign(&self) -> u32 {
        self.foreign.load(Ordering::Acquire)
    }

    /// What is wrong, for `/readyz` (the gateway still serves: every limit holds, just not
    /// divided the way the operator meant).
    pub fn warnings(&self, members_prefix: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(why) = lock(&self.unregistered_because).as_ref() {
            warnings.push(format!(
                "not registered under members_prefix {members_prefix:?} ({why}): cluster-wide \
                 rate limits count this gateway alone, so the fleet allows N times each limit; \
                 the etcd role needs readwrite on that prefix"
            ));
        }
        let foreign = lock(&self.foreign_prefixes);
        if !foreign.is_empty() {
            warnings.push(format!(
                "members_prefix {members_prefix:?} is shared with {} gateway(s) of another \
                 fleet (prefix {}): they are not counted; give each fleet its own members_prefix",
                foreign.len(),
                foreign.join(", ")
            ));
        }
        warnings
    }

    fn set_unregistered(&self, why: Option<String>) {
        self.registered.store(why.is_none(), Ordering::Release);
        *lock(&self.unregistered_because) = why;
    }

    fn set_foreign(&self, prefixes: Vec<String>) {
        self.foreign.store(prefixes.len() as u32, Ordering::Release);
        *lock(&self.foreign_prefixes) = prefixes;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the membership task on its own supervised thread. `publish` gets the number of live
/// gateways of this fleet (this one included) whenever it changes; while etcd cannot be
/// reached the last count stands.
pub fn spawn(
    supervisor: &Supervisor,
    config: EtcdConfig,
    id: String,
    status: Arc<MembershipStatus>,
    publish: impl Fn(u32) + Send + Sync + 'static,
) {
    let publish = Arc::new(publish);
    supervisor.spawn(
        GATEWAY_MEMBERS,
        "strait-members",
        || {},
        move || {
            let (config, id, publish, status) =
                (config.clone(), id.clone(), publish.clone(), status.clone());
            async move { run(&config, &id, &status, &*publish).await }
        },
    );
}

/// How often a registration that keeps failing is logged at error level again.
const UNREGISTERED_LOG_EVERY: Duration = Duration::from_secs(60);

async fn run(
    config: &EtcdConfig,
    id: &str,
    status: &MembershipStatus,
    publish: &(dyn Fn(u32) + Send + Sync),
) {
    let mut backoff = Backoff::default();
    let mut last = None;
    let mut logged: Option<Instant> = None;
    loop {
        match session(config, id, status, publish, &mut last, &mut backoff).await {
            Err(SessionError::Unregistered(e)) => {
                status.set_unregistered(Some(e.to_string()));
                if logged.is_none_or(|at| at.elapsed() >= UNREGISTERED_LOG_EVERY) {
                    logged = Some(Instant::now());
                    error!(error = %e, members_prefix = %config.members_prefix,
                           "cannot register this gateway under members_prefix: cluster-wide rate \
                            limits count it alone, so the fleet allows N times each limit; the \
                            etcd role needs readwrite on members_prefix (retrying)");
                }
            }
            Ok(never) => match never {},
            Err(SessionError::Interrupted(e)) => {
                status.registered.store(false, Ordering::Release);
                logged = None;
                warn!(error = %e, gateways = ?last, "gateway membership interrupted; keeping the last count");
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Why a session ended: before this gateway's key was written, or after.
enum SessionError {
    Unregistered(DiscoveryError),
    Interrupted(DiscoveryError),
}

impl<E: Into<DiscoveryError>> From<E> for SessionError {
    fn from(e: E) -> Self {
        SessionError::Interrupted(e.into())
    }
}

/// What a member's registration says about its fleet: the `[etcd] prefix` it discovers
/// services under (`None` for gateways from before the field existed: counted as ours).
fn member_prefix(value: &[u8]) -> Option<String> {
    let parsed: serde_json::Value = serde_json::from_slice(value).ok()?;
    parsed.get("prefix")?.as_str().map(str::to_string)
}

/// This fleet's live gateways, and the prefixes of other fleets' gateways, from the members'
/// registrations (key -> the fleet prefix each declared).
fn count_members(
    members: &BTreeMap<Vec<u8>, Option<String>>,
    own_prefix: &str,
) -> (u32, Vec<String>) {
    let mut ours = 0;
    let mut foreign = Vec::new();
    for prefix in members.values() {
        match prefix {
            Some(p) if p != own_prefix => foreign.push(p.clone()),
            _ => ours += 1,
        }
    }
    foreign.sort();
    (ours.max(1), foreign)
}

/// One connection's life: register on a fresh lease, count, keep both going until a fault.
async fn session(
    config: &EtcdConfig,
    id: &str,
    status: &MembershipStatus,
    publish: &(dyn Fn(u32) + Send + Sync),
    last: &mut Option<u32>,
    backoff: &mut Backoff,
) -> Result<std::convert::Infallible, SessionError> {
    let mut client = connect(config).await?;
    let key = format!("{}{id}", config.members_prefix);
    let value = serde_json::json!({
        "id": id,
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "prefix": config.prefix,
    })
    .to_string();
    let registered = async {
        let lease = client.lease_grant(LEASE_TTL, None).await?.id();
        client
            .put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok::<_, etcd_client::Error>(lease)
    };
    let lease = registered
        .await
        .map_err(|e| SessionError::Unregistered(e.into()))?;
    status.set_unregistered(None);
    let (mut keeper, mut keep_alive_answers) = client.lease_keep_alive(lease).await?;
    let listed = client
        .get(
            config.members_prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let mut members: BTreeMap<Vec<u8>, Option<String>> = listed
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), member_prefix(kv.value())))
        .collect();
    let mut watch = client
        .watch(
            config.members_prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    info!(
        key,
        lease = format!("{lease:x}"),
        "registered this gateway for cluster-wide limits"
    );
    backoff.reset();
    let mut note = |members: &BTreeMap<Vec<u8>, Option<String>>| {
        let (count, foreign) = count_members(members, &config.prefix);
        if foreign.len() as u32 != status.foreign() {
            if foreign.is_empty() {
                info!("no gateway of another fleet under members_prefix any more");
            } else {
                warn!(members_prefix = %config.members_prefix, others = foreign.len(),
                      prefixes = ?foreign,
                      "members_prefix is shared with gateways of another fleet (another [etcd] \
                       prefix): they are not counted; give each fleet its own members_prefix");
            }
        }
        status.set_foreign(foreign);
        if *last != Some(count) {
            info!(gateways = count, "gateways in the cluster changed");
            *last = Some(count);
            publish(count);
        }
    };
    note(&members);
    let mut tick = tokio::time::interval(Duration::from_secs((LEASE_TTL / 3).max(1) as u64));
    loop {
        tokio::select! {
            _ = tick.tick() => keeper.keep_alive().await?,
            answer = keep_alive_answers.message() => match answer? {
                Some(a) if a.ttl() > 0 => {}
                // The lease is gone: register anew.
                _ => return Err(DiscoveryError::WatchClosed.into()),
            },
            message = watch.message() => {
                let Some(response) = message? else {
                    return Err(DiscoveryError::WatchClosed.into());
                };
                if response.canceled() {
                    return Err(DiscoveryError::WatchCancelled {
                        reason: response.cancel_reason().to_string(),
                        compact_revision: response.compact_revision(),
                    }
                    .into());
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    match event.event_type() {
                        EventType::Put => {
                            members.insert(kv.key().to_vec(), member_prefix(kv.value()));
                        }
                        EventType::Delete => {
                            members.remove(kv.key());
                        }
                    };
                }
                note(&members);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_fleets_gateways_are_counted() {
        let mut members = BTreeMap::new();
        members.insert(
            b"a".to_vec(),
            member_prefix(br#"{"id":"a","prefix":"/prod/"}"#),
        );
        members.insert(
            b"b".to_vec(),
            member_prefix(br#"{"id":"b","prefix":"/staging/"}"#),
        );
        // Older gateways did not say; garbage says nothing either: both counted as ours.
        members.insert(b"c".to_vec(), member_prefix(br#"{"id":"c","pid":1}"#));
        members.insert(b"d".to_vec(), member_prefix(b"not json"));
        assert_eq!(
            count_members(&members, "/prod/"),
            (3, vec!["/staging/".to_string()])
        );
        assert_eq!(count_members(&BTreeMap::new(), "/prod/"), (1, vec![]));
    }

    #[test]
    fn warnings_say_what_is_wrong_and_what_to_do() {
        let status = MembershipStatus::default();
        assert!(status.warnings("/strait/gateways/").is_empty());
        status.set_unregistered(Some("permission denied".into()));
        status.set_foreign(vec!["/staging/".into()]);
        assert!(!status.registered());
        assert_eq!(status.foreign(), 1);
        let warnings = status.warnings("/strait/gateways/").join("\n");
        assert!(
            warnings.contains("not registered under members_prefix"),
            "{warnings}"
        );
        assert!(warnings.contains("N times each limit"), "{warnings}");
        assert!(warnings.contains("readwrite"), "{warnings}");
        assert!(
            warnings.contains("another fleet (prefix /staging/)"),
            "{warnings}"
        );
        status.set_unregistered(None);
        status.set_foreign(Vec::new());
        assert!(status.registered());
        assert!(status.warnings("/strait/gateways/").is_empty());
    }
}
