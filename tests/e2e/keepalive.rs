//! HTTP/2 PING keepalive towards clients (`[listener.limits] ping_interval`, `ping_timeout`):
//! a client that answers keeps its connection; one that stops answering is closed, counted,
//! and its calls end (the backend sees them cancelled).

use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use strait_tests::attack::{self, END_HEADERS, HEADERS, PING, SETTINGS};
use strait_tests::net::{free_addr, http_get, metric, wait_metrics};
use strait_tests::pb::EchoRequest;
use strait_tests::raw::grpc_frame;
use strait_tests::{Backend, BackendOptions, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const ACK: u8 = 0x1;
const DATA: u8 = 0;
const WAIT: Duration = Duration::from_secs(15);

struct Setup {
    _gateway: Gateway,
    backend: Backend,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Setup {
    async fn start() -> Setup {
        let backend = Backend::start(BackendOptions::named("a")).await;
        let (listen, admin) = (free_addr(), free_addr());
        let text = format!(
            r#"
[[listener]]
name = "public"
listen = "{listen}"

[listener.limits]
ping_interval = "1s"
ping_timeout = "1s"

[[route]]
listener = "public"
service = "*"
upstream = "echo"

[[upstream]]
name = "echo"
endpoints = [{{ addr = "{}" }}]

[admin]
listen = "{admin}"
"#,
            backend.addr
        );
        let gateway = tokio::task::block_in_place(|| Gateway::start(&text, admin));
        Setup {
            _gateway: gateway,
            backend,
            listen,
            admin,
        }
    }

    fn ping_timeouts(&self) -> f64 {
        let (_, text) = tokio::task::block_in_place(|| http_get(self.admin, "/metrics"));
        metric(
            &text,
            "strait_listener_rejected_total",
            &[("listener", "public"), ("reason", "ping_timeout")],
        )
        .unwrap_or(0.0)
    }
}

/// What reading the next frame gave.
#[derive(Debug)]
enum Read {
    Frame(u8, u8, u32, Vec<u8>),
    Closed,
    TimedOut,
}

/// Frames read one at a time from a raw connection.
struct Frames {
    socket: TcpStream,
    buffer: Vec<u8>,
}

impl Frames {
    async fn next(&mut self, by: Instant) -> Read {
        loop {
            if self.buffer.len() >= 9 {
                let b = &self.buffer;
                let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
                if b.len() >= 9 + len {
                    let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
                    let frame = Read::Frame(b[3], b[4], stream, b[9..9 + len].to_vec());
                    self.buffer.drain(..9 + len);
                    return frame;
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(by, self.socket.read(&mut chunk)).await {
                Err(_) => return Read::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).await.expect("write");
    }
}

async fn connect(listen: SocketAddr) -> Frames {
    let mut socket = attack::open(listen).await.expect("connect");
    socket
        .write_all(&attack::frame(SETTINGS, ACK, 0, &[]))
        .await
        .unwrap();
    Frames {
        socket,
        buffer: Vec::new(),
    }
}

/// A unary (or server-streaming) call on stream `id`, sent whole.
fn call(id: u32, path: &str, request: &EchoRequest) -> Vec<u8> {
    let block = attack::request_block(path, &[]);
    let mut bytes = attack::frame(HEADERS, END_HEADERS, id, &block);
    bytes.extend(attack::frame(
        DATA,
        attack::END_STREAM,
        id,
        &grpc_frame(&request.encode_to_vec()),
    ));
    bytes
}

/// A client that answers every PING keeps its connection through several intervals and can
/// still call on it; nothing is counted as a PING timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_pings_keeps_its_connection() {
    let setup = Setup::start().await;
    let mut conn = connect(setup.listen).await;
    let by = Instant::now() + WAIT;
    let mut pings = 0;
    while pings < 3 {
        match conn.next(by).await {
            Read::Frame(PING, flags, 0, payload) if flags & ACK == 0 => {
                pings += 1;
                conn.send(&attack::frame(PING, ACK, 0, &payload)).await;
            }
            Read::Frame(..) => {}
            other => panic!("after {pings} PINGs answered: {other:?}"),
        }
    }
    conn.send(&call(1, "/bench.Echo/Unary", &EchoRequest::default()))
        .await;
    let mut reply_frames = 0;
    loop {
        match conn.next(by).await {
            Read::Frame(PING, flags, 0, payload) if flags & ACK == 0 => {
                conn.send(&attack::frame(PING, ACK, 0, &payload)).await;
            }
            Read::Frame(DATA, _, 1, payload) if !payload.is_empty() => reply_frames += 1,
            // The trailers end the call.
            Read::Frame(HEADERS, flags, 1, _) if flags & attack::END_STREAM != 0 => break,
            Read::Frame(..) => {}
            other => panic!("the call on the kept connection: {other:?}"),
        }
    }
    assert_eq!(
        reply_frames, 1,
        "the reply came back on the kept connection"
    );
    assert_eq!(setup.backend.calls(), 1);
    assert_eq!(setup.ping_timeouts(), 0.0);
}

/// A client that stops answering PINGs is closed after `ping_timeout`, counted, and the
/// server stream it had open is cancelled at the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_is_closed_and_its_calls_end() {
    let setup = Setup::start().await;
    let mut conn = connect(setup.listen).await;
    let request = EchoRequest {
        reply_count: 1_000,
        delay_ms: 100,
        ..Default::default()
    };
    conn.send(&call(1, "/bench.Echo/ServerStream", &request))
        .await;
    let by = Instant::now() + WAIT;
    let (mut pings, mut data_frames) = (0, 0);
    let closed = loop {
        match conn.next(by).await {
            Read::Frame(PING, flags, 0, _) if flags & ACK == 0 => pings += 1,
            Read::Frame(DATA, _, 1, _) => data_frames += 1,
            Read::Frame(..) => {}
            Read::Closed => break true,
            Read::TimedOut => break false,
        }
    };
    assert!(closed, "the silent client was not closed");
    assert_eq!(pings, 1, "closed after its first unanswered PING");
    assert!(data_frames > 0, "the stream was running: {data_frames}");
    let counted = tokio::task::block_in_place(|| {
        wait_metrics(setup.admin, Duration::from_secs(5), |m| {
            metric(
                m,
                "strait_listener_rejected_total",
                &[("listener", "public"), ("reason", "ping_timeout")],
            ) == Some(1.0)
        })
    });
    assert!(
        counted.is_some(),
        "ping timeouts: {}",
        setup.ping_timeouts()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while setup.backend.active() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        setup.backend.active(),
        0,
        "the backend's stream was cancelled"
    );
    assert_eq!(setup.backend.calls(), 1);
}
