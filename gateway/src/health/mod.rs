//! Active health probing with the gRPC Health Checking Protocol v1, one task per endpoint of
//! every upstream that has `[upstream.health]`.
//!
//! Each endpoint gets a `Check` poll every `interval` (bounded by `timeout`: this is what notices
//! a hung process) and, where the backend implements it, a held `Watch` stream, so a switch to
//! NOT_SERVING (a graceful drain) is acted on at once. Probes start as soon as an endpoint
//! appears in a routing snapshot and stop when it leaves; their first probe is spread at random
//! over one interval so a fleet is never probed in lockstep.

mod probe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, error};

use crate::background::Supervisor;
use crate::config::{HealthSettings, UpstreamTls};
use crate::endpoint::EndpointState;
use crate::routing::Routing;

/// Runs the probes on their own supervised thread for the life of the process. A probe task
/// that panics or returns is restarted by `manage` (counted as `health_probe`); when `manage`
/// itself fails, its probes are aborted as its probe set drops, and the supervisor starts it
/// again.
pub fn spawn(supervisor: &Supervisor, routing: Arc<Routing>) {
    let owner = supervisor.clone();
    supervisor.spawn(
        crate::background::HEALTH_PROBES,
        "strait-health",
        || {},
        move || manage(routing.clone(), owner.clone()),
    );
}

/// How often finished probe tasks are looked for, between routing changes.
const PROBE_CHECK: Duration = Duration::from_secs(1);

/// A running probe and what it was started with: a reload that changes the settings restarts it.
struct RunningProbe {
    task: JoinHandle<()>,
    settings: HealthSettings,
    tls: Option<UpstreamTls>,
    /// The config generation it was started in: a reload restarts every probe, so one with
    /// TLS files re-reads them.
    generation: u64,
    state: Arc<EndpointState>,
}

impl RunningProbe {
    /// Stops probing for good: the endpoint leaves probe control healthy (with probes gone,
    /// nothing would ever mark it healthy again).
    fn stop(self) {
        self.task.abort();
        self.state.set_probe_health(true, true);
    }

    /// Stops this probe for a replacement, which starts from the endpoint's current verdict.
    fn replace(self) {
        self.task.abort();
    }
}

/// Keeps exactly one probe task per probed endpoint of the current snapshot.
async fn manage(routing: Arc<Routing>, supervisor: Supervisor) {
    let mut changes = routing.subscribe();
    let mut probes = Probes::default();
    let mut check = tokio::time::interval(PROBE_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A probe that ended (it panicked, or returned when its channel could not be set up)
        // would leave its endpoint's health frozen: drop it so the pass below starts it again.
        let ended: Vec<_> = probes
            .0
            .iter()
            .filter(|(_, p)| p.task.is_finished())
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(probe) = probes.0.remove(&key) {
                error!(upstream = %key.0, endpoint = %key.1, "health probe task ended; restarting it");
                supervisor.count_restart(crate::background::HEALTH_PROBE);
                probe.replace();
            }
        }
        let snapshot = routing.load_full();
        let mut wanted = std::collections::HashSet::new();
        for upstream in snapshot.upstreams() {
            let Some(settings) = upstream.health.clone() else {
                continue;
            };
            for endpoint in &upstream.endpoints {
                let key = (upstream.name.clone(), endpoint.addr);
                wanted.insert(key.clone());
                let current = probes.0.get(&key).is_some_and(|p| {
                    p.settings == settings
                        && p.tls == upstream.tls
                        && p.generation == snapshot.generation
                        && Arc::ptr_eq(&p.state, &endpoint.state)
                });
                if current {
                    continue;
                }
                if let Some(outdated) = probes.0.remove(&key) {
                    if Arc::ptr_eq(&outdated.state, &endpoint.state) {
                        outdated.replace();
                    } else {
                        outdated.stop();
                    }
                }
                debug!(upstream = %upstream.name, endpoint = %endpoint.addr, "starting health probe");
                let task = tokio::spawn(probe::run(probe::Target {
                    upstream: upstream.name.clone(),
                    state: endpoint.state.clone(),
                    settings: settings.clone(),
                    tls: upstream.tls.clone(),
                    routing: routing.clone(),
                }));
                probes.0.insert(
                    key,
                    RunningProbe {
                        task,
                        settings: settings.clone(),
                        tls: upstream.tls.clone(),
                        generation: snapshot.generation,
                        state: endpoint.state.clone(),
                    },
                );
            }
        }
        let gone: Vec<_> = probes
            .0
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(probe) = probes.0.remove(&key) {
                probe.stop();
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() {
                return;
            },
            _ = check.tick() => {}
        }
    }
}

/// The running probes; dropping the set (when `manage` fails) aborts them, so a restarted
/// `manage` never runs beside orphaned probes.
#[derive(Default)]
struct Probes(HashMap<(String, SocketAddr), RunningProbe>);

impl Drop for Probes {
    fn drop(&mut self) {
        for probe in self.0.values() {
            probe.task.abort();
        }
    }
}
