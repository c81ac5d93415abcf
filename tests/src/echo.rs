//! The echo backend: a real tonic server with the four call kinds and gRPC health.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::ServingStatus;

use crate::pb::echo_server::{Echo, EchoServer};
use crate::pb::{EchoReply, EchoRequest};
use crate::MAX_MESSAGE;

/// Counters a test can read to see what reached the backend.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Calls that reached a handler.
    pub calls: AtomicU64,
    /// Calls whose handler or response stream is still alive.
    pub active: AtomicI64,
    /// The last `grpc-timeout` the backend received, in milliseconds (0 = none).
    pub last_timeout_ms: AtomicU64,
    /// TCP connections accepted: shows whether a proxy multiplexes calls or opens one per call.
    pub connections: AtomicU64,
    /// When non-zero, every call ends with this gRPC status (after the replies, for streams).
    pub forced_code: std::sync::atomic::AtomicI32,
    /// This percentage of calls ends with UNAVAILABLE, spread evenly (never two in a row).
    pub fail_percent: std::sync::atomic::AtomicU32,
    fail_sequence: AtomicU64,
    /// This percentage of unary calls waits `slow_ms` before answering, spread evenly (a
    /// backend with a slow tail, for hedging).
    pub slow_percent: std::sync::atomic::AtomicU32,
    pub slow_ms: AtomicU64,
    slow_sequence: AtomicU64,
    /// How often each `x-call-id` reached a handler: a call sent twice shows up as 2.
    pub arrivals: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Where a backend process appends each arrival's call id, one per line, before serving it
    /// (a test reads it after killing the process).
    pub arrivals_log: Option<std::sync::Mutex<std::fs::File>>,
}

impl BackendStats {
    fn note_arrival(&self, metadata: &MetadataMap) {
        let Some(id) = metadata.get("x-call-id").and_then(|v| v.to_str().ok()) else {
            return;
        };
        *self
            .arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default() += 1;
        if let Some(log) = &self.arrivals_log {
            use std::io::Write;
            let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
            // One write per line on an O_APPEND file: a kill leaves whole lines behind.
            let _ = file.write_all(format!("{id}\n").as_bytes());
        }
    }
}

/// Decrements `active` when the call's work is dropped (finished or cancelled).
struct ActiveGuard(Arc<BackendStats>);

impl ActiveGuard {
    fn new(stats: &Arc<BackendStats>, metadata: &MetadataMap) -> Self {
        stats.note_arrival(metadata);
        stats.calls.fetch_add(1, Ordering::SeqCst);
        stats.active.fetch_add(1, Ordering::SeqCst);
        Self(stats.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct EchoService {
    name: Arc<str>,
    stats: Arc<BackendStats>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

/// Request metadata `x-echo-*` comes back in the response headers; on a failing status,
/// `x-echo-*` also comes back in the trailers as `x-trailer-*`. With `x-echo-trace-context`,
/// the W3C trace context the backend received comes back as `x-seen-traceparent` and
/// `x-seen-tracestate` (asked for, so a benchmark's replies stay as small as without tracing);
/// with `x-echo-te`, the `te` header it received comes back as `x-seen-te` (gRPC C-core servers
/// refuse a call without `te: trailers`; tonic does not check it). With `x-echo-seen`, the
/// headers it lists come back as `x-seen-NAME`.
fn echoed_headers(from: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    let trace_context: &[(&str, &str)] = if from.contains_key("x-echo-trace-context") {
        &[
            ("traceparent", "x-seen-traceparent"),
            ("tracestate", "x-seen-tracestate"),
        ]
    } else if from.contains_key("x-echo-te") {
        &[("te", "x-seen-te")]
    } else {
        &[]
    };
    // `x-echo-seen: a,b`: whether headers `a` and `b` reached the backend, and their values,
    // as `x-seen-a` and `x-seen-b` (identity headers a gateway must add or remove).
    if let Some(names) = from.get("x-echo-seen").and_then(|v| v.to_str().ok()) {
        for name in names.split(',').map(str::trim) {
            let Some(value) = from.get(name) else {
                continue;
            };
            if let Ok(key) =
                tonic::metadata::AsciiMetadataKey::from_bytes(format!("x-seen-{name}").as_bytes())
            {
                out.insert(key, value.clone());
            }
        }
    }
    // Only retried calls carry it, so echoing it costs other calls nothing.
    if let Some(value) = from.get("grpc-previous-rpc-attempts") {
        out.insert("x-seen-previous-rpc-attempts", value.clone());
    }
    for &(seen, as_name) in trace_context {
        if let Some(value) = from.get(seen) {
            out.insert(as_name, value.clone());
        }
    }
    for kv in from.iter() {
        match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) if k.as_str().starts_with("x-echo-") => {
                out.insert(k.clone(), v.clone());
            }
            tonic::metadata::KeyAndValueRef::Binary(k, v) if k.as_str().starts_with("x-echo-") => {
                out.insert_bin(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    out
}

fn failing_status(req: &EchoRequest, metadata: &MetadataMap) -> Option<Status> {
    if req.fail_code == 0 {
        return None;
    }
    let mut trailers = MetadataMap::new();
    for kv in metadata.iter() {
        match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) if k.as_str().starts_with("x-echo-") => {
                let name = format!("x-trailer-{}", &k.as_str()["x-echo-".len()..]);
                if let Ok(key) = tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes()) {
                    trailers.insert(key, v.clone());
                }
            }
            _ => {}
        }
    }
    trailers.insert("x-trailer-custom", MetadataValue::from_static("present"));
    // `x-echo-pushback: N` asks the caller to retry after N ms (or never, if negative).
    if let Some(pushback) = metadata.get("x-echo-pushback") {
        trailers.insert("grpc-retry-pushback-ms", pushback.clone());
    }
    Some(Status::with_details_and_metadata(
        Code::from_i32(req.fail_code),
        req.fail_message.clone(),
        status_details(req.fail_code, &req.fail_message),
        trailers,
    ))
}

/// `google.rpc.Status`, the standard content of `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types_any::Any>,
}

/// `google.protobuf.Any`.
pub mod prost_types_any {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }
}

/// The details a failing call carries: a `google.rpc.Status` whose one detail is an
/// `EchoReply` with `served_by = "details-for-<code>"`, so clients can check they arrive.
pub fn status_details(code: i32, message: &str) -> bytes::Bytes {
    use prost::Message as _;
    let detail = EchoReply {
        served_by: format!("details-for-{code}"),
        ..Default::default()
    };
    let status = RpcStatus {
        code,
        message: message.to_string(),
        details: vec![prost_types_any::Any {
            type_url: "type.googleapis.com/bench.EchoReply".into(),
            value: detail.encode_to_vec(),
        }],
    };
    bytes::Bytes::from(status.encode_to_vec())
}

impl EchoService {
    fn forced(&self) -> Option<Status> {
        match self.stats.forced_code.load(Ordering::SeqCst) {
            0 => {
                let percent = u64::from(self.stats.fail_percent.load(Ordering::SeqCst));
                let n = self.stats.fail_sequence.fetch_add(1, Ordering::SeqCst);
                // Steps of 61 (mod 100) never land below 30 twice in a row.
                ((n * 61) % 100 < percent).then(|| {
                    Status::unavailable(format!("{} fails {percent}% of calls", self.name))
                })
            }
            code => Some(Status::new(
                Code::from_i32(code),
                format!("forced by the test on {}", self.name),
            )),
        }
    }

    /// The wait of a call in the slow tail (see `slow_percent`), if this call is one.
    fn slow_tail(&self) -> Option<Duration> {
        let percent = u64::from(self.stats.slow_percent.load(Ordering::Relaxed));
        if percent == 0 {
            return None;
        }
        let n = self.stats.slow_sequence.fetch_add(1, Ordering::Relaxed);
        ((n * 61) % 100 < percent)
            .then(|| Duration::from_millis(self.stats.slow_ms.load(Ordering::Relaxed)))
    }

    fn note_timeout(&self, metadata: &MetadataMap) {
        let ms = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_timeout_ms)
            .unwrap_or(0);
        self.stats.last_timeout_ms.store(ms, Ordering::SeqCst);
    }

    fn reply(&self, payload: Vec<u8>, seq: u32, received: u32) -> EchoReply {
        EchoReply {
            payload,
            served_by: self.name.to_string(),
            seq,
            received,
        }
    }
}

fn parse_timeout_ms(value: &str) -> Option<u64> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => n * 3_600_000,
        "M" => n * 60_000,
        "S" => n * 1000,
        "m" => n,
        "u" => n / 1000,
        "n" => n / 1_000_000,
        _ => return None,
    })
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let _active = ActiveGuard::new(&self.stats, request.metadata());
        if let Some(tail) = self.slow_tail() {
            tokio::time::sleep(tail).await;
        }
        self.note_timeout(request.metadata());
        let headers = echoed_headers(request.metadata());
        let metadata = request.metadata().clone();
        let req = request.into_inner();
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(req.delay_ms))).await;
        }
        if let Some(status) = failing_status(&req, &metadata).or_else(|| self.forced()) {
            return Err(status);
        }
        let mut response = Response::new(self.reply(req.payload, 0, 1));
        *response.metadata_mut() = headers;
        Ok(response)
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let _active = ActiveGuard::new(&self.stats, request.metadata());
        self.note_timeout(request.metadata());
        let headers = echoed_headers(request.metadata());
        let metadata = request.metadata().clone();
        let mut stream = request.into_inner();
        let mut received = 0;
        let mut last = Vec::new();
        while let Some(message) = stream.next().await {
            let message = message?;
            received += 1;
            if let Some(status) = failing_status(&message, &metadata) {
                return Err(status);
            }
            last = message.payload;
        }
        let mut response = Response::new(self.reply(last, 0, received));
        *response.metadata_mut() = headers;
        Ok(response)
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let active = ActiveGuard::new(&self.stats, request.metadata());
        self.note_timeout(request.metadata());
        let headers = echoed_headers(request.metadata());
        let metadata = request.metadata().clone();
        let req = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            let _active = active;
            for seq in 0..req.reply_count {
                if req.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(u64::from(req.delay_ms))).await;
                }
                if tx
                    .send(Ok(service.reply(req.payload.clone(), seq, 0)))
                    .await
                    .is_err()
                {
                    return; // caller went away: stop working
                }
            }
            if let Some(status) = failing_status(&req, &metadata).or_else(|| service.forced()) {
                let _ = tx.send(Err(status)).await;
            }
        });
        let mut response = Response::new(Box::pin(ReceiverStream::new(rx)) as ReplyStream);
        *response.metadata_mut() = headers;
        Ok(response)
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        let active = ActiveGuard::new(&self.stats, request.metadata());
        self.note_timeout(request.metadata());
        let headers = echoed_headers(request.metadata());
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            let _active = active;
            let mut seq = 0;
            while let Some(message) = inbound.next().await {
                let Ok(message) = message else { return };
                if let Some(status) = failing_status(&message, &metadata) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                if message.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(u64::from(message.delay_ms))).await;
                }
                if tx
                    .send(Ok(service.reply(message.payload, seq, 0)))
                    .await
                    .is_err()
                {
                    return;
                }
                seq += 1;
            }
        });
        let mut response = Response::new(Box::pin(ReceiverStream::new(rx)) as ReplyStream);
        *response.metadata_mut() = headers;
        Ok(response)
    }
}

#[derive(Debug, Clone)]
pub struct BackendOptions {
    pub name: String,
    pub addr: Option<SocketAddr>,
    /// PEM certificate chain and key: serve TLS (ALPN h2) instead of h2c.
    pub tls: Option<(String, String)>,
    /// PEM CA bundle: with `tls`, require client certificates it signed (mutual TLS).
    pub client_ca: Option<String>,
    /// A file to append each call's `x-call-id` to as it arrives (see `BackendStats`).
    pub arrivals_log: Option<std::path::PathBuf>,
}

impl BackendOptions {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            addr: None,
            tls: None,
            client_ca: None,
            arrivals_log: None,
        }
    }
}

/// A running echo backend; stops when dropped.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<BackendStats>,
    health: tonic_health::server::HealthReporter,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend on a free loopback port (or the given address) in the current runtime.
    pub async fn start(options: BackendOptions) -> Backend {
        let listener = tokio::net::TcpListener::bind(
            options
                .addr
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
        )
        .await
        .expect("binding the echo backend");
        let addr = listener.local_addr().expect("bound address");
        let arrivals_log = options.arrivals_log.as_ref().map(|path| {
            std::sync::Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("opening the arrivals log"),
            )
        });
        let stats = Arc::new(BackendStats {
            arrivals_log,
            ..Default::default()
        });
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_service_status("", ServingStatus::Serving).await;
        health.set_serving::<EchoServer<EchoService>>().await;
        let service = EchoServer::new(EchoService {
            name: options.name.clone().into(),
            stats: stats.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let connection_stats = stats.clone();
        let incoming = TcpListenerStream::new(listener).map(move |conn| {
            connection_stats.connections.fetch_add(1, Ordering::SeqCst);
            // As any production gRPC server: small frames go out now, not after Nagle's delay.
            conn.inspect(|c| {
                let _ = c.set_nodelay(true);
            })
        });
        // Above hyper's default of 200, so 200 concurrent calls fit one connection.
        // Header blocks up to 1 MiB (hyper's default is 16 KiB; grpc-go's 16 MiB), so tests can
        // send metadata larger than one HTTP/2 frame through the gateway.
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(1000))
            .http2_max_header_list_size(1 << 20);
        if let Some((cert, key)) = &options.tls {
            let mut tls = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key));
            if let Some(ca) = &options.client_ca {
                tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder.tls_config(tls).expect("valid backend TLS config");
        }
        let task = tokio::spawn(async move {
            let result = builder
                .add_service(health_service)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = shutdown_rx.await;
                })
                .await;
            if let Err(e) = result {
                eprintln!("echo backend stopped with an error: {e}");
            }
        });
        Backend {
            name: options.name,
            addr,
            stats,
            health,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        }
    }

    pub fn calls(&self) -> u64 {
        self.stats.calls.load(Ordering::SeqCst)
    }

    /// Makes every following call end with `code` (`None`: answer normally again).
    pub fn force_status(&self, code: Option<Code>) {
        self.stats
            .forced_code
            .store(code.map(|c| c as i32).unwrap_or(0), Ordering::SeqCst);
    }

    /// Makes `percent` of the following unary calls wait `ms` before answering.
    pub fn slow_share(&self, percent: u32, ms: u64) {
        self.stats.slow_ms.store(ms, Ordering::SeqCst);
        self.stats.slow_percent.store(percent, Ordering::SeqCst);
    }

    /// Makes `percent` of the following calls end with UNAVAILABLE (trailers-only for unary
    /// calls), spread evenly: for up to 30%, never two in a row.
    pub fn fail_share(&self, percent: u32) {
        self.stats.fail_percent.store(percent, Ordering::SeqCst);
    }

    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// How many times the call with this `x-call-id` reached the backend.
    pub fn arrivals_of(&self, id: &str) -> u32 {
        self.stats
            .arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Every call id that arrived, with its count.
    pub fn arrivals(&self) -> std::collections::HashMap<String, u32> {
        self.stats
            .arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn active(&self) -> i64 {
        self.stats.active.load(Ordering::SeqCst)
    }

    pub async fn set_health(&self, status: ServingStatus) {
        self.health.set_service_status("", status).await;
    }

    /// Stops accepting and closes connections; returns when the server task has ended.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Runs a backend until the process is killed: used by the `strait-echo` binary.
pub async fn serve_forever(
    name: String,
    addr: SocketAddr,
    arrivals_log: Option<std::path::PathBuf>,
    slow: Option<(u32, u64)>,
) {
    let backend = Backend::start(BackendOptions {
        name,
        addr: Some(addr),
        tls: None,
        client_ca: None,
        arrivals_log,
    })
    .await;
    if let Some((percent, ms)) = slow {
        backend.slow_share(percent, ms);
    }
    eprintln!(
        "echo backend {} listening on {}",
        backend.name, backend.addr
    );
    std::future::pending::<()>().await;
}
