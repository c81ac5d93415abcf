//! Connection admission, in front of every listener's app: the connection cap, then the
//! handshake deadline (the TLS handshake, or on h2c the 24-byte HTTP/2 preface), then the app.
//! A connection refused here is closed at once, logged at debug and counted; it never reaches
//! the proxy and costs other connections nothing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Ssl, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Semaphore;
use tracing::debug;

use super::frame_guard::{FrameRules, GuardedStream, Violation};
use super::proxy_protocol::{read_header, HeaderRule};
use crate::metrics::{ListenerMetrics, Rejection};

/// What must happen, within the deadline, before the app gets the connection.
pub enum Handshake {
    /// tcp listeners: bytes are opaque, some protocols have the server speak first.
    None,
    /// h2c: the client's HTTP/2 connection preface.
    H2cPreface(Duration),
    /// TLS, done here rather than in pingora so the deadline is ours (pingora's is a fixed 60 s).
    Tls(Box<Acceptor>, Duration),
}

/// The client's address for log lines, "-" when the socket does not say.
fn peer_of(stream: &Stream) -> String {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().map(|a| a.to_string()))
        .unwrap_or_else(|| "-".into())
}

/// The length of "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
const H2_PREFACE_LEN: usize = 24;

pub struct Admission<A> {
    listener: String,
    inner: Arc<A>,
    slots: Arc<Semaphore>,
    handshake: Handshake,
    /// HTTP/2 listeners: how fast a client may reset streams and how long a begun frame may
    /// take, before it is disconnected.
    frame_rules: Option<FrameRules>,
    metrics: Option<ListenerMetrics>,
    /// Failed handshakes and closed connections are the callers' doing: logged one a second
    /// at most each (counted in the metrics every time).
    handshake_log: crate::logging::LogThrottle,
    violation_log: Arc<crate::logging::LogThrottle>,
    /// `proxy_protocol` listeners: who must send a PROXY header first.
    proxy_header: Option<HeaderRule>,
}

impl<A> Admission<A> {
    pub fn new(
        listener: &str,
        inner: A,
        max_connections: u32,
        handshake: Handshake,
        frame_rules: Option<FrameRules>,
        metrics: Option<ListenerMetrics>,
    ) -> Self {
        Self {
            listener: listener.to_string(),
            inner: Arc::new(inner),
            slots: Arc::new(Semaphore::new(max_connections as usize)),
            handshake,
            frame_rules,
            metrics,
            handshake_log: Default::default(),
            violation_log: Default::default(),
            proxy_header: None,
        }
    }

    /// Connections from `rule.trusted` must begin with a PROXY protocol header, whose client
    /// then stands for the socket's peer.
    pub fn with_proxy_header(mut self, rule: Option<HeaderRule>) -> Self {
        self.proxy_header = rule;
        self
    }

    /// Reads the PROXY header a connection from a trusted source must begin with, and makes
    /// the client it names the stream's peer (what pingora's sessions, the access log, rate
    /// limits and `x-forwarded-for` read). Bytes read past the header go back to the stream.
    /// Connections from anyone else pass untouched: their first bytes are their own.
    async fn take_proxy_header(&self, stream: Stream, rule: &HeaderRule) -> Option<Stream> {
        let peer_ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        if !peer_ip.is_some_and(|ip| rule.expects_header_from(ip)) {
            return Some(stream);
        }
        let mut tcp = match stream.into_any().downcast::<L4Stream>() {
            Ok(tcp) => *tcp,
            Err(_) => {
                tracing::error!(listener = %self.listener, "a PROXY protocol listener got a non-TCP stream");
                return None;
            }
        };
        let refuse = |detail: &str| {
            let peer = peer_ip.map_or_else(|| "-".to_string(), |ip| ip.to_string());
            if let Some(not_logged) = self.handshake_log.take_turn() {
                tracing::info!(listener = %self.listener, peer, detail, not_logged,
                               "closing a connection from a trusted source without a valid PROXY header (a few lines a second at most)");
            }
            if let Some(m) = &self.metrics {
                m.rejected(Rejection::ProxyProtocol);
            }
        };
        match tokio::time::timeout(rule.deadline, read_header(&mut tcp)).await {
            Ok(Ok(received)) => {
                if !received.after.is_empty() {
                    tcp.rewind(&received.after);
                }
                if let Some(client) = received.client {
                    use std::os::unix::io::AsRawFd;
                    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
                    let _ = digest.peer_addr.set(Some(client.into()));
                    tcp.set_socket_digest(digest);
                }
                Some(Box::new(tcp))
            }
            Ok(Err(e)) => {
                refuse(&e.to_string());
                None
            }
            Err(_) => {
                refuse("no PROXY header within handshake_timeout");
                None
            }
        }
    }

    fn guard(&self, (stream, replay): (Stream, Vec<u8>)) -> Stream {
        // Only HTTP/2 listeners have frame rules; only TLS (an HTTP/2 listener) leaves bytes to
        // replay.
        let Some(rules) = self.frame_rules else {
            return stream;
        };
        let listener = self.listener.clone();
        let metrics = self.metrics.clone();
        let peer = peer_of(&stream);
        let log = self.violation_log.clone();
        let on_violation = Box::new(move |violation| {
            let turn = log.take_turn();
            let reason = match violation {
                Violation::RapidReset => {
                    if let Some(not_logged) = turn {
                        tracing::warn!(listener = %listener, peer, resets = rules.resets.resets,
                                       window_ms = rules.resets.window.as_millis() as u64, not_logged,
                                       "closing a connection that resets streams too fast (rapid reset; a few lines a second at most)");
                    }
                    Rejection::RapidReset
                }
                Violation::HeaderTimeout => {
                    if let Some(not_logged) = turn {
                        tracing::info!(listener = %listener, peer,
                                       timeout_ms = rules.header_timeout.as_millis() as u64, not_logged,
                                       "closing a connection that left a frame or header block incomplete (request_header_timeout; a few lines a second at most)");
                    }
                    Rejection::HeaderTimeout
                }
            };
            if let Some(m) = metrics {
                m.rejected(reason);
            }
        });
        Box::new(GuardedStream::new(stream, replay, rules, on_violation))
    }

    fn reject(&self, stream: &Stream, reason: Rejection, detail: &str) {
        let peer = peer_of(stream);
        debug!(listener = %self.listener, peer, reason = reason.as_str(), detail, "connection refused");
        if let Some(m) = &self.metrics {
            m.rejected(reason);
        }
    }

    /// Returns the stream and the bytes read from it while checking it (to be replayed).
    async fn handshake(&self, mut stream: Stream) -> Option<(Stream, Vec<u8>)> {
        if let Some(rule) = &self.proxy_header {
            stream = self.take_proxy_header(stream, rule).await?;
        }
        match &self.handshake {
            Handshake::None => Some((stream, Vec::new())),
            Handshake::H2cPreface(deadline) => {
                // pingora's l4 stream rewinds what a peek read, so the app still sees it.
                let mut preface = [0u8; H2_PREFACE_LEN];
                match tokio::time::timeout(*deadline, stream.try_peek(&mut preface)).await {
                    Ok(Ok(_)) => Some((stream, Vec::new())),
                    Ok(Err(e)) => {
                        self.reject(&stream, Rejection::HandshakeError, &e.to_string());
                        None
                    }
                    Err(_) => {
                        self.reject(&stream, Rejection::HandshakeTimeout, "no HTTP/2 preface");
                        None
                    }
                }
            }
            Handshake::Tls(acceptor, deadline) => {
                let peer = peer_of(&stream);
                // The listener hands over plain TCP streams; TLS needs the concrete type.
                let tcp = match stream.into_any().downcast::<L4Stream>() {
                    Ok(tcp) => *tcp,
                    Err(_) => {
                        tracing::error!(listener = %self.listener, "a TLS listener got a non-TCP stream");
                        return None;
                    }
                };
                let started = tokio::time::Instant::now();
                match tokio::time::timeout(*deadline, acceptor.tls_handshake(tcp)).await {
                    Ok(Ok(mut tls)) => {
                        // The client's first bytes (the HTTP/2 preface) are due within the same
                        // deadline; TLS streams cannot be peeked, so they are read here and
                        // replayed to the app.
                        let wanted =
                            if tls.selected_alpn_proto() == Some(pingora::protocols::ALPN::H2) {
                                H2_PREFACE_LEN
                            } else {
                                1
                            };
                        let mut first = vec![0u8; H2_PREFACE_LEN];
                        let read = async {
                            let mut have = 0;
                            while have < wanted {
                                match tokio::io::AsyncReadExt::read(&mut tls, &mut first[have..])
                                    .await
                                {
                                    Ok(0) | Err(_) => return None,
                                    Ok(n) => have += n,
                                }
                            }
                            Some(have)
                        };
                        match tokio::time::timeout_at(started + *deadline, read).await {
                            Ok(Some(have)) => {
                                first.truncate(have);
                                Some((Box::new(tls) as Stream, first))
                            }
                            Ok(None) => None,
                            Err(_) => {
                                debug!(listener = %self.listener, peer, "no request after the TLS handshake");
                                if let Some(m) = &self.metrics {
                                    m.rejected(Rejection::HandshakeTimeout);
                                }
                                None
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        // Worth a log line at info (a client with a bad certificate wants to
                        // know), but callers decide how many: a few a second at most.
                        if let Some(not_logged) = self.handshake_log.take_turn() {
                            tracing::info!(listener = %self.listener, peer, error = %e, not_logged,
                                           "TLS handshake failed (a few lines a second at most)");
                        }
                        if let Some(m) = &self.metrics {
                            m.rejected(Rejection::HandshakeError);
                        }
                        None
                    }
                    Err(_) => {
                        debug!(listener = %self.listener, peer, "TLS handshake timed out");
                        if let Some(m) = &self.metrics {
                            m.rejected(Rejection::HandshakeTimeout);
                        }
                        None
                    }
                }
            }
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Admission<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            self.reject(
                &stream,
                Rejection::MaxConnections,
                "max_connections reached",
            );
            return None;
        };
        let open = self.metrics.as_ref().map(|m| m.open.clone());
        if let Some(g) = &open {
            g.inc();
        }
        // Boxed so that it is freed once done: inline, the TLS handshake's state (several KiB)
        // would size this future, which an idle connection holds for its whole life.
        let mut next = Box::pin(self.handshake(stream))
            .await
            .map(|s| self.guard(s));
        // The slot is held for the connection's whole life, keep-alive reuse included.
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        if let Some(g) = &open {
            g.dec();
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
