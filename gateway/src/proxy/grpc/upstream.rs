//! What pingora's upstream phases need from the core, in pingora's terms: the peer of the
//! next attempt, the attempt's headers, the response head's status (and a status retry), and
//! the deadline checked on every message.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::grpc::{encode_grpc_message, Code, FrameScanner, LocalStatus};
use crate::proxy::call::{CallCtx, Resend, StatusFacts};
use crate::proxy::web;

/// `upstream_peer`: after a status retry, its back-off; then the endpoint the core claims,
/// through the dial gate.
pub async fn claim_peer(ctx: &mut CallCtx) -> Result<Box<HttpPeer>> {
    let after_status = ctx.pending_retry.take();
    if let Some(wait) = after_status {
        // The policy's back-off or the backend's pushback; the deadline leaves time for it
        // (checked when the retry was decided).
        tokio::time::sleep(wait).await;
    }
    let why = match (after_status, ctx.tried.is_empty()) {
        (Some(_), _) => Resend::Status,
        (None, true) => Resend::First,
        (None, false) => Resend::Unprocessed,
    };
    let (claimed, mut attempt) = match ctx.claim(why) {
        Ok(claimed) => claimed,
        Err(status) => {
            let error = refused_attempt(&status);
            ctx.local_status = Some(status);
            return Err(error);
        }
    };
    // A retry replays the request body through request_body_filter from its start.
    ctx.frames = FrameScanner::default();
    if let Some(web) = ctx.web.as_mut() {
        web.restart_request();
    }
    if let Some(wait) = ctx.dial_turn(&claimed, &mut attempt) {
        wait.settled().await;
    }
    ctx.attempt = Some(attempt);
    Ok(claimed.endpoint().peer.for_attempt(ctx.remaining()))
}

/// `upstream_response_filter`: a trailers-only status the route retries is held back (pingora
/// then asks `upstream_peer` for the next attempt, see `error_while_proxy`); otherwise the
/// status is noted, CANCELLED at the deadline told as DEADLINE_EXCEEDED.
pub fn response_head(
    ctx: &mut CallCtx,
    upstream_response: &mut ResponseHeader,
    copy_truncated: bool,
) -> Result<()> {
    let trailers_only = upstream_response
        .headers
        .get("grpc-status")
        .map(|value| Code::from_header(value.as_bytes()));
    if let Some(code) = trailers_only {
        // Trailers-only response: the status rides in the headers and stays there.
        ctx.upstream_status = Some(code);
        let facts = StatusFacts {
            pushback: upstream_response
                .headers
                .get("grpc-retry-pushback-ms")
                .map(|v| v.as_bytes()),
            copy_truncated,
        };
        if let Some(wait) = ctx.retry_on_status(code, facts) {
            // Not relayed: pingora sees a retryable upstream error and asks
            // `upstream_peer` for the next attempt (see `error_while_proxy`).
            ctx.hold_back_for_retry(code, wait);
            return Err(Error::explain(
                ErrorType::Custom("retrying on status"),
                format!("backend answered {code}; the route retries it"),
            )
            .into_up());
        }
    }
    ctx.response_started = true;
    if let Some(status) = trailers_only.and_then(|code| ctx.status_seen(code)) {
        upstream_response.insert_header("grpc-status", status.code.header_value())?;
        upstream_response.insert_header("grpc-message", encode_grpc_message(&status.message))?;
    }
    Ok(())
}

/// The error pingora is handed when the core refused an attempt (its status is in the ctx).
pub fn refused_attempt(status: &LocalStatus) -> Box<Error> {
    if status.code == Code::DeadlineExceeded {
        Error::new(ErrorType::Custom("deadline exceeded"))
    } else {
        Error::new(ErrorType::Custom("no usable endpoint"))
    }
}

/// A gRPC-Web caller's request on its way to an HTTP/2 backend.
pub fn web_request_headers(ctx: &CallCtx, request: &mut RequestHeader) -> Result<()> {
    if ctx.web.is_some() {
        web::grpc_web::strip_hop_by_hop(request);
        // pingora drops an HTTP/1.x caller's `te` on the way to HTTP/2; gRPC servers
        // (gRPC C-core among them) refuse a request without it.
        request.insert_header(http::header::TE, "trailers")?;
    }
    Ok(())
}

/// The core's headers for the attempt just claimed.
pub fn write_attempt_headers(ctx: &CallCtx, request: &mut RequestHeader) -> Result<()> {
    let headers = ctx.attempt_headers();
    for name in headers.to_remove() {
        request.remove_header(name);
    }
    for (name, value) in headers.to_set() {
        request.insert_header(name, value)?;
    }
    Ok(())
}

/// Ends the call with DEADLINE_EXCEEDED once its budget is spent. pingora has no per-call timer,
/// so this runs on every message in either direction; a silent backend is cut by the per-attempt
/// read timeout, which is set to the remaining budget (see `PeerTemplate::for_attempt`).
pub fn check_deadline(ctx: &mut CallCtx) -> Result<()> {
    if ctx.deadline_passed() {
        if ctx.local_status.is_none() {
            ctx.local_status = Some(ctx.deadline_status());
        }
        return Err(Error::explain(
            ErrorType::Custom("deadline exceeded"),
            "call deadline passed",
        ));
    }
    Ok(())
}
