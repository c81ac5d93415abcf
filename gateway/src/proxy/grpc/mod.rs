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
mod arrival;
mod arrive;
mod failure;
mod relay;
mod report;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use tracing::debug;

use crate::grpc::{Code, LocalStatus};
use crate::metrics::Metrics;
use crate::observe::Observers;
use crate::proxy::call::{self, CallCtx, CallSettings};
use crate::proxy::web::WebSettings;
use crate::proxy::InFlightCalls;
use crate::routing::Routing;
use answer::write_local_status;
use upstream::{check_deadline, web_request_headers, write_attempt_headers};

/// What one gRPC listener's own config says about its calls.
#[derive(Debug, Clone)]
pub struct ListenerProfile {
    pub name: String,
    /// Largest request message accepted, in bytes.
    pub max_message_size: u32,
    /// How long a body the gateway reads whole (JSON, hedged calls) may take to arrive.
    pub request_body_timeout: std::time::Duration,
    /// Callers trusted to set the region header.
    pub trusted_sources: Arc<[ipnet::IpNet]>,
    /// gRPC-Web and CORS (`proxy/web`).
    pub web: WebSettings,
}

/// One gRPC listener's proxy logic.
pub struct GrpcProxy {
    listener: String,
    /// Largest request message accepted, in bytes.
    max_message_size: u32,
    request_body_timeout: std::time::Duration,
    trusted_sources: Arc<[ipnet::IpNet]>,
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
    /// Auth denials are logged at most once a second (a flood of forged tokens must not
    /// become a flood of log lines).
    denial_log: crate::logging::LogThrottle,
    /// Calls the gateway answered itself: logged a few a second at most.
    answer_log: crate::logging::LogThrottle,
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
            request_body_timeout,
            trusted_sources,
            web,
        } = profile;
        let in_flight = metrics.as_ref().map(|m| m.in_flight(&listener));
        Self {
            listener,
            max_message_size,
            request_body_timeout,
            trusted_sources,
            routing,
            settings,
            calls,
            metrics,
            in_flight,
            observers,
            relay_connector: Arc::new(pingora::connectors::http::Connector::new(None)),
            web,
            denial_log: Default::default(),
            answer_log: Default::default(),
        }
    }
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
        self.begin_call(session, ctx).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut CallCtx,
    ) -> Result<Box<HttpPeer>> {
        upstream::claim_peer(ctx).await
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
        _peer: &HttpPeer,
        ctx: &mut CallCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(attempt) = &ctx.attempt {
            attempt.endpoint.dial.connect_failed();
        }
        let failure = failure::read(&e, true);
        ctx.attempt_failed(&failure);
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
        ctx.attempt_failed(&failure);
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
        let copy_truncated = session.as_ref().retry_buffer_truncated();
        upstream::response_head(ctx, upstream_response, copy_truncated)
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
