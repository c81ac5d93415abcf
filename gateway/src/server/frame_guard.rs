//! A watch on the HTTP/2 frames a client sends, below pingora: it counts the client's
//! RST_STREAM frames and closes a connection that resets streams faster than any legitimate
//! client does (the "rapid reset" attack, CVE-2023-44487). Each reset stream already cost a
//! request task; without a budget, a few connections can fill the runtime's queues and starve
//! every other caller.
//!
//! The watch only reads frame headers (9 bytes each) as the bytes pass; it buffers nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const RST_STREAM: u8 = 3;

/// How many stream resets a connection may send per window.
#[derive(Debug, Clone, Copy)]
pub struct ResetBudget {
    pub resets: u32,
    pub window: Duration,
}

#[derive(Debug)]
enum Position {
    /// Expecting the client preface; `usize` bytes of it seen.
    Preface(usize),
    /// Inside a frame header; `usize` bytes of it seen.
    Header([u8; 9], usize),
    /// Skipping a frame payload.
    Payload(u32),
    /// Not HTTP/2 (an HTTP/1.x request the proxy will refuse): nothing to watch.
    Off,
}

/// Follows the frame boundaries of a client-to-server HTTP/2 byte stream.
#[derive(Debug)]
pub struct FrameWatch {
    position: Position,
    budget: ResetBudget,
    window_start: Option<Instant>,
    resets_in_window: u32,
}

impl FrameWatch {
    pub fn new(budget: ResetBudget) -> Self {
        Self {
            position: Position::Preface(0),
            budget,
            window_start: None,
            resets_in_window: 0,
        }
    }

    /// Follows `bytes`; `false` when the client has overspent its reset budget.
    pub fn observe(&mut self, mut bytes: &[u8], now: Instant) -> bool {
        while !bytes.is_empty() {
            match &mut self.position {
                Position::Off => return true,
                Position::Preface(seen) => {
                    let take = (PREFACE.len() - *seen).min(bytes.len());
                    if bytes[..take] != PREFACE[*seen..*seen + take] {
                        self.position = Position::Off;
                        return true;
                    }
                    *seen += take;
                    bytes = &bytes[take..];
                    if *seen == PREFACE.len() {
                        self.position = Position::Header([0; 9], 0);
                    }
                }
                Position::Header(header, seen) => {
                    let take = (9 - *seen).min(bytes.len());
                    header[*seen..*seen + take].copy_from_slice(&bytes[..take]);
                    *seen += take;
                    bytes = &bytes[take..];
                    if *seen == 9 {
                        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                        let kind = header[3];
                        self.position = if length > 0 {
                            Position::Payload(length)
                        } else {
                            Position::Header([0; 9], 0)
                        };
                        if kind == RST_STREAM && !self.count_reset(now) {
                            return false;
                        }
                    }
                }
                Position::Payload(remaining) => {
                    let take = (*remaining as usize).min(bytes.len());
                    *remaining -= take as u32;
                    bytes = &bytes[take..];
                    if *remaining == 0 {
                        self.position = Position::Header([0; 9], 0);
                    }
                }
            }
        }
        true
    }

    fn count_reset(&mut self, now: Instant) -> bool {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= self.budget.window {
            self.window_start = Some(now);
            self.resets_in_window = 0;
        }
        self.resets_in_window += 1;
        self.resets_in_window <= self.budget.resets
    }
}

/// Called once when a connection overspends its budget (log line, metric).
pub type OnAbuse = Box<dyn FnOnce() + Send + Sync>;

/// A downstream stream whose incoming frames are watched; past the budget, reads fail and the
/// connection is torn down.
pub struct GuardedStream {
    inner: Stream,
    /// Bytes already read from `inner` (the TLS client's first bytes, read under the handshake
    /// deadline), handed out before anything else.
    replay: Vec<u8>,
    watch: FrameWatch,
    on_abuse: Option<OnAbuse>,
    tripped: bool,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("watch", &self.watch)
            .finish()
    }
}

impl GuardedStream {
    pub fn new(inner: Stream, replay: Vec<u8>, budget: ResetBudget, on_abuse: OnAbuse) -> Self {
        Self {
            inner,
            replay,
            watch: FrameWatch::new(budget),
            on_abuse: Some(on_abuse),
            tripped: false,
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.tripped {
            return Poll::Ready(Err(rapid_reset_error()));
        }
        let before = buf.filled().len();
        let result = if self.replay.is_empty() {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        } else {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay.drain(..n);
            Poll::Ready(Ok(()))
        };
        if let Poll::Ready(Ok(())) = &result {
            let this = &mut *self;
            if !this.watch.observe(&buf.filled()[before..], Instant::now()) {
                this.tripped = true;
                if let Some(callback) = this.on_abuse.take() {
                    callback();
                }
                return Poll::Ready(Err(rapid_reset_error()));
            }
        }
        result
    }
}

fn rapid_reset_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "client reset streams faster than the listener allows (rapid reset)",
    )
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        // The inner stream rewinds what it peeked; `poll_read` sees those bytes later.
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(0);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn budget(resets: u32) -> ResetBudget {
        ResetBudget {
            resets,
            window: Duration::from_secs(1),
        }
    }

    #[test]
    fn counts_resets_across_any_byte_split() {
        let mut bytes = PREFACE.to_vec();
        for id in 0..10u32 {
            bytes.extend(frame(1, id * 2 + 1, b"headers-block"));
            bytes.extend(frame(RST_STREAM, id * 2 + 1, &[0, 0, 0, 8]));
        }
        let now = Instant::now();
        for split in [1usize, 3, 7, 9, 13, 64] {
            let mut watch = FrameWatch::new(budget(9));
            let verdicts: Vec<bool> = bytes.chunks(split).map(|c| watch.observe(c, now)).collect();
            assert!(
                verdicts.contains(&false),
                "10 resets exceed a budget of 9 (split {split})"
            );
            let mut watch = FrameWatch::new(budget(10));
            assert!(
                bytes.chunks(split).all(|c| watch.observe(c, now)),
                "split {split}"
            );
        }
    }

    #[test]
    fn the_budget_refills_every_window() {
        let mut watch = FrameWatch::new(budget(2));
        let start = Instant::now();
        assert!(watch.observe(PREFACE, start));
        let reset = frame(RST_STREAM, 1, &[0, 0, 0, 8]);
        assert!(watch.observe(&reset, start));
        assert!(watch.observe(&reset, start));
        assert!(watch.observe(&reset, start + Duration::from_secs(1)));
        assert!(watch.observe(&reset, start + Duration::from_secs(1)));
        assert!(!watch.observe(&reset, start + Duration::from_secs(1)));
    }

    #[test]
    fn non_http2_bytes_are_not_watched() {
        let mut watch = FrameWatch::new(budget(0));
        assert!(watch.observe(b"GET / HTTP/1.1\r\n\r\n", Instant::now()));
        assert!(watch.observe(&frame(RST_STREAM, 1, &[0; 4]), Instant::now()));
    }
}
