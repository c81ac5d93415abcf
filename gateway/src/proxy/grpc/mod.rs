//! The L7 gRPC proxy: pingora's phase hooks, each doing one step of a call.
//!
//! request_filter      -> gRPC-Web and JSON callers become native gRPC (`proxy/web`), a CORS
//!                        preflight is answered; start the call's trace (caller's
//!                        `traceparent`); parse `:path`, find
//!                        the route (`match`); the policy admits the call (rate limit, split
//!                        side, in-flight slot); fix the deadline and preferred region
//!                        (hedged and JSON calls are carried by `hedge.rs` from here on)
//! upstream_peer       -> after a status retry, wait its back-off; pick an endpoint (region
//!                        spill, smooth WRR, not yet tried); one dial in flight per endpoint
//! connected_to_upstream -> the dial is up: calls waiting on it go ahead
//! upstream_request    -> forward the remaining budget as `grpc-timeout`, the gateway's span
//!                        as the backend's `traceparent`, `grpc-previous-rpc-attempts`
//! fail_to_connect /
//! error_while_proxy   -> decide whether another endpoint may be tried
//! upstream response
//! filters             -> note `grpc-status` (headers, trailers-only or trailers); a
//!                        trailers-only status the route's `retry` allows is not relayed but
//!                        retried; enforce the deadline
//! response filters    -> a gRPC-Web caller's answer: content type, base64, trailer frame
//! fail_to_proxy       -> answer the gateway's own errors the gRPC way
//! logging             -> the breaker's verdict; then `report.rs`: metrics, traffic, spans,
//!                        access log

mod ctx;
mod deadline;
mod failure;
mod frames;
mod hedge;
mod report;
mod status;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, Method, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::HttpTask;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType, Result};
use tracing::debug;

pub use ctx::CallCtx;
pub use deadline::{format_grpc_timeout, parse_grpc_timeout};
pub use frames::{FrameError, FrameScanner};
pub use status::{encode_grpc_message, Code, LocalStatus};

use crate::breaker::{Admission, Outcome};
use crate::endpoint::DialTurn;
use crate::metrics::{AttemptOutcome, Metrics};
use crate::observe::Observers;
use crate::policy::{CallFacts, NoRetry, Pushback, RetryFacts, Verdict};
use crate::proxy::web::{self, Arrived, WebSettings};
use crate::proxy::InFlightCalls;
use crate::routing::{parse_grpc_path, Routing};
use ctx::Attempt;

/// Settings every gRPC listener shares.
#[derive(Debug, Clone)]
pub struct CallSettings {
    pub region: Option<String>,
    pub region_header: Option<HeaderName>,
}

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
    /// The upstream connections of calls the gateway relays itself (`hedge.rs`): hedged and
    /// JSON calls.
    hedging: Arc<pingora::connectors::http::Connector>,
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
            hedging: Arc::new(pingora::connectors::http::Connector::new(None)),
            web,
        }
    }

    /// The caller's stated region if it sent one, else the gateway's own.
    fn preferred_region(&self, req: &RequestHeader) -> Option<String> {
        let stated = self.settings.region_header.as_ref().and_then(|name| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.len() <= 64)
        });
        stated
            .map(str::to_string)
            .or_else(|| self.settings.region.clone())
    }

    /// Routes the call or explains why not. `Err` carries the status to answer with.
    fn admit(
        &self,
        req: &RequestHeader,
        peer: Option<std::net::IpAddr>,
        ctx: &mut CallCtx,
    ) -> std::result::Result<(), LocalStatus> {
        let path = req.uri.path();
        let grpc_path = parse_grpc_path(path).ok_or_else(|| {
            LocalStatus::new(Code::Unimplemented, format!("malformed gRPC path {path:?}"))
        })?;
        let snapshot = self.routing.load();
        let route = snapshot
            .routes(&self.listener)
            .and_then(|table| table.find(grpc_path.service, grpc_path.method, &req.headers))
            .ok_or_else(|| {
                LocalStatus::new(
                    Code::Unimplemented,
                    format!("no route for {path} on listener {:?}", self.listener),
                )
            })?;
        // The traffic policy: rate limit, side of a split, a slot on the upstream.
        let facts = CallFacts {
            headers: &req.headers,
            peer,
        };
        let admitted = route.admit(facts).map_err(|refusal| {
            let label = route.targets().next().map(|t| &*t.route).unwrap_or("?");
            LocalStatus::refused(refusal, label)
        })?;
        ctx.in_flight_permit = Some(admitted.permit);
        let target = admitted.target;
        target.upstream.count_call();
        let budget = match req.headers.get("grpc-timeout") {
            Some(value) => Some(parse_grpc_timeout(value.as_bytes()).ok_or_else(|| {
                LocalStatus::new(
                    Code::InvalidArgument,
                    format!(
                        "malformed grpc-timeout header {:?}",
                        String::from_utf8_lossy(value.as_bytes())
                    ),
                )
            })?),
            None => target.timeout,
        };
        // A budget too far in the future to represent is no deadline at all (checked, never a
        // panic on the call path whatever the caller sends).
        ctx.deadline = budget.and_then(|b| ctx.started.checked_add(b));
        ctx.caller_deadline = req.headers.contains_key("grpc-timeout");
        ctx.region = self.preferred_region(req);
        ctx.method_metrics = target.metrics.as_ref().map(|m| {
            m.methods
                .for_call(path, grpc_path.service, grpc_path.method)
        });
        ctx.target = Some(target.clone());
        Ok(())
    }

    fn deadline_status(ctx: &CallCtx) -> LocalStatus {
        LocalStatus::new(
            Code::DeadlineExceeded,
            format!(
                "deadline exceeded after {} ms waiting for upstream {:?}",
                ctx.started.elapsed().as_millis(),
                ctx.upstream_name()
            ),
        )
    }

    /// Why no endpoint could take the call, in words an operator can act on.
    fn no_endpoint_status(ctx: &CallCtx) -> LocalStatus {
        let upstream = ctx.upstream_name();
        let message = match &ctx.last_failure {
            Some(last) => format!(
                "upstream {upstream:?}: no endpoint could take the call after {} attempt{}; last error: {last}",
                ctx.tried.len(),
                if ctx.tried.len() == 1 { "" } else { "s" }
            ),
            None => match ctx.target.as_ref().map(|t| &t.upstream) {
                Some(set) if set.endpoints.is_empty() => format!(
                    "upstream {upstream:?} has no endpoints: {}",
                    set.empty_reason.as_deref().unwrap_or("none configured")
                ),
                Some(set) => {
                    let total = set.endpoints.len();
                    let (open, unhealthy, drained) = set.unusable_counts();
                    if open == total {
                        format!("upstream {upstream:?}: all {total} endpoints open")
                    } else {
                        let parts: Vec<String> = [(open, "open"), (unhealthy, "unhealthy"), (drained, "drained")]
                            .into_iter()
                            .filter(|(n, _)| *n > 0)
                            .map(|(n, what)| format!("{n} {what}"))
                            .collect();
                        format!("upstream {upstream:?}: no usable endpoint ({} of {total})", parts.join(", "))
                    }
                }
                None => format!("upstream {upstream:?}: no usable endpoint"),
            },
        };
        LocalStatus::new(Code::Unavailable, message)
    }

    fn no_endpoint_error() -> Box<Error> {
        Error::new(ErrorType::Custom("no usable endpoint"))
    }

    /// Ends the current attempt, remembers why it failed and tells the breaker (unless the
    /// caller, not the endpoint, is why it ended).
    fn attempt_failed(ctx: &mut CallCtx, peer: &HttpPeer, e: &Error, connecting: bool) {
        let callers_doing =
            failure::caused_by_caller(e) || (ctx.caller_deadline && ctx.deadline_passed());
        let counted_as = if connecting {
            AttemptOutcome::ConnectError
        } else if ctx.deadline_passed() || *e.etype() == ErrorType::ReadTimedout {
            AttemptOutcome::Timeout
        } else {
            AttemptOutcome::Reset
        };
        ctx.finish_attempt(
            (!callers_doing).then_some(Outcome::Failure),
            (!callers_doing).then_some(counted_as),
        );
        ctx.last_failure = Some(format!("{}: {}", peer.address(), failure::describe(e)));
    }

    /// How a finished attempt went, from the status the backend sent.
    fn classify_response(ctx: &CallCtx, e: Option<&Error>) -> Option<Outcome> {
        let failure_codes = &ctx.target.as_ref()?.upstream.breaker.failure_codes;
        match ctx.upstream_status {
            // The caller's own deadline ran out (the backend saw the forwarded budget expire).
            Some(Code::DeadlineExceeded | Code::Cancelled)
                if ctx.caller_deadline && ctx.remaining().is_some_and(|r| r <= DEADLINE_SLACK) =>
            {
                None
            }
            Some(code) if failure_codes.contains(&code) => Some(Outcome::Failure),
            Some(_) => Some(Outcome::Success),
            // A response that ended without any grpc-status is broken (clients see INTERNAL),
            // unless something else already explains the end.
            None if e.is_none() => Some(Outcome::Failure),
            None => None,
        }
    }

    /// Attempts a call may make: the route's `retry.max_attempts`, else the upstream's.
    fn max_attempts(ctx: &CallCtx) -> u32 {
        ctx.target.as_ref().map_or(1, |t| {
            t.retry
                .as_ref()
                .map_or(t.upstream.max_attempts, |r| r.max_attempts())
        })
    }

    fn may_try_again(ctx: &CallCtx) -> bool {
        (ctx.tried.len() as u32) < Self::max_attempts(ctx) && !ctx.deadline_passed()
    }

    /// Ends an attempt whose trailers-only `code` is retried instead of relayed: the breaker
    /// and the attempt metrics see the status; pingora sees a retryable upstream error and
    /// asks `upstream_peer` for the next attempt (see `error_while_proxy`).
    fn hold_back_for_retry(ctx: &mut CallCtx, code: Code, wait: Duration) -> Box<Error> {
        let outcome = Self::classify_response(ctx, None);
        let counted_as = match outcome {
            Some(Outcome::Failure) => Some(AttemptOutcome::GrpcFailure),
            _ => Some(AttemptOutcome::Ok),
        };
        ctx.finish_attempt(outcome, counted_as);
        if let Some(addr) = ctx.endpoint {
            ctx.last_failure = Some(format!("{addr}: answered {code}"));
        }
        ctx.upstream_status = None;
        ctx.pending_retry = Some(wait);
        Error::explain(
            ErrorType::Custom("retrying on status"),
            format!("backend answered {code}; the route retries it"),
        )
        .into_up()
    }

    /// Asks the route's retry policy whether a trailers-only `code` is sent again; the wait
    /// before the next attempt when it is.
    fn retry_on_status(
        session: &Session,
        response: &ResponseHeader,
        ctx: &CallCtx,
        code: Code,
    ) -> Option<Duration> {
        let target = ctx.target.as_ref()?;
        let policy = target.retry.as_ref()?;
        let budget = target.upstream.retry_budget()?;
        let facts = RetryFacts {
            attempts: ctx.tried.len() as u32,
            request_bytes: ctx.frames.bytes,
            copy_truncated: session.as_ref().retry_buffer_truncated(),
            remaining: ctx.remaining(),
            pushback: Pushback::parse(
                response
                    .headers
                    .get("grpc-retry-pushback-ms")
                    .map(|v| v.as_bytes()),
            ),
            jitter: rand::random::<f64>(),
        };
        match policy.decide(code, facts, budget) {
            Verdict::RetryAfter(wait) => Some(wait),
            Verdict::Stop(NoRetry::BudgetExhausted) => {
                target.upstream.note_budget_exhausted();
                None
            }
            Verdict::Stop(_) => None,
        }
    }
}

async fn write_local_status(
    session: &mut Session,
    ctx: &mut CallCtx,
    status: &LocalStatus,
) -> Result<bool> {
    if let Some(web) = ctx.web.as_mut() {
        if session.response_written().is_none() && session.req_header().version != Version::HTTP_2 {
            // An HTTP/1.1 caller may still be sending its body, and pingora closes the
            // connection after a local answer: closed over unread bytes, the socket resets
            // and the answer is lost (the caller sees ECONNRESET). Read the rest first.
            crate::proxy::refusal::drain_request_body(session).await;
        }
        // In the caller's protocol: gRPC-Web or JSON.
        let tasks = web.local_answer(status, session.response_written().is_some());
        return session.write_response_tasks(tasks).await;
    }
    if session.response_written().is_none() {
        let head = status.trailers_only_response();
        session
            .write_response_tasks(vec![HttpTask::Header(Box::new(head), true)])
            .await
    } else {
        session
            .write_response_tasks(vec![HttpTask::Trailer(Some(Box::new(status.trailers())))])
            .await
    }
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
async fn refuse_non_grpc(session: &mut Session, ctx: &mut CallCtx) -> Result<bool> {
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
        let arrived = web::arrive(session, ctx, &self.web, transcoder).await?;
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
        if let Err(status) = self.admit(session.req_header(), peer, ctx) {
            write_local_status(session, ctx, &status).await?;
            ctx.local_status = Some(status);
            return Ok(true);
        }
        // An admitted JSON call's body becomes its one gRPC message (or a 400 answered here).
        let json_request = match pending_json {
            Some(pending) => {
                match web::json_request(session, ctx, pending, self.max_message_size).await? {
                    Some(message) => Some(message),
                    None => return Ok(true),
                }
            }
            None => None,
        };
        let hedge = ctx.target.as_ref().and_then(|t| t.hedge.clone());
        if hedge.is_some() || json_request.is_some() {
            // Not through pingora's upstream phases: hedge.rs carries hedged and JSON calls.
            let mut header = session.req_header().clone();
            self.upstream_request_filter(session, &mut header, ctx)
                .await?;
            let body = json_request.map(|message| vec![message]);
            let relayed = hedge::relay(
                &self.hedging,
                session,
                ctx,
                hedge.as_deref(),
                header,
                self.max_message_size,
                body,
            )
            .await?;
            if let hedge::Relayed::Local(status) = relayed {
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
        let Some(target) = ctx.target.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "call reached upstream_peer unrouted",
            ));
        };
        let after_status = ctx.pending_retry.take();
        if let Some(wait) = after_status {
            // The policy's back-off or the backend's pushback; the deadline leaves time for it
            // (checked when the retry was decided).
            tokio::time::sleep(wait).await;
        }
        if ctx.deadline_passed() {
            ctx.local_status = Some(Self::deadline_status(ctx));
            return Err(Error::new(ErrorType::Custom("deadline exceeded")));
        }
        let upstream = &target.upstream;
        if (ctx.tried.len() as u32) >= Self::max_attempts(ctx) {
            ctx.local_status = Some(Self::no_endpoint_status(ctx));
            return Err(Self::no_endpoint_error());
        }
        // A status retry goes to another endpoint when one is usable, else to one already
        // tried (the backend answered; it may answer differently now).
        let claimed = upstream
            .claim(ctx.region.as_deref(), &ctx.tried)
            .or_else(|| {
                after_status
                    .is_some()
                    .then(|| upstream.claim(ctx.region.as_deref(), &[]))
                    .flatten()
            });
        let Some((index, admission)) = claimed else {
            ctx.local_status = Some(Self::no_endpoint_status(ctx));
            return Err(Self::no_endpoint_error());
        };
        let endpoint = &upstream.endpoints[index];
        if !ctx.tried.is_empty() {
            if let Some(m) = &target.metrics {
                m.retry(after_status.is_some());
            }
        }
        ctx.tried.push(index);
        ctx.endpoint = Some(endpoint.addr);
        // A retry replays the request body through request_body_filter from its start.
        ctx.frames = frames::FrameScanner::default();
        if let Some(web) = ctx.web.as_mut() {
            web.restart_request();
        }
        let mut attempt = Attempt::new(endpoint.state.clone(), admission == Admission::Trial);
        match endpoint.state.dial.turn() {
            DialTurn::Go => {}
            DialTurn::Dial(ticket) => attempt.dial = Some(ticket),
            DialTurn::Wait => {
                // Another call is dialing this endpoint: open a stream on its connection
                // once it is up, instead of dialing one more.
                let bound = ctx.remaining().map_or(upstream.connect_timeout, |r| {
                    r.min(upstream.connect_timeout)
                });
                endpoint.state.dial.wait_settled(bound).await;
            }
        }
        if ctx.trace.as_ref().is_some_and(|t| t.is_recording()) {
            attempt.started = Some(std::time::SystemTime::now());
        }
        ctx.attempt = Some(attempt);
        Ok(endpoint.peer.for_attempt(ctx.remaining()))
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
        if ctx.web.is_some() {
            web::grpc_web::strip_hop_by_hop(upstream_request);
            // pingora drops an HTTP/1.x caller's `te` on the way to HTTP/2; gRPC servers
            // (gRPC C-core among them) refuse a request without it.
            upstream_request.insert_header(http::header::TE, "trailers")?;
        }
        if let Some(remaining) = ctx.remaining() {
            // The backend gets what is left of the budget, not the caller's original value.
            upstream_request.insert_header(
                "grpc-timeout",
                once_per_call(format_grpc_timeout(remaining))?,
            )?;
        }
        if ctx.tried.len() > 1 {
            // gRPC's retry design: the backend learns this is not the first attempt.
            upstream_request.insert_header(
                "grpc-previous-rpc-attempts",
                (ctx.tried.len() - 1).to_string(),
            )?;
        }
        if let Some(trace) = &ctx.trace {
            // The backend's spans join the caller's trace under the gateway's span.
            upstream_request.insert_header("traceparent", trace.traceparent().clone())?;
            if trace.restarted {
                upstream_request.remove_header("tracestate");
            }
        }
        Ok(())
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
            ctx.local_status = Some(match e {
                frames::FrameError::TooLarge { length, limit } => LocalStatus::new(
                    Code::ResourceExhausted,
                    format!(
                        "request message of {length} bytes is larger than this listener's \
                         max_message_size ({limit} bytes)"
                    ),
                ),
                frames::FrameError::Truncated => LocalStatus::new(
                    Code::Internal,
                    "the request body ended inside a gRPC message",
                ),
            });
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
        Self::attempt_failed(ctx, peer, &e, true);
        // Nothing reached the backend: another endpoint may take the call.
        e.set_retry(Self::may_try_again(ctx));
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
        Self::attempt_failed(ctx, peer, &e, false);
        // gRPC calls are not idempotent: retry only when the backend provably did not see it,
        // nothing came back yet, and the whole request body is still buffered for a resend.
        let retry = !ctx.response_started
            && failure::certainly_unprocessed(&e)
            && !session.as_ref().retry_buffer_truncated()
            && Self::may_try_again(ctx);
        e.set_retry(retry);
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
            if let Some(wait) = Self::retry_on_status(session, upstream_response, ctx, code) {
                return Err(Self::hold_back_for_retry(ctx, code, wait));
            }
        }
        ctx.response_started = true;
        if let Some(code) = trailers_only {
            if let Some(status) = expired_budget_status(ctx, code) {
                upstream_response.insert_header("grpc-status", status.code as u8 as u16)?;
                upstream_response
                    .insert_header("grpc-message", encode_grpc_message(&status.message))?;
            }
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
            ctx.upstream_status = Some(code);
            if let Some(status) = expired_budget_status(ctx, code) {
                let trailers = status.trailers();
                upstream_trailers.extend(trailers);
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
        let nothing_to_write = FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
        if ctx.upstream_status.is_some() {
            // The backend's status already went out; what failed afterwards (typically the
            // caller resetting its half of a finished stream) must not add a second ending.
            return nothing_to_write;
        }
        let status = if let Some(status) = ctx.local_status.clone() {
            status
        } else if ctx.deadline_passed() {
            Self::deadline_status(ctx)
        } else if failure::caused_by_caller(e) {
            // The caller cancelled or went away: nobody is left to answer.
            ctx.local_status = Some(LocalStatus::new(Code::Cancelled, "cancelled by the caller"));
            return nothing_to_write;
        } else if ctx.response_started {
            LocalStatus::new(
                Code::Unavailable,
                format!(
                    "upstream {:?} failed mid-call: {}",
                    ctx.upstream_name(),
                    ctx.last_failure
                        .as_deref()
                        .unwrap_or("stream ended without trailers")
                ),
            )
        } else {
            Self::no_endpoint_status(ctx)
        };
        if let Err(write_error) = write_local_status(session, ctx, &status).await {
            debug!(error = %write_error, "could not deliver the gateway's status to the caller");
        }
        ctx.local_status = Some(status);
        FailToProxy {
            error_code: 200,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut CallCtx) {
        let outcome = Self::classify_response(ctx, e);
        let counted_as = match outcome {
            Some(Outcome::Failure) => Some(AttemptOutcome::GrpcFailure),
            Some(Outcome::Success) => Some(AttemptOutcome::Ok),
            None => None,
        };
        ctx.finish_attempt(outcome, counted_as);
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

/// A header value that differs on every call (a remaining budget, a span id). Marked so that
/// HPACK sends it as a literal that is never indexed: indexed, each call's value would be added
/// to the connection's dynamic table and push out the values that do repeat (content-type,
/// user-agent, the authority), costing every later call bytes and table churn.
fn once_per_call(value: String) -> Result<http::HeaderValue> {
    let mut value = http::HeaderValue::try_from(value)
        .map_err(|e| Error::because(ErrorType::InternalError, "header value", e))?;
    value.set_sensitive(true);
    Ok(value)
}

/// How close to the deadline a backend's CANCELLED counts as "the forwarded budget ran out".
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

/// The backend gets the remaining budget as `grpc-timeout` and its timer races the gateway's.
/// When the backend wins, some servers (tonic) answer CANCELLED; the caller's deadline is what
/// expired, so the caller is told DEADLINE_EXCEEDED either way.
fn expired_budget_status(ctx: &mut CallCtx, code: Code) -> Option<LocalStatus> {
    let remaining = ctx.remaining()?;
    if code != Code::Cancelled || remaining > DEADLINE_SLACK {
        return None;
    }
    let status = GrpcProxy::deadline_status(ctx);
    ctx.upstream_status = Some(status.code);
    Some(status)
}

/// Ends the call with DEADLINE_EXCEEDED once its budget is spent. pingora has no per-call timer,
/// so this runs on every message in either direction; a silent backend is cut by the per-attempt
/// read timeout, which is set to the remaining budget (see `PeerTemplate::for_attempt`).
fn check_deadline(ctx: &mut CallCtx) -> Result<()> {
    if ctx.deadline_passed() {
        if ctx.local_status.is_none() {
            ctx.local_status = Some(GrpcProxy::deadline_status(ctx));
        }
        return Err(Error::explain(
            ErrorType::Custom("deadline exceeded"),
            "call deadline passed",
        ));
    }
    Ok(())
}
