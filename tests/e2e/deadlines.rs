//! grpc-timeout and route timeouts: enforced by the gateway, forwarded as the remaining budget.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use strait_tests::pb::EchoRequest;
use strait_tests::raw;
use tonic::Request;

use crate::fixture::{req, Setup};

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

/// The backend sees the remaining budget, not more than the caller gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_budget_is_forwarded() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;
    let mut request = Request::new(req(b"x"));
    request.set_timeout(Duration::from_secs(10));
    client.unary(request).await.expect("ok");
    let seen = setup
        .backend("a")
        .stats
        .last_timeout_ms
        .load(Ordering::SeqCst);
    assert!(
        seen > 8_000 && seen <= 10_000,
        "backend saw grpc-timeout {seen} ms"
    );
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
