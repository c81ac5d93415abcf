//! The registrar: registers one backend instance in etcd correctly by default.
//!
//! Unique id per process, a lease kept alive at ttl/3, re-registration after a lost lease or an
//! etcd outage (it never gives up on a hiccup), optional health gating through the backend's own
//! gRPC health service, and on shutdown: weight 0, a drain period, then delete and revoke.
//! The same code serves `strait register` and in-process Rust services (`Registrar::start`).

pub mod cli;
mod value;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::EtcdConfig;
pub use value::{default_instance_id, instance_value};

/// What to register and how.
#[derive(Debug, Clone)]
pub struct Registration {
    pub etcd: EtcdConfig,
    pub service: String,
    pub addr: SocketAddr,
    pub version: Option<String>,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
    pub ttl: Duration,
    /// Register only while the backend's `grpc.health.v1.Health/Check` for this service name
    /// answers SERVING.
    pub health_check: Option<String>,
    /// On shutdown: announce weight 0 and wait this long before deleting the key.
    pub drain: Option<Duration>,
    pub id: String,
}

impl Registration {
    pub fn key(&self) -> String {
        format!("{}{}/{}", self.etcd.prefix, self.service, self.id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrarError {
    #[error(
        "{key} is already registered by another live process (lease {lease:x}); pick another --id"
    )]
    IdTaken { key: String, lease: i64 },
    #[error(transparent)]
    Discovery(#[from] crate::discovery::etcd::DiscoveryError),
    #[error("the registration task {0}")]
    TaskFailed(String),
}

/// A registration task's end: its own result, or the panic that ended it (never "fine").
fn task_result(
    joined: Result<Result<(), RegistrarError>, tokio::task::JoinError>,
) -> Result<(), RegistrarError> {
    joined.unwrap_or_else(|e| {
        Err(RegistrarError::TaskFailed(if e.is_panic() {
            format!(
                "panicked: {}",
                crate::background::panic_message(e.into_panic())
            )
        } else {
            format!("was cancelled: {e}")
        }))
    })
}

/// A running registration. Dropping it does not deregister: call `shutdown`.
pub struct Registrar {
    stop: Arc<Notify>,
    done: tokio::task::JoinHandle<Result<(), RegistrarError>>,
    registered: watch::Receiver<bool>,
}

impl Registrar {
    /// Starts registering in the background of the current tokio runtime.
    pub fn start(registration: Registration) -> Registrar {
        let stop = Arc::new(Notify::new());
        let (registered_tx, registered) = watch::channel(false);
        let done = tokio::spawn(run(registration, stop.clone(), registered_tx));
        Registrar {
            stop,
            done,
            registered,
        }
    }

    /// Whether the key is in etcd right now (as far as the registrar knows).
    pub fn registered(&self) -> watch::Receiver<bool> {
        self.registered.clone()
    }

    /// Drains (weight 0 for the drain time), deletes the key, revokes the lease, and returns the
    /// registration's result (an error only for a refused id).
    pub async fn shutdown(self) -> Result<(), RegistrarError> {
        self.stop.notify_one();
        task_result(self.done.await)
    }

    /// Waits until the registration ends by itself (only on a fatal error such as a taken id).
    pub async fn wait(&mut self) -> Result<(), RegistrarError> {
        task_result((&mut self.done).await)
    }
}

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn run(
    reg: Registration,
    stop: Arc<Notify>,
    registered: watch::Sender<bool>,
) -> Result<(), RegistrarError> {
    let key = reg.key();
    info!(key, addr = %reg.addr, ttl_ms = reg.ttl.as_millis() as u64, "registrar starting");
    // Jittered, so a fleet of registrars does not retry in lockstep after an etcd outage.
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
    // The lease this process held before the current one: after an etcd restart it may still be
    // alive and own our key, which is ours to take over, not a collision.
    let mut previous_lease: Option<i64> = None;
    let stopping = stop.notified();
    tokio::pin!(stopping);
    loop {
        let session = tokio::select! {
            _ = &mut stopping => return Ok(()),
            result = connect_and_grant(&reg) => result,
        };
        let (mut client, lease) = match session {
            Ok(s) => s,
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "etcd unreachable; retrying");
                tokio::select! {
                    _ = &mut stopping => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        backoff.reset();
        match serve_lease(
            &reg,
            &mut client,
            lease,
            previous_lease,
            &registered,
            &mut stopping,
        )
        .await
        {
            LeaseEnd::Stop => {
                deregister(&reg, &mut client, lease, &registered).await;
                return Ok(());
            }
            LeaseEnd::Fatal(e) => {
                let _ = client.lease_revoke(lease).await;
                registered.send_replace(false);
                return Err(e);
            }
            LeaseEnd::Lost(why) => {
                previous_lease = Some(lease);
                registered.send_replace(false);
                warn!(key, reason = %why, "lease lost; registering again");
            }
        }
    }
}

async fn connect_and_grant(
    reg: &Registration,
) -> Result<(Client, i64), crate::discovery::etcd::DiscoveryError> {
    let mut client = crate::discovery::etcd::connect(&reg.etcd).await?;
    let ttl = reg.ttl.as_secs().max(1) as i64;
    let lease = client.lease_grant(ttl, None).await?.id();
    Ok((client, lease))
}

enum LeaseEnd {
    Stop,
    Lost(String),
    Fatal(RegistrarError),
}

/// Keeps one lease alive and the key registered (or not, following health) until told to stop
/// or the lease is lost.
async fn serve_lease(
    reg: &Registration,
    client: &mut Client,
    lease: i64,
    previous_lease: Option<i64>,
    registered: &watch::Sender<bool>,
    stopping: &mut std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
) -> LeaseEnd {
    let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => return LeaseEnd::Lost(format!("keep-alive failed: {e}")),
    };
    let mut tick = tokio::time::interval((reg.ttl / 3).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health = reg
        .health_check
        .as_ref()
        .map(|service| value::HealthGate::new(reg.addr, service.clone()));
    loop {
        // Register or withdraw according to health.
        let want = match &mut health {
            Some(gate) => gate.serving().await,
            None => true,
        };
        let have = *registered.borrow();
        if want && !have {
            match put_if_ours(reg, client, lease, previous_lease, reg.weight).await {
                Ok(()) => {
                    info!(key = %reg.key(), "registered");
                    registered.send_replace(true);
                }
                Err(PutError::Taken(e)) => return LeaseEnd::Fatal(e),
                Err(PutError::Etcd(e)) => return LeaseEnd::Lost(format!("put failed: {e}")),
            }
        } else if !want && have {
            info!(key = %reg.key(), "backend not serving: withdrawing the registration");
            if let Err(e) = client.delete(reg.key(), None).await {
                return LeaseEnd::Lost(format!("delete failed: {e}"));
            }
            registered.send_replace(false);
        }
        tokio::select! {
            _ = &mut *stopping => return LeaseEnd::Stop,
            _ = tick.tick() => {
                if let Err(e) = keeper.keep_alive().await {
                    return LeaseEnd::Lost(format!("keep-alive failed: {e}"));
                }
            }
            message = responses.message() => match message {
                Ok(Some(r)) if r.ttl() > 0 => {}
                Ok(Some(_)) => return LeaseEnd::Lost("lease expired (etcd answered ttl 0)".into()),
                Ok(None) => return LeaseEnd::Lost("keep-alive stream closed".into()),
                Err(e) => return LeaseEnd::Lost(format!("keep-alive stream: {e}")),
            },
        }
    }
}

enum PutError {
    Taken(RegistrarError),
    Etcd(etcd_client::Error),
}

/// Puts the key with our lease unless another live lease owns it.
async fn put_if_ours(
    reg: &Registration,
    client: &mut Client,
    lease: i64,
    previous_lease: Option<i64>,
    weight: u32,
) -> Result<(), PutError> {
    let key = reg.key();
    let value = instance_value(reg, weight);
    let options = || Some(PutOptions::new().with_lease(lease));
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), value.clone(), options())])
        .or_else([TxnOp::get(key.clone(), None)]);
    let response = client.txn(txn).await.map_err(PutError::Etcd)?;
    if response.succeeded() {
        return Ok(());
    }
    let owner = response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.lease()),
        _ => None,
    });
    match owner {
        Some(owner) if owner == lease || Some(owner) == previous_lease => {
            client
                .put(key, value, options())
                .await
                .map_err(PutError::Etcd)?;
            if owner != lease {
                // Our old lease survived the outage; the key now hangs on the new one.
                let _ = client.lease_revoke(owner).await;
            }
            Ok(())
        }
        Some(owner) => Err(PutError::Taken(RegistrarError::IdTaken {
            key,
            lease: owner,
        })),
        None => client
            .put(key, value, options())
            .await
            .map(|_| ())
            .map_err(PutError::Etcd),
    }
}

/// Weight 0, drain, delete, revoke: callers in flight finish, no new call arrives.
async fn deregister(
    reg: &Registration,
    client: &mut Client,
    lease: i64,
    registered: &watch::Sender<bool>,
) {
    let key = reg.key();
    if let Some(drain) = reg.drain.filter(|_| *registered.borrow()) {
        match put_if_ours(reg, client, lease, None, 0).await {
            Ok(()) => info!(
                key,
                drain_ms = drain.as_millis() as u64,
                "draining: weight 0"
            ),
            Err(_) => warn!(key, "could not set weight 0; deregistering now"),
        }
        // Keep the lease alive through the drain.
        let keep = async {
            if let Ok((mut keeper, _responses)) = client.lease_keep_alive(lease).await {
                loop {
                    tokio::time::sleep((reg.ttl / 3).max(Duration::from_millis(100))).await;
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(drain) => {}
            _ = keep => {}
        }
    }
    if let Err(e) = client.delete(key.clone(), None).await {
        warn!(key, error = %e, "delete failed; the lease revoke or its expiry will remove the key");
    }
    if let Err(e) = client.lease_revoke(lease).await {
        warn!(key, error = %e, "lease revoke failed; it expires after its ttl");
    }
    registered.send_replace(false);
    info!(key, "deregistered");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `strait register` exits non-zero on an error result, so a panicked task must be one.
    #[tokio::test]
    async fn a_panicked_task_is_an_error() {
        let panicked = tokio::spawn(async { panic!("lease keeper broke") }).await;
        let result = task_result(panicked.map(|()| Ok(())));
        let message = result.expect_err("a panic is not a clean end").to_string();
        assert!(
            message.contains("panicked: lease keeper broke"),
            "{message}"
        );
        assert!(task_result(Ok(Ok(()))).is_ok());
    }
}
