//! The one writer of the gateway's own answers on a pingora session: a status in the caller's
//! protocol (trailers-only or trailers for gRPC, the gRPC-Web and JSON shapes through the
//! call's `WebCall`), and the plain HTTP refusals of requests that are not gRPC at all.

use bytes::Bytes;
use http::{Method, Version};
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::Result;

use crate::grpc::LocalStatus;
use crate::proxy::call::CallCtx;
use crate::proxy::web::trailers_only_response;

/// Writes `status` to the caller: the whole answer when nothing was sent yet, else trailers
/// that end the open stream.
pub async fn write_local_status(
    session: &mut Session,
    ctx: &mut CallCtx,
    status: &LocalStatus,
) -> Result<bool> {
    let started = session.response_written().is_some();
    if let Some(web) = ctx.web.as_mut() {
        if !started && session.req_header().version != Version::HTTP_2 {
            // An HTTP/1.1 caller may still be sending its body, and pingora closes the
            // connection after a local answer: closed over unread bytes, the socket resets
            // and the answer is lost (the caller sees ECONNRESET). Read the rest first.
            crate::proxy::refusal::drain_request_body(session).await;
        }
        // In the caller's protocol: gRPC-Web or JSON.
        let tasks = web.local_answer(status, started);
        return session.write_response_tasks(tasks).await;
    }
    let task = if started {
        HttpTask::Trailer(Some(Box::new(status.trailers())))
    } else {
        HttpTask::Header(trailers_only_response(status), true)
    };
    session.write_response_tasks(vec![task]).await
}

/// A plain HTTP error for requests that are not gRPC at all (HTTP/1.x, wrong content type).
async fn reject_non_grpc(session: &mut Session, status: u16, message: &str) -> Result<()> {
    let body = Bytes::from(format!("{message}\n"));
    crate::proxy::refusal::drain_request_body(session).await;
    // Not a gRPC client: answer once and close, so it cannot park on a connection slot.
    session.set_keepalive(None);
    let mut head = ResponseHeader::build(status, Some(3))?;
    head.insert_header("content-type", "text/plain; charset=utf-8")?;
    head.insert_header("connection", "close")?;
    head.insert_header("content-length", body.len().to_string())?;
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Native gRPC's own checks: HTTP/2, a gRPC content type, POST. `true` when the request was
/// refused (and answered).
pub async fn refuse_non_grpc(session: &mut Session, ctx: &mut CallCtx) -> Result<bool> {
    let req = session.req_header();
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let refusal = if content_type.starts_with(b"application/grpc-web") {
        // Not native gRPC, whatever the prefix says: a listener without grpc_web, or the
        // +json codec, which the backends do not speak.
        Some((
            415,
            "gRPC-Web calls need grpc_web = true on this listener, in the +proto or text form",
        ))
    } else if req.version != Version::HTTP_2 {
        Some((
            505,
            "this listener serves gRPC over HTTP/2 only (h2c with prior knowledge, or TLS with ALPN h2)",
        ))
    } else if !content_type.starts_with(b"application/grpc") {
        Some((415, "content-type must be application/grpc"))
    } else if req.method != Method::POST {
        Some((405, "gRPC calls use POST"))
    } else {
        None
    };
    let Some((status, message)) = refusal else {
        return Ok(false);
    };
    reject_non_grpc(session, status, message).await?;
    ctx.not_grpc = true;
    Ok(true)
}
