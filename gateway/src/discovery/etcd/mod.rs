//! etcd discovery: list the prefix at revision R, watch from R+1, keep the last good view through
//! any etcd fault, and resync (re-list and replace) after every reconnect.

mod client;
mod status;
mod view;

use std::sync::Arc;
use std::time::Instant;

use etcd_client::{EventType, GetOptions, WatchOptions};
use tracing::{info, warn};

pub use client::connect;
pub use status::{DiscoveryStatus, RejectReason};
pub use view::{EtcdView, ViewBuilder};

use crate::background::Supervisor;
use crate::backoff::Backoff;
use crate::config::EtcdConfig;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read etcd password file {path}: {source}")]
    PasswordFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read etcd TLS file {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("watch cancelled by etcd: {reason} (compact revision {compact_revision})")]
    WatchCancelled {
        reason: String,
        compact_revision: i64,
    },
    #[error("watch stream closed by etcd")]
    WatchClosed,
}

/// Runs discovery on its own supervised thread until the process exits. `publish` gets every
/// new view (after the first list, after each batch of watch events, after each resync). While
/// the task is down (it panicked and waits for its restart) the status says disconnected, so
/// `/readyz`, `strait_etcd_connected` and staleness describe a frozen view as frozen.
pub fn spawn(
    supervisor: &Supervisor,
    config: EtcdConfig,
    status: Arc<DiscoveryStatus>,
    publish: impl Fn(Arc<EtcdView>) + Send + Sync + 'static,
) {
    let publish = Arc::new(publish);
    let down = status.clone();
    supervisor.spawn(
        crate::background::ETCD_WATCH,
        "strait-etcd",
        move || down.set_disconnected(Some("the etcd watch task failed; restarting".into())),
        move || {
            let publish = publish.clone();
            run(config.clone(), status.clone(), move |view| publish(view))
        },
    );
}

async fn run(
    config: EtcdConfig,
    status: Arc<DiscoveryStatus>,
    publish: impl Fn(Arc<EtcdView>) + Send + Sync,
) {
    let mut builder = ViewBuilder::new(config.prefix.clone(), status.clone());
    let mut backoff = Backoff::default();
    loop {
        let result = session(&config, &mut builder, &status, &publish, &mut backoff).await;
        status.set_disconnected(result.as_ref().err().map(|e| e.to_string()));
        match result {
            Ok(()) => {}
            Err(e) => warn!(
                error = %e,
                stale_seconds = status.staleness().as_secs(),
                "etcd discovery interrupted; serving the last known view"
            ),
        }
        let delay = backoff.next_delay();
        tokio::time::sleep(delay).await;
    }
}

/// One connection's life: list, then watch until something breaks.
async fn session(
    config: &EtcdConfig,
    builder: &mut ViewBuilder,
    status: &DiscoveryStatus,
    publish: &impl Fn(Arc<EtcdView>),
    backoff: &mut Backoff,
) -> Result<(), DiscoveryError> {
    let mut client = client::connect(config).await?;
    let started = Instant::now();
    let listed = tokio::time::timeout(
        config.dial_timeout * 5,
        client.get(
            config.prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        ),
    )
    .await
    .map_err(|_| DiscoveryError::Timeout(config.dial_timeout * 5))??;
    let revision = listed.header().map(|h| h.revision()).unwrap_or(0);
    let entries = listed
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()));
    let diff = builder.resync(entries, revision);
    let view = builder.view();
    info!(
        revision,
        instances = view.len(),
        added = diff.added,
        removed = diff.removed,
        changed = diff.changed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "etcd view synced"
    );
    publish(view);
    status.set_synced();
    backoff.reset();

    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1)
        .with_progress_notify();
    let mut stream = client.watch(config.prefix.as_str(), Some(options)).await?;
    loop {
        let Some(response) = stream.message().await? else {
            return Err(DiscoveryError::WatchClosed);
        };
        if response.canceled() {
            return Err(DiscoveryError::WatchCancelled {
                reason: response.cancel_reason().to_string(),
                compact_revision: response.compact_revision(),
            });
        }
        let mut changed = false;
        let mut apply = |response: &etcd_client::WatchResponse, builder: &mut ViewBuilder| {
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                changed |= match event.event_type() {
                    EventType::Put => builder.put(kv.key(), kv.value(), kv.mod_revision()),
                    EventType::Delete => builder.delete(kv.key(), kv.mod_revision()),
                };
            }
        };
        apply(&response, builder);
        // Coalesce a burst: take whatever else is already waiting before rebuilding.
        while let Some(Ok(Some(next))) = futures_now(&mut stream).await {
            if next.canceled() {
                return Err(DiscoveryError::WatchCancelled {
                    reason: next.cancel_reason().to_string(),
                    compact_revision: next.compact_revision(),
                });
            }
            apply(&next, builder);
        }
        status.set_synced();
        if changed {
            publish(builder.view());
        }
    }
}

/// The next watch message if one is already buffered, without waiting for the network.
async fn futures_now(
    stream: &mut etcd_client::WatchStream,
) -> Option<Result<Option<etcd_client::WatchResponse>, etcd_client::Error>> {
    tokio::time::timeout(std::time::Duration::ZERO, stream.message())
        .await
        .ok()
}
