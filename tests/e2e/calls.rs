//! The four call kinds, message sizes, metadata, trailers and every status code pass through.

use std::time::Duration;

use strait_tests::pb::echo_client::EchoClient;
use strait_tests::pb::{EchoReply, EchoRequest};
use strait_tests::raw;
use tokio_stream::StreamExt;
use tonic::metadata::{BinaryMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::fixture::{req, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_call_is_forwarded() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;
    let reply = client
        .unary(req(b"hello"))
        .await
        .expect("unary ok")
        .into_inner();
    assert_eq!(reply.payload, b"hello");
    assert_eq!(reply.served_by, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_streaming_call_is_forwarded() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;
    let messages: Vec<EchoRequest> = (0..25u8).map(|i| req(&[i; 100])).collect();
    let reply = client
        .client_stream(tokio_stream::iter(messages))
        .await
        .expect("client stream ok")
        .into_inner();
    assert_eq!(reply.received, 25);
    assert_eq!(reply.payload, vec![24u8; 100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_call_is_forwarded() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;
    let request = EchoRequest {
        payload: b"s".to_vec(),
        reply_count: 40,
        ..Default::default()
    };
    let mut stream = client
        .server_stream(request)
        .await
        .expect("stream starts")
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(reply) = stream.next().await {
        seqs.push(reply.expect("stream item").seq);
    }
    assert_eq!(seqs, (0..40).collect::<Vec<_>>());
}

/// Each side waits for the other: only a truly full-duplex proxy gets through this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_ping_pong_is_full_duplex() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
    tx.send(req(b"ping-0")).await.unwrap();
    let mut replies = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("bidi starts")
        .into_inner();
    for round in 0..20 {
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("reply arrives while the request stream is still open")
            .expect("stream not ended")
            .expect("reply ok");
        assert_eq!(reply.payload, format!("ping-{round}").into_bytes());
        if round < 19 {
            tx.send(req(format!("ping-{}", round + 1).as_bytes()))
                .await
                .unwrap();
        }
    }
    drop(tx);
    assert!(
        replies.next().await.is_none(),
        "stream ends after the client half-closes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_four_mebibyte_messages_pass() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;
    let empty = client.unary(req(b"")).await.expect("empty ok").into_inner();
    assert!(empty.payload.is_empty());

    let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = client
        .unary(req(&big))
        .await
        .expect("4 MiB unary ok")
        .into_inner();
    assert_eq!(reply.payload.len(), big.len());
    assert!(reply.payload == big, "payload arrives byte for byte");

    let stream = tokio_stream::iter(vec![req(&big), req(&big)]);
    let mut replies = client.bidi(stream).await.expect("bidi starts").into_inner();
    let mut count = 0;
    while let Some(reply) = replies.next().await {
        assert!(reply.expect("reply ok").payload == big);
        count += 1;
    }
    assert_eq!(count, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_trailers_pass_both_ways() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;

    // Request metadata (ASCII and -bin) reaches the backend and comes back in response headers.
    let mut request = Request::new(req(b"m"));
    request
        .metadata_mut()
        .insert("x-echo-color", MetadataValue::from_static("blue"));
    request.metadata_mut().insert_bin(
        "x-echo-blob-bin",
        BinaryMetadataValue::from_bytes(&[0, 159, 255, 10]),
    );
    let response = client.unary(request).await.expect("unary ok");
    assert_eq!(response.metadata().get("x-echo-color").unwrap(), "blue");
    assert_eq!(
        response
            .metadata()
            .get_bin("x-echo-blob-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        &[0, 159, 255, 10]
    );

    // Trailers after a streamed response: status, message, details and custom trailers.
    let mut request = Request::new(EchoRequest {
        reply_count: 3,
        fail_code: Code::Aborted as i32,
        fail_message: "stopped after three".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-echo-trace", MetadataValue::from_static("t-42"));
    let mut stream = client
        .server_stream(request)
        .await
        .expect("stream starts")
        .into_inner();
    let mut replies = 0;
    let status = loop {
        match stream.next().await {
            Some(Ok(_)) => replies += 1,
            Some(Err(status)) => break status,
            None => panic!("stream ended without the error status"),
        }
    };
    assert_eq!(replies, 3);
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "stopped after three");
    assert_eq!(
        status.details(),
        strait_tests::echo::status_details(10, "stopped after three")
    );
    assert_eq!(
        status.metadata().get("x-trailer-custom").unwrap(),
        "present"
    );
    assert_eq!(status.metadata().get("x-trailer-trace").unwrap(), "t-42");
}

/// Header blocks larger than one HTTP/2 frame (16 KiB) need CONTINUATION frames in all four
/// directions: client to gateway, gateway to backend and back. The vendored h2 gives its write
/// buffer back after every write, so this is the path where a CONTINUATION is encoded into a
/// buffer that was just released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_larger_than_a_frame_passes_both_ways() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;
    // Alphanumeric noise: Huffman coding barely shrinks it, and each value is too big for the
    // HPACK table, so six of them encode to about 36 KiB: a HEADERS frame and two CONTINUATIONs
    // (the second one is encoded after the first has been written).
    let value = |seed: u64| -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..8 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
            })
            .collect()
    };
    let values: Vec<String> = (1..=6).map(value).collect();
    let with_padding = |request: EchoRequest| {
        let mut request = Request::new(request);
        for (i, v) in values.iter().enumerate() {
            request.metadata_mut().insert(
                tonic::metadata::AsciiMetadataKey::from_bytes(format!("x-echo-pad-{i}").as_bytes())
                    .unwrap(),
                MetadataValue::try_from(v.as_str()).unwrap(),
            );
        }
        request
    };

    for round in 0..3 {
        let response = client
            .unary(with_padding(req(b"big headers")))
            .await
            .unwrap_or_else(|s| panic!("round {round}: unary with 48 KiB of metadata: {s:?}"));
        for (i, v) in values.iter().enumerate() {
            let echoed = response
                .metadata()
                .get(format!("x-echo-pad-{i}"))
                .map(|m| m.to_str().unwrap());
            assert_eq!(
                echoed,
                Some(v.as_str()),
                "round {round}: response header {i}"
            );
        }
        assert_eq!(response.into_inner().payload, b"big headers");

        // And in trailers: a failing call has its x-echo-* copied into x-trailer-*.
        let status = client
            .unary(with_padding(EchoRequest {
                fail_code: Code::FailedPrecondition as i32,
                fail_message: "big trailers".into(),
                ..Default::default()
            }))
            .await
            .expect_err("the backend fails the call");
        assert_eq!(status.code(), Code::FailedPrecondition, "round {round}");
        assert_eq!(status.message(), "big trailers");
        for (i, v) in values.iter().enumerate() {
            let echoed = status
                .metadata()
                .get(format!("x-trailer-pad-{i}"))
                .map(|m| m.to_str().unwrap());
            assert_eq!(echoed, Some(v.as_str()), "round {round}: trailer {i}");
        }
    }
    assert_eq!(setup.backend("a").calls(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_arrives_with_its_message() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;
    for code in 1..=16 {
        let message = format!("failure {code}: naïve ünïcode % done");
        let status = client
            .unary(EchoRequest {
                fail_code: code,
                fail_message: message.clone(),
                ..Default::default()
            })
            .await
            .expect_err("backend fails the call");
        assert_eq!(status.code() as i32, code, "code {code}");
        assert_eq!(status.message(), message, "message of code {code}");
        assert_eq!(
            status.details(),
            strait_tests::echo::status_details(code, &message)
        );
    }
}

/// A backend's trailers-only answer reaches the caller as one HEADERS frame with END_STREAM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_only_response_stays_trailers_only() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let body = raw::grpc_frame(&prost::Message::encode_to_vec(&EchoRequest {
        fail_code: Code::NotFound as i32,
        fail_message: "nothing here".into(),
        ..Default::default()
    }));
    let response = raw::call(setup.addr, "/bench.Echo/Unary", &[], body)
        .await
        .expect("h2 call");
    assert_eq!(response.status, 200);
    assert!(
        response.headers_ended_stream,
        "response must be trailers-only"
    );
    assert_eq!(response.headers.get("grpc-status").unwrap(), "5");
    assert_eq!(
        response.headers.get("grpc-message").unwrap(),
        "nothing%20here"
    ); // tonic's encoding
    assert!(response.body.is_empty());
}

/// 200 unary calls at once, each taking `delay_ms` at the backend; every one must come back
/// with its own payload.
async fn burst_of_200(client: &EchoClient<Channel>, delay_ms: u32) {
    let calls: Vec<_> = (0..200u32)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .unary(EchoRequest {
                        payload: i.to_be_bytes().to_vec(),
                        delay_ms,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().payload)
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let payload = call.await.unwrap().expect("call succeeds");
        assert_eq!(payload, (i as u32).to_be_bytes().to_vec());
    }
}

/// 200 calls at once over one client connection all succeed, and the gateway multiplexes them
/// over its pooled upstream connection instead of opening one per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_calls_on_one_connection() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;
    // One call first puts a connection in the pool (the cold case is the next test).
    client.unary(req(b"warm-up")).await.expect("warm-up call");
    let warm_connections = setup.backend("a").connections();
    burst_of_200(&client, 300).await;
    let backend = setup.backend("a");
    eprintln!(
        "upstream connections for 200 concurrent calls: {}",
        backend.connections()
    );
    assert_eq!(backend.calls(), 201);
    assert_eq!(warm_connections, 1);
    // The pooled connection stays findable while streams are opened on it (the vendored
    // pingora's `InUsePool`); before that, a burst dialed up to ~30 extra connections.
    assert!(
        backend.connections() <= 2,
        "{} upstream connections for 200 concurrent calls",
        backend.connections()
    );
}

/// A burst of 200 calls at a cold gateway (no upstream connection yet) dials once: one call
/// dials, the others wait for its connection and open streams on it (see `DialGate`). The
/// backend speaks TLS, so each dial takes a handshake: long enough for the whole burst to
/// arrive while the first dial is under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_dials_one_upstream_connection() {
    cold_burst_at_a_tls_backend("", None).await;
}

/// 200 concurrent calls at a gateway that has no connection yet to its one TLS backend (each
/// dial held `slow_dial` longer, when given), on a route with `route_extra`: every call
/// succeeds over at most two upstream connections.
async fn cold_burst_at_a_tls_backend(route_extra: &str, slow_dial: Option<Duration>) {
    let dir = tempfile::tempdir().unwrap();
    let pki = strait_tests::tls::generate(dir.path());
    let backend = strait_tests::Backend::start(strait_tests::BackendOptions {
        tls: Some((
            std::fs::read_to_string(&pki.server_cert).unwrap(),
            std::fs::read_to_string(&pki.server_key).unwrap(),
        )),
        ..strait_tests::BackendOptions::named("tls-backend")
    })
    .await;
    let addr = match slow_dial {
        Some(delay) => slow_answering_forwarder(backend.addr, delay).await,
        None => backend.addr,
    };
    let listen = strait_tests::net::free_addr();
    let ca = pki.ca_cert.display().to_string();
    let endpoint = crate::fixture::Ep {
        addr,
        weight: 100,
        region: "eu-west",
    };
    let text = crate::fixture::config(listen, &[endpoint], "", route_extra)
        .replace(
            "max_attempts = 3",
            &format!("max_attempts = 3\ntls = {{ ca = \"{ca}\", server_name = \"localhost\" }}"),
        )
        .replace("connect_timeout = \"500ms\"", "connect_timeout = \"2s\"");
    let _gateway =
        tokio::task::block_in_place(|| strait_tests::Gateway::start_in(dir, &text, listen));
    let client = crate::fixture::client(listen).await;
    burst_of_200(&client, 100).await;
    eprintln!(
        "upstream connections for a cold burst of 200 calls ({route_extra:?}): {}",
        backend.connections()
    );
    assert_eq!(backend.calls(), 200);
    assert!(
        backend.connections() <= 2,
        "{} upstream connections for a cold burst of 200 calls",
        backend.connections()
    );
}

/// When the caller cancels a stream, the backend's side of it is cancelled too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancellation_frees_the_upstream_stream() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;
    let request = EchoRequest {
        reply_count: 10_000,
        delay_ms: 20,
        ..Default::default()
    };
    let mut stream = client
        .server_stream(request)
        .await
        .expect("stream starts")
        .into_inner();
    for _ in 0..3 {
        stream.next().await.expect("item").expect("ok");
    }
    let backend = setup.backend("a");
    assert_eq!(backend.active(), 1);
    drop(stream);
    let mut freed = false;
    for _ in 0..100 {
        if backend.active() == 0 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        freed,
        "backend stream still active after the caller cancelled"
    );
}

/// Raw bytes helper use: a zero-length gRPC frame is a valid empty message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_h2_unary_has_normal_shape() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let response = raw::call(setup.addr, "/bench.Echo/Unary", &[], raw::grpc_frame(&[]))
        .await
        .expect("h2 call");
    assert_eq!(response.status, 200);
    assert!(!response.headers_ended_stream);
    assert_eq!(response.grpc_status().as_deref(), Some("0"));
    // Exactly one uncompressed, length-prefixed message, and it is the backend's reply.
    let body = &response.body;
    assert!(body.len() >= 5, "a framed reply: {body:?}");
    assert_eq!(body[0], 0, "not compressed");
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    assert_eq!(body.len(), 5 + length, "one message, nothing after it");
    let reply: EchoReply = prost::Message::decode(&body[5..]).expect("an EchoReply");
    assert_eq!(reply.served_by, "a");
    assert!(reply.payload.is_empty());
    assert_eq!(reply.received, 1);
}

/// The relay (hedged and JSON calls) claims endpoints through the same dial gate as pingora's
/// path: a cold burst of 200 hedged calls dials once, not once per call. Each dial here takes
/// 300 ms (the backend's TLS answers are held back that long by a forwarder), so the whole
/// burst arrives while the first dial is under way; at 507e6a3 the relay dialed for each call
/// (66-200 connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_of_hedged_calls_dials_one_upstream_connection() {
    // A hedge delay far beyond the calls' time: every call is one relayed attempt.
    cold_burst_at_a_tls_backend(
        "idempotent = true\nhedge = { delay = \"10s\", max_attempts = 2 }",
        Some(Duration::from_millis(300)),
    )
    .await;
}

/// A TCP forwarder to `backend` that holds back each connection's first answer bytes for
/// `delay`: every TLS handshake through it (a dial) takes that long.
async fn slow_answering_forwarder(
    backend: std::net::SocketAddr,
    delay: Duration,
) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let (mut from_gateway, mut to_gateway) = inbound.into_split();
                let (mut from_backend, mut to_backend) = outbound.into_split();
                let upstream = async {
                    let _ = tokio::io::copy(&mut from_gateway, &mut to_backend).await;
                    let _ = to_backend.shutdown().await;
                };
                let downstream = async {
                    tokio::time::sleep(delay).await;
                    let _ = tokio::io::copy(&mut from_backend, &mut to_gateway).await;
                    let _ = to_gateway.shutdown().await;
                };
                tokio::join!(upstream, downstream);
            });
        }
    });
    addr
}
