//! The control plane: owns the running config and the latest etcd view, and is the only writer of
//! the routing snapshot. Discovery updates and reloads both go through it, one at a time, so a
//! snapshot is always built from the config that is actually running.

mod reload;

pub use reload::{ReloadError, ReloadHandle, ReloadReport};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::discovery::etcd::EtcdView;
use crate::endpoint::EndpointRegistry;
use crate::metrics::Metrics;
use crate::routing::{Routing, RoutingSnapshot};
use crate::server::ListenerSet;

struct Current {
    config: Arc<Config>,
    view: Option<Arc<EtcdView>>,
}

pub struct ControlPlane {
    /// The file a reload re-reads.
    path: PathBuf,
    current: Mutex<Current>,
    routing: Arc<Routing>,
    registry: Arc<EndpointRegistry>,
    listeners: Arc<ListenerSet>,
    metrics: Option<Arc<Metrics>>,
}

impl ControlPlane {
    pub fn new(
        path: PathBuf,
        config: Arc<Config>,
        routing: Arc<Routing>,
        registry: Arc<EndpointRegistry>,
        listeners: Arc<ListenerSet>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            path,
            current: Mutex::new(Current { config, view: None }),
            routing,
            registry,
            listeners,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    /// A new etcd view: rebuild the upstreams it changed, with the running config.
    pub fn etcd_view_changed(&self, view: Arc<EtcdView>) {
        let started = std::time::Instant::now();
        let mut current = self.lock();
        let previous = self.routing.load_full();
        match RoutingSnapshot::build(
            &current.config,
            Some(&view),
            &self.registry,
            Some(&previous),
        ) {
            Ok(snapshot) => {
                self.routing.store(snapshot);
                tracing::debug!(
                    instances = view.len(),
                    build_us = started.elapsed().as_micros() as u64,
                    "routing snapshot rebuilt"
                );
            }
            // Only a CA file that vanished since it was loaded can fail here: keep the last
            // snapshot.
            Err(e) => tracing::error!(error = %e, "could not rebuild the routing snapshot"),
        }
        current.view = Some(view);
    }
}
