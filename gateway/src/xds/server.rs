//! The ADS service: one task per stream, driven by the client's requests and by new views.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TlsConnectInfo;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::budget::{Budgets, QueuedBytes};
use super::clients::{ConnectedClient, XdsClients};
use super::incoming::XdsConnection;
use super::resources::ResourceType;
use super::session::{RequestKind, Session};
use super::view::PublishedView;

/// One published state of the registry, numbered: the number is every response's version.
#[derive(Debug, Default)]
pub struct Published {
    pub version: u64,
    pub view: PublishedView,
}

/// Responses a stream may have queued towards a slow client before its task waits. A response
/// supersedes the ones of its type before it, so a deep queue buys a slow reader nothing.
const STREAM_QUEUE: usize = 2;
/// How long a stream's task waits for a client to take a response before dropping it: a client
/// that stops reading holds no more than `STREAM_QUEUE` responses (and the HTTP/2 window) for
/// longer than this.
const SEND_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct AdsService {
    pub published: watch::Receiver<Arc<Published>>,
    pub clients: Arc<XdsClients>,
    /// The server's budget of queued response bytes (`budget::TOTAL`).
    pub queued_total: Arc<Semaphore>,
}

/// The connection a request arrived on, over h2c or TLS.
fn connection_of<T>(request: &Request<T>) -> Option<XdsConnection> {
    let extensions = request.extensions();
    extensions.get::<XdsConnection>().cloned().or_else(|| {
        extensions
            .get::<TlsConnectInfo<XdsConnection>>()
            .map(|tls| tls.get_ref().clone())
    })
}

/// Responses queued towards a client, each holding its size in the budgets until the
/// transport takes it.
type Queued = (Result<DiscoveryResponse, Status>, Option<QueuedBytes>);
type Outbound = mpsc::Sender<Queued>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream =
        Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let connection = connection_of(&request);
        let peer = connection.as_ref().and_then(|c| c.remote);
        let budgets = connection
            .map(|c| c.budgets)
            .unwrap_or_else(|| Budgets::for_connection(&self.queued_total));
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(serve_stream(
            request.into_inner(),
            self.published.clone(),
            Outlet { tx, budgets },
            self.clients.clone(),
            peer,
        ));
        // A response gives its bytes back as the transport takes it from the queue.
        let responses = ReceiverStream::new(rx).map(|(response, _bytes)| response);
        Ok(Response::new(Box::pin(responses)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.clients.count_rejected("delta");
        Err(Status::unimplemented(
            "this server speaks state-of-the-world ADS only (StreamAggregatedResources)",
        ))
    }
}

/// Where a stream's responses go: its queue, charged to its connection's budgets.
struct Outlet {
    tx: Outbound,
    budgets: Budgets,
}

/// Serves one ADS stream until the client closes it, breaks it, or stops reading.
async fn serve_stream(
    mut inbound: Streaming<DiscoveryRequest>,
    mut published: watch::Receiver<Arc<Published>>,
    outlet: Outlet,
    clients: Arc<XdsClients>,
    peer: Option<SocketAddr>,
) {
    let tx = &outlet.tx;
    let mut session = Session::default();
    let mut listed: Option<ConnectedClient> = None;
    let ended = loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(request)) => {
                    // Not marked as seen: a view newer than the last push still reaches every
                    // other subscribed type through `changed()`.
                    let current = published.borrow().clone();
                    let (kind, response) =
                        session.on_request(&request, &current.view, current.version);
                    if listed.is_none() {
                        if let Some(node) = session.node() {
                            info!(node = %node.id, region = node.region.as_deref().unwrap_or("-"),
                                  peer = ?peer, "xds client connected");
                            listed = Some(clients.connected(node, peer));
                        }
                    }
                    note(&kind, &session, listed.as_ref(), &clients);
                    if let Some(response) = response {
                        if !send(&outlet, response, &clients).await {
                            break "stopped reading";
                        }
                    }
                }
                Ok(None) => break "closed by the client",
                Err(status) => {
                    clients.count_rejected("stream_error");
                    debug!(peer = ?peer, error = %status, "xds stream failed");
                    let _ = tx.send((Err(status), None)).await;
                    break "failed";
                }
            },
            changed = published.changed() => {
                if changed.is_err() {
                    // The publisher is gone (its task is restarting): the client reconnects
                    // and gets the new publisher's state.
                    let _ = tx
                        .send((Err(Status::unavailable("xds server restarting")), None))
                        .await;
                    break "server restarting";
                }
                let current = published.borrow_and_update().clone();
                let mut open = true;
                for response in session.on_view(&current.view, current.version) {
                    if !send(&outlet, response, &clients).await {
                        open = false;
                        break;
                    }
                }
                if !open {
                    break "stopped reading";
                }
            }
            () = tx.closed() => break "stopped reading",
        }
    };
    if let Some(node) = session.node() {
        info!(node = %node.id, peer = ?peer, ended, "xds client disconnected");
    }
}

/// Queues a response, within `SEND_WAIT` for room in the budgets and then in the queue; false
/// when the stream is to end (the client went away, or is not reading).
async fn send(outlet: &Outlet, response: DiscoveryResponse, clients: &XdsClients) -> bool {
    let kind = ResourceType::from_type_url(&response.type_url);
    let started = tokio::time::Instant::now();
    let Some(bytes) = outlet
        .budgets
        .take(prost::Message::encoded_len(&response), SEND_WAIT)
        .await
    else {
        clients.count_rejected("queued_bytes");
        return false;
    };
    let queued = tokio::time::timeout_at(
        started + SEND_WAIT,
        outlet.tx.send((Ok(response), Some(bytes))),
    );
    match queued.await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return false,
        Err(_) => {
            clients.count_rejected("not_reading");
            return false;
        }
    }
    if let Some(kind) = kind {
        clients.count_push(kind);
    }
    true
}

fn note(
    kind: &RequestKind,
    session: &Session,
    listed: Option<&ConnectedClient>,
    clients: &XdsClients,
) {
    let node = session.node().map(|n| n.id.as_str()).unwrap_or("");
    match kind {
        RequestKind::Nack {
            kind,
            version,
            detail,
        } => warn!(node, r#type = kind.label(), version = %version, detail = %detail,
                   "xds client rejected a response (NACK)"),
        RequestKind::UnknownType(url) => {
            clients.count_rejected("unknown_type");
            debug!(node, type_url = %url, "xds request for a type this server does not serve");
        }
        RequestKind::Stale(kind) => {
            debug!(node, r#type = kind.label(), "stale xds request ignored")
        }
        RequestKind::Ack { .. } | RequestKind::Subscribe(_) | RequestKind::Update(_) => {}
    }
    if let Some(client) = listed {
        client.note(kind);
    }
}
