//! The control plane: owns the running config and the latest discovery views (etcd, DNS), and is
//! the only writer of the routing snapshot. Discovery updates and reloads both go through it, one
//! at a time, so a snapshot is always built from the config that is actually running.

mod reload;

pub use reload::{ReloadError, ReloadHandle, ReloadReport};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::discovery::dns::{DnsPlan, DnsView};
use crate::discovery::etcd::EtcdView;
use crate::discovery::Views;
use crate::metrics::Metrics;
use crate::observe::Observers;
use crate::routing::{Lasting, Routing, RoutingSnapshot};
use crate::server::ListenerSet;

struct Current {
    config: Arc<Config>,
    view: Option<Arc<EtcdView>>,
    dns: Option<Arc<DnsView>>,
    gateways: Option<u32>,
}

impl Current {
    fn views(&self) -> Views<'_> {
        Views {
            etcd: self.view.as_deref(),
            dns: self.dns.as_deref(),
            gateways: self.gateways,
        }
    }
}

pub struct ControlPlane {
    /// The file a reload re-reads.
    path: PathBuf,
    current: Mutex<Current>,
    routing: Arc<Routing>,
    lasting: Arc<Lasting>,
    listeners: Arc<ListenerSet>,
    metrics: Option<Arc<Metrics>>,
    /// Tells DNS discovery which names the running config resolves.
    dns_plan: tokio::sync::watch::Sender<DnsPlan>,
    observers: Arc<Observers>,
}

impl ControlPlane {
    pub fn new(
        path: PathBuf,
        config: Arc<Config>,
        routing: Arc<Routing>,
        lasting: Arc<Lasting>,
        listeners: Arc<ListenerSet>,
        metrics: Option<Arc<Metrics>>,
        observers: Arc<Observers>,
    ) -> Self {
        let (dns_plan, _) = tokio::sync::watch::channel(DnsPlan::from_config(&config));
        Self {
            path,
            current: Mutex::new(Current {
                config,
                view: None,
                dns: None,
                gateways: None,
            }),
            routing,
            lasting,
            listeners,
            metrics,
            dns_plan,
            observers,
        }
    }

    /// Follows the names the running config resolves (for DNS discovery).
    pub fn dns_plan(&self) -> tokio::sync::watch::Receiver<DnsPlan> {
        self.dns_plan.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    /// A new etcd view: rebuild the upstreams it changed, with the running config.
    pub fn etcd_view_changed(&self, view: Arc<EtcdView>) {
        let mut current = self.lock();
        current.view = Some(view);
        self.rebuild(&current, "etcd");
    }

    /// A new DNS view: rebuild the upstreams whose addresses changed.
    pub fn dns_view_changed(&self, view: Arc<DnsView>) {
        let mut current = self.lock();
        current.dns = Some(view);
        self.rebuild(&current, "dns");
    }

    /// A new count of the gateways in the cluster: cluster-wide rate limits take their new
    /// share.
    pub fn gateways_changed(&self, gateways: u32) {
        let mut current = self.lock();
        current.gateways = Some(gateways);
        if let Some(metrics) = &self.metrics {
            metrics.cluster_gateways.set(i64::from(gateways));
        }
        self.rebuild(&current, "gateways");
    }

    fn rebuild(&self, current: &Current, cause: &'static str) {
        let started = std::time::Instant::now();
        let previous = self.routing.load_full();
        match RoutingSnapshot::build(
            &current.config,
            current.views(),
            &self.lasting,
            Some(&previous),
        ) {
            Ok(snapshot) => {
                self.routing.store(snapshot);
                tracing::debug!(
                    cause,
                    build_us = started.elapsed().as_micros() as u64,
                    "routing snapshot rebuilt"
                );
            }
            // Only a CA file that vanished since it was loaded can fail here: keep the last
            // snapshot.
            Err(e) => tracing::error!(error = %e, "could not rebuild the routing snapshot"),
        }
    }
}
