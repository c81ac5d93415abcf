//! The xDS server's accepted connections, capped: like the gateway's listeners, it does not let
//! an unbounded number of clients (or of half-open connections that never finish a handshake)
//! hold its file descriptors and memory.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use super::budget::Budgets;
use super::clients::XdsClients;

/// An accepted connection holding one of the server's connection slots, and one of its source
/// address's, until it closes.
pub struct Capped {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    _source: SourceSlot,
    budgets: Budgets,
}

/// What the ADS service learns of the connection a stream arrived on: the peer, and the
/// budgets its queued responses are charged to.
#[derive(Debug, Clone)]
pub struct XdsConnection {
    pub remote: Option<std::net::SocketAddr>,
    pub budgets: Budgets,
}

/// Open connections per source address: one host (or one misbehaving client library
/// reconnecting in a loop) cannot take all of the server's slots.
#[derive(Debug, Default)]
struct Sources(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl Sources {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<SourceSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot(self.clone(), ip))
    }
}

struct SourceSlot(Arc<Sources>, std::net::IpAddr);

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// The HTTP/2 client preface: an h2c client's first 24 bytes.
const PREFACE_LEN: usize = 24;
/// After a failed accept (out of descriptors), wait this long: the connection stays in the
/// backlog, so accepting again at once would only spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// Accepts on `listener` for as long as the returned stream is polled. A connection beyond `max`
/// open ones is closed at once and counted as `max_connections`; one that has not sent its
/// first bytes (the whole HTTP/2 preface on h2c, the start of a ClientHello with `tls`) within
/// `first_bytes` is closed and counted as `handshake_timeout` (hyper and tonic's TLS would
/// otherwise wait for them for ever, holding the slot).
pub fn capped(
    listener: TcpListener,
    max: usize,
    max_per_source: usize,
    tls: bool,
    first_bytes: Duration,
    clients: Arc<XdsClients>,
    queued_total: Arc<Semaphore>,
) -> ReceiverStream<io::Result<Capped>> {
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(max));
    let sources = Arc::new(Sources::default());
    let needed = if tls { 1 } else { PREFACE_LEN };
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "xds server cannot accept a connection; retrying shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Some(source) = sources.take(peer.ip(), max_per_source) else {
                clients.count_rejected("max_connections_per_source");
                debug!(peer = %peer, max_per_source,
                       "xds connection refused: its address has its maximum open");
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                clients.count_rejected("max_connections");
                debug!(peer = %peer, max, "xds connection refused: the server has its maximum open");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (tx, clients) = (tx.clone(), clients.clone());
            let budgets = Budgets::for_connection(&queued_total);
            // Each connection waits for its first bytes apart, so a silent one holds up no other.
            tokio::spawn(async move {
                let arrived = tokio::time::timeout(first_bytes, first_bytes_in(&stream, needed));
                if !matches!(arrived.await, Ok(true)) {
                    clients.count_rejected("handshake_timeout");
                    debug!(peer = %peer, "xds connection closed: no handshake in time");
                    return;
                }
                let _ = tx
                    .send(Ok(Capped {
                        stream,
                        _slot: slot,
                        _source: source,
                        budgets,
                    }))
                    .await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Waits until `needed` bytes can be read from `stream` (without reading them); false when the
/// peer closed first.
async fn first_bytes_in(stream: &TcpStream, needed: usize) -> bool {
    let mut buf = [0u8; PREFACE_LEN];
    loop {
        match stream.peek(&mut buf[..needed]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if n >= needed => return true,
            // Part of it: peek would return the same bytes at once, so wait for more.
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

impl Connected for Capped {
    type ConnectInfo = XdsConnection;

    fn connect_info(&self) -> XdsConnection {
        XdsConnection {
            remote: self.stream.peer_addr().ok(),
            budgets: self.budgets.clone(),
        }
    }
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_cap_and_slots_come_back() {
        let sources = Arc::new(Sources::default());
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let first = sources.take(a, 2).unwrap();
        let _second = sources.take(a, 2).unwrap();
        assert!(sources.take(a, 2).is_none(), "a has its two");
        let _other = sources.take(b, 2).expect("b is counted apart");
        drop(first);
        assert!(sources.take(a, 2).is_some(), "a closed one: room again");
    }
}
