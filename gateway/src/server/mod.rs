//! The process: builds the routing snapshot, one pingora service per listener, and runs until a
//! signal says stop. SIGTERM drains (stop accepting, GOAWAY, wait for calls up to
//! `shutdown_grace`); SIGINT stops at once.

mod drain;
mod listeners;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use tracing::info;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::discovery::etcd::{self, DiscoveryStatus};
use crate::endpoint::EndpointRegistry;
use crate::metrics::Metrics;
use crate::proxy::grpc::CallSettings;
use crate::proxy::InFlightCalls;
use crate::routing::{Routing, RoutingSnapshot};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind listener {listener:?} on {addr}: {source}")]
    Bind {
        listener: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {listener:?}: TLS setup failed: {reason}")]
    Tls { listener: String, reason: String },
    #[error(transparent)]
    Snapshot(#[from] crate::routing::SnapshotError),
}

/// Watches etcd and swaps in a new routing snapshot for every change.
fn start_discovery(
    etcd_config: crate::config::EtcdConfig,
    config: Arc<Config>,
    routing: Arc<Routing>,
    registry: Arc<EndpointRegistry>,
) -> Arc<DiscoveryStatus> {
    let status = Arc::new(DiscoveryStatus::default());
    info!(endpoints = ?etcd_config.endpoints, prefix = %etcd_config.prefix, "starting etcd discovery");
    etcd::spawn(etcd_config, status.clone(), move |view| {
        let started = std::time::Instant::now();
        let previous = routing.load_full();
        match RoutingSnapshot::build(&config, Some(&view), &registry, Some(&previous)) {
            Ok(snapshot) => {
                routing.store(snapshot);
                tracing::debug!(
                    instances = view.len(),
                    build_us = started.elapsed().as_micros() as u64,
                    "routing snapshot rebuilt"
                );
            }
            // Only a CA file that vanished since start-up can fail here: keep the last snapshot.
            Err(e) => tracing::error!(error = %e, "could not rebuild the routing snapshot"),
        }
    });
    status
}

/// Runs the gateway until it is told to stop. Returns only on a start-up error or after a
/// shutdown that did not end the process itself.
pub fn run(config: Config) -> Result<(), StartError> {
    listeners::check_bindable(&config)?;
    let metrics = config
        .admin
        .as_ref()
        .map(|a| Metrics::new(a.endpoint_labels));
    if let Some(m) = &metrics {
        m.config_loaded(true);
    }
    let registry = Arc::new(EndpointRegistry::with_metrics(metrics.clone()));
    let snapshot = RoutingSnapshot::build(&config, None, &registry, None)?;
    let routing = Arc::new(Routing::new(snapshot));
    let discovery = config.etcd.clone().map(|etcd_config| {
        start_discovery(
            etcd_config,
            Arc::new(config.clone()),
            routing.clone(),
            registry.clone(),
        )
    });
    crate::health::spawn(routing.clone());
    let calls = InFlightCalls::default();
    let settings = Arc::new(CallSettings {
        region: config.gateway.region.clone(),
        region_header: config.gateway.region_header.clone(),
    });

    let grace = config.gateway.shutdown_grace;
    let mut server_conf = ServerConf {
        threads: config.gateway.threads,
        // pingora sleeps the whole grace period; `drain` ends the process as soon as the last
        // call finishes, so this is only the upper bound.
        grace_period_seconds: Some(grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    // Attempts are bounded per upstream by `max_attempts`; this only stops runaway loops.
    server_conf.max_retries = 16;
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();

    for listener in &config.listeners {
        let service = listeners::grpc_service(
            &server.configuration,
            listener,
            routing.clone(),
            settings.clone(),
            calls.clone(),
            metrics.clone(),
        )?;
        server.add_service(service);
        info!(listener = %listener.name, addr = %listener.listen,
              tls = listener.tls.is_some(), "gRPC listener ready");
    }

    let running = Arc::new(AtomicBool::new(false));
    if let (Some(admin), Some(metrics)) = (&config.admin, &metrics) {
        let app = AdminApp {
            metrics: metrics.clone(),
            routing: routing.clone(),
            discovery,
            running: running.clone(),
        };
        let mut service = Service::new("admin".to_string(), app);
        service.add_tcp(&admin.listen.to_string());
        service.threads = Some(1);
        server.add_service(service);
        info!(addr = %admin.listen, "admin listener ready");
    }
    drain::exit_when_drained(server.watch_execution_phase(), calls, grace, running);
    info!(
        version = env!("CARGO_PKG_VERSION"),
        threads = config.gateway.threads,
        region = config.gateway.region.as_deref().unwrap_or("-"),
        "strait started"
    );
    server.run(RunArgs::default());
    Ok(())
}
