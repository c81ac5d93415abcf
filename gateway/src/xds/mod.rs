//! The xDS server: the gateway's live registry, per-endpoint health and region model, served
//! over ADS (xDS v3, state of the world) to gRPC clients that call services directly with
//! target `xds:///UPSTREAM`.
//!
//! Data flows one way, as in the rest of the gateway: the routing snapshot (discovery and
//! endpoint state) -> `view` (what is published, compared with the last one) -> one `session`
//! per ADS stream (subscriptions, versions, nonces, ACK/NACK) -> `resources` (the Envoy messages
//! for that client's region). `clients` lists who is connected; `bootstrap` writes the file a
//! client starts from.
//!
//! The server runs on its own supervised thread, apart from the call-serving runtimes: a
//! misbehaving xDS client costs that thread, never a call.

pub mod bootstrap;
mod budget;
mod clients;
mod incoming;
mod resources;
mod server;
mod session;
mod view;

pub use clients::{XdsClientView, XdsClients};
pub use view::{Health, PublishedView};

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{error, info};

use crate::background::Supervisor;
use crate::config::{ListenerTls, XdsConfig};
use crate::routing::Routing;
use server::{AdsService, Published};

/// The supervised task's name (logs, `strait_background_restarts_total`). Not among the tasks
/// that make the gateway unready: xDS clients are not the gateway's callers.
pub const XDS_TASK: &str = "xds";

/// How often endpoint health is compared with the published view between routing changes: a
/// breaker opens and its open period ends without a new snapshot.
const HEALTH_POLL: Duration = Duration::from_millis(200);

/// An xDS client that stops answering HTTP/2 PINGs is dropped after this long.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// An ADS request is a few hundred bytes; anything this large is not one.
const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Streams per connection: gRPC clients open one.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// Open connections; more are closed at once (a fleet of this many processes per gateway is
/// far beyond what one xDS server should carry alone).
const MAX_CONNECTIONS: usize = 10_000;
/// Open connections from one source address: a gRPC client process opens one; a node with a
/// few dozen gateways' worth of clients fits, one address cannot take all of `MAX_CONNECTIONS`.
const MAX_CONNECTIONS_PER_SOURCE: usize = 64;
/// A connection that has not sent its HTTP/2 preface (h2c) or finished its TLS handshake in this
/// time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("cannot read the xds TLS file {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("xds server cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("xds server on {addr}: {source}")]
    Serve {
        addr: std::net::SocketAddr,
        source: tonic::transport::Error,
    },
}

/// The server's TLS from its files (read at start and at each restart of the task).
pub fn tls_config(tls: &ListenerTls) -> Result<ServerTlsConfig, XdsError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| XdsError::TlsFile {
            path: path.display().to_string(),
            source,
        })
    };
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(config)
}

/// Starts the xDS server on its own supervised thread for the life of the process.
pub fn spawn(
    supervisor: &Supervisor,
    config: XdsConfig,
    routing: Arc<Routing>,
    clients: Arc<XdsClients>,
) {
    info!(addr = %config.listen, tls = config.tls.is_some(), "xds server starting");
    supervisor.spawn(
        XDS_TASK,
        "strait-xds",
        || {},
        move || {
            let config = config.clone();
            let routing = routing.clone();
            let clients = clients.clone();
            async move {
                if let Err(e) = serve(config, routing, clients).await {
                    error!("{e}");
                }
            }
        },
    );
}

async fn serve(
    config: XdsConfig,
    routing: Arc<Routing>,
    clients: Arc<XdsClients>,
) -> Result<(), XdsError> {
    // The first view is in place before the first client can connect.
    let (published, subscriber) = watch::channel(Arc::new(Published {
        version: 1,
        view: PublishedView::from_snapshot(&routing.load(), config.upstreams.as_deref()),
    }));
    let _publisher = AbortOnDrop(tokio::spawn(publish(
        routing,
        config.upstreams.clone(),
        published,
    )));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| XdsError::Bind {
            addr: config.listen,
            source,
        })?;
    let queued_total = Arc::new(tokio::sync::Semaphore::new(budget::TOTAL));
    let incoming = incoming::capped(
        listener,
        MAX_CONNECTIONS,
        MAX_CONNECTIONS_PER_SOURCE,
        config.tls.is_some(),
        HANDSHAKE_TIMEOUT,
        clients.clone(),
        queued_total.clone(),
    );
    let service = AggregatedDiscoveryServiceServer::new(AdsService {
        published: subscriber,
        clients,
        queued_total,
    })
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls_config(tls)?)
            .map_err(|source| XdsError::Serve {
                addr: config.listen,
                source,
            })?;
    }
    builder
        .add_service(service)
        .serve_with_incoming(incoming)
        .await
        .map_err(|source| XdsError::Serve {
            addr: config.listen,
            source,
        })
}

/// The publisher lives exactly as long as the server it feeds, however `serve` ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps the published view current: rebuilt on every routing snapshot and every
/// `HEALTH_POLL`, and numbered anew only when it changed.
async fn publish(
    routing: Arc<Routing>,
    upstreams: Option<Vec<String>>,
    published: watch::Sender<Arc<Published>>,
) {
    let mut snapshots = routing.subscribe();
    loop {
        let view = PublishedView::from_snapshot(&routing.load(), upstreams.as_deref());
        published.send_if_modified(|current| {
            if current.view == view {
                return false;
            }
            *current = Arc::new(Published {
                version: current.version + 1,
                view,
            });
            true
        });
        tokio::select! {
            _ = snapshots.changed() => {}
            () = tokio::time::sleep(HEALTH_POLL) => {}
        }
    }
}
