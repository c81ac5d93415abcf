//! The process, put together: builds the routing snapshot, opens the listeners, starts
//! discovery, health probes, the xDS server and the control thread (reloads), and runs until a
//! signal says stop. SIGTERM drains (stop accepting, GOAWAY, wait for calls up to
//! `shutdown_grace`); SIGINT stops at once; SIGHUP reloads the config file. The composition
//! root: nothing imports it but `main.rs`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use tracing::info;

use crate::admin::AdminApp;
use crate::background::{FaultHooks, Supervisor};
use crate::config::Config;
use crate::control::{ControlPlane, ReloadHandle};
use crate::discovery::{dns, etcd};
use crate::metrics::Metrics;
use crate::observe::Observers;
use crate::proxy::call::CallSettings;
use crate::proxy::InFlightCalls;
use crate::routing::{Lasting, Routing, RoutingSnapshot};
use crate::server::{ListenerDeps, ListenerError, ListenerSet};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listener(ListenerError),
    #[error("cannot start the listener runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install the SIGHUP (reload) and SIGUSR1 (access log reopen) handlers: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Snapshot(#[from] crate::routing::SnapshotError),
    #[error(transparent)]
    Observe(#[from] crate::observe::ObserveError),
    #[error(transparent)]
    Xds(#[from] crate::xds::XdsError),
    #[error("admin.tls: {0}")]
    AdminTls(crate::tls::TlsError),
}

impl From<ListenerError> for StartError {
    fn from(e: ListenerError) -> Self {
        StartError::Listener(e)
    }
}

/// pingora's process settings: worker threads, and the grace bounds for a drain.
fn server_conf(config: &Config) -> ServerConf {
    let grace = config.gateway.shutdown_grace;
    let mut conf = ServerConf {
        threads: config.gateway.threads,
        // pingora sleeps the whole grace period; `drain` ends the process as soon as the last
        // call finishes, so this is only the upper bound.
        grace_period_seconds: Some(grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    // Attempts are bounded per upstream by `max_attempts`; this only stops runaway loops.
    conf.max_retries = 16;
    conf
}

/// Connections the admin listener serves at once; more are closed at accept.
const ADMIN_MAX_CONNECTIONS: u32 = 64;

/// Runs the gateway until it is told to stop. `path` is the file reloads re-read. Returns only
/// on a start-up error or after a shutdown that did not end the process itself.
pub fn run(
    config: Config,
    path: PathBuf,
    log_drops: crate::logging::LogDrops,
) -> Result<(), StartError> {
    if let Some(admin) = &config.admin {
        crate::server::check_bindable("admin", admin.listen)?;
    }
    if let Some(xds) = &config.xds {
        crate::server::check_bindable("xds", xds.listen)?;
        if let Some(tls) = &xds.tls {
            crate::xds::tls_config(tls)?;
        }
    }
    let metrics = config.admin.as_ref().map(|a| {
        Metrics::new(
            a.endpoint_labels,
            a.max_methods as usize,
            a.endpoint_series_grace,
        )
    });
    if let Some(m) = &metrics {
        m.config_loaded(true);
    }
    let observers = Arc::new(Observers::new(metrics.as_deref()));
    observers.apply(&config)?;
    crate::memory::spawn_trimmer();
    let lasting = Arc::new(Lasting::with_metrics(metrics.clone()));
    let snapshot = RoutingSnapshot::build(&config, Default::default(), &lasting, None)?;
    let routing = Arc::new(Routing::new(snapshot));
    let calls = InFlightCalls::default();
    let grace = config.gateway.shutdown_grace;
    let proxy_conf = Arc::new(server_conf(&config));
    let listeners = Arc::new(
        ListenerSet::new(
            ListenerDeps {
                server_conf: proxy_conf,
                routing: routing.clone(),
                settings: Arc::new(CallSettings {
                    region: config.gateway.region.clone(),
                    region_header: config.gateway.region_header.clone(),
                }),
                calls: calls.clone(),
                metrics: metrics.clone(),
                grace,
                observers: observers.clone(),
            },
            config.gateway.threads,
        )
        .map_err(StartError::Runtime)?,
    );
    let control = Arc::new(ControlPlane::new(
        path,
        Arc::new(config.clone()),
        routing.clone(),
        lasting.clone(),
        listeners.clone(),
        metrics.clone(),
        observers.clone(),
    ));
    let supervisor = Supervisor::new(metrics.clone(), Arc::new(FaultHooks::from_env()));
    let discovery = config.etcd.clone().map(|etcd_config| {
        let status = Arc::new(etcd::DiscoveryStatus::default());
        info!(endpoints = ?etcd_config.endpoints, prefix = %etcd_config.prefix, "starting etcd discovery");
        let control = control.clone();
        etcd::spawn(&supervisor, etcd_config, status.clone(), move |view| {
            control.etcd_view_changed(view)
        });
        status
    });
    // Every gateway with [etcd] registers itself, so that a reload may add a cluster-wide
    // limit and find the fleet already counted.
    let membership = config.etcd.clone().map(|etcd_config| {
        let control = control.clone();
        let status = Arc::new(crate::discovery::members::MembershipStatus::default());
        crate::discovery::members::spawn(
            &supervisor,
            etcd_config,
            crate::discovery::members::member_id(),
            status.clone(),
            move |gateways| control.gateways_changed(gateways),
        );
        status
    });
    // Always running, idle without dns upstreams: a reload may add some.
    let dns_status = Arc::new(dns::DnsStatus::default());
    {
        let control = control.clone();
        dns::spawn(
            &supervisor,
            control.dns_plan(),
            dns_status.clone(),
            move |view| control.dns_view_changed(view),
        );
    }
    crate::health::spawn(&supervisor, routing.clone());
    let xds_clients = config.xds.clone().map(|xds| {
        let clients = Arc::new(crate::xds::XdsClients::new(
            metrics.as_ref().map(|m| m.xds().clone()),
        ));
        crate::xds::spawn(&supervisor, xds, routing.clone(), clients.clone());
        clients
    });
    let reload = ReloadHandle::spawn(&supervisor, control.clone()).map_err(StartError::Signal)?;
    {
        // Remote JWKS of `[[auth]]` providers, fetched while the process runs.
        let jwks = lasting.jwks.clone();
        supervisor.spawn(
            crate::background::JWKS,
            "strait-jwks",
            || {},
            move || crate::auth::refresh_loop(jwks.clone()),
        );
    }

    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    server.bootstrap();
    let running = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(false));
    if let (Some(admin), Some(metrics)) = (&config.admin, &metrics) {
        let app = AdminApp {
            metrics: metrics.clone(),
            routing: routing.clone(),
            discovery,
            membership,
            log_drops,
            dns: dns_status,
            running: running.clone(),
            draining: draining.clone(),
            reload,
            supervisor,
            xds: xds_clients,
            control,
        };
        // Its own connection cap: operators' tools need few connections.
        let app = crate::server::with_connection_cap(
            "admin",
            pingora::apps::http_app::HttpServer::new_app(app),
            ADMIN_MAX_CONNECTIONS,
        );
        let mut service = Service::new("admin".to_string(), app);
        match &admin.tls {
            // HTTPS, and with `client_ca` only operators' certificates get a handshake.
            Some(tls) => {
                let state = crate::tls::ListenerTlsState::load("admin", tls.files())
                    .map_err(StartError::AdminTls)?;
                service.add_tls_with_settings(
                    &admin.listen.to_string(),
                    None,
                    state.pingora_settings(),
                );
            }
            None => service.add_tcp(&admin.listen.to_string()),
        }
        service.threads = Some(1);
        server.add_service(service);
        info!(addr = %admin.listen, "admin listener ready");
    }
    listeners.start(&config.listeners)?;
    for listener in &config.listeners {
        info!(listener = %listener.name, addr = %listener.listen, protocol = listener.kind.as_str(),
              tls = listener.tls.is_some(),
              mutual_tls = listener.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
              "listener ready");
    }
    crate::server::exit_when_drained(
        server.watch_execution_phase(),
        calls,
        grace,
        running,
        draining,
        listeners,
        observers,
    );
    info!(
        version = env!("CARGO_PKG_VERSION"),
        threads = config.gateway.threads,
        region = config.gateway.region.as_deref().unwrap_or("-"),
        "strait started"
    );
    server.run(RunArgs::default());
    Ok(())
}
