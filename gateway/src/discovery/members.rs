//! The gateways of a fleet, through etcd: this gateway registers itself under
//! `[etcd] members_prefix` on a lease kept alive at a third of its TTL, and counts the live
//! registrations there (list at revision R, watch from R+1). Cluster-wide rate limits divide by
//! that count, so a fleet behind an L4 balancer holds one limit without a shared counter on the
//! call path.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions};
use tracing::{info, warn};

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

/// Runs the membership task on its own supervised thread. `publish` gets the number of live
/// gateways (this one included) whenever it changes; while etcd cannot be reached the last
/// count stands.
pub fn spawn(
    supervisor: &Supervisor,
    config: EtcdConfig,
    id: String,
    publish: impl Fn(u32) + Send + Sync + 'static,
) {
    let publish = std::sync::Arc::new(publish);
    supervisor.spawn(
        GATEWAY_MEMBERS,
        "strait-members",
        || {},
        move || {
            let (config, id, publish) = (config.clone(), id.clone(), publish.clone());
            async move { run(&config, &id, &*publish).await }
        },
    );
}

async fn run(config: &EtcdConfig, id: &str, publish: &(dyn Fn(u32) + Send + Sync)) {
    let mut backoff = Backoff::default();
    let mut last = None;
    loop {
        if let Err(e) = session(config, id, publish, &mut last, &mut backoff).await {
            warn!(error = %e, gateways = ?last, "gateway membership interrupted; keeping the last count");
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One connection's life: register on a fresh lease, count, keep both going until a fault.
async fn session(
    config: &EtcdConfig,
    id: &str,
    publish: &(dyn Fn(u32) + Send + Sync),
    last: &mut Option<u32>,
    backoff: &mut Backoff,
) -> Result<(), DiscoveryError> {
    let mut client = connect(config).await?;
    let lease = client.lease_grant(LEASE_TTL, None).await?.id();
    let key = format!("{}{id}", config.members_prefix);
    let value = format!(
        "{{\"id\":\"{id}\",\"pid\":{},\"version\":\"{}\"}}",
        std::process::id(),
        env!("CARGO_PKG_VERSION")
    );
    client
        .put(
            key.as_str(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    let (mut keeper, mut keep_alive_answers) = client.lease_keep_alive(lease).await?;
    let listed = client
        .get(
            config.members_prefix.as_str(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let mut members: BTreeSet<Vec<u8>> = listed.kvs().iter().map(|kv| kv.key().to_vec()).collect();
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
    let mut note = |members: &BTreeSet<Vec<u8>>| {
        let count = members.len().max(1) as u32;
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
                _ => return Err(DiscoveryError::WatchClosed), // the lease is gone: register anew
            },
            message = watch.message() => {
                let Some(response) = message? else {
                    return Err(DiscoveryError::WatchClosed);
                };
                if response.canceled() {
                    return Err(DiscoveryError::WatchCancelled {
                        reason: response.cancel_reason().to_string(),
                        compact_revision: response.compact_revision(),
                    });
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    match event.event_type() {
                        EventType::Put => members.insert(kv.key().to_vec()),
                        EventType::Delete => members.remove(kv.key()),
                    };
                }
                note(&members);
            }
        }
    }
}
