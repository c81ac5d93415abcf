//! Which failed attempts are tried again: only those the backend certainly did not process
//! (REFUSED_STREAM, or a stream above a GOAWAY's last-stream-id). gRPC calls are not
//! idempotent, so a call the backend may have seen is never sent twice.

use strait_tests::h2_backend::Misbehaviour;
use strait_tests::raw;

use crate::fixture::behind_misbehaving as behind;

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
