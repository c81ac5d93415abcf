//! The data-path listeners, each a pingora listening service run on one shared runtime under its
//! own stop signal, so a reload can open, drain or re-key listeners one by one while the others
//! keep serving. (pingora's `Server` can only start services, never stop one.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::listeners::TcpSocketOptions;
use pingora::protocols::http::v2::server::{default_h2_options, H2Keepalive};
use pingora::protocols::TcpKeepalive;
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds};
use pingora::services::listening::Service;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::admission::{Admission, Handshake};
use super::frame_guard::{FrameRules, ResetBudget};
use super::runtime::ListenerRuntime;
use crate::config::{ListenerConfig, ListenerKind, ListenerLimits};
use crate::metrics::{Metrics, Rejection};
use crate::proxy::call::CallSettings;
use crate::proxy::grpc::{GrpcProxy, ListenerProfile};
use crate::proxy::tcp::TcpProxy;
use crate::proxy::web::{cors::CorsPolicy, WebSettings};
use crate::proxy::InFlightCalls;
use crate::routing::Routing;
use crate::tls::{ListenerTlsState, TlsError, TlsMaterial};

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
    pub observers: Arc<crate::observe::Observers>,
}

struct Running {
    config: ListenerConfig,
    tls: Option<ListenerTlsState>,
    stop: watch::Sender<bool>,
    accepting: JoinHandle<()>,
    /// Our own handle on the listening socket (pingora has a duplicate): a replacement
    /// listener on the same address takes it over, so the socket never closes and connections
    /// waiting in its backlog are served by the new listener.
    socket: std::net::TcpListener,
}

/// A prepared change to the listeners; dropping it instead of committing closes the new sockets.
#[derive(Default)]
pub struct ListenerPlan {
    wanted: Vec<ListenerConfig>,
    to_open: Vec<ListenerConfig>,
    to_restart: Vec<ListenerConfig>,
    to_stop: Vec<(String, SocketAddr)>,
    /// Certificates read in `prepare`, installed in `commit` without reading anything again.
    tls_reloads: Vec<(String, ListenerTlsState, TlsMaterial)>,
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
    runtime: ListenerRuntime,
    deps: ListenerDeps,
    running: Mutex<HashMap<String, Running>>,
    /// Reloads are refused before `start` and after `stop_all`.
    phase: std::sync::atomic::AtomicU8,
}

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const STOPPED: u8 = 2;

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
    #[error("the gateway is {0}; listeners cannot change now")]
    NotServing(&'static str),
}

/// A socket bound (with the duplicate pingora will own) and its TLS material loaded, not yet
/// serving: nothing left to fail when it starts.
struct Prepared {
    config: ListenerConfig,
    socket: std::net::TcpListener,
    for_pingora: std::net::TcpListener,
    tls: Option<ListenerTlsState>,
}

/// Loads the TLS material and binds (or takes over `socket`). Binding here rather than in
/// pingora, which panics inside its runtime on a bind failure, makes a taken port an error.
fn prepare(
    config: &ListenerConfig,
    socket: Option<std::net::TcpListener>,
) -> Result<Prepared, ListenerError> {
    let tls =
        match &config.tls {
            None => None,
            Some(tls) => Some(ListenerTlsState::load(&config.name, tls.files()).map_err(
                |source| ListenerError::Tls {
                    listener: config.name.clone(),
                    source,
                },
            )?),
        };
    let bind_error = |source| ListenerError::Bind {
        listener: config.name.clone(),
        addr: config.listen,
        source,
    };
    let socket = match socket {
        Some(taken_over) => taken_over,
        None => {
            let socket = std::net::TcpListener::bind(config.listen).map_err(bind_error)?;
            socket.set_nonblocking(true).map_err(bind_error)?;
            socket
        }
    };
    let for_pingora = socket.try_clone().map_err(bind_error)?;
    Ok(Prepared {
        config: config.clone(),
        socket,
        for_pingora,
        tls,
    })
}

/// Listeners are the same unless what they are (address, protocol, TLS on/off, mutual TLS on/off,
/// limits, idle timeout) changed; certificate files and a tcp listener's upstream change in place.
fn same_listener(running: &Running, wanted: &ListenerConfig) -> bool {
    let kind_same = matches!(
        (&running.config.kind, &wanted.kind),
        (ListenerKind::Grpc, ListenerKind::Grpc)
            | (ListenerKind::Tcp { .. }, ListenerKind::Tcp { .. })
    );
    let mutual = |c: &ListenerConfig| c.tls.as_ref().map(|t| t.client_ca.is_some());
    running.config.listen == wanted.listen
        && kind_same
        && mutual(&running.config) == mutual(wanted)
        && running.config.limits == wanted.limits
        && running.config.idle_timeout == wanted.idle_timeout
        && running.config.web == wanted.web
        && running.config.trusted_sources == wanted.trusted_sources
        && running.config.proxy_protocol == wanted.proxy_protocol
}

impl ListenerSet {
    /// `Err`: the listener runtime could not be started.
    pub fn new(deps: ListenerDeps, threads: usize) -> std::io::Result<Self> {
        let runtime = ListenerRuntime::new(threads)?;
        Ok(Self {
            runtime,
            deps,
            running: Mutex::new(HashMap::new()),
            phase: std::sync::atomic::AtomicU8::new(STARTING),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens every listener, or none: the first failure is returned before any serves.
    pub fn start(&self, listeners: &[ListenerConfig]) -> Result<(), ListenerError> {
        let prepared = listeners
            .iter()
            .map(|l| prepare(l, None))
            .collect::<Result<Vec<_>, _>>()?;
        let mut running = self.lock();
        for p in prepared {
            let name = p.config.name.clone();
            running.insert(name, self.serve(p));
        }
        self.phase.store(SERVING, Ordering::Release);
        Ok(())
    }

    /// First half of bringing the running listeners to `wanted`: everything that can fail
    /// (binding new addresses, reading certificates) happens here, before anything changes.
    pub fn prepare(&self, wanted: &[ListenerConfig]) -> Result<ListenerPlan, ListenerError> {
        let running = self.lock();
        match self.phase.load(Ordering::Acquire) {
            STARTING => return Err(ListenerError::NotServing("still starting")),
            STOPPED => return Err(ListenerError::NotServing("shutting down")),
            _ => {}
        }
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
                        // Read now so a bad file refuses the reload; installed in `commit`
                        // as read here (a file changing in between cannot half-apply it).
                        let material =
                            state
                                .read(tls.files())
                                .map_err(|source| ListenerError::Tls {
                                    listener: config.name.clone(),
                                    source,
                                })?;
                        plan.tls_reloads
                            .push((config.name.clone(), state.clone(), material));
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
        // An address held by a listener being stopped is taken over, socket and backlog;
        // everything else is bound now, so a taken port refuses the reload before any change.
        for config in plan.to_open.iter().chain(&plan.to_restart) {
            let holder = running
                .values()
                .find(|r| r.config.listen == config.listen)
                .filter(|r| plan.to_stop.iter().any(|(name, _)| *name == r.config.name));
            let socket = match holder {
                Some(r) => Some(r.socket.try_clone().map_err(|source| ListenerError::Bind {
                    listener: config.name.clone(),
                    addr: config.listen,
                    source,
                })?),
                None => None,
            };
            plan.prepared.push(prepare(config, socket)?);
        }
        Ok(plan)
    }

    /// Second half: installs the certificates `prepare` read, stops removed or changed
    /// listeners (their open connections drain), opens the new ones. Nothing here reads a file:
    /// the only failure left is a shutdown that began meanwhile.
    pub async fn commit(&self, plan: ListenerPlan) -> Result<ListenerChanges, ListenerError> {
        let mut changes = ListenerChanges::default();
        for (name, state, material) in plan.tls_reloads {
            state.install(material);
            changes.tls_reloaded.push(name);
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
        let mut running = self.lock();
        if self.phase.load(Ordering::Acquire) == STOPPED {
            // A shutdown began meanwhile: open nothing more.
            return Err(ListenerError::NotServing("shutting down"));
        }
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
        self.phase.store(STOPPED, Ordering::Release);
        // Dropping our socket handles too: once pingora's accept loops end, the sockets close
        // and new connections are refused instead of waiting in a backlog nobody serves.
        for (_, r) in self.lock().drain() {
            let _ = r.stop.send(true);
        }
    }

    fn serve(&self, prepared: Prepared) -> Running {
        let Prepared {
            config,
            socket,
            for_pingora,
            tls,
        } = prepared;
        let addr = config.listen.to_string();
        let mut fds = Fds::new();
        // pingora takes the already-bound socket from the table instead of binding again.
        fds.add(addr.clone(), for_pingora.into_raw_fd());
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
            socket,
        }
    }

    fn grpc_service(
        &self,
        listener: &ListenerConfig,
        tls: &Option<ListenerTlsState>,
    ) -> Service<Admission<HttpProxy<GrpcProxy>>> {
        let d = &self.deps;
        let limits = &listener.limits;
        let profile = ListenerProfile {
            name: listener.name.clone(),
            max_message_size: limits.max_message_size,
            request_body_timeout: limits.request_body_timeout,
            trusted_sources: listener.trusted_sources.clone().into(),
            web: WebSettings {
                grpc_web: listener.web.grpc_web,
                cors: listener.web.cors.as_ref().map(CorsPolicy::new),
            },
        };
        let app = GrpcProxy::new(
            profile,
            d.routing.clone(),
            d.settings.clone(),
            d.calls.clone(),
            d.metrics.clone(),
            d.observers.clone(),
        );
        let mut proxy = http_proxy(&d.server_conf, app);
        let mut server_options = HttpServerOptions::default();
        // h2c with prior knowledge; HTTP/1.x still reaches the proxy and gets a clear refusal.
        server_options.h2c = true;
        server_options.h2_idle_timeout = Some(listener.idle_timeout);
        server_options.h2_keepalive = limits.ping_interval.map(|interval| {
            let listener_metrics = d.metrics.as_ref().map(|m| m.listener(&listener.name));
            let name = listener.name.clone();
            H2Keepalive {
                interval,
                timeout: limits.ping_timeout,
                on_timeout: Some(Arc::new(move || {
                    warn!(listener = %name,
                          "closed a client connection that did not answer an HTTP/2 PING in time");
                    if let Some(m) = &listener_metrics {
                        m.rejected(Rejection::PingTimeout);
                    }
                })),
            }
        });
        proxy.server_options = Some(server_options);
        let mut h2 = default_h2_options();
        h2.max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(limits.max_header_list_size)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        proxy.h2_options = Some(h2);
        let handshake = match tls {
            None => Handshake::H2cPreface(limits.handshake_timeout),
            Some(tls) => Handshake::Tls(
                Box::new(tls.pingora_settings().build()),
                limits.handshake_timeout,
            ),
        };
        // Legitimate clients cancel calls, but not hundreds a second on one connection.
        let frame_rules = FrameRules {
            resets: ResetBudget {
                resets: (2 * limits.max_concurrent_streams).max(200),
                window: Duration::from_secs(1),
            },
            header_timeout: limits.request_header_timeout,
        };
        let app = Admission::new(
            &listener.name,
            proxy,
            limits.max_connections,
            handshake,
            Some(frame_rules),
            d.metrics.as_ref().map(|m| m.listener(&listener.name)),
        )
        .with_proxy_header(proxy_header_rule(listener));
        let mut service = Service::new(format!("grpc listener {}", listener.name), app);
        // h2 reads through its own codec buffer; pingora's 64 KiB read buffer per connection
        // would only add memory (and a copy) to every idle connection.
        service.add_listener(
            pingora::listeners::ListenerConfig::tcp(listener.listen.to_string())
                .tcp_socket_options(socket_options(limits))
                .l4_buffer(pingora::protocols::l4::stream::L4BufferSettings::unbuffered()),
        );
        service
    }

    fn tcp_service(&self, listener: &ListenerConfig) -> Service<Admission<TcpProxy>> {
        let d = &self.deps;
        let app = TcpProxy::new(
            listener.name.clone(),
            d.routing.clone(),
            d.settings.region.clone(),
            d.calls.clone(),
            d.grace,
            d.metrics.as_ref().map(|m| m.tcp(&listener.name)),
            d.observers.clone(),
        );
        let app = Admission::new(
            &listener.name,
            app,
            listener.limits.max_connections,
            Handshake::None,
            None,
            d.metrics.as_ref().map(|m| m.listener(&listener.name)),
        )
        .with_proxy_header(proxy_header_rule(listener));
        let mut service = Service::new(format!("tcp listener {}", listener.name), app);
        // The relay has its own buffers, sized to the traffic; pingora's default 64 KiB read
        // buffer per accepted connection would only add memory and a copy.
        service.add_listener(
            pingora::listeners::ListenerConfig::tcp(listener.listen.to_string())
                .tcp_socket_options(socket_options(&listener.limits))
                .l4_buffer(pingora::protocols::l4::stream::L4BufferSettings::unbuffered()),
        );
        service
    }
}

/// TCP keepalive on accepted connections: the kernel notices a peer that vanished without a FIN
/// (pingora offers no downstream HTTP/2 PING).
fn socket_options(limits: &ListenerLimits) -> TcpSocketOptions {
    let mut options = TcpSocketOptions::default();
    options.tcp_keepalive = limits.keepalive.map(|idle| TcpKeepalive {
        idle,
        interval: Duration::from_secs(10),
        count: 6,
        #[cfg(target_os = "linux")]
        user_timeout: Duration::ZERO,
    });
    options
}

/// The admin listener binds through pingora's own server: check it first so a taken port is a
/// clean start-up error rather than a panic inside pingora.
pub fn check_bindable(name: &str, listen: SocketAddr) -> Result<(), ListenerError> {
    std::net::TcpListener::bind(listen)
        .map(drop)
        .map_err(|source| ListenerError::Bind {
            listener: name.to_string(),
            addr: listen,
            source,
        })
}

/// A `proxy_protocol` listener's rule: its trusted sources send a PROXY header first, within
/// the handshake timeout.
fn proxy_header_rule(listener: &ListenerConfig) -> Option<super::proxy_protocol::HeaderRule> {
    listener
        .proxy_protocol
        .then(|| super::proxy_protocol::HeaderRule {
            trusted: listener.trusted_sources.clone().into(),
            deadline: listener.limits.handshake_timeout,
        })
}
