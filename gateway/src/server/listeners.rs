//! The data-path listeners, each a pingora listening service run on one shared runtime under its
//! own stop signal, so a reload can open, drain or re-key listeners one by one while the others
//! keep serving. (pingora's `Server` can only start services, never stop one.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::protocols::http::v2::server::default_h2_options;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds};
use pingora::services::listening::Service;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use super::StartError;
use crate::config::{ListenerConfig, ListenerKind};
use crate::metrics::Metrics;
use crate::proxy::grpc::{CallSettings, GrpcProxy};
use crate::proxy::tcp::TcpProxy;
use crate::proxy::InFlightCalls;
use crate::routing::Routing;
use crate::tls::{ListenerTlsState, TlsError};

/// Concurrent streams a caller may open on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Per-stream receive window: large enough that a 4 MiB message does not crawl in 64 KiB steps.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;

/// What every listener shares.
#[derive(Clone)]
pub struct ListenerDeps {
    pub server_conf: Arc<ServerConf>,
    pub routing: Arc<Routing>,
    pub settings: Arc<CallSettings>,
    pub calls: InFlightCalls,
    pub metrics: Option<Arc<Metrics>>,
    /// How long a draining tcp connection may go on.
    pub grace: Duration,
}

struct Running {
    config: ListenerConfig,
    tls: Option<ListenerTlsState>,
    stop: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

/// A prepared change to the listeners; dropping it instead of committing closes the new sockets.
#[derive(Default)]
pub struct ListenerPlan {
    wanted: Vec<ListenerConfig>,
    to_open: Vec<ListenerConfig>,
    to_restart: Vec<ListenerConfig>,
    to_stop: Vec<(String, SocketAddr)>,
    tls_reloads: Vec<(String, ListenerTlsState, crate::config::ListenerTls)>,
    prepared: Vec<Prepared>,
}

/// What a reload did to the listeners.
#[derive(Debug, Default)]
pub struct ListenerChanges {
    pub opened: Vec<String>,
    pub closed: Vec<String>,
    pub restarted: Vec<String>,
    pub tls_reloaded: Vec<String>,
}

pub struct ListenerSet {
    runtime: tokio::runtime::Runtime,
    deps: ListenerDeps,
    running: Mutex<HashMap<String, Running>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot bind listener {listener:?} on {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {listener:?}: TLS: {source}")]
    Tls { listener: String, source: TlsError },
}

impl From<ListenerError> for StartError {
    fn from(e: ListenerError) -> Self {
        StartError::Listener(e)
    }
}

/// A socket bound and its TLS material loaded, not yet serving.
struct Prepared {
    config: ListenerConfig,
    socket: std::net::TcpListener,
    tls: Option<ListenerTlsState>,
}

/// Binds here rather than in pingora, which panics inside its runtime on a bind failure.
fn prepare(config: &ListenerConfig) -> Result<Prepared, ListenerError> {
    let tls = match &config.tls {
        None => None,
        Some(tls) => Some(ListenerTlsState::load(&config.name, tls).map_err(|source| {
            ListenerError::Tls {
                listener: config.name.clone(),
                source,
            }
        })?),
    };
    let bind_error = |source| ListenerError::Bind {
        listener: config.name.clone(),
        addr: config.listen,
        source,
    };
    let socket = std::net::TcpListener::bind(config.listen).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    Ok(Prepared {
        config: config.clone(),
        socket,
        tls,
    })
}

/// Listeners are the same unless what they are (address, protocol, TLS on/off, mutual TLS on/off)
/// changed; certificate files and tcp upstream/idle settings change in place.
fn same_listener(running: &Running, wanted: &ListenerConfig) -> bool {
    let kind_same = matches!(
        (&running.config.kind, &wanted.kind),
        (ListenerKind::Grpc, ListenerKind::Grpc)
            | (ListenerKind::Tcp { .. }, ListenerKind::Tcp { .. })
    );
    let mutual = |c: &ListenerConfig| c.tls.as_ref().map(|t| t.client_ca.is_some());
    running.config.listen == wanted.listen && kind_same && mutual(&running.config) == mutual(wanted)
}

impl ListenerSet {
    pub fn new(deps: ListenerDeps, threads: usize) -> Result<Self, StartError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("strait-listener")
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        Ok(Self {
            runtime,
            deps,
            running: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens every listener, or none: the first failure is returned before any serves.
    pub fn start(&self, listeners: &[ListenerConfig]) -> Result<(), ListenerError> {
        let prepared = listeners
            .iter()
            .map(prepare)
            .collect::<Result<Vec<_>, _>>()?;
        let mut running = self.lock();
        for p in prepared {
            let name = p.config.name.clone();
            running.insert(name, self.serve(p));
        }
        Ok(())
    }

    /// First half of bringing the running listeners to `wanted`: everything that can fail
    /// (binding new addresses, reading certificates) happens here, before anything changes.
    pub fn prepare(&self, wanted: &[ListenerConfig]) -> Result<ListenerPlan, ListenerError> {
        let running = self.lock();
        let mut plan = ListenerPlan {
            wanted: wanted.to_vec(),
            ..ListenerPlan::default()
        };
        for config in wanted {
            match running.get(&config.name) {
                None => plan.to_open.push(config.clone()),
                Some(r) if !same_listener(r, config) => plan.to_restart.push(config.clone()),
                Some(r) => {
                    if let (Some(state), Some(tls)) = (&r.tls, &config.tls) {
                        // Read now so a bad file refuses the reload; swapped in `commit`.
                        ListenerTlsState::load(&config.name, tls).map_err(|source| {
                            ListenerError::Tls {
                                listener: config.name.clone(),
                                source,
                            }
                        })?;
                        plan.tls_reloads
                            .push((config.name.clone(), state.clone(), tls.clone()));
                    }
                }
            }
        }
        plan.to_stop = running
            .values()
            .filter(|r| {
                wanted
                    .iter()
                    .find(|w| w.name == r.config.name)
                    .is_none_or(|w| !same_listener(r, w))
            })
            .map(|r| (r.config.name.clone(), r.config.listen))
            .collect();
        // An address still held by a listener being stopped is bound in `commit`, after it stops.
        for config in plan.to_open.iter().chain(&plan.to_restart) {
            if !plan.to_stop.iter().any(|(_, addr)| *addr == config.listen) {
                plan.prepared.push(prepare(config)?);
            }
        }
        Ok(plan)
    }

    /// Second half: re-keys certificates, stops removed or changed listeners (their open
    /// connections drain), opens the new ones.
    pub async fn commit(&self, mut plan: ListenerPlan) -> Result<ListenerChanges, ListenerError> {
        let mut changes = ListenerChanges::default();
        for (name, state, tls) in &plan.tls_reloads {
            state.reload(tls).map_err(|source| ListenerError::Tls {
                listener: name.clone(),
                source,
            })?;
            changes.tls_reloaded.push(name.clone());
        }
        let stopped: Vec<Running> = {
            let mut running = self.lock();
            plan.to_stop
                .iter()
                .filter_map(|(name, _)| running.remove(name))
                .collect()
        };
        for old in stopped {
            let _ = old.stop.send(true);
            // The accept loop ends at once; open connections drain on their own.
            let _ = old.accepting.await;
            if !plan.wanted.iter().any(|w| w.name == old.config.name) {
                info!(listener = %old.config.name, addr = %old.config.listen,
                      "listener removed: stopped accepting, open connections drain");
                changes.closed.push(old.config.name.clone());
            }
        }
        for config in plan.to_open.iter().chain(&plan.to_restart) {
            if plan.to_stop.iter().any(|(_, addr)| *addr == config.listen) {
                plan.prepared.push(prepare(config)?);
            }
        }
        let mut running = self.lock();
        for p in plan.prepared {
            let name = p.config.name.clone();
            if plan.to_restart.iter().any(|c| c.name == name) {
                changes.restarted.push(name.clone());
            } else {
                changes.opened.push(name.clone());
            }
            info!(listener = %name, addr = %p.config.listen, protocol = p.config.kind.as_str(),
                  "listener opened");
            running.insert(name, self.serve(p));
        }
        for config in &plan.wanted {
            if let Some(r) = running.get_mut(&config.name) {
                r.config = config.clone();
            }
        }
        Ok(changes)
    }

    /// Stops accepting everywhere; open connections and calls drain (the process decides how
    /// long to wait).
    pub fn stop_all(&self) {
        for r in self.lock().values() {
            let _ = r.stop.send(true);
        }
    }

    /// Addresses currently served, by listener name.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut all: Vec<_> = self
            .lock()
            .values()
            .map(|r| (r.config.name.clone(), r.config.listen))
            .collect();
        all.sort();
        all
    }

    fn serve(&self, prepared: Prepared) -> Running {
        let Prepared {
            config,
            socket,
            tls,
        } = prepared;
        let addr = config.listen.to_string();
        let mut fds = Fds::new();
        // pingora takes the already-bound socket from the table instead of binding again.
        fds.add(addr.clone(), socket.into_raw_fd());
        let fds: ListenFds = Arc::new(parking_lot::Mutex::new(fds));
        let (stop, stopped) = watch::channel(false);
        let mut service = match &config.kind {
            ListenerKind::Grpc => {
                Box::new(self.grpc_service(&config, &tls)) as Box<dyn pingora::services::Service>
            }
            ListenerKind::Tcp { .. } => Box::new(self.tcp_service(&config)),
        };
        let accepting = self.runtime.spawn(async move {
            service.start_service(Some(fds), stopped, 1).await;
        });
        Running {
            config,
            tls,
            stop,
            accepting,
        }
    }

    fn grpc_service(
        &self,
        listener: &ListenerConfig,
        tls: &Option<ListenerTlsState>,
    ) -> Service<pingora::proxy::HttpProxy<GrpcProxy>> {
        let d = &self.deps;
        let app = GrpcProxy::new(
            listener.name.clone(),
            d.routing.clone(),
            d.settings.clone(),
            d.calls.clone(),
            d.metrics.clone(),
        );
        let mut service = http_proxy_service_with_name(
            &d.server_conf,
            app,
            &format!("grpc listener {}", listener.name),
        );
        let logic = service
            .app_logic_mut()
            .expect("a freshly built service has its app logic");
        let mut server_options = HttpServerOptions::default();
        // h2c with prior knowledge; HTTP/1.x still reaches the proxy and gets a clear refusal.
        server_options.h2c = true;
        logic.server_options = Some(server_options);
        let mut h2 = default_h2_options();
        h2.max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        logic.h2_options = Some(h2);
        let addr = listener.listen.to_string();
        match tls {
            None => service.add_tcp(&addr),
            Some(tls) => service.add_tls_with_settings(&addr, None, tls.pingora_settings()),
        }
        service
    }

    fn tcp_service(&self, listener: &ListenerConfig) -> Service<TcpProxy> {
        let d = &self.deps;
        let app = TcpProxy::new(
            listener.name.clone(),
            d.routing.clone(),
            d.settings.region.clone(),
            d.calls.clone(),
            d.grace,
            d.metrics.as_ref().map(|m| m.tcp(&listener.name)),
        );
        let mut service = Service::new(format!("tcp listener {}", listener.name), app);
        // The relay has its own buffers, sized to the traffic; pingora's default 64 KiB read
        // buffer per accepted connection would only add memory and a copy.
        service.add_listener(
            pingora::listeners::ListenerConfig::tcp(listener.listen.to_string())
                .l4_buffer(pingora::protocols::l4::stream::L4BufferSettings::unbuffered()),
        );
        service
    }
}

/// The admin listener binds through pingora's own server: check it first so a taken port is a
/// clean start-up error rather than a panic inside pingora.
pub fn check_bindable(name: &str, listen: SocketAddr) -> Result<(), StartError> {
    std::net::TcpListener::bind(listen)
        .map(drop)
        .map_err(|source| {
            StartError::Listener(ListenerError::Bind {
                listener: name.to_string(),
                addr: listen,
                source,
            })
        })
}
