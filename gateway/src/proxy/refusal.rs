//! Answering a request the gateway refuses before proxying it (not gRPC, no REST route, a
//! CORS preflight from a stranger): the little the caller sent is read first.
//!
//! An HTTP/2 stream answered while its request body is still arriving is reset by the server
//! when the answer ends, and clients report the reset instead of the answer (curl: "Stream
//! error in the HTTP/2 framing layer"). Reading what is there first, bounded in bytes and time,
//! lets the answer arrive as itself; a caller that keeps sending gets the reset after all.

use std::time::Duration;

use pingora::proxy::Session;

/// At most this much of a refused request's body is read (and dropped).
const DRAIN_BYTES: usize = 64 * 1024;
/// For at most this long.
const DRAIN_TIME: Duration = Duration::from_millis(500);

pub async fn drain_request_body(session: &mut Session) {
    let drain = async {
        let mut read = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            read += chunk.len();
            if read > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}
