//! A watch on the HTTP/2 frames a client sends, below pingora. It closes a connection that
//! - resets streams faster than any legitimate client does (the "rapid reset" attack,
//!   CVE-2023-44487): each reset stream already cost a request task; without a budget, a few
//!   connections can fill the runtime's queues and starve every other caller;
//! - trickles a frame or a header block: a frame that has begun to arrive, and a HEADERS block
//!   with its CONTINUATION frames, must be complete within the header timeout (a slowloris
//!   client would otherwise hold its connection and its request-header memory until the idle
//!   timeout). Between frames a connection may stay quiet as long as it likes: gRPC clients
//!   connect early and call later.
//!
//! - trickles an HTTP/1.x request head: a client that is not speaking HTTP/2 (on h2c, or over
//!   TLS with ALPN `http/1.1`) must deliver its head, up to the blank line, within the same
//!   header timeout; pingora's HTTP/1 reader would otherwise give it 60 s per read.
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
use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const CONTINUATION: u8 = 9;
const END_HEADERS: u8 = 0x4;

/// How many stream resets a connection may send per window.
#[derive(Debug, Clone, Copy)]
pub struct ResetBudget {
    pub resets: u32,
    pub window: Duration,
}

/// What an HTTP/2 listener asks of its clients' frames.
#[derive(Debug, Clone, Copy)]
pub struct FrameRules {
    pub resets: ResetBudget,
    /// The longest a begun frame or header block may take to arrive whole.
    pub header_timeout: Duration,
}

/// Why the watch closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    RapidReset,
    HeaderTimeout,
}

#[derive(Debug)]
enum Position {
    /// Expecting the client preface; `usize` bytes of it seen.
    Preface(usize),
    /// Inside a frame header; `usize` bytes of it seen.
    Header([u8; 9], usize),
    /// Skipping a frame payload.
    Payload(u32),
    /// Not HTTP/2: an HTTP/1.x request head, until its blank line; `usize` bytes of
    /// "\r\n\r\n" matched so far.
    Http1Head(usize),
    /// Past an HTTP/1.x request head: its body and the gateway's answer are not watched. The
    /// next request on the kept-alive connection begins after the gateway has written (see
    /// `response_written`), and its head is timed again.
    Http1Answering,
}

/// Follows the frame boundaries of a client-to-server HTTP/2 byte stream.
#[derive(Debug)]
pub struct FrameWatch {
    position: Position,
    budget: ResetBudget,
    window_start: Option<Instant>,
    resets_in_window: u32,
    /// When the frame (or preface) now arriving began; `None` between frames.
    frame_started: Option<Instant>,
    /// When the HEADERS frame of an unfinished header block began.
    block_started: Option<Instant>,
    /// The frame whose payload is being skipped ends a header block.
    payload_ends_block: bool,
}

impl FrameWatch {
    pub fn new(budget: ResetBudget) -> Self {
        Self {
            position: Position::Preface(0),
            budget,
            window_start: None,
            resets_in_window: 0,
            frame_started: None,
            block_started: None,
            payload_ends_block: false,
        }
    }

    /// Since when something the client began is still incomplete: the oldest of an
    /// unfinished header block and a partly arrived frame. `None` at a frame boundary.
    pub fn incomplete_since(&self) -> Option<Instant> {
        match (self.block_started, self.frame_started) {
            (Some(block), _) => Some(block),
            (None, frame) => frame,
        }
    }

    /// The gateway wrote to the client. On an HTTP/1.x connection past a request head, that is
    /// the answer: what the client sends next is the next request's head, timed from its first
    /// byte (an idle kept-alive connection is not: pingora's keepalive timeout closes it).
    pub fn response_written(&mut self) {
        if matches!(self.position, Position::Http1Answering) {
            self.position = Position::Http1Head(0);
            self.frame_started = None;
        }
    }

    /// Follows `bytes`; `false` when the client has overspent its reset budget.
    pub fn observe(&mut self, mut bytes: &[u8], now: Instant) -> bool {
        if !bytes.is_empty() && !matches!(self.position, Position::Http1Answering) {
            self.frame_started.get_or_insert(now);
        }
        while !bytes.is_empty() {
            match &mut self.position {
                Position::Http1Answering => return true,
                Position::Http1Head(matched) => {
                    const BLANK_LINE: &[u8; 4] = b"\r\n\r\n";
                    let mut used = 0;
                    for &byte in bytes {
                        used += 1;
                        *matched = if byte == BLANK_LINE[*matched] {
                            *matched + 1
                        } else if byte == b'\r' {
                            1
                        } else {
                            0
                        };
                        if *matched == BLANK_LINE.len() {
                            break;
                        }
                    }
                    if *matched == BLANK_LINE.len() {
                        // The head is whole: the proxy reads (or refuses) the rest.
                        self.position = Position::Http1Answering;
                        self.frame_started = None;
                        return true;
                    }
                    bytes = &bytes[used..];
                }
                Position::Preface(seen) => {
                    let take = (PREFACE.len() - *seen).min(bytes.len());
                    if bytes[..take] != PREFACE[*seen..*seen + take] {
                        // Not HTTP/2: its head is timed like a header block. (The bytes that
                        // matched the preface so far hold no blank line before byte 14.)
                        self.position = Position::Http1Head(0);
                        continue;
                    }
                    *seen += take;
                    bytes = &bytes[take..];
                    if *seen == PREFACE.len() {
                        self.position = Position::Header([0; 9], 0);
                        self.frame_done(false);
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
                        let flags = header[4];
                        if kind == HEADERS {
                            // The block began with this frame's first byte.
                            self.block_started = self.frame_started.or(Some(now));
                        }
                        let ends_block =
                            matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0;
                        if length > 0 {
                            self.position = Position::Payload(length);
                            self.payload_ends_block = ends_block;
                        } else {
                            self.position = Position::Header([0; 9], 0);
                            self.frame_done(ends_block);
                        }
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
                        self.frame_done(self.payload_ends_block);
                    }
                }
            }
            // More bytes left means another frame has begun arriving, now.
            if !bytes.is_empty() && self.frame_started.is_none() {
                self.frame_started = Some(now);
            }
        }
        true
    }

    fn frame_done(&mut self, ends_block: bool) {
        self.frame_started = None;
        if ends_block {
            self.block_started = None;
        }
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

/// Called once when a connection breaks a rule (log line, metric).
pub type OnViolation = Box<dyn FnOnce(Violation) + Send + Sync>;

/// A downstream stream whose incoming frames are watched; once a rule is broken, reads fail and
/// the connection is torn down.
pub struct GuardedStream {
    inner: Stream,
    /// Bytes already read from `inner` (the TLS client's first bytes, read under the handshake
    /// deadline), handed out before anything else.
    replay: Vec<u8>,
    watch: FrameWatch,
    header_timeout: Duration,
    /// Armed while something is incomplete, so a client that stops mid-frame is still cut
    /// (without it nothing would poll us again until the client sent more).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    on_violation: Option<OnViolation>,
    tripped: Option<Violation>,
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
    pub fn new(
        inner: Stream,
        replay: Vec<u8>,
        rules: FrameRules,
        on_violation: OnViolation,
    ) -> Self {
        Self {
            inner,
            replay,
            watch: FrameWatch::new(rules.resets),
            header_timeout: rules.header_timeout,
            timer: None,
            on_violation: Some(on_violation),
            tripped: None,
        }
    }

    fn trip(&mut self, violation: Violation) -> std::io::Error {
        self.tripped = Some(violation);
        self.timer = None;
        if let Some(callback) = self.on_violation.take() {
            callback(violation);
        }
        violation_error(violation)
    }

    /// The instant by which the incomplete frame or header block must be whole.
    fn incomplete_deadline(&self) -> Option<Instant> {
        self.watch
            .incomplete_since()
            .map(|since| since + self.header_timeout)
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(violation) = self.tripped {
            return Poll::Ready(Err(violation_error(violation)));
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
        let this = &mut *self;
        let now = Instant::now();
        if let Poll::Ready(Ok(())) = &result {
            if !this.watch.observe(&buf.filled()[before..], now) {
                return Poll::Ready(Err(this.trip(Violation::RapidReset)));
            }
        }
        let Some(deadline) = this.incomplete_deadline() else {
            this.timer = None;
            return result;
        };
        if now >= deadline {
            return Poll::Ready(Err(this.trip(Violation::HeaderTimeout)));
        }
        if result.is_pending() {
            // Wake up at the deadline even if the client sends nothing more.
            let deadline = tokio::time::Instant::from_std(deadline);
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(this.trip(Violation::HeaderTimeout)));
            }
        }
        result
    }
}

fn violation_error(violation: Violation) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        match violation {
            Violation::RapidReset => {
                "client reset streams faster than the listener allows (rapid reset)"
            }
            Violation::HeaderTimeout => {
                "client did not complete a frame or header block within request_header_timeout"
            }
        },
    )
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.response_written();
        }
        written
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
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.response_written();
        }
        written
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

    fn frame_with_flags(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = frame(kind, stream, payload);
        f[4] = flags;
        f
    }

    #[test]
    fn a_quiet_connection_between_frames_is_complete() {
        let mut watch = FrameWatch::new(budget(10));
        let t0 = Instant::now();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(4, 0, &[0; 6])); // SETTINGS
        assert!(watch.observe(&bytes, t0));
        assert_eq!(watch.incomplete_since(), None);
        // A whole request's HEADERS (END_HEADERS) and DATA leave nothing incomplete either.
        let mut call = frame_with_flags(HEADERS, END_HEADERS, 1, b"block");
        call.extend(frame(0, 1, b"data"));
        assert!(watch.observe(&call, t0 + Duration::from_secs(60)));
        assert_eq!(watch.incomplete_since(), None);
    }

    #[test]
    fn a_trickled_frame_is_incomplete_since_its_first_byte() {
        let mut watch = FrameWatch::new(budget(10));
        let t0 = Instant::now();
        assert!(watch.observe(PREFACE, t0));
        let headers = frame_with_flags(HEADERS, END_HEADERS, 1, b"a-header-block");
        for (i, byte) in headers.iter().enumerate().take(headers.len() - 1) {
            assert!(watch.observe(&[*byte], t0 + Duration::from_secs(1 + i as u64)));
            assert_eq!(watch.incomplete_since(), Some(t0 + Duration::from_secs(1)));
        }
        assert!(watch.observe(&headers[headers.len() - 1..], t0 + Duration::from_secs(99)));
        assert_eq!(watch.incomplete_since(), None);
    }

    #[test]
    fn a_header_block_is_incomplete_until_end_headers() {
        let mut watch = FrameWatch::new(budget(10));
        let t0 = Instant::now();
        assert!(watch.observe(PREFACE, t0));
        let t1 = t0 + Duration::from_secs(1);
        // HEADERS without END_HEADERS: whole frame, unfinished block.
        assert!(watch.observe(&frame_with_flags(HEADERS, 0, 1, b"part-one"), t1));
        assert_eq!(watch.incomplete_since(), Some(t1));
        // A CONTINUATION without END_HEADERS keeps the block's start.
        let t2 = t0 + Duration::from_secs(5);
        assert!(watch.observe(&frame_with_flags(CONTINUATION, 0, 1, b"two"), t2));
        assert_eq!(watch.incomplete_since(), Some(t1));
        assert!(watch.observe(
            &frame_with_flags(CONTINUATION, END_HEADERS, 1, b"three"),
            t2
        ));
        assert_eq!(watch.incomplete_since(), None);
    }

    #[test]
    fn a_new_frame_in_the_same_read_starts_now() {
        let mut watch = FrameWatch::new(budget(10));
        let t0 = Instant::now();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(4, 0, &[]));
        bytes.extend(&frame(0, 1, b"data")[..5]); // half a DATA frame header
        assert!(watch.observe(&bytes, t0));
        assert_eq!(watch.incomplete_since(), Some(t0));
    }

    /// On a kept-alive HTTP/1.1 connection every request's head is timed, not only the first:
    /// once the gateway has answered, the next bytes begin a new head.
    #[test]
    fn every_http1_head_on_a_kept_alive_connection_is_timed() {
        let t0 = Instant::now();
        let mut watch = FrameWatch::new(budget(0));
        assert!(watch.observe(b"POST /a HTTP/1.1\r\nHost: x\r\n\r\nbody", t0));
        assert_eq!(watch.incomplete_since(), None, "the body is not watched");
        watch.response_written();
        assert_eq!(watch.incomplete_since(), None, "idle between requests");
        let t1 = t0 + Duration::from_secs(30);
        assert!(watch.observe(b"POST /b HTTP/1.1\r\nHo", t1));
        assert_eq!(
            watch.incomplete_since(),
            Some(t1),
            "the second head is timed"
        );
        assert!(watch.observe(b"st: x\r\n\r\n", t1));
        assert_eq!(watch.incomplete_since(), None);
        // Writing on an HTTP/2 connection changes nothing.
        let mut h2 = FrameWatch::new(budget(0));
        assert!(h2.observe(PREFACE, t0));
        h2.response_written();
        assert!(h2.observe(&frame(HEADERS, 1, b"ab")[..5], t1));
        assert_eq!(h2.incomplete_since(), Some(t1));
    }

    #[test]
    fn an_http1_head_is_timed_until_its_blank_line_then_nothing_is_watched() {
        let t0 = Instant::now();
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in [1usize, 2, 3, 5, 64] {
            let mut watch = FrameWatch::new(budget(0));
            let pieces: Vec<&[u8]> = head.chunks(split).collect();
            for (i, piece) in pieces.iter().enumerate() {
                assert!(watch.observe(piece, t0));
                if i + 1 < pieces.len() {
                    assert_eq!(
                        watch.incomplete_since(),
                        Some(t0),
                        "split {split}, piece {i}"
                    );
                }
            }
            assert_eq!(
                watch.incomplete_since(),
                None,
                "split {split}: the head is whole"
            );
            assert!(watch.observe(&frame(RST_STREAM, 1, &[0; 4]), t0));
            assert_eq!(
                watch.incomplete_since(),
                None,
                "after the head: not watched"
            );
        }
        // One byte is a begun head: timed from it.
        let mut watch = FrameWatch::new(budget(0));
        assert!(watch.observe(b"G", t0));
        assert_eq!(watch.incomplete_since(), Some(t0));
        // "\r\r\n\r\n" still ends a head.
        assert!(watch.observe(b"ET / HTTP/1.1\r\r\n\r\n", t0));
        assert_eq!(watch.incomplete_since(), None);
    }
}
