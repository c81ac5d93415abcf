//! Which failed attempts are tried again: only those the backend certainly did not process
//! (REFUSED_STREAM, or a stream above a GOAWAY's last-stream-id). gRPC calls are not
//! idempotent, so a call the backend may have seen is never sent twice.

use std::time::{Duration, Instant};

use strait_tests::h2_backend::{Misbehaviour, RawH2Backend};
use strait_tests::net::free_addr;
use strait_tests::{raw, Gateway};

use crate::fixture::{behind_misbehaving as behind, config, Ep};

async fn unary(listen: std::net::SocketAddr) -> raw::RawResponse {
    raw::call(listen, "/bench.Echo/Unary", &[], raw::grpc_frame(&[]))
        .await
        .expect("h2 call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_stream_is_retried_on_another_endpoint() {
    let (odd, echo, _gateway, listen) =
        behind(Misbehaviour::RefuseAfter(std::time::Duration::ZERO)).await;
    let response = unary(listen).await;
    assert_eq!(response.grpc_status().as_deref(), Some("0"), "{response:?}");
    assert_eq!(odd.requests(), 1);
    assert_eq!(echo.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_below_the_call_is_retried_on_another_endpoint() {
    let (odd, echo, _gateway, listen) = behind(Misbehaviour::GoAwayBelow).await;
    let response = unary(listen).await;
    assert_eq!(response.grpc_status().as_deref(), Some("0"), "{response:?}");
    assert_eq!(odd.requests(), 1);
    assert_eq!(echo.calls(), 1);
}

/// GOAWAY whose last-stream-id covers the call: the backend may have processed it, so the
/// caller gets UNAVAILABLE and the call is not sent anywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_covering_the_call_is_not_retried() {
    let (odd, echo, _gateway, listen) = behind(Misbehaviour::GoAwayIncluding).await;
    let response = unary(listen).await;
    assert_eq!(
        response.grpc_status().as_deref(),
        Some("14"),
        "{response:?}"
    );
    assert_eq!(odd.requests(), 1);
    assert_eq!(
        echo.calls(),
        0,
        "a call the backend may have seen was sent again"
    );
}

/// Issue #34 item 12: a backend's GOAWAY(ENHANCE_YOUR_CALM) names the call it is working on as
/// the last stream and keeps the connection open for it. A call sent on that connection after
/// it (above the last-stream-id) was certainly not processed: it is sent again, to the same
/// and only endpoint, on a new connection, and both callers get their answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_above_goaway_is_sent_again_on_a_new_connection() {
    let calm = RawH2Backend::start(Misbehaviour::CalmDownOnSecond {
        hold: Duration::from_millis(500),
    })
    .await;
    let listen = free_addr();
    let text = config(
        listen,
        &[Ep {
            addr: calm.addr,
            weight: 1,
            region: "eu-west",
        }],
        "",
        "",
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let first = tokio::spawn(unary(listen));
    // The second call starts once the backend is working on the first, so both share the
    // gateway's one connection to it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while calm.requests() < 1 {
        assert!(
            Instant::now() < deadline,
            "the first call reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = unary(listen).await;
    let first = first.await.unwrap();
    assert_eq!(first.grpc_status().as_deref(), Some("0"), "{first:?}");
    assert_eq!(second.grpc_status().as_deref(), Some("0"), "{second:?}");
    assert_eq!(
        calm.requests(),
        3,
        "the first call, the second on the old connection, the second again on a new one"
    );
}
