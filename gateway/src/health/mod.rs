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

use tokio::task::JoinHandle;
use tracing::debug;

use crate::config::{HealthSettings, UpstreamTls};
use crate::endpoint::EndpointState;
use crate::routing::Routing;

/// Runs the probes on their own thread for the life of the process.
pub fn spawn(routing: Arc<Routing>) {
    crate::background::spawn("strait-health", manage(routing));
}

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
async fn manage(routing: Arc<Routing>) {
    let mut changes = routing.subscribe();
    let mut probes: HashMap<(String, SocketAddr), RunningProbe> = HashMap::new();
    loop {
        let snapshot = routing.load_full();
        let mut wanted = std::collections::HashSet::new();
        for upstream in snapshot.upstreams() {
            let Some(settings) = upstream.health.clone() else {
                continue;
            };
            for endpoint in &upstream.endpoints {
                let key = (upstream.name.clone(), endpoint.addr);
                wanted.insert(key.clone());
                let current = probes.get(&key).is_some_and(|p| {
                    p.settings == settings
                        && p.tls == upstream.tls
                        && p.generation == snapshot.generation
                        && Arc::ptr_eq(&p.state, &endpoint.state)
                });
                if current {
                    continue;
                }
                if let Some(outdated) = probes.remove(&key) {
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
                probes.insert(
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
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(probe) = probes.remove(&key) {
                probe.stop();
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
