//! A raw HTTP/2 backend that misbehaves in ways a real gRPC server only does under stress:
//! refusing streams, or going away before or after it has taken a call. Written on raw frames
//! (the `h2` crate picks GOAWAY's last-stream-id itself) so a test controls exactly what the
//! gateway's upstream side sees.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::attack::{
    frame, hpack_literal, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, RST_STREAM,
    SETTINGS,
};

const ACK: u8 = 0x1;
const NO_ERROR: u32 = 0x0;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;

/// What the backend does with each request it receives.
#[derive(Debug, Clone, Copy)]
pub enum Misbehaviour {
    /// Waits, then resets the stream with REFUSED_STREAM: "not processed, try elsewhere".
    RefuseAfter(Duration),
    /// Sends GOAWAY whose last-stream-id is below the request's (so it was certainly not
    /// processed) and closes the connection.
    GoAwayBelow,
    /// Sends GOAWAY whose last-stream-id is the request's own (it may have been processed) and
    /// closes the connection without answering.
    GoAwayIncluding,
    /// Works on the first call of each connection for `hold`, then answers it (an empty message,
    /// status OK) and closes. A second call arriving meanwhile is answered with
    /// GOAWAY(ENHANCE_YOUR_CALM) naming the first as the last stream: the connection stays
    /// open for the first call but the second was certainly not processed (what a backend's
    /// abuse defence does).
    CalmDownOnSecond { hold: Duration },
}

/// A running misbehaving backend; stops when dropped.
pub struct RawH2Backend {
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RawH2Backend {
    pub async fn start(behaviour: Misbehaviour) -> RawH2Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the raw h2 backend");
        let addr = listener.local_addr().expect("bound address");
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, behaviour, &counter).await;
                });
            }
        });
        RawH2Backend {
            addr,
            requests,
            task,
        }
    }

    /// Request HEADERS frames received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for RawH2Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn goaway(last_stream_id: u32, code: u32) -> Vec<u8> {
    let mut payload = last_stream_id.to_be_bytes().to_vec();
    payload.extend_from_slice(&code.to_be_bytes());
    frame(GOAWAY, 0, 0, &payload)
}

async fn serve(
    mut s: TcpStream,
    behaviour: Misbehaviour,
    requests: &AtomicU64,
) -> std::io::Result<()> {
    if let Misbehaviour::CalmDownOnSecond { hold } = behaviour {
        return serve_calming_down(s, hold, requests).await;
    }
    let mut preface = [0u8; 24];
    s.read_exact(&mut preface).await?;
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await?;
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        s.read_exact(&mut payload).await?;
        match kind {
            SETTINGS if flags & ACK == 0 => s.write_all(&frame(SETTINGS, ACK, 0, &[])).await?,
            PING if flags & ACK == 0 => s.write_all(&frame(PING, ACK, 0, &payload)).await?,
            HEADERS => {
                requests.fetch_add(1, Ordering::SeqCst);
                match behaviour {
                    Misbehaviour::RefuseAfter(delay) => {
                        tokio::time::sleep(delay).await;
                        let code = REFUSED_STREAM.to_be_bytes();
                        s.write_all(&frame(RST_STREAM, 0, stream, &code)).await?;
                    }
                    Misbehaviour::CalmDownOnSecond { .. } => unreachable!("served above"),
                    Misbehaviour::GoAwayBelow | Misbehaviour::GoAwayIncluding => {
                        let last = match behaviour {
                            Misbehaviour::GoAwayBelow => stream.saturating_sub(2),
                            _ => stream,
                        };
                        s.write_all(&goaway(last, NO_ERROR)).await?;
                        s.flush().await?;
                        return s.shutdown().await;
                    }
                }
            }
            _ => {}
        }
    }
}

/// One frame: (type, flags, stream, payload).
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; length];
    r.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

/// A whole gRPC answer on `stream`: response headers, one empty message, status OK.
fn grpc_ok(stream: u32) -> Vec<u8> {
    let mut head = vec![0x88]; // :status 200, from the static table
    hpack_literal(b"content-type", b"application/grpc", &mut head);
    let mut trailers = Vec::new();
    hpack_literal(b"grpc-status", b"0", &mut trailers);
    let mut out = frame(HEADERS, END_HEADERS, stream, &head);
    out.extend(frame(DATA, 0, stream, &[0, 0, 0, 0, 0]));
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &trailers));
    out
}

async fn serve_calming_down(
    s: TcpStream,
    hold: Duration,
    requests: &AtomicU64,
) -> std::io::Result<()> {
    let (mut r, mut w) = s.into_split();
    let mut preface = [0u8; 24];
    r.read_exact(&mut preface).await?;
    w.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    let mut first: Option<(u32, tokio::time::Instant)> = None;
    loop {
        let answer_at = first.map(|(_, at)| at);
        let next = tokio::select! {
            f = read_frame(&mut r) => f?,
            () = tokio::time::sleep_until(answer_at.unwrap_or_else(tokio::time::Instant::now)),
                if answer_at.is_some() => {
                let (stream, _) = first.expect("set with answer_at");
                w.write_all(&grpc_ok(stream)).await?;
                w.write_all(&goaway(stream, NO_ERROR)).await?;
                w.flush().await?;
                return w.shutdown().await;
            }
        };
        let (kind, flags, stream, payload) = next;
        match kind {
            SETTINGS if flags & ACK == 0 => w.write_all(&frame(SETTINGS, ACK, 0, &[])).await?,
            PING if flags & ACK == 0 => w.write_all(&frame(PING, ACK, 0, &payload)).await?,
            HEADERS => {
                requests.fetch_add(1, Ordering::SeqCst);
                match first {
                    None => first = Some((stream, tokio::time::Instant::now() + hold)),
                    Some((first_stream, _)) => {
                        w.write_all(&goaway(first_stream, ENHANCE_YOUR_CALM))
                            .await?;
                    }
                }
            }
            _ => {}
        }
    }
}
