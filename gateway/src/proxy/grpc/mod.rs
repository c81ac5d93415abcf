//! The L7 gRPC proxy's first driver: pingora's phase hooks, each a few lines that hand the
//! call core (`proxy/call`) what pingora saw and carry out what it decided.
//!
//! request_filter      -> gRPC-Web and JSON callers become native gRPC (`arrive.rs`), a CORS
//!                        preflight is answered; start the call's trace; the core admits the
//!                        call (route, policy, deadline, region); hedged and JSON calls go to
//!                        the second driver, `relay.rs`
//! upstream_peer       -> after a status retry, wait its back-off; the core claims an endpoint
//!                        (through the dial gate)
//! connected_to_upstream -> the dial is up: calls waiting on it go ahead
//! upstream_request    -> the attempt's headers, as the core writes them
//! fail_to_connect /
//! error_while_proxy   -> the core judges the failure and whether another attempt is made
//! upstream response
//! filters             -> the core notes `grpc-status` and decides on a status retry; enforce
//!                        the deadline
//! response filters    -> a gRPC-Web caller's answer: content type, base64, trailer frame
//! fail_to_proxy       -> the core's closing status, written by `answer.rs`
//! logging             -> the breaker's verdict; then `report.rs`: metrics, traffic, spans,
//!                        access log

mod answer;
mod arrive;
mod failure;
mod relay;
mod report;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType, Result};
use tracing::debug;

use crate::grpc::{encode_grpc_message, Code, FrameScanner, LocalStatus};
use crate::metrics::Metrics;
use crate::observe::Observers;
use crate::proxy::call::{self, CallCtx, CallSettings, Resend, StatusFacts};
use crate::proxy::web::{self, WebSettings};
use crate::proxy::InFlightCalls;
use crate::routing::Routing;
use answer::{refuse_non_grpc, write_local_status};
use arrive::Arrived;

/// What one gRPC listener's own config says about its calls.
#[derive(Debug, Clone)]
pub struct ListenerProfile {
    pub name: String,
    /// Largest request message accepted, in bytes.
    pub max_message_size: u32,
    /// gRPC-Web and CORS (`proxy/web`).
    pub web: WebSettings,
}

/// One gRPC listener's proxy logic.
pub struct GrpcProxy {
    listener: String,
    /// Largest request message accepted, in bytes.
    max_message_size: u32,
    routing: Arc<Routing>,
    settings: Arc<CallSettings>,
    calls: InFlightCalls,
    metrics: Option<Arc<Metrics>>,
    in_flight: Option<prometheus::IntGauge>,
    observers: Arc<Observers>,
    /// The upstream connections of calls the gateway relays itself (`relay.rs`): hedged and
    /// JSON calls.
    relay_connector: Arc<pingora::connectors::http::Connector>,
    /// gRPC-Web and CORS (`proxy/web`).
    web: WebSettings,
}

impl GrpcProxy {
    pub fn new(
        profile: ListenerProfile,
        routing: Arc<Routing>,
        settings: Arc<CallSettings>,
        calls: InFlightCalls,
        metrics: Option<Arc<Metrics>>,
        observers: Arc<Observers>,
    ) -> Self {
        let ListenerProfile {
            name: listener,
            max_message_size,
            web,
        } = profile;
        let in_flight = metrics.as_ref().map(|m| m.in_flight(&listener));
        Self {
            listener,
            max_message_size,
            routing,
            settings,
            calls,
            metrics,
            in_flight,
            observers,
            relay_connector: Arc::new(pingora::connectors::http::Connector::new(None)),
            web,
        }
    }
}

/// The error pingora is handed when the core refused an attempt (its status is in the ctx).
fn refused_attempt(status: &LocalStatus) -> Box<Error> {
    if status.code == Code::DeadlineExceeded {
        Error::new(ErrorType::Custom("deadline exceeded"))
    } else {
        Error::new(ErrorType::Custom("no usable endpoint"))
    }
}

/// A gRPC-Web caller's request on its way to an HTTP/2 backend.
fn web_request_headers(ctx: &CallCtx, request: &mut RequestHeader) -> Result<()> {
    if ctx.web.is_some() {
        web::grpc_web::strip_hop_by_hop(request);
        // pingora drops an HTTP/1.x caller's `te` on the way to HTTP/2; gRPC servers
        // (gRPC C-core among them) refuse a request without it.
        request.insert_header(http::header::TE, "trailers")?;
    }
    Ok(())
}

/// The core's headers for the attempt just claimed.
fn write_attempt_headers(ctx: &CallCtx, request: &mut RequestHeader) -> Result<()> {
    let headers = ctx.attempt_headers();
    if let Some(name) = &headers.remove {
        request.remove_header(name);
    }
    for (name, value) in headers.to_set() {
        request.insert_header(name, value)?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for GrpcProxy {
    type CTX = CallCtx;

    fn new_ctx(&self) -> CallCtx {
        CallCtx::new()
    }

    /// No downstream modules. pingora's default installs a disabled response-compression
    /// module, which still cost every call three allocations and three filter calls; gRPC
    /// messages carry their own compression (`grpc-encoding`), which the gateway leaves alone.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut CallCtx) -> Result<bool> {
        ctx.call_guard = Some(self.calls.enter());
        if let Some(gauge) = &self.in_flight {
            gauge.inc();
            ctx.in_flight_gauge = Some(gauge.clone());
        }
        // Browsers and REST clients: a preflight is answered; gRPC-Web and JSON become native
        // gRPC here (proxy/web).
        let transcoder = self.routing.load().transcoder(&self.listener).cloned();
        let arrived = arrive::arrive(session, ctx, &self.web, transcoder).await?;
        let pending_json = match arrived {
            Arrived::Answered => return Ok(true),
            Arrived::Json(pending) => Some(pending),
            Arrived::GrpcWeb => None,
            Arrived::Grpc => {
                if refuse_non_grpc(session, ctx).await? {
                    return Ok(true);
                }
                None
            }
        };
        ctx.trace = self.observers.tracing.start(&session.req_header().headers);
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let snapshot = self.routing.load();
        let req = session.req_header();
        let request = call::Request {
            listener: &self.listener,
            path: req.uri.path(),
            headers: &req.headers,
            peer,
        };
        if let Err(status) = ctx.admit(&snapshot, &self.settings, request) {
            write_local_status(session, ctx, &status).await?;
            ctx.local_status = Some(status);
            return Ok(true);
        }
        // An admitted JSON call's body becomes its one gRPC message (or a 400 answered here).
        let json_request = match pending_json {
            Some(pending) => {
                match arrive::json_request(session, ctx, pending, self.max_message_size).await? {
                    Some(message) => Some(message),
                    None => return Ok(true),
                }
            }
            None => None,
        };
        let hedged = ctx.target.as_ref().is_some_and(|t| t.hedge.is_some());
        if hedged || json_request.is_some() {
            // Not through pingora's upstream phases: the relay carries hedged and JSON calls.
            let mut header = session.req_header().clone();
            web_request_headers(ctx, &mut header)?;
            let body = json_request.map(|message| vec![message]);
            let relayed = relay::relay(
                &self.relay_connector,
                session,
                ctx,
                header,
                self.max_message_size,
                body,
            )
            .await?;
            if let relay::Relayed::Local(status) = relayed {
                write_local_status(session, ctx, &status).await?;
                ctx.local_status = Some(status);
            }
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut CallCtx,
    ) -> Result<Box<HttpPeer>> {
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

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut CallCtx,
    ) -> Result<()> {
        if let Some(ticket) = ctx.attempt.as_mut().and_then(|a| a.dial.take()) {
            ticket.connected();
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut CallCtx,
    ) -> Result<()> {
        web_request_headers(ctx, upstream_request)?;
        write_attempt_headers(ctx, upstream_request)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut CallCtx,
    ) -> Result<()> {
        check_deadline(ctx)?;
        if let Some(web) = ctx.web.as_mut() {
            // grpc-web-text: the backend gets the decoded bytes.
            if let Err(reason) = web.request_body(body, end_of_stream) {
                ctx.local_status = Some(LocalStatus::new(Code::InvalidArgument, reason));
                return Err(Error::new(ErrorType::Custom("malformed request body")).into_down());
            }
        }
        let chunk = body.as_deref().unwrap_or_default();
        if let Err(e) = ctx.frames.feed(chunk, end_of_stream, self.max_message_size) {
            // Only this call ends; the connection and its other calls go on.
            ctx.local_status = Some(call::request_body_status(e));
            // A downstream error: pingora ends the proxying (and resets the upstream stream)
            // instead of waiting for the backend, which would wait for the rest of the message.
            return Err(Error::new(ErrorType::Custom("malformed request body")).into_down());
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut CallCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(attempt) = &ctx.attempt {
            attempt.endpoint.dial.connect_failed();
        }
        let failure = failure::read(&e, true);
        ctx.attempt_failed(peer.address(), &failure);
        // Nothing reached the backend: another endpoint may take the call.
        e.set_retry(ctx.resend_after(&failure, true));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut CallCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if ctx.pending_retry.is_some() {
            // The response filter held back a status to retry: nothing reached the caller.
            e.set_retry(true);
            return e;
        }
        let failure = failure::read(&e, false);
        ctx.attempt_failed(peer.address(), &failure);
        let body_kept = !session.as_ref().retry_buffer_truncated();
        e.set_retry(ctx.resend_after(&failure, body_kept));
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut CallCtx,
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
                copy_truncated: session.as_ref().retry_buffer_truncated(),
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
            upstream_response
                .insert_header("grpc-message", encode_grpc_message(&status.message))?;
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut CallCtx,
    ) -> Result<Option<Duration>> {
        check_deadline(ctx)?;
        // Counting only (no limit, no truncation check): the caller gets what the backend sent.
        let _ = ctx
            .resp_frames
            .feed(body.as_deref().unwrap_or_default(), false, u32::MAX);
        Ok(None)
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut CallCtx,
    ) -> Result<()> {
        if let Some(value) = upstream_trailers.get("grpc-status") {
            let code = Code::from_header(value.as_bytes());
            if let Some(status) = ctx.status_seen(code) {
                upstream_trailers.extend(status.trailers());
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut CallCtx,
    ) -> Result<()> {
        if let Some(web) = ctx.web.as_mut() {
            web.response_header(response);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut CallCtx,
    ) -> Result<Option<Duration>> {
        if let Some(web) = ctx.web.as_mut() {
            web.response_body(body);
        }
        Ok(None)
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut CallCtx,
    ) -> Result<Option<Bytes>> {
        // gRPC-Web: the trailers become the body's last frame.
        Ok(ctx.web.as_mut().and_then(|web| web.trailers(trailers)))
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut CallCtx,
    ) -> FailToProxy {
        let Some(status) = ctx.closing_status(failure::caused_by_caller(e)) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if let Err(write_error) = write_local_status(session, ctx, &status).await {
            debug!(error = %write_error, "could not deliver the gateway's status to the caller");
        }
        FailToProxy {
            error_code: 200,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut CallCtx) {
        ctx.finish_answered(e.is_some());
        let code = ctx
            .final_code()
            .unwrap_or(if e.is_some() { Code::Unknown } else { Code::Ok });
        self.report(session, ctx, code);
        if let Some(gauge) = ctx.in_flight_gauge.take() {
            gauge.dec();
        }
        ctx.call_guard = None;
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &CallCtx,
        _error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // A status retry is policy at work, counted in strait_retries_total{reason="status"}.
        ctx.pending_retry.is_some()
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &CallCtx, error: &Error) -> bool {
        // Callers cancelling and finished streams being reset are normal gRPC life, not errors.
        failure::caused_by_caller(error) || ctx.upstream_status.is_some()
    }
}

/// Ends the call with DEADLINE_EXCEEDED once its budget is spent. pingora has no per-call timer,
/// so this runs on every message in either direction; a silent backend is cut by the per-attempt
/// read timeout, which is set to the remaining budget (see `PeerTemplate::for_attempt`).
fn check_deadline(ctx: &mut CallCtx) -> Result<()> {
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
