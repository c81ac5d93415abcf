//! Streaming promises beyond the basic call kinds: TLS on both sides with big and long
//! streams, message limits on later messages, and exact metrics for streams.

use std::time::{Duration, Instant};

use strait_tests::net::{free_addr, metric, wait_metrics};
use strait_tests::pb::echo_client::EchoClient;
use strait_tests::pb::EchoRequest;
use strait_tests::{tls, Backend, BackendOptions, Gateway, MAX_MESSAGE};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Code;

use crate::fixture::{req, single_backend_config, tls_listener_config, PingPong, Setup};

const MIB: usize = 1024 * 1024;

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i + seed) % 251) as u8).collect()
}

/// TLS from the caller to the gateway and from the gateway to the backend: bidi ping-pong,
/// 4 MiB messages both ways, and 32 MiB each way through flow control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_sides_carries_big_and_long_streams() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::generate(dir.path());
    let backend = Backend::start(BackendOptions {
        tls: Some((
            std::fs::read_to_string(&pki.server_cert).unwrap(),
            std::fs::read_to_string(&pki.server_key).unwrap(),
        )),
        ..BackendOptions::named("tls-backend")
    })
    .await;
    let listen = free_addr();
    let ca = pki.ca_cert.display().to_string();
    let text = tls_listener_config(
        listen,
        backend.addr,
        "cert = \"server.crt\", key = \"server.key\"",
    )
    .replace(
        "max_attempts = 3",
        &format!("max_attempts = 3\ntls = {{ ca = \"{ca}\", server_name = \"localhost\" }}"),
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start_in(dir, &text, listen));
    let channel = Channel::from_shared(format!("https://localhost:{}", listen.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&pki.ca_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS to the gateway");
    let mut client = EchoClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);

    let mut stream = PingPong::on(client.clone()).await;
    for _ in 0..20 {
        assert_eq!(stream.ping().await, "tls-backend");
    }
    stream.finish().await;

    let big = pattern(4 * MIB, 0);
    let reply = client
        .unary(req(&big))
        .await
        .expect("4 MiB unary")
        .into_inner();
    assert!(reply.payload == big, "4 MiB arrives byte for byte");

    // 32 MiB up: 32 messages of 1 MiB, far more than any flow-control window.
    let up: Vec<EchoRequest> = (0..32).map(|i| req(&pattern(MIB, i))).collect();
    let reply = client
        .client_stream(tokio_stream::iter(up))
        .await
        .expect("32 MiB up")
        .into_inner();
    assert_eq!(reply.received, 32);
    assert!(reply.payload == pattern(MIB, 31), "the last message intact");

    // 32 MiB down: 8 replies of 4 MiB, read slowly so the windows fill and drain.
    let request = EchoRequest {
        payload: big.clone(),
        reply_count: 8,
        ..Default::default()
    };
    let mut replies = client
        .server_stream(request)
        .await
        .expect("32 MiB down")
        .into_inner();
    let mut got = 0;
    while let Some(reply) = replies.next().await {
        let reply = reply.expect("reply ok");
        assert_eq!(reply.seq, got);
        assert!(reply.payload == big);
        got += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, 8);
}

/// `max_message_size` applies to every message of a stream, not only the first: the second,
/// too large, message ends that stream with RESOURCE_EXHAUSTED (after the first reply went
/// out); the connection and its next call are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_limit_applies_to_later_messages_of_a_stream() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    drop(setup.gateway);
    let listen = free_addr();
    let text = single_backend_config(listen, setup.backends[0].addr).replace(
        &format!("listen = \"{listen}\""),
        &format!("listen = \"{listen}\"\n[listener.limits]\nmax_message_size = 4096"),
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut client = crate::fixture::client(listen).await;

    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let mut replies = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("bidi starts")
        .into_inner();
    tx.send(req(&[1u8; 1000])).await.unwrap();
    let first = replies.next().await.expect("a reply").expect("first ok");
    assert_eq!(first.payload.len(), 1000);
    tx.send(req(&[2u8; 8000])).await.unwrap();
    let status = replies
        .next()
        .await
        .expect("the stream ends with a status")
        .expect_err("the second message is too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_message_size"), "{status:?}");

    // Client streaming: the limit holds for the third message as well.
    let messages = vec![req(&[0u8; 100]), req(&[0u8; 100]), req(&[0u8; 5000])];
    let status = client
        .client_stream(tokio_stream::iter(messages))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let reply = client
        .unary(req(b"still here"))
        .await
        .expect("next call ok");
    assert_eq!(reply.into_inner().payload, b"still here");
}

/// Streams are counted exactly: codes taken from trailers, one duration sample each, and the
/// in-flight gauge back to 0 after callers cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_metrics_are_exact() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = format!(
        "{}\n[admin]\nlisten = \"{admin}\"\n",
        single_backend_config(listen, backend.addr)
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut client = crate::fixture::client(listen).await;
    for _ in 0..3 {
        let request = EchoRequest {
            reply_count: 3,
            ..Default::default()
        };
        let mut s = client.server_stream(request).await.unwrap().into_inner();
        let mut n = 0;
        while let Some(item) = s.next().await {
            item.expect("ok reply");
            n += 1;
        }
        assert_eq!(n, 3);
    }
    for _ in 0..2 {
        // Two replies, then NOT_FOUND in the trailers.
        let request = EchoRequest {
            reply_count: 2,
            fail_code: Code::NotFound as i32,
            fail_message: "gone".into(),
            ..Default::default()
        };
        let mut s = client.server_stream(request).await.unwrap().into_inner();
        assert!(s.next().await.unwrap().is_ok());
        assert!(s.next().await.unwrap().is_ok());
        let status = s.next().await.unwrap().expect_err("NOT_FOUND in trailers");
        assert_eq!(status.code(), Code::NotFound);
    }
    for _ in 0..2 {
        // Cancelled by the caller mid-stream.
        let mut stream = PingPong::on(client.clone()).await;
        stream.ping().await;
        stream.cancel();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.active() != 0 {
        assert!(Instant::now() < deadline, "cancelled streams still run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let labels = |method: &'static str, code: &'static str| {
        [
            ("listener", "public"),
            ("route", "bench.Echo"),
            ("upstream", "echo"),
            ("service", "bench.Echo"),
            ("method", method),
            ("code", code),
        ]
    };
    let text = tokio::task::block_in_place(|| {
        wait_metrics(admin, Duration::from_secs(10), |m| {
            metric(m, "strait_calls_in_flight", &[("listener", "public")]) == Some(0.0)
                && metric(m, "strait_calls_total", &labels("Bidi", "CANCELLED")) == Some(2.0)
        })
    });
    let text = text.unwrap_or_else(|| {
        tokio::task::block_in_place(|| strait_tests::net::http_get(admin, "/metrics").1)
    });
    assert_eq!(
        metric(&text, "strait_calls_in_flight", &[("listener", "public")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "strait_calls_total", &labels("ServerStream", "OK")),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &text,
            "strait_calls_total",
            &labels("ServerStream", "NOT_FOUND")
        ),
        Some(2.0),
        "the status from the trailers"
    );
    assert_eq!(
        metric(&text, "strait_calls_total", &labels("Bidi", "CANCELLED")),
        Some(2.0),
        "{text}"
    );
    let per_method = |name: &str, method: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![
            ("upstream", "echo"),
            ("service", "bench.Echo"),
            ("method", method),
        ];
        labels.extend_from_slice(extra);
        metric(&text, name, &labels)
    };
    // One duration sample per call, whatever its code.
    assert_eq!(
        per_method("strait_call_duration_seconds_count", "ServerStream", &[]),
        Some(5.0)
    );
    assert_eq!(
        per_method("strait_call_duration_seconds_count", "Bidi", &[]),
        Some(2.0)
    );
    // Messages: 5 requests (one per server-stream call), 3 x 3 + 2 x 2 replies; each
    // cancelled bidi sent one ping and got its pong.
    let messages = |method: &str, direction: &str| {
        per_method("strait_messages_total", method, &[("direction", direction)])
    };
    assert_eq!(messages("ServerStream", "request"), Some(5.0));
    assert_eq!(messages("ServerStream", "response"), Some(13.0));
    assert_eq!(messages("Bidi", "request"), Some(2.0), "{text}");
    assert_eq!(messages("Bidi", "response"), Some(2.0));
}
