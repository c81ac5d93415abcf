//! Hostile clients against a running gateway while a well-behaved caller keeps calling: the
//! caller sees no failure and no stall, the gateway's memory stays bounded, and each attack is
//! cut off by the limit meant for it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strait_tests::attack::{self, Bystander, BystanderReport};
use strait_tests::ccore::CCoreBackend;
use strait_tests::gateway::log_with_panics_last;
use strait_tests::net::{free_addr, http_get, metric, wait_metric, wait_metrics};
use strait_tests::raw::{self, grpc_frame};
use strait_tests::{Backend, BackendOptions, Gateway};
use tokio::io::AsyncWriteExt;

/// A gateway with tight limits in front of one backend, with an admin port.
struct Arena {
    gateway: Gateway,
    /// The tonic backend, unless the arena was set up in front of another (`in_front_of`).
    tonic: Option<Backend>,
    listen: SocketAddr,
    admin: SocketAddr,
}

const LIMITS: &str = r#"
[listener.limits]
max_connections = 200
max_concurrent_streams = 100
max_header_list_size = 16384
max_message_size = 65536
handshake_timeout = "1s"
"#;

impl Arena {
    async fn start(listener_extra: &str, limits: &str) -> Arena {
        Self::start_in(tempfile::tempdir().unwrap(), listener_extra, limits).await
    }

    async fn start_in(dir: tempfile::TempDir, listener_extra: &str, limits: &str) -> Arena {
        let backend = Backend::start(BackendOptions::named("a")).await;
        let addr = backend.addr;
        Self::launch(dir, addr, Some(backend), listener_extra, limits)
    }

    /// The same gateway in front of a backend the test started itself.
    fn in_front_of(backend: SocketAddr, listener_extra: &str, limits: &str) -> Arena {
        Self::launch(
            tempfile::tempdir().unwrap(),
            backend,
            None,
            listener_extra,
            limits,
        )
    }

    fn launch(
        dir: tempfile::TempDir,
        backend: SocketAddr,
        tonic: Option<Backend>,
        listener_extra: &str,
        limits: &str,
    ) -> Arena {
        let (listen, admin) = (free_addr(), free_addr());
        let text = format!(
            r#"
[gateway]
threads = 2

[[listener]]
name = "public"
listen = "{listen}"
{listener_extra}
{limits}

[[route]]
listener = "public"
service = "*"
upstream = "echo"

[[upstream]]
name = "echo"
endpoints = [{{ addr = "{backend}" }}]

[admin]
listen = "{admin}"
"#
        );
        let gateway = tokio::task::block_in_place(|| Gateway::start_in(dir, &text, admin));
        Arena {
            gateway,
            tonic,
            listen,
            admin,
        }
    }

    /// The tonic backend's call count.
    fn backend_calls(&self) -> u64 {
        self.tonic
            .as_ref()
            .expect("an arena with its tonic backend")
            .calls()
    }

    fn rss_kib(&self) -> u64 {
        attack::rss_kib(self.gateway.pid())
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = tokio::task::block_in_place(|| http_get(self.admin, "/metrics"));
        metric(&text, name, labels).unwrap_or(0.0)
    }

    /// The gateway is still up, logged no panic, and grew by less than `max_growth_kib`.
    fn assert_healthy(&self, rss_before: u64, max_growth_kib: u64) {
        let logs = self.gateway.logs();
        assert!(
            !logs.iter().any(|l| l.contains("panicked")),
            "the gateway panicked; {}",
            log_with_panics_last(&logs)
        );
        let after = self.rss_kib();
        println!("gateway RSS {rss_before} KiB before, {after} KiB after");
        assert!(
            after < rss_before + max_growth_kib,
            "memory grew from {rss_before} to {after} KiB"
        );
    }
}

/// The bystander saw every call succeed, none slower than a stall would make it.
fn assert_undisturbed(report: &BystanderReport) {
    println!(
        "bystander: {} calls ok, {} failed, slowest {:?}",
        report.ok,
        report.failures.len(),
        report.slowest
    );
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.ok >= 20, "the bystander kept calling: {}", report.ok);
}

/// CVE-2023-44487: open and immediately reset streams, as fast as the socket takes them, on
/// two connections at a time; reconnect whenever the gateway closes one. The attackers run on their own
/// threads so they cannot starve the bystander inside this test process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_does_not_disturb_other_callers() {
    let _heavy = attack::HEAVY.lock().await;
    let arena = Arena::start("", LIMITS).await;
    let bystander = Bystander::start(arena.listen).await;
    let rss = arena.rss_kib();
    let listen = arena.listen;
    let attackers: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || rapid_reset(listen, Duration::from_secs(2))))
        .collect();
    let (mut streams, mut connections) = (0u64, 0u64);
    for a in attackers {
        let (s, c) = a.join().unwrap();
        streams += s;
        connections += c;
    }
    // Paced: each stream is sent and reset on its own, so the gateway has accepted it before the
    // reset arrives (the h2 library's own limit counts only resets of streams not yet
    // accepted); 2000 resets a second trip the listener's reset budget.
    let paced = std::thread::spawn(move || paced_reset(listen, 3000))
        .join()
        .unwrap();
    let report = bystander.finish().await;
    let closed = arena.metric(
        "strait_listener_rejected_total",
        &[("reason", "rapid_reset")],
    );
    println!(
        "rapid reset: {streams} streams opened and reset on {connections} connections; \
         paced: {paced} streams before the connection was closed; {closed} connections closed \
         by the reset budget; the backend saw {} calls",
        arena.backend_calls()
    );
    assert!(streams > 2000, "the attack ran: {streams}");
    assert!(
        connections > 2,
        "the gateway kept closing the attacking connections"
    );
    assert!(closed >= 1.0, "the paced attacker hit the reset budget");
    assert!(paced < 3000, "the paced attacker was cut off: {paced}");
    assert_undisturbed(&report);
    arena.assert_healthy(rss, 64 * 1024);
}

/// One connection: HEADERS, RST_STREAM, a quarter millisecond apart, up to `max` streams;
/// returns how many streams went out before the gateway closed the connection.
fn paced_reset(listen: SocketAddr, max: u32) -> u32 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let block = attack::request_block("/bench.Echo/Unary", &[]);
        let s = attack::open(listen).await.unwrap();
        let (mut read, mut write) = s.into_split();
        tokio::spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut read, &mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        for i in 0..max {
            let id = 2 * i + 1;
            let headers = attack::frame(attack::HEADERS, attack::END_HEADERS, id, &block);
            let reset = attack::frame(attack::RST_STREAM, 0, id, &8u32.to_be_bytes());
            if write.write_all(&headers).await.is_err() {
                return i;
            }
            tokio::time::sleep(Duration::from_micros(250)).await;
            if write.write_all(&reset).await.is_err() {
                return i;
            }
            tokio::time::sleep(Duration::from_micros(250)).await;
        }
        max
    })
}

/// One attacker: HEADERS then RST_STREAM for stream after stream, 50 pairs per write, until
/// `duration` ends; returns (streams, connections used).
fn rapid_reset(listen: SocketAddr, duration: Duration) -> (u64, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let deadline = Instant::now() + duration;
        let block = attack::request_block("/bench.Echo/Unary", &[]);
        let (mut streams, mut connections) = (0u64, 0u64);
        while Instant::now() < deadline {
            connections += 1;
            let Ok(s) = attack::open(listen).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let (mut read, mut write) = s.into_split();
            // Drain what the gateway sends so its writes never block.
            let drain = tokio::spawn(async move {
                let mut sink = vec![0u8; 64 * 1024];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut read, &mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            });
            let mut id = 1u32;
            'connection: while Instant::now() < deadline {
                let mut batch = Vec::new();
                for _ in 0..50 {
                    batch.extend(attack::frame(
                        attack::HEADERS,
                        attack::END_HEADERS,
                        id,
                        &block,
                    ));
                    batch.extend(attack::frame(
                        attack::RST_STREAM,
                        0,
                        id,
                        &8u32.to_be_bytes(),
                    ));
                    id += 2;
                }
                if write.write_all(&batch).await.is_err() {
                    break 'connection;
                }
                streams += 50;
            }
            drain.abort();
        }
        (streams, connections)
    })
}

/// An endless header block: HEADERS without END_HEADERS, then CONTINUATION frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off() {
    let _heavy = attack::HEAVY.lock().await;
    let arena = Arena::start("", LIMITS).await;
    let bystander = Bystander::start(arena.listen).await;
    let rss = arena.rss_kib();
    let mut sent_total = 0usize;
    for _ in 0..4 {
        let mut s = attack::open(arena.listen).await.unwrap();
        let block = attack::request_block("/bench.Echo/Unary", &[]);
        s.write_all(&attack::frame(attack::HEADERS, 0, 1, &block))
            .await
            .unwrap();
        let mut literal = Vec::new();
        attack::hpack_literal(b"x-flood", &vec![b'a'; 16_000], &mut literal);
        let continuation = attack::frame(attack::CONTINUATION, 0, 1, &literal);
        let mut sent = 0usize;
        // Up to 64 MiB; the gateway must end this long before.
        while sent < 64 << 20 {
            match tokio::time::timeout(Duration::from_secs(2), s.write_all(&continuation)).await {
                Ok(Ok(())) => sent += continuation.len(),
                _ => break,
            }
        }
        let (frames, closed) = attack::read_frames(&mut s, Duration::from_secs(3)).await;
        println!(
            "continuation flood: cut off after {} KiB, GOAWAY {:?}, closed {closed}",
            sent / 1024,
            attack::goaway_code(&frames)
        );
        assert!(sent < 64 << 20, "the gateway kept reading the header block");
        assert!(
            closed || attack::goaway_code(&frames).is_some(),
            "the connection was ended"
        );
        sent_total += sent;
    }
    let report = bystander.finish().await;
    assert!(sent_total > 0);
    assert_eq!(arena.backend_calls(), 0, "no flood reached the backend");
    assert_undisturbed(&report);
    arena.assert_healthy(rss, 64 * 1024);
}

/// Slowloris: the preface a byte at a time, and a HEADERS frame a byte at a time after a good
/// preface. The first are closed at `handshake_timeout`, the second at `idle_timeout` (here
/// shorter than `request_header_timeout`; the next test has it the other way round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed() {
    let _heavy = attack::HEAVY.lock().await;
    let arena = Arena::start("idle_timeout = \"2s\"", LIMITS).await;
    let bystander = Bystander::start(arena.listen).await;
    let rss = arena.rss_kib();
    let listen = arena.listen;
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..120 {
        slow.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
            let bytes: Vec<u8> = if i % 2 == 0 {
                attack::PREFACE.to_vec()
            } else {
                s.write_all(attack::PREFACE).await.unwrap();
                s.write_all(&attack::frame(attack::SETTINGS, 0, 0, &[]))
                    .await
                    .unwrap();
                let block = attack::request_block("/bench.Echo/Unary", &[]);
                attack::frame(attack::HEADERS, attack::END_HEADERS, 1, &block)
            };
            for b in bytes {
                if s.write_all(&[b]).await.is_err() {
                    return Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Every byte went through: the gateway waited for the whole drip.
            None
        }));
    }
    let mut closed_after = Vec::new();
    for t in slow {
        closed_after.push(t.await.unwrap().expect("a dripping connection was cut"));
    }
    closed_after.sort();
    println!(
        "slowloris: 120 connections closed after {:?} .. {:?}",
        closed_after[0],
        closed_after[closed_after.len() - 1]
    );
    // The 60 preface drips are cut at handshake_timeout and counted (the HEADERS drips after a
    // good preface are cut by the idle timeout, which has no rejection reason).
    let counted = tokio::task::block_in_place(|| {
        wait_metrics(arena.admin, Duration::from_secs(10), |m| {
            metric(
                m,
                "strait_listener_rejected_total",
                &[("reason", "handshake_timeout")],
            )
            .is_some_and(|n| n >= 60.0)
        })
    });
    assert!(
        counted.is_some(),
        "handshake timeouts: {}",
        arena.metric(
            "strait_listener_rejected_total",
            &[("reason", "handshake_timeout")]
        )
    );
    let report = bystander.finish().await;
    assert_undisturbed(&report);
    arena.assert_healthy(rss, 32 * 1024);
}

/// Slow request headers with the default hour-long idle timeout: a HEADERS frame dripped a
/// byte at a time after a good preface, and a HEADERS frame sent whole but whose block never
/// ends (no END_HEADERS, CONTINUATION dripped). Both are cut at `request_header_timeout` and
/// counted as `header_timeout`; connections that only exchanged SETTINGS and wait for their
/// first call are left alone and still answer a PING afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_headers_are_cut_but_quiet_connections_stay() {
    let _heavy = attack::HEAVY.lock().await;
    let limits = format!("{LIMITS}request_header_timeout = \"1s\"\n");
    let arena = Arena::start("", &limits).await;
    let bystander = Bystander::start(arena.listen).await;
    let listen = arena.listen;
    let mut quiet = Vec::new();
    for _ in 0..10 {
        quiet.push(attack::open(listen).await.unwrap());
    }
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..60 {
        slow.push(tokio::spawn(async move {
            let mut s = attack::open(listen).await.unwrap();
            let block = attack::request_block("/bench.Echo/Unary", &[]);
            let drip: Vec<u8> = if i % 2 == 0 {
                attack::frame(attack::HEADERS, attack::END_HEADERS, 1, &block)
            } else {
                let (first, rest) = block.split_at(block.len() / 2);
                s.write_all(&attack::frame(attack::HEADERS, 0, 1, first))
                    .await
                    .unwrap();
                attack::frame(attack::CONTINUATION, attack::END_HEADERS, 1, rest)
            };
            for b in drip {
                if s.write_all(&[b]).await.is_err() {
                    return Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // The whole frame went through: the gateway never cut it.
            let (_, closed) = attack::read_frames(&mut s, Duration::from_millis(500)).await;
            closed.then(|| started.elapsed())
        }));
    }
    let mut closed_after = Vec::new();
    for t in slow {
        closed_after.push(t.await.unwrap().expect("a dripped header block was cut"));
    }
    closed_after.sort();
    println!(
        "slow headers: 60 connections closed after {:?} .. {:?}",
        closed_after[0],
        closed_after[closed_after.len() - 1]
    );
    // Each dripped block is far longer than 1 s of bytes at 5 a second.
    assert!(
        closed_after[0] >= Duration::from_secs(1),
        "{:?}",
        closed_after[0]
    );
    let timeouts = tokio::task::block_in_place(|| {
        wait_metric(
            arena.admin,
            "strait_listener_rejected_total",
            &[("reason", "header_timeout")],
            60.0,
        )
    });
    assert_eq!(timeouts, Some(60.0));
    for mut s in quiet {
        s.write_all(&attack::frame(attack::PING, 0, 0, b"quiet-ok"))
            .await
            .unwrap();
        let (frames, closed) = attack::read_frames(&mut s, Duration::from_millis(300)).await;
        assert!(!closed, "a connection waiting between frames was closed");
        assert!(
            frames.iter().any(|f| f.0 == attack::PING && f.1 & 1 == 1),
            "no PING ack on a quiet connection: {frames:?}"
        );
    }
    let report = bystander.finish().await;
    assert_undisturbed(&report);
}

/// A bad request: path, extra headers, body, the expected grpc-status and message.
type BadRequest = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Bytes,
    &'static str,
    &'static str,
);

/// Bad requests end their own call with a gRPC status and leave the connection serving:
/// an oversized message, a truncated message, a bad grpc-timeout, a bad :path. Oversized headers
/// never reach the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_end_only_their_call() {
    let _heavy = attack::HEAVY.lock().await;
    let arena = Arena::start("", LIMITS).await;
    let bystander = Bystander::start(arena.listen).await;
    let rss = arena.rss_kib();
    let tcp = tokio::net::TcpStream::connect(arena.listen).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let cases: [BadRequest; 5] = [
        (
            "/bench.Echo/Unary",
            vec![],
            grpc_frame(&vec![1u8; 80 * 1024]),
            "8",
            "larger than this listener's max_message_size",
        ),
        (
            "/bench.Echo/Unary",
            vec![],
            Bytes::from_static(&[0, 0, 0, 1, 0, b'a', b'b']),
            "13",
            "ended inside a gRPC message",
        ),
        (
            "/bench.Echo/Unary",
            vec![("grpc-timeout", "-1S")],
            grpc_frame(b"x"),
            "3",
            "malformed grpc-timeout",
        ),
        (
            "/not-grpc",
            vec![],
            grpc_frame(b"x"),
            "12",
            "malformed gRPC path",
        ),
        ("/bench.Echo/Unary", vec![], grpc_frame(b""), "0", ""),
    ];
    for (path, headers, body, code, message) in cases {
        let sent = raw::send(client.clone(), arena.listen, path, &headers, body);
        let response = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .unwrap_or_else(|_| panic!("no answer to {path} {headers:?}"))
            .expect("answered on the same connection");
        assert_eq!(
            response.grpc_status().as_deref(),
            Some(code),
            "{path} {response:?}"
        );
        assert!(
            response
                .grpc_message()
                .unwrap_or_default()
                .contains(message),
            "{response:?}"
        );
    }

    // A 32 KiB header against a 16 KiB header list limit, in raw frames (h2 will not send it).
    let calls_before = arena.backend_calls();
    let mut s = attack::open(arena.listen).await.unwrap();
    let block = attack::request_block("/bench.Echo/Unary", &[(b"x-big", &vec![b'b'; 32 * 1024])]);
    let mut chunks = block.chunks(16 * 1024).peekable();
    let first = chunks.next().unwrap();
    s.write_all(&attack::frame(
        attack::HEADERS,
        attack::END_STREAM,
        1,
        first,
    ))
    .await
    .unwrap();
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            attack::END_HEADERS
        } else {
            0
        };
        s.write_all(&attack::frame(attack::CONTINUATION, flags, 1, chunk))
            .await
            .unwrap();
    }
    let (frames, closed) = attack::read_frames(&mut s, Duration::from_secs(2)).await;
    let kinds: Vec<u8> = frames.iter().map(|f| f.0).collect();
    println!("oversized headers: frames {kinds:?}, closed {closed}");
    assert!(
        closed
            || kinds.contains(&attack::RST_STREAM)
            || kinds.contains(&attack::GOAWAY)
            || kinds.contains(&attack::HEADERS),
        "the oversized request got an answer: {kinds:?}"
    );
    assert_eq!(
        arena.backend_calls(),
        calls_before,
        "it never reached the backend"
    );

    // Garbage on the gRPC port: the connection is closed. HTTP/1.1: a readable refusal.
    let mut s = tokio::net::TcpStream::connect(arena.listen).await.unwrap();
    s.write_all(b"\x16\x03\x01\x00\xff garbage garbage garbage garbage")
        .await
        .unwrap();
    let (_, closed) = attack::read_frames(&mut s, Duration::from_secs(3)).await;
    assert!(closed, "garbage left the connection open");
    let mut s = tokio::net::TcpStream::connect(arena.listen).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read(&mut s, &mut answer),
    )
    .await
    .expect("an answer")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 505"), "{answer}");
    // ... and the connection is closed: a non-gRPC client cannot park on a connection slot.
    let (_, closed) = attack::read_frames(&mut s, Duration::from_secs(3)).await;
    assert!(
        closed,
        "the HTTP/1.1 connection stayed open after the refusal"
    );

    let report = bystander.finish().await;
    assert_undisturbed(&report);
    arena.assert_healthy(rss, 32 * 1024);
}

/// TLS: connections that never finish the handshake are closed at `handshake_timeout`; a real
/// TLS caller still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_that_never_finish_are_closed() {
    let _heavy = attack::HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = strait_tests::tls::generate(dir.path());
    let arena = Arena::start_in(
        dir,
        "tls = { cert = \"server.crt\", key = \"server.key\" }",
        LIMITS,
    )
    .await;
    let rss = arena.rss_kib();
    let listen = arena.listen;
    let started = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..60 {
        stalled.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
            if i % 2 == 0 {
                // The start of a ClientHello record, then nothing.
                s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                    .await
                    .unwrap();
            }
            let (_, closed) = attack::read_frames(&mut s, Duration::from_secs(5)).await;
            (closed, started.elapsed())
        }));
    }
    // A complete TLS handshake, then no HTTP/2 preface: closed at the same deadline.
    let mut silent = Vec::new();
    for _ in 0..20 {
        let ca = pki.ca_pem.clone();
        silent.push(tokio::spawn(async move {
            let mut tls = attack::tls_connect(listen, &ca)
                .await
                .expect("TLS handshake");
            let mut buf = [0u8; 64];
            let outcome = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::io::AsyncReadExt::read(&mut tls, &mut buf),
            )
            .await;
            (matches!(outcome, Ok(Ok(0)) | Ok(Err(_))), started.elapsed())
        }));
    }
    // Each waits 5 s at most for the close (handshake_timeout is 1 s): a generous bound that
    // says "never closed", not a latency figure.
    for t in silent {
        let (closed, after) = t.await.unwrap();
        assert!(closed, "silent TLS client still open after {after:?}");
    }
    for t in stalled {
        let (closed, after) = t.await.unwrap();
        assert!(closed, "stalled handshake still open after {after:?}");
    }
    let timeouts = tokio::task::block_in_place(|| {
        wait_metric(
            arena.admin,
            "strait_listener_rejected_total",
            &[("reason", "handshake_timeout")],
            80.0,
        )
    })
    .unwrap_or(0.0);
    assert_eq!(
        timeouts, 80.0,
        "60 unfinished handshakes, 20 silent clients"
    );
    let channel =
        tonic::transport::Channel::from_shared(format!("https://localhost:{}", listen.port()))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .expect("a real TLS client gets in");
    let reply = strait_tests::pb::echo_client::EchoClient::new(channel)
        .unary(strait_tests::pb::EchoRequest::default())
        .await
        .expect("and is served");
    assert_eq!(reply.into_inner().served_by, "a");
    arena.assert_healthy(rss, 32 * 1024);
}

/// Beyond `max_connections` new connections are closed at once and counted; connections already
/// open keep working, and room frees up when connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_cleanly() {
    let _heavy = attack::HEAVY.lock().await;
    let arena = Arena::start(
        "",
        &LIMITS.replace("max_connections = 200", "max_connections = 50"),
    )
    .await;
    let bystander = Bystander::start(arena.listen).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..70 {
        // A refused connection is closed at once: writing to it may already fail.
        let Ok(mut s) = attack::open(arena.listen).await else {
            refused += 1;
            continue;
        };
        match attack::first_event(&mut s, Duration::from_secs(5)).await {
            Some(true) => held.push(s),
            Some(false) => refused += 1,
            None => panic!("the gateway neither served nor refused a connection"),
        }
    }
    println!("max_connections 50: {} held, {refused} refused", held.len());
    assert_eq!(held.len(), 49, "the bystander holds the 50th");
    assert_eq!(refused, 21);
    assert_eq!(
        arena.metric(
            "strait_listener_rejected_total",
            &[("reason", "max_connections")]
        ),
        21.0
    );
    drop(held);
    // Only the bystander's connection is left once the gateway has seen the others close.
    let left = tokio::task::block_in_place(|| {
        wait_metric(
            arena.admin,
            "strait_listener_connections",
            &[("listener", "public")],
            1.0,
        )
    });
    assert_eq!(left, Some(1.0));
    let mut s = attack::open(arena.listen).await.unwrap();
    assert_eq!(
        attack::first_event(&mut s, Duration::from_secs(5)).await,
        Some(true),
        "room again once connections closed"
    );
    let report = bystander.finish().await;
    assert_undisturbed(&report);
}

/// 1000 idle HTTP/2 connections: what each costs (the 10,000-connection figure is in
/// docs/benchmarks.md, from benches/idle_h2.sh). An idle connection holds no h2 read, write
/// or HPACK buffer and no handshake state (issue #14): about 10 KiB each in this debug build,
/// 41 KiB before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cost_bounded_memory() {
    let _heavy = attack::HEAVY.lock().await;
    let arena = Arena::start(
        "",
        &LIMITS.replace("max_connections = 200", "max_connections = 5000"),
    )
    .await;
    let before = arena.rss_kib();
    let mut held = Vec::new();
    for _ in 0..1000 {
        let mut s = attack::open(arena.listen).await.unwrap();
        assert_eq!(
            attack::first_event(&mut s, Duration::from_secs(5)).await,
            Some(true),
            "the gateway answers each connection"
        );
        s.write_all(&attack::frame(attack::SETTINGS, 0x1, 0, &[]))
            .await
            .unwrap();
        held.push(s);
    }
    // Every connection has been accepted and answered; RSS is read once the gauge agrees.
    let open = tokio::task::block_in_place(|| {
        wait_metric(
            arena.admin,
            "strait_listener_connections",
            &[("listener", "public")],
            1000.0,
        )
    });
    assert_eq!(open, Some(1000.0));
    let after = arena.rss_kib();
    let per = (after.saturating_sub(before)) as f64 / 1000.0;
    println!("1000 idle HTTP/2 connections: {before} -> {after} KiB, {per:.1} KiB each");
    assert!(per < 20.0, "{per:.1} KiB per idle connection");
}

/// A log collector that stops reading (stderr a full pipe) must not stall the gateway: with
/// `STRAIT_LOG=debug` every call writes lines, the pipe fills within a few hundred calls, and
/// the gateway drops (and counts) lines instead of blocking its workers. Once the pipe is
/// read again, logging resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_stderr_stalls_nothing() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = format!(
        "[gateway]\nthreads = 2\n\n[[listener]]\nname = \"public\"\nlisten = \"{listen}\"\n\n\
         [[route]]\nlistener = \"public\"\nservice = \"*\"\nupstream = \"echo\"\n\n\
         [[upstream]]\nname = \"echo\"\nendpoints = [{{ addr = \"{}\" }}]\n\n\
         [admin]\nlisten = \"{admin}\"\n",
        backend.addr
    );
    let gateway = tokio::task::block_in_place(|| {
        Gateway::start_logging(tempfile::tempdir().unwrap(), &text, admin, "debug")
    });
    gateway.pause_logs();
    let bystander = Bystander::start(listen).await;
    // Busy callers, each call a few debug lines: far more than a pipe holds.
    let callers: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = crate::fixture::client(listen).await;
                let mut ok = 0;
                for _ in 0..300 {
                    let call = c.unary(crate::fixture::req(b"log me"));
                    match tokio::time::timeout(attack::STALL, call).await {
                        Ok(Ok(_)) => ok += 1,
                        // A stalled gateway: stop here rather than wait out every call.
                        Err(_) => break,
                        Ok(Err(_)) => {}
                    }
                }
                ok
            })
        })
        .collect();
    let mut served = 0;
    for caller in callers {
        served += caller.await.unwrap();
    }
    assert_eq!(
        served,
        8 * 300,
        "every call served while stderr was blocked"
    );
    let dropped = |m: &str| metric(m, "strait_log_lines_dropped_total", &[]);
    let text = tokio::task::block_in_place(|| {
        wait_metrics(admin, Duration::from_secs(20), |m| {
            dropped(m).is_some_and(|n| n > 0.0)
        })
    })
    .expect("lines were dropped and counted");
    let dropped = dropped(&text);
    let report = bystander.finish().await;
    assert_undisturbed(&report);
    println!("log lines dropped while stderr was blocked: {dropped:?}");
    gateway.resume_logs();
    crate::fixture::client(listen)
        .await
        .unary(crate::fixture::req(b"after"))
        .await
        .expect("served after the pipe drains");
    let resumed = tokio::task::block_in_place(|| {
        gateway.wait_for_log(&["call finished"], Duration::from_secs(20))
    });
    assert!(
        resumed.is_some(),
        "logging resumes once stderr is read again"
    );
}

/// Writes the first 32 bytes of an HTTP/1.1 request head at once (past the h2c listener's
/// 24-byte sniff and its handshake deadline), then one byte per 200 ms; how long after
/// `started` the gateway cut the connection (a failed write or EOF), `None` when the whole
/// head went through.
async fn drip_http1_head<S>(mut s: S, started: Instant) -> Option<Duration>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let head = b"POST /bench.Echo/Unary HTTP/1.1\r\nHost: strait.test\r\nContent-Type: application/grpc\r\n\r\n";
    let (burst, drip) = head.split_at(32);
    if s.write_all(burst).await.is_err() {
        return Some(started.elapsed());
    }
    for b in drip {
        if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// An HTTP/1.1 request head dripped a byte at a time, on an h2c listener and over TLS with
/// ALPN `http/1.1`, is cut at `request_header_timeout` exactly like a dripped HTTP/2 header
/// block, and counted as `header_timeout` (pingora's HTTP/1 reader alone would wait 60 s per
/// read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http1_heads_are_cut_on_h2c_and_tls() {
    let _heavy = attack::HEAVY.lock().await;
    let limits = format!("{LIMITS}request_header_timeout = \"1s\"\n");
    let h2c = Arena::start("", &limits).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = strait_tests::tls::generate(dir.path());
    let tls = Arena::start_in(
        dir,
        "tls = { cert = \"server.crt\", key = \"server.key\" }",
        &limits,
    )
    .await;
    let started = Instant::now();
    let mut cut = Vec::new();
    for _ in 0..5 {
        let listen = h2c.listen;
        cut.push(tokio::spawn(async move {
            let s = tokio::net::TcpStream::connect(listen).await.unwrap();
            drip_http1_head(s, started).await
        }));
        let (listen, ca) = (tls.listen, pki.ca_pem.clone());
        cut.push(tokio::spawn(async move {
            let s = attack::tls_connect_alpn(listen, &ca, b"http/1.1")
                .await
                .expect("TLS handshake with ALPN http/1.1");
            drip_http1_head(s, started).await
        }));
    }
    let mut after = Vec::new();
    for t in cut {
        after.push(t.await.unwrap().expect("a dripped HTTP/1.1 head was cut"));
    }
    after.sort();
    println!(
        "slow HTTP/1.1 heads: 10 connections cut after {:?} .. {:?}",
        after[0],
        after[after.len() - 1]
    );
    // The rest of the head takes 11 s to drip: cut at the 1 s timeout, not after it went
    // through.
    assert!(after[0] >= Duration::from_secs(1), "{:?}", after[0]);
    assert!(
        after[after.len() - 1] < Duration::from_secs(10),
        "{after:?}"
    );
    for arena in [&h2c, &tls] {
        let timeouts = tokio::task::block_in_place(|| {
            wait_metric(
                arena.admin,
                "strait_listener_rejected_total",
                &[("reason", "header_timeout")],
                5.0,
            )
        });
        assert_eq!(timeouts, Some(5.0));
    }
}

/// Not only the first: on a kept-alive HTTP/1.1 connection (gRPC-Web), a request served in
/// full and then a second head dripped a byte at a time: the second is cut at
/// `request_header_timeout` too (issue #34 item 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_second_http1_head_on_a_kept_alive_connection_is_cut() {
    use tokio::io::AsyncReadExt;
    let _heavy = attack::HEAVY.lock().await;
    let limits = format!("{LIMITS}request_header_timeout = \"1s\"\n");
    let arena = Arena::start("grpc_web = true", &limits).await;
    let mut s = tokio::net::TcpStream::connect(arena.listen).await.unwrap();
    let body = grpc_frame(&[]);
    let head = format!(
        "POST /bench.Echo/Unary HTTP/1.1\r\nHost: strait.test\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    // The answer ends with the gRPC-Web trailer frame, which carries grpc-status.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&answer).contains("grpc-status") {
        assert!(Instant::now() < deadline, "no answer to the first request");
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the first request is answered")
            .unwrap();
        assert!(n > 0, "the connection stays open after the first answer");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let started = Instant::now();
    let cut = drip_http1_head(s, started)
        .await
        .expect("the dripped second head was cut");
    println!("second HTTP/1.1 head: cut after {cut:?}");
    assert!(cut >= Duration::from_secs(1), "{cut:?}");
    assert!(cut < Duration::from_secs(10), "{cut:?}");
    let timeouts = tokio::task::block_in_place(|| {
        wait_metric(
            arena.admin,
            "strait_listener_rejected_total",
            &[("reason", "header_timeout")],
            1.0,
        )
    });
    assert_eq!(timeouts, Some(1.0));
}

/// Issue #34 item 12: a stream flood. A client opens hundreds of streaming calls at once,
/// never reads a byte of them, and goes away; round after round. Each time the gateway cancels
/// every one of those calls upstream while the backend is still sending, on the upstream
/// connection the well-behaved caller's calls share. Neither the gateway's own HTTP/2 client
/// (which counts frames arriving for streams it already reset) nor the backend may then give
/// up on that connection, and a call the backend never saw is sent again on a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_costs_the_shared_upstream_connection_nothing() {
    let _heavy = attack::HEAVY.lock().await;
    let arena = Arena::start("", LIMITS).await;
    flood_beside_a_bystander(&arena, arena.listen).await;
    println!("the tonic backend saw {} calls", arena.backend_calls());
}

/// The same flood in front of a gRPC C-core backend (Python grpcio), whose HTTP/2 stack has
/// its own view of a client that resets many streams: the gateway's cancellations must not
/// make it give up on the connection the bystander's calls share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_in_front_of_a_c_core_backend_costs_others_nothing() {
    let _heavy = attack::HEAVY.lock().await;
    let ccore = tokio::task::block_in_place(CCoreBackend::start);
    let arena = Arena::in_front_of(ccore.addr, "", LIMITS);
    flood_beside_a_bystander(&arena, arena.listen).await;
}

/// Floods `listen` (8 rounds of 4 connections x 100 streams) while a bystander calls; the
/// bystander must see every call succeed and the gateway stay healthy.
async fn flood_beside_a_bystander(arena: &Arena, listen: SocketAddr) {
    let bystander = Bystander::start(listen).await;
    let rss = arena.rss_kib();
    let flood = std::thread::spawn(move || stream_flood(listen, 8, 4, 100))
        .join()
        .unwrap();
    let report = bystander.finish().await;
    println!(
        "stream flood: {} rounds, {} streams opened, {} of them answered before the client left",
        flood.rounds, flood.opened, flood.answered,
    );
    assert!(
        flood.answered >= flood.opened / 2,
        "the flood reached the backend: {flood:?}"
    );
    assert_undisturbed(&report);
    arena.assert_healthy(rss, 64 * 1024);
}

#[derive(Debug, Default)]
struct FloodReport {
    rounds: u32,
    opened: u64,
    answered: u64,
}

/// `rounds` times: `connections` h2 connections each open `streams` server-streaming calls
/// that would run for minutes, wait (bounded) until the gateway has answered their headers,
/// then drop everything without ever reading a message or granting flow-control window.
fn stream_flood(listen: SocketAddr, rounds: u32, connections: u32, streams: u32) -> FloodReport {
    use prost::Message;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let body = grpc_frame(
            &strait_tests::pb::EchoRequest {
                payload: vec![7u8; 512],
                reply_count: 1_000_000,
                delay_ms: 2,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let mut report = FloodReport::default();
        for _ in 0..rounds {
            report.rounds += 1;
            let mut held = Vec::new();
            let mut pending = Vec::new();
            for _ in 0..connections {
                let tcp = tokio::net::TcpStream::connect(listen)
                    .await
                    .expect("connect");
                let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
                held.push(tokio::spawn(async move {
                    let _ = connection.await;
                }));
                for _ in 0..streams {
                    let Ok(mut ready) = client.clone().ready().await else {
                        break;
                    };
                    let request = http::Request::builder()
                        .method("POST")
                        .uri(format!("http://{listen}/bench.Echo/ServerStream"))
                        .header("content-type", "application/grpc")
                        .header("te", "trailers")
                        .body(())
                        .unwrap();
                    let Ok((response, mut send)) = ready.send_request(request, false) else {
                        break;
                    };
                    let _ = send.send_data(body.clone(), true);
                    report.opened += 1;
                    pending.push(response);
                }
            }
            // The gateway has opened the calls upstream once their headers come back.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut answered = Vec::new();
            for response in pending {
                if let Ok(Ok(r)) = tokio::time::timeout_at(deadline, response).await {
                    report.answered += 1;
                    answered.push(r);
                }
            }
            // Let the backend stream into the stalled calls for a moment, then leave.
            tokio::time::sleep(Duration::from_millis(200)).await;
            for task in held {
                task.abort();
            }
            drop(answered);
        }
        report
    })
}
