//! grpc-timeout and route timeouts: enforced by the gateway, forwarded as the remaining budget.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use strait_tests::h2_backend::Misbehaviour;
use strait_tests::pb::EchoRequest;
use strait_tests::raw;

use crate::fixture::{behind_misbehaving, Setup};

fn slow_request(delay_ms: u32) -> bytes::Bytes {
    raw::grpc_frame(&prost::Message::encode_to_vec(&EchoRequest {
        delay_ms,
        ..Default::default()
    }))
}

/// The caller's grpc-timeout runs out while the backend sleeps: the gateway itself answers
/// DEADLINE_EXCEEDED (the raw client enforces nothing) and the backend's stream is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_deadline_is_enforced_by_the_gateway() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let started = Instant::now();
    let response = raw::call(
        setup.addr,
        "/bench.Echo/Unary",
        &[("grpc-timeout", "300m")],
        slow_request(5000),
    )
    .await
    .expect("h2 call");
    let elapsed = started.elapsed();
    assert_eq!(response.grpc_status().as_deref(), Some("4"), "{response:?}");
    assert!(
        elapsed >= Duration::from_millis(290),
        "answered before the deadline: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "deadline enforced late: {elapsed:?}"
    );
    let backend = setup.backend("a");
    for _ in 0..100 {
        if backend.active() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("upstream call still running after the deadline");
}

/// Without a caller deadline the route's timeout applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_applies_without_caller_deadline() {
    let setup = Setup::start_with(&[("a", 100, "eu-west")], "", "timeout = \"400ms\"").await;
    let started = Instant::now();
    let response = raw::call(setup.addr, "/bench.Echo/Unary", &[], slow_request(5000))
        .await
        .expect("h2 call");
    let elapsed = started.elapsed();
    assert_eq!(response.grpc_status().as_deref(), Some("4"), "{response:?}");
    assert!(response
        .grpc_message()
        .unwrap_or_default()
        .contains("deadline"));
    assert!(
        elapsed >= Duration::from_millis(390) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

/// The backend sees the remaining budget, not the caller's original value: the first attempt
/// is held for 400 ms by a backend that then refuses the stream, and the retry on the echo
/// backend carries at most 10 s - 400 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_budget_is_forwarded() {
    let (refuser, echo, _gateway, listen) =
        behind_misbehaving(Misbehaviour::RefuseAfter(Duration::from_millis(400))).await;
    let response = raw::call(
        listen,
        "/bench.Echo/Unary",
        &[("grpc-timeout", "10S")],
        slow_request(0),
    )
    .await
    .expect("h2 call");
    assert_eq!(response.grpc_status().as_deref(), Some("0"), "{response:?}");
    assert_eq!(refuser.requests(), 1, "the first attempt was refused");
    assert_eq!(echo.calls(), 1, "and retried on the echo backend");
    let seen = echo.stats.last_timeout_ms.load(Ordering::SeqCst);
    assert!(
        seen <= 10_000 - 400,
        "backend saw grpc-timeout {seen} ms: more than what was left after the 400 ms spent"
    );
    assert!(seen > 5_000, "backend saw grpc-timeout {seen} ms");
}

/// A deadline that runs out after the response headers went out: the caller gets the replies
/// sent so far, then DEADLINE_EXCEEDED in the trailers (not trailers-only), and the backend's
/// stream is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_expiring_mid_stream_ends_it_in_trailers() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let request = EchoRequest {
        reply_count: 20,
        delay_ms: 200,
        ..Default::default()
    };
    let response = raw::call(
        setup.addr,
        "/bench.Echo/ServerStream",
        &[("grpc-timeout", "900m")],
        raw::grpc_frame(&prost::Message::encode_to_vec(&request)),
    )
    .await
    .expect("h2 call");
    assert_eq!(response.status, 200);
    assert!(
        !response.headers_ended_stream,
        "headers went out before the deadline"
    );
    let replies = count_messages(&response.body);
    assert!(
        (1..20).contains(&replies),
        "some replies, not all: {replies}"
    );
    let trailers = response.trailers.as_ref().expect("trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"4"[..]),
        "{response:?}"
    );
    let backend = setup.backend("a");
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.active() != 0 {
        assert!(
            Instant::now() < deadline,
            "the backend's stream still runs after the deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Length-prefixed gRPC messages in a response body.
fn count_messages(mut body: &[u8]) -> usize {
    let mut n = 0;
    while body.len() >= 5 {
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        body = &body[(5 + length).min(body.len())..];
        n += 1;
    }
    n
}

/// A long quiet stream without a deadline is not cut by any idle timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_stream_without_deadline_is_not_cut() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;
    let request = EchoRequest {
        reply_count: 2,
        delay_ms: 2500,
        ..Default::default()
    };
    let mut stream = client
        .server_stream(request)
        .await
        .expect("starts")
        .into_inner();
    let mut got = 0;
    while let Some(item) = tokio_stream::StreamExt::next(&mut stream).await {
        item.expect("no error on a quiet stream");
        got += 1;
    }
    assert_eq!(got, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_timeout_is_refused() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let response = raw::call(
        setup.addr,
        "/bench.Echo/Unary",
        &[("grpc-timeout", "soon")],
        slow_request(0),
    )
    .await
    .expect("h2 call");
    assert_eq!(response.grpc_status().as_deref(), Some("3"));
    assert!(response.headers_ended_stream);
    assert_eq!(setup.backend("a").calls(), 0);
}

/// The longest route timeout `strait check` accepts (365 days) starts and serves calls, and the
/// caller's largest grpc-timeout (99999999 hours) too: neither panics, both are forwarded as a
/// budget no larger than what was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_accepted_timeouts_serve_calls() {
    let setup = Setup::start_with(&[("a", 100, "eu-west")], "", "timeout = \"8760h\"").await;
    let response = raw::call(setup.addr, "/bench.Echo/Unary", &[], slow_request(0))
        .await
        .expect("h2 call");
    assert_eq!(response.grpc_status().as_deref(), Some("0"), "{response:?}");
    let seen = setup
        .backend("a")
        .stats
        .last_timeout_ms
        .load(Ordering::SeqCst);
    assert!(
        seen > 364 * 24 * 3600 * 1000 && seen <= 365 * 24 * 3600 * 1000,
        "backend saw grpc-timeout {seen} ms"
    );
    let response = raw::call(
        setup.addr,
        "/bench.Echo/Unary",
        &[("grpc-timeout", "99999999H")],
        slow_request(0),
    )
    .await
    .expect("h2 call");
    assert_eq!(response.grpc_status().as_deref(), Some("0"), "{response:?}");
}
