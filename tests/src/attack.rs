//! Hostile HTTP/2 and TLS clients for the hardening tests: raw frames where the `h2` crate
//! refuses to misbehave, and a well-behaved caller that measures what the attacks cost others.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    let len = payload.len() as u32;
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, `flags` in the first byte's high bits.
fn hpack_int(flags: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header field as an HPACK "literal without indexing, new name", no Huffman coding.
pub fn hpack_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_int(0, 7, name.len(), out);
    out.extend_from_slice(name);
    hpack_int(0, 7, value.len(), out);
    out.extend_from_slice(value);
}

/// The header block of a gRPC request for `path`, plus `extra` fields.
pub fn request_block(path: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", b"strait.test"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ] {
        hpack_literal(name, value, &mut block);
    }
    for (name, value) in extra {
        hpack_literal(name, value, &mut block);
    }
    block
}

/// Connects and sends the client preface and an empty SETTINGS frame.
pub async fn open(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(PREFACE).await?;
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    Ok(s)
}

/// Frames the server sent, as (type, flags, stream, payload).
pub type Frames = Vec<(u8, u8, u32, Vec<u8>)>;

/// Reads frames until the server closes the connection or `wait` passes; returns the frames and
/// whether the connection was closed (EOF or reset).
pub async fn read_frames(s: &mut TcpStream, wait: Duration) -> (Frames, bool) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let mut frames = Vec::new();
    let mut rest = &buffer[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        if rest.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        frames.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    (frames, closed)
}

/// The error code of a GOAWAY among `frames`.
pub fn goaway_code(frames: &Frames) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.0 == GOAWAY && f.3.len() >= 8)
        .map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]))
}

/// A caller that behaves: one unary call after another on its own connection (gRPC health
/// checks, routed through the gateway like any call), recording every failure and the slowest
/// call, until stopped.
pub struct Bystander {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<BystanderReport>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default, Clone)]
pub struct BystanderReport {
    pub ok: u64,
    pub failures: Vec<String>,
    pub slowest: Duration,
}

/// How long a bystander call may take before it counts as stalled: far beyond any healthy
/// call on a busy machine, far below what a blocked event loop or connection slot would cost.
pub const STALL: Duration = Duration::from_secs(10);

impl Bystander {
    pub async fn start(addr: SocketAddr) -> Bystander {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("the bystander connects before the attack");
        // Health checks, not Echo calls: the backend's call counter then counts only what the
        // attacks got through.
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(BystanderReport::default()));
        let (stop2, report2) = (stop.clone(), report.clone());
        let task = tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                let started = Instant::now();
                let request = tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                };
                // A call that takes longer than STALL is what the attacks must never cause: it
                // counts as a failure. How slow calls get is measured by the benchmarks.
                let result = tokio::time::timeout(STALL, client.check(request)).await;
                let took = started.elapsed();
                {
                    let mut r = report2.lock().unwrap();
                    r.slowest = r.slowest.max(took);
                    match result {
                        Ok(Ok(_)) => r.ok += 1,
                        Ok(Err(e)) => r.failures.push(format!("{e:?}")),
                        Err(_) => r.failures.push(format!("stalled for more than {STALL:?}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Bystander { stop, report, task }
    }

    /// Keeps calling a little longer (the attack's aftermath counts too: 20 more calls must
    /// finish, within STALL each), then stops.
    pub async fn finish(self) -> BystanderReport {
        let done = |r: &BystanderReport| r.ok + r.failures.len() as u64;
        let target = done(&self.report.lock().unwrap()) + 20;
        let deadline = Instant::now() + STALL * 20;
        while done(&self.report.lock().unwrap()) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let report = self.report.lock().unwrap().clone();
        report
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A process's user + system CPU time, in clock ticks (1/100 s).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    field(11) + field(12)
}

/// Heavy tests (attacks, the soak) take this so they run one at a time: on a 2-core machine two
/// of them at once would measure each other.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the server's first bytes or for it to close: `Some(true)` bytes came, `Some(false)`
/// closed without a byte, `None` neither within `wait`.
pub async fn first_event(s: &mut TcpStream, wait: Duration) -> Option<bool> {
    let mut one = [0u8; 1];
    match tokio::time::timeout(wait, s.read(&mut one)).await {
        Ok(Ok(n)) => Some(n > 0),
        Ok(Err(_)) => Some(false),
        Err(_) => None,
    }
}

/// A TLS client that trusts `ca_pem`, offers ALPN h2, finishes the handshake and returns the
/// stream (to then misbehave on).
pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_connect_alpn(addr, ca_pem, b"h2").await
}

/// `tls_connect` offering `alpn` (`http/1.1` for a client that will not speak HTTP/2).
pub async fn tls_connect_alpn(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(
        std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()),
    )
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name =
        rustls_pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    connector.connect(name, tcp).await
}
