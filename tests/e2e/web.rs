//! Browsers and REST clients (issue #17): gRPC-Web from a real npm client
//! (`@connectrpc/connect-node`, tests/web/client.mjs) over HTTP/1.1 and HTTP/2, the text form
//! and CORS with curl, a page in headless Chromium, and gRPC-JSON transcoding with curl, all
//! against real tonic backends through the real gateway. Node, npm, curl and Chromium are
//! installed by `.ci/install-deps`; a missing one fails these tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use strait_tests::net::{free_addr, http_get, metric, run_bounded};
use strait_tests::{Backend, BackendOptions, Gateway, ECHO_DESCRIPTORS};

use crate::fixture::single_backend_config;

/// The page's origin in the CORS tests (nothing listens there; browsers only compare it).
const PAGE_ORIGIN: &str = "http://127.0.0.1:18999";

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// A gateway in front of `backend` with gRPC-Web, CORS for `origin`, JSON transcoding of
/// bench.Echo, the admin listener and a JSON access log.
struct WebGateway {
    /// Runs until dropped.
    _gateway: Gateway,
    addr: SocketAddr,
    admin: SocketAddr,
    descriptors: PathBuf,
    access_log: PathBuf,
}

impl WebGateway {
    fn start(backend: SocketAddr, origin: &str) -> WebGateway {
        Self::start_with(backend, origin, "")
    }

    /// `start`, with more keys on the route.
    fn start_with(backend: SocketAddr, origin: &str, route_extra: &str) -> WebGateway {
        Self::start_full(backend, origin, route_extra, "", &[])
    }

    /// `start_with`, with `tail` appended to the config and `files` written beside it.
    fn start_full(
        backend: SocketAddr,
        origin: &str,
        route_extra: &str,
        tail: &str,
        files: &[(&str, &[u8])],
    ) -> WebGateway {
        let addr = free_addr();
        let admin = free_addr();
        let dir = tempfile::tempdir().unwrap();
        let descriptors = dir.path().join("api.pb");
        std::fs::write(&descriptors, ECHO_DESCRIPTORS).unwrap();
        let access_log = dir.path().join("access.log");
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let mut text = web_config(addr, backend, admin, origin, true).replace(
            "upstream = \"echo\"\n",
            &format!("upstream = \"echo\"\n{route_extra}\n"),
        );
        text.push_str(tail);
        let gateway = Gateway::start_in(dir, &text, addr);
        WebGateway {
            _gateway: gateway,
            addr,
            admin,
            descriptors,
            access_log,
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").1
    }

    /// The access log once it holds `protocol` lines at least `want` times (it is written off
    /// the call path, a moment after the call ends), within 10 s.
    fn access_log_lines(&self, protocol: &str, want: usize) -> Vec<Value> {
        let read = || -> Vec<Value> {
            std::fs::read_to_string(&self.access_log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let lines = read();
            let count = lines.iter().filter(|l| l["protocol"] == protocol).count();
            if count >= want || std::time::Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn web_config(
    addr: SocketAddr,
    backend: SocketAddr,
    admin: SocketAddr,
    origin: &str,
    transcode: bool,
) -> String {
    let mut text = single_backend_config(addr, backend).replace(
        &format!("listen = \"{addr}\""),
        &format!(
            "listen = \"{addr}\"\ngrpc_web = true\ncors = {{ allow_origins = [\"{origin}\"], max_age = \"10m\" }}"
        ),
    );
    text.push_str(&format!(
        "\n[admin]\nlisten = \"{admin}\"\n\n[access_log]\npath = \"access.log\"\n"
    ));
    if transcode {
        text.push_str(
            "\n[[transcode]]\nlistener = \"public\"\ndescriptors = \"api.pb\"\nservices = [\"bench.Echo\"]\n",
        );
    }
    text
}

/// Runs tests/web/client.mjs with `spec` (its contract is in the file); one result per call.
fn node_client(spec: Value) -> Vec<Value> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let status = Command::new("bash")
            .arg(web_dir().join("install.sh"))
            .status()
            .expect("bash runs tests/web/install.sh");
        assert!(
            status.success(),
            "tests/web/install.sh failed: Node.js and npm come from `bash .ci/install-deps`"
        );
    });
    let mut command = Command::new("node");
    command
        .arg(web_dir().join("client.mjs"))
        .arg(spec.to_string());
    let output = run_bounded(command, Duration::from_secs(60)).expect("node ran within 60 s");
    assert!(
        output.status.success(),
        "client.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON line per call"))
        .collect()
}

/// An HTTP exchange with curl: status, headers (lower-case names) and body.
struct Curled {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Curled {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

fn curl(args: &[&str]) -> Curled {
    let mut command = Command::new("curl");
    command
        .args(["-s", "-S", "-i", "--max-time", "20"])
        .args(args);
    let output = run_bounded(command, Duration::from_secs(30))
        .expect("curl ran (`bash .ci/install-deps` installs it)");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_response(&output.stdout)
}

fn parse_response(raw: &[u8]) -> Curled {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Curled {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// `strait_calls_total` of one method, code and protocol, from a `/metrics` text.
fn calls_of(metrics: &str, method: &str, code: &str, protocol: &str) -> Option<f64> {
    metric(
        metrics,
        "strait_calls_total",
        &[("method", method), ("code", code), ("protocol", protocol)],
    )
}

/// A gRPC-Web text call over HTTP/1.1 with curl, its base64 body in `body_file`.
fn text_call(url: &str, body_file: &str) -> Curled {
    curl(&[
        "--http1.1",
        "-H",
        "content-type: application/grpc-web-text",
        "--data-binary",
        &format!("@{body_file}"),
        url,
    ])
}

/// A gRPC message frame around `message`.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// EchoRequest, hand-encoded: payload (1), reply_count (2), fail_code (3), fail_message (4),
/// delay_ms (5).
fn echo_request(payload: &[u8], reply_count: u32, fail_code: u32, delay_ms: u32) -> Vec<u8> {
    let mut out = Vec::new();
    if !payload.is_empty() {
        out.push(0x0a);
        out.push(payload.len() as u8);
        out.extend_from_slice(payload);
    }
    for (tag, value) in [(0x10, reply_count), (0x18, fail_code), (0x28, delay_ms)] {
        if value > 0 {
            out.push(tag);
            let mut v = value;
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
    }
    out
}

/// The frames of a gRPC-Web body: (flag, payload) pairs.
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert!(body.len() >= 5 + len, "a truncated frame");
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "bytes after the last frame");
    out
}

fn write_file(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_npm_grpc_web_client_calls_through_the_gateway_over_http1_and_http2() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let web = tokio::task::block_in_place(|| WebGateway::start(backend.addr, PAGE_ORIGIN));
    for http_version in ["1.1", "2"] {
        let mut calls = vec![
            json!({"method": "Unary", "request": {"payload": "aGVsbG8="}, "headers": {"x-echo-tenant": "t-7", "x-echo-te": "1"}}),
            json!({"method": "ServerStream", "request": {"replyCount": 5}}),
            json!({"method": "ServerStream", "request": {"replyCount": 2, "failCode": 10, "failMessage": "stopped"}}),
        ];
        for code in 1..=16 {
            calls.push(json!({"method": "Unary", "request": {"failCode": code, "failMessage": format!("failure {code}: naïve % done")}}));
        }
        let spec = json!({
            "base": web.base(),
            "descriptors": web.descriptors,
            "httpVersion": http_version,
            "calls": calls,
        });
        let results = tokio::task::block_in_place(|| node_client(spec));
        assert_eq!(results.len(), 19, "HTTP/{http_version}");

        let unary = &results[0];
        assert_eq!(unary["code"], 0, "HTTP/{http_version}: {unary}");
        assert_eq!(unary["replies"][0]["payload"], "aGVsbG8=");
        assert_eq!(unary["replies"][0]["servedBy"], "b1");
        // Metadata both ways: the backend echoes x-echo-* into its response headers.
        assert_eq!(unary["headers"]["x-echo-tenant"], "t-7", "{unary}");
        // The backend got `te: trailers`, which browsers cannot send (gRPC C-core servers
        // refuse a call without it).
        assert_eq!(unary["headers"]["x-seen-te"], "trailers", "{unary}");
        assert_eq!(unary["trailers"]["grpc-status"], "0");

        let stream = &results[1];
        assert_eq!(stream["code"], 0, "{stream}");
        let seqs: Vec<u64> = stream["replies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);

        let failed_stream = &results[2];
        assert_eq!(failed_stream["replies"].as_array().unwrap().len(), 2);
        assert_eq!(failed_stream["code"], 10, "{failed_stream}");
        assert_eq!(failed_stream["message"], "stopped");

        for (i, code) in (1..=16).enumerate() {
            let result = &results[3 + i];
            assert_eq!(result["code"], code, "HTTP/{http_version}: {result}");
            assert_eq!(
                result["message"],
                format!("failure {code}: naïve % done"),
                "{result}"
            );
        }
    }
    // Counted and logged like native calls, as grpc-web.
    let metrics = web.metrics();
    let calls = |method: &str, code: &str| calls_of(&metrics, method, code, "grpc-web");
    assert_eq!(calls("Unary", "OK"), Some(2.0));
    assert_eq!(calls("ServerStream", "OK"), Some(2.0));
    assert_eq!(calls("Unary", "NOT_FOUND"), Some(2.0));
    let logged = tokio::task::block_in_place(|| web.access_log_lines("grpc-web", 2 * 19));
    let web_lines = logged
        .iter()
        .filter(|l| l["protocol"] == "grpc-web")
        .count();
    assert_eq!(web_lines, 2 * 19, "{logged:?}");
    assert!(logged
        .iter()
        .all(|l| l["method"].as_str().unwrap().starts_with("/bench.Echo/")));
}

/// A hedged route's calls are carried by the gateway's own relay, not pingora's phases: gRPC-Web
/// callers over HTTP/1.1, binary and text, get the same translation there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_callers_of_a_hedged_route_are_translated_by_the_relay() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let web = tokio::task::block_in_place(|| {
        WebGateway::start_with(
            backend.addr,
            PAGE_ORIGIN,
            "idempotent = true\nhedge = { delay = \"2s\", max_attempts = 2 }",
        )
    });
    let spec = json!({
        "base": web.base(),
        "descriptors": web.descriptors,
        "httpVersion": "1.1",
        "calls": [
            {"method": "Unary", "request": {"payload": "aGk="}, "headers": {"x-echo-te": "1"}},
            {"method": "ServerStream", "request": {"replyCount": 3}},
            {"method": "Unary", "request": {"failCode": 5, "failMessage": "gone"}},
        ],
    });
    let results = tokio::task::block_in_place(|| node_client(spec));
    assert_eq!(results[0]["code"], 0, "{}", results[0]);
    assert_eq!(results[0]["replies"][0]["payload"], "aGk=");
    assert_eq!(
        results[0]["headers"]["x-seen-te"], "trailers",
        "{}",
        results[0]
    );
    assert_eq!(
        results[1]["replies"].as_array().unwrap().len(),
        3,
        "{}",
        results[1]
    );
    assert_eq!(results[2]["code"], 5, "{}", results[2]);
    assert_eq!(results[2]["message"], "gone");

    let dir = tempfile::tempdir().unwrap();
    let body = STANDARD.encode(frame(&echo_request(b"txt", 0, 0, 0)));
    let body_file = write_file(&dir.path().join("text.b64"), body.as_bytes());
    let answer = tokio::task::block_in_place(|| {
        text_call(&format!("{}/bench.Echo/Unary", web.base()), &body_file)
    });
    assert_eq!(answer.status, 200);
    let decoded = STANDARD.decode(&answer.body).expect("one base64 text");
    let answer_frames = frames(&decoded);
    assert_eq!(answer_frames.len(), 2, "the reply and the trailer frame");
    assert!(answer_frames[0].1.windows(3).any(|w| w == b"txt"));
    assert_eq!(
        String::from_utf8_lossy(&answer_frames[1].1).trim_end(),
        "grpc-status:0"
    );
    // Every call answered by the backend, none held against it by the breaker.
    assert_eq!(backend.calls(), 4);
    let metrics = web.metrics();
    assert_eq!(calls_of(&metrics, "Unary", "OK", "grpc-web"), Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_text_is_base64_both_ways() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let web = tokio::task::block_in_place(|| WebGateway::start(backend.addr, PAGE_ORIGIN));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/bench.Echo/ServerStream", web.base());
    let body = STANDARD.encode(frame(&echo_request(b"txt", 3, 0, 0)));
    let body_file = write_file(&dir.path().join("text.b64"), body.as_bytes());
    let answer = tokio::task::block_in_place(|| {
        curl(&[
            "--http1.1",
            "-H",
            "content-type: application/grpc-web-text",
            "-H",
            "accept: application/grpc-web-text",
            "-H",
            "x-grpc-web: 1",
            "--data-binary",
            &format!("@{body_file}"),
            &url,
        ])
    });
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("application/grpc-web-text+proto")
    );
    let decoded = STANDARD
        .decode(&answer.body)
        .expect("the answer is one base64 text");
    let answer_frames = frames(&decoded);
    assert_eq!(
        answer_frames.len(),
        4,
        "three replies and the trailer frame"
    );
    assert!(answer_frames[..3].iter().all(|(flag, _)| *flag == 0));
    assert_eq!(answer_frames[3].0, 0x80);
    assert_eq!(
        String::from_utf8_lossy(&answer_frames[3].1).trim_end(),
        "grpc-status:0"
    );

    // A failing call: trailers-only, the status in the headers, no body.
    let failing = STANDARD.encode(frame(&echo_request(b"", 0, 5, 0)));
    let failing_file = write_file(&dir.path().join("fail.b64"), failing.as_bytes());
    let answer = tokio::task::block_in_place(|| {
        text_call(&format!("{}/bench.Echo/Unary", web.base()), &failing_file)
    });
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("grpc-status"), Some("5"));
    assert!(answer.body.is_empty());

    // Not base64: the call ends INVALID_ARGUMENT; the connection serves the next call.
    let broken_file = write_file(&dir.path().join("broken.b64"), b"!!!!not base64");
    let answer = tokio::task::block_in_place(|| {
        text_call(&format!("{}/bench.Echo/Unary", web.base()), &broken_file)
    });
    assert_eq!(answer.status, 200);
    let status = answer
        .header("grpc-status")
        .map(str::to_string)
        .or_else(|| {
            let decoded = STANDARD.decode(&answer.body).ok()?;
            let trailer = frames(&decoded).into_iter().find(|(f, _)| *f == 0x80)?;
            let text = String::from_utf8_lossy(&trailer.1).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("grpc-status:").map(|v| v.trim().to_string()))
        });
    assert_eq!(status.as_deref(), Some("3"), "{:?}", answer.headers);
    assert_eq!(
        backend.calls(),
        2,
        "the stream and the failing call; not the broken one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_server_stream_is_relayed_as_it_arrives() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let web = tokio::task::block_in_place(|| WebGateway::start(backend.addr, PAGE_ORIGIN));
    // Three replies 400 ms apart: a gateway that buffered the stream would deliver the first
    // reply together with the last one and the trailers.
    let body = frame(&echo_request(b"", 3, 0, 400));
    let head = format!(
        "POST /bench.Echo/ServerStream HTTP/1.1\r\nhost: {}\r\ncontent-type: application/grpc-web+proto\r\n\
         x-grpc-web: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        web.addr,
        body.len()
    );
    let first_read = tokio::task::block_in_place(|| {
        let mut stream = TcpStream::connect(web.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body).unwrap();
        // Read until the first reply frame is whole.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).expect("the first reply within 10 s");
            assert!(n > 0, "the stream ended before its first reply");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(start) = text.find("\r\n\r\n") {
                if dechunk(&got[start + 4..]).len() >= 5 + 7 {
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest);
                    return (got[start + 4..].to_vec(), rest);
                }
            }
        }
    });
    let (first, rest) = first_read;
    let first = dechunk(&first);
    assert!(
        !first.contains(&0x80),
        "the trailer frame came with the first reply: the stream was buffered"
    );
    let mut all = first.clone();
    all.extend(dechunk(&rest));
    assert_eq!(frames(&all).len(), 4, "three replies and the trailers");
}

/// The data of an HTTP/1.1 chunked body (as much as is there).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let Ok(size) = usize::from_str_radix(String::from_utf8_lossy(&raw[..line_end]).trim(), 16)
        else {
            break;
        };
        let start = line_end + 2;
        if size == 0 || raw.len() < start + size {
            out.extend_from_slice(&raw[start..raw.len().min(start + size)]);
            break;
        }
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_for_allowed_origins_only() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let web = tokio::task::block_in_place(|| WebGateway::start(backend.addr, PAGE_ORIGIN));
    let url = format!("{}/bench.Echo/Unary", web.base());
    let preflight = |origin: &str| {
        curl(&[
            "-X",
            "OPTIONS",
            "-H",
            &format!("origin: {origin}"),
            "-H",
            "access-control-request-method: POST",
            "-H",
            "access-control-request-headers: content-type,x-grpc-web,x-user-agent,x-tenant",
            &url,
        ])
    };
    let allowed = tokio::task::block_in_place(|| preflight(PAGE_ORIGIN));
    assert_eq!(allowed.status, 204);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some(PAGE_ORIGIN)
    );
    let allowed_headers = allowed.header("access-control-allow-headers").unwrap();
    for name in ["content-type", "x-grpc-web", "x-user-agent", "x-tenant"] {
        assert!(allowed_headers.contains(name), "{allowed_headers}");
    }
    assert!(allowed
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(allowed.header("access-control-max-age"), Some("600"));

    let refused = tokio::task::block_in_place(|| preflight("https://elsewhere.example"));
    assert_eq!(refused.status, 403);
    assert!(refused.header("access-control-allow-origin").is_none());

    // A call from the allowed origin may read the status; one from another origin may not.
    let dir = tempfile::tempdir().unwrap();
    let body = write_file(
        &dir.path().join("call.bin"),
        &frame(&echo_request(b"x", 0, 0, 0)),
    );
    let call = |origin: &str| {
        curl(&[
            "-H",
            "content-type: application/grpc-web+proto",
            "-H",
            &format!("origin: {origin}"),
            "--data-binary",
            &format!("@{body}"),
            &url,
        ])
    };
    let answer = tokio::task::block_in_place(|| call(PAGE_ORIGIN));
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some(PAGE_ORIGIN)
    );
    let exposed = answer.header("access-control-expose-headers").unwrap();
    assert!(exposed.contains("grpc-status") && exposed.contains("grpc-message"));
    let other = tokio::task::block_in_place(|| call("https://elsewhere.example"));
    assert_eq!(other.status, 200);
    assert!(other.header("access-control-allow-origin").is_none());
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_errors_reach_grpc_web_callers_as_grpc_web() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let web = tokio::task::block_in_place(|| WebGateway::start(backend.addr, PAGE_ORIGIN));
    let spec = json!({
        "base": web.base(),
        "descriptors": web.descriptors,
        "httpVersion": "1.1",
        "calls": [
            {"method": "Unary", "request": {"delayMs": 3000}, "timeoutMs": 300},
        ],
    });
    let results = tokio::task::block_in_place(|| node_client(spec));
    assert_eq!(results[0]["code"], 4, "DEADLINE_EXCEEDED: {}", results[0]);

    // A service without a route: UNIMPLEMENTED from the gateway, trailers-only gRPC-Web.
    let dir = tempfile::tempdir().unwrap();
    let body = write_file(&dir.path().join("call.bin"), &frame(b""));
    let answer = tokio::task::block_in_place(|| {
        curl(&[
            "-H",
            "content-type: application/grpc-web+proto",
            "--data-binary",
            &format!("@{body}"),
            &format!("{}/other.Service/Call", web.base()),
        ])
    });
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("application/grpc-web+proto")
    );
    assert_eq!(answer.header("grpc-status"), Some("12"));
    assert!(answer.header("grpc-message").unwrap().contains("no route"));

    // The backend gone: UNAVAILABLE, in gRPC-Web form.
    backend.stop().await;
    let spec = json!({
        "base": web.base(),
        "descriptors": web.descriptors,
        "calls": [{"method": "Unary", "request": {}}],
    });
    let results = tokio::task::block_in_place(|| node_client(spec));
    assert_eq!(results[0]["code"], 14, "UNAVAILABLE: {}", results[0]);

    // Plain HTTP/1.1 that is neither gRPC-Web nor a REST route is refused as before.
    let plain = tokio::task::block_in_place(|| curl(&["--http1.1", &format!("{}/", web.base())]));
    assert_eq!(plain.status, 404, "no REST route for GET /");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_is_refused_where_it_is_not_served() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let addr = free_addr();
    let gateway = tokio::task::block_in_place(|| {
        Gateway::start(&single_backend_config(addr, backend.addr), addr)
    });
    let dir = tempfile::tempdir().unwrap();
    let body = write_file(&dir.path().join("call.bin"), &frame(b""));
    let call = |version: &str, content_type: &str, addr: SocketAddr| {
        curl(&[
            version,
            "-H",
            &format!("content-type: {content_type}"),
            "--data-binary",
            &format!("@{body}"),
            &format!("http://{addr}/bench.Echo/Unary"),
        ])
    };
    // A listener without grpc_web: refused over HTTP/1.1 and HTTP/2 alike, never forwarded as
    // if it were native gRPC.
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let answer =
            tokio::task::block_in_place(|| call(version, "application/grpc-web+proto", addr));
        assert_eq!(answer.status, 415, "{version}");
        assert!(String::from_utf8_lossy(&answer.body).contains("grpc_web = true"));
    }
    // Plain HTTP/1.1 is refused as before.
    let plain = tokio::task::block_in_place(|| curl(&["--http1.1", &format!("http://{addr}/")]));
    assert_eq!(plain.status, 505);
    // The +json codec, on a listener with grpc_web: the backends speak protobuf.
    let web = tokio::task::block_in_place(|| WebGateway::start(backend.addr, PAGE_ORIGIN));
    let answer = tokio::task::block_in_place(|| {
        call(
            "--http2-prior-knowledge",
            "application/grpc-web+json",
            web.addr,
        )
    });
    assert_eq!(answer.status, 415);
    assert_eq!(backend.calls(), 0);
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_in_headless_chromium_calls_through_the_gateway() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    // The page is served from its own origin, so the browser makes CORS preflights.
    let page = StaticServer::start(&web_dir().join("browser.html"));
    let origin = format!("http://{}", page.addr);
    let web = tokio::task::block_in_place(|| WebGateway::start(backend.addr, &origin));
    let url = format!("{origin}/browser.html?gateway={}", web.base());
    let profile = tempfile::tempdir().unwrap();
    let dom = tokio::task::block_in_place(|| {
        crate::browser::headless(
            &url,
            &[
                "--disable-background-networking",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ],
            profile.path(),
        )
    });
    let result = dom
        .split("<pre id=\"result\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .map(|text| {
            text.replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&")
        })
        .unwrap_or_else(|| panic!("no result on the page:\n{dom}"));
    let result: Value = serde_json::from_str(&result).unwrap_or_else(|e| panic!("{e}: {result}"));
    assert_eq!(result["unary"]["status"], 0, "{result}");
    assert_eq!(result["unary"]["payload"], "from-browser");
    assert_eq!(result["unary"]["servedBy"], "b1");
    assert_eq!(result["notFound"]["status"], 5, "{result}");
    assert_eq!(result["notFound"]["message"], "nope");
    assert!(page.served() >= 1);
    let metrics = web.metrics();
    assert_eq!(calls_of(&metrics, "Unary", "OK", "grpc-web"), Some(1.0));
}

/// Serves one file at any path, over HTTP/1.1, from a thread; counts the requests.
struct StaticServer {
    addr: SocketAddr,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl StaticServer {
    fn start(file: &Path) -> StaticServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let content = std::fs::read(file).unwrap();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = [0u8; 4096];
                if stream.read(&mut request).unwrap_or(0) == 0 {
                    continue;
                }
                let (status, body) = if request.starts_with(b"GET /browser.html") {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    ("200 OK", content.as_slice())
                } else {
                    ("404 Not Found", &b""[..])
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            }
        });
        StaticServer { addr, served }
    }

    fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_routes_map_paths_queries_bodies_and_answers() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let web = tokio::task::block_in_place(|| WebGateway::start(backend.addr, PAGE_ORIGIN));
    let base = web.base();
    let c = |args: &[&str]| tokio::task::block_in_place(|| curl(args));

    // body "*": the whole JSON is the request.
    let answer = c(&[
        "--json",
        r#"{"payload":"aGVsbG8="}"#,
        &format!("{base}/v1/echo"),
    ]);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        answer.json(),
        json!({"payload": "aGVsbG8=", "servedBy": "b1", "received": 1})
    );

    // A path variable and query parameters (proto names and JSON names alike).
    let answer = c(&[&format!(
        "{base}/v1/echo/hello%20there?payload=aGk%3D&delay_ms=1"
    )]);
    assert_eq!(
        answer.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["payload"], "aGk=");
    let answer = c(&[&format!("{base}/v1/echo/why?failCode=7")]);
    assert_eq!(answer.status, 403);
    assert_eq!(answer.json()["message"], "why");

    // body "fail_message": the body is that field; the path sets fail_code.
    let answer = c(&[
        "-X",
        "PUT",
        "--json",
        r#""not now""#,
        &format!("{base}/v1/fail/9"),
    ]);
    assert_eq!(answer.status, 400, "FAILED_PRECONDITION");
    let error = answer.json();
    assert_eq!(error["code"], 9);
    assert_eq!(error["message"], "not now");
    // The details (google.rpc.Status in grpc-status-details-bin) rendered through the
    // descriptors.
    assert_eq!(
        error["details"],
        json!([{"@type": "type.googleapis.com/bench.EchoReply", "servedBy": "details-for-9"}])
    );

    // response_body: the answer is one field.
    let answer = c(&[&format!("{base}/v1/served-by")]);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), json!("b1"));

    // Every exposed method is also POST /package.Service/Method.
    let answer = c(&[
        "--json",
        r#"{"payload":"eA=="}"#,
        &format!("{base}/bench.Echo/Unary"),
    ]);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["payload"], "eA==");

    // Every gRPC code as its HTTP status, with the JSON error body.
    let expected = [
        (1, 499),
        (2, 500),
        (3, 400),
        (4, 504),
        (5, 404),
        (6, 409),
        (7, 403),
        (8, 429),
        (9, 400),
        (10, 409),
        (11, 400),
        (12, 501),
        (13, 500),
        (14, 503),
        (15, 500),
        (16, 401),
    ];
    for (code, http) in expected {
        let answer = c(&[&format!("{base}/v1/echo/failing?failCode={code}")]);
        assert_eq!(answer.status, http, "code {code}");
        let body = answer.json();
        assert_eq!(body["code"], code);
        assert_eq!(body["message"], "failing");
        assert!(body["details"].is_array());
    }

    // Over HTTP/2 (h2c with prior knowledge) too.
    let answer = c(&["--http2-prior-knowledge", &format!("{base}/v1/served-by")]);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), json!("b1"));

    // Counted and logged as json.
    let metrics = web.metrics();
    assert_eq!(calls_of(&metrics, "Unary", "NOT_FOUND", "json"), Some(1.0));
    let logged = tokio::task::block_in_place(|| web.access_log_lines("json", 22));
    assert!(logged.iter().filter(|l| l["protocol"] == "json").count() >= 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_does_not_fit_is_400_and_never_reaches_the_backend() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let web = tokio::task::block_in_place(|| WebGateway::start(backend.addr, PAGE_ORIGIN));
    let base = web.base();
    let c = |args: &[&str]| tokio::task::block_in_place(|| curl(args));
    for (body, reason) in [
        (r#"{"payload": "#, "not valid JSON"),
        (r#"{"payload": 12}"#, "base64"),
        (r#"{"nope": 1}"#, "nope"),
        (r#"{"replyCount": "many"}"#, "bench.EchoRequest"),
        (r#"[1, 2]"#, "bench.EchoRequest"),
    ] {
        let answer = c(&["--json", body, &format!("{base}/v1/echo")]);
        assert_eq!(answer.status, 400, "{body}");
        let error = answer.json();
        assert_eq!(error["code"], 3, "{body}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(reason), "{body}: {message}");
    }
    let answer = c(&[&format!("{base}/v1/echo/x?unknown_field=1")]);
    assert_eq!(answer.status, 400);
    assert!(answer.json()["message"]
        .as_str()
        .unwrap()
        .contains("unknown_field"));
    // A route that takes no body, given one.
    let answer = c(&["-X", "GET", "--json", "{}", &format!("{base}/v1/served-by")]);
    assert_eq!(answer.status, 400);
    // A body that is not declared JSON (what any page may send without a CORS preflight):
    // refused before anything else, and without a content type after admission.
    for content_type in ["application/x-www-form-urlencoded", "text/plain"] {
        let answer = c(&[
            "-H",
            &format!("content-type: {content_type}"),
            "--data-binary",
            r#"{"payload":"eA=="}"#,
            &format!("{base}/v1/echo"),
        ]);
        assert_eq!(answer.status, 415, "{content_type}");
    }
    let answer = c(&[
        "-H",
        "content-type:",
        "--data-binary",
        r#"{"payload":"eA=="}"#,
        &format!("{base}/v1/echo"),
    ]);
    assert_eq!(answer.status, 400);
    assert!(answer.json()["message"]
        .as_str()
        .unwrap()
        .contains("application/json"));
    // No REST route at all; a known path with the wrong verb.
    let answer = c(&[&format!("{base}/v2/nothing")]);
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["code"], 5);
    let answer = c(&["-X", "DELETE", &format!("{base}/v1/echo")]);
    assert_eq!(answer.status, 405);
    assert_eq!(backend.calls(), 0, "nothing reached the backend");
    // The connection-level health: the gateway still serves a good call.
    let answer = c(&["--json", "{}", &format!("{base}/v1/echo")]);
    assert_eq!(answer.status, 200);
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_server_stream_is_an_array_written_as_replies_arrive() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let web = tokio::task::block_in_place(|| WebGateway::start(backend.addr, PAGE_ORIGIN));
    let base = web.base();
    let answer = tokio::task::block_in_place(|| curl(&[&format!("{base}/v1/stream/3")]));
    assert_eq!(answer.status, 200);
    let replies = answer.json();
    let seqs: Vec<u64> = replies
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert!(replies
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["servedBy"] == "b1"));

    // An error after two replies: the array ends with the error.
    let answer = tokio::task::block_in_place(|| {
        curl(&[&format!(
            "{base}/v1/stream/2?failCode=10&failMessage=stopped"
        )])
    });
    assert_eq!(
        answer.status, 200,
        "the status line went out with the first reply"
    );
    let items = answer.json();
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[2]["error"]["code"], 10);
    assert_eq!(items[2]["error"]["message"], "stopped");

    // Streamed, not buffered: with replies 400 ms apart, the first arrives while the
    // stream is still open.
    let head = format!(
        "GET /v1/stream/3?delayMs=400 HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        web.addr
    );
    let (first, rest) = tokio::task::block_in_place(|| {
        let mut stream = TcpStream::connect(web.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).expect("the first reply within 10 s");
            assert!(n > 0, "ended before the first reply");
            got.extend_from_slice(&buf[..n]);
            if let Some(start) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let body = dechunk(&got[start + 4..]);
                if body.contains(&b'}') {
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest);
                    return (body, rest);
                }
            }
        }
    });
    assert!(
        first.starts_with(b"[{"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    assert!(
        !first.ends_with(b"]"),
        "the whole array came at once: {:?}",
        String::from_utf8_lossy(&first)
    );
    assert!(!rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcoding_is_added_by_a_reload() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let addr = free_addr();
    let admin = free_addr();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api.pb"), ECHO_DESCRIPTORS).unwrap();
    let without = web_config(addr, backend.addr, admin, PAGE_ORIGIN, false);
    let gateway = tokio::task::block_in_place(|| Gateway::start_in(dir, &without, addr));
    let url = format!("http://{addr}/v1/served-by");
    let before = tokio::task::block_in_place(|| curl(&[&url]));
    assert_eq!(
        before.status, 505,
        "no transcoding yet: plain HTTP/1.1 is refused"
    );
    gateway.write_config(&web_config(addr, backend.addr, admin, PAGE_ORIGIN, true));
    let (code, output) =
        strait_tests::gateway::strait_command(&["reload", "--admin", &admin.to_string()]);
    assert_eq!(code, 0, "{output}");
    let after = tokio::task::block_in_place(|| curl(&[&url]));
    assert_eq!(after.status, 200);
    assert_eq!(after.json(), json!("b1"));
}

/// gRPC-Web on a TLS listener: ALPN `http/1.1` (what an HTTPS page's fetch may use) and `h2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_over_tls_with_http1_and_http2() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = strait_tests::tls::generate(dir.path());
    let body = write_file(
        &dir.path().join("call.bin"),
        &frame(&echo_request(b"tls", 0, 0, 0)),
    );
    let listen = free_addr();
    let text = crate::fixture::tls_listener_config(
        listen,
        backend.addr,
        "cert = \"server.crt\", key = \"server.key\"",
    )
    .replace(
        &format!("listen = \"{listen}\""),
        &format!("listen = \"{listen}\"\ngrpc_web = true"),
    );
    let ca = pki.ca_cert.display().to_string();
    let _gateway = tokio::task::block_in_place(|| Gateway::start_in(dir, &text, listen));
    for version in ["--http1.1", "--http2"] {
        let answer = tokio::task::block_in_place(|| {
            curl(&[
                version,
                "--cacert",
                &ca,
                "-H",
                "content-type: application/grpc-web+proto",
                "--data-binary",
                &format!("@{body}"),
                &format!("https://localhost:{}/bench.Echo/Unary", listen.port()),
            ])
        });
        assert_eq!(answer.status, 200, "{version}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/grpc-web+proto")
        );
        let answer_frames = frames(&answer.body);
        assert_eq!(
            answer_frames.len(),
            2,
            "{version}: the reply and the trailers"
        );
        assert!(answer_frames[0].1.windows(3).any(|w| w == b"tls"));
        assert_eq!(
            String::from_utf8_lossy(&answer_frames[1].1).trim_end(),
            "grpc-status:0"
        );
    }
    assert_eq!(backend.calls(), 2);
}

/// JSON calls get the route's status retries like native calls (at 507e6a3 the relay that
/// carries them had none, a gap docs/web.md named): a backend failing every other call
/// trailers-only UNAVAILABLE is hidden from a REST client, and the retries are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_calls_are_retried_on_status_like_native_ones() {
    let backend = Backend::start(BackendOptions::named("b1")).await;
    backend.fail_share(50);
    let web = tokio::task::block_in_place(|| {
        WebGateway::start_with(
            backend.addr,
            PAGE_ORIGIN,
            "retry = { on = [\"UNAVAILABLE\"], max_attempts = 3, backoff = \"1ms\", max_backoff = \"5ms\" }",
        )
    });
    let base = web.base();
    for i in 0..10 {
        let answer = tokio::task::block_in_place(|| {
            curl(&[
                "--json",
                r#"{"payload":"aGVsbG8="}"#,
                &format!("{base}/v1/echo"),
            ])
        });
        assert_eq!(
            answer.status,
            200,
            "call {i}: {:?}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let retried = backend.calls() - 10;
    assert!(
        retried >= 4,
        "{retried} retries for 10 calls failing every other time"
    );
    let metrics = tokio::task::block_in_place(|| web.metrics());
    assert_eq!(
        metric(
            &metrics,
            "strait_retries_total",
            &[("upstream", "echo"), ("reason", "status")]
        ),
        Some(retried as f64)
    );
}

/// A route's `auth` refuses browsers and REST callers with HTTP's own answers: 401 with
/// `WWW-Authenticate: Bearer` without a credential, 403 for a caller the route does not allow;
/// neither reaches the backend, and an accepted caller's key never does either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refuses_grpc_web_and_json_callers_with_401_and_403() {
    use strait_tests::jwt::api_key_line;
    let backend = Backend::start(BackendOptions::named("b1")).await;
    let keys = api_key_line("ci", "key-ci") + &api_key_line("other", "key-other");
    let web = tokio::task::block_in_place(|| {
        WebGateway::start_full(
            backend.addr,
            PAGE_ORIGIN,
            "auth = [\"keys\"]\nrequire_claims = { sub = \"ci\" }",
            "\n[[auth]]\nname = \"keys\"\n[auth.api_keys]\nkeys_file = \"keys.txt\"\n",
            &[("keys.txt", keys.as_bytes())],
        )
    });
    let base = web.base();
    let json_call = |key: Option<&str>| {
        let header = format!("x-api-key: {}", key.unwrap_or(""));
        let mut args = vec!["--json", r#"{"payload":"aGVsbG8="}"#];
        if key.is_some() {
            args.extend(["-H", &header]);
        }
        let url = format!("{base}/v1/echo");
        args.push(&url);
        tokio::task::block_in_place(|| curl(&args))
    };
    let missing = json_call(None);
    assert_eq!(
        missing.status,
        401,
        "{:?}",
        String::from_utf8_lossy(&missing.body)
    );
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(missing.json()["code"], 16);
    let forbidden = json_call(Some("key-other"));
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["code"], 7);
    assert_eq!(json_call(Some("key-wrong")).status, 401);
    assert_eq!(backend.calls(), 0, "no refused call reached the backend");
    let accepted = json_call(Some("key-ci"));
    assert_eq!(accepted.status, 200);
    assert_eq!(accepted.json()["servedBy"], "b1");

    // gRPC-Web: the same refusal, the gRPC status in the headers too.
    let dir = tempfile::tempdir().unwrap();
    let body = STANDARD.encode(frame(&echo_request(b"w", 0, 0, 0)));
    let body_file = write_file(&dir.path().join("call.b64"), body.as_bytes());
    let url = format!("{base}/bench.Echo/Unary");
    let web_call = |extra: &[&str]| {
        let mut args = vec![
            "--http1.1",
            "-H",
            "content-type: application/grpc-web-text",
            "-H",
            "x-echo-seen: x-api-key",
        ];
        args.extend_from_slice(extra);
        let data = format!("@{body_file}");
        args.extend(["--data-binary", &data, &url]);
        tokio::task::block_in_place(|| curl(&args))
    };
    let refused = web_call(&[]);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert_eq!(refused.header("grpc-status"), Some("16"));
    let ok = web_call(&["-H", "x-api-key: key-ci"]);
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("x-seen-x-api-key"),
        None,
        "the key is not sent upstream"
    );
    assert_eq!(backend.calls(), 2);

    let metrics = tokio::task::block_in_place(|| web.metrics());
    let denied = |reason: &str| {
        metric(
            &metrics,
            "strait_auth_denied_total",
            &[("route", "bench.Echo"), ("reason", reason)],
        )
    };
    assert_eq!(denied("missing"), Some(2.0));
    assert_eq!(denied("invalid"), Some(1.0));
    assert_eq!(denied("forbidden"), Some(1.0));
    let logged = tokio::task::block_in_place(|| web.access_log_lines("json", 4));
    assert!(
        logged
            .iter()
            .any(|l| l["principal"] == "keys:ci" && l["code"] == 0),
        "the access log names the principal: {logged:?}"
    );
    assert!(logged.iter().any(|l| l["denied"] == "forbidden"));
    let text = serde_json::to_string(&logged).unwrap();
    assert!(!text.contains("key-ci"), "no credential in the access log");
}
