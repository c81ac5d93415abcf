//! What one call carries from its arrival to its report, whichever driver carries it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;

use crate::auth::{DenyReason, IdentityHeaders, Principal};
use crate::breaker::Outcome;
use crate::endpoint::{DialTicket, EndpointState, InFlightGuard};
use crate::grpc::{Code, FrameScanner, LocalStatus};
use crate::metrics::AttemptOutcome;
use crate::observe::access_log::CallRecord;
use crate::observe::trace::{AttemptTiming, CallTrace};
use crate::proxy::CallGuard;
use crate::routing::RouteTarget;

/// The endpoint currently being tried; dropping it ends the endpoint's in-flight count.
#[derive(Debug)]
pub struct Attempt {
    pub endpoint: Arc<EndpointState>,
    /// Admitted as a half-open trial: its result decides the breaker.
    pub trial: bool,
    /// This attempt dials the endpoint for every call waiting on it (see `DialGate`).
    pub dial: Option<DialTicket>,
    /// When it began, kept only for a traced call (its child span per attempt).
    pub started: Option<SystemTime>,
    _in_flight: InFlightGuard,
}

impl Attempt {
    pub fn new(endpoint: Arc<EndpointState>, trial: bool) -> Self {
        let in_flight = endpoint.start_attempt();
        Self {
            endpoint,
            trial,
            dial: None,
            started: None,
            _in_flight: in_flight,
        }
    }
}

#[derive(Debug)]
pub struct CallCtx {
    pub started: Instant,
    pub target: Option<RouteTarget>,
    /// The call's slot on its upstream (`max_in_flight`), freed when the call ends.
    pub in_flight_permit: Option<crate::policy::InFlightPermit>,
    /// Absolute deadline: the caller's `grpc-timeout`, else the route's timeout.
    pub deadline: Option<Instant>,
    /// The deadline is the caller's own (not the route's): running out of it is nobody's fault.
    pub caller_deadline: bool,
    /// Region whose endpoints are preferred for this call.
    pub region: Option<String>,
    /// The caller came from the listener's `trusted_sources` or was authenticated: it may
    /// choose its region and force its trace to be sampled (set by admission).
    pub caller_trusted: bool,
    /// The `x-forwarded-for` the backend receives (set by admission).
    pub forwarded_for: Option<http::HeaderValue>,
    /// Endpoint indices already tried for this call; retries go elsewhere.
    pub tried: Vec<usize>,
    pub attempt: Option<Attempt>,
    /// The last attempt's failure, for the caller's error message.
    pub last_failure: Option<String>,
    /// The last attempt was a stream the backend turned away unprocessed (REFUSED_STREAM, above
    /// a GOAWAY's last-stream-id) on a connection that was up: the endpoint itself may take
    /// the call again, on another stream or a new connection.
    pub last_turned_away: bool,
    /// Upstream response headers arrived: from here on the call is committed to that endpoint.
    pub response_started: bool,
    /// `grpc-status` seen from the backend (trailers or trailers-only).
    pub upstream_status: Option<Code>,
    /// The route's retry policy sends the call again after this wait: the backend answered
    /// trailers-only with a listed status (set in the response filter, taken by the next
    /// `upstream_peer`).
    pub pending_retry: Option<Duration>,
    /// A status the gateway decided on itself, written by `fail_to_proxy` or a filter.
    pub local_status: Option<LocalStatus>,
    pub call_guard: Option<CallGuard>,
    /// The request was not gRPC at all and got a plain HTTP error: not a call, not counted.
    pub not_grpc: bool,
    /// The listener's in-flight gauge, decremented when the call is logged.
    pub in_flight_gauge: Option<prometheus::IntGauge>,
    /// Follows the request's gRPC messages (size limit, truncation); restarted per attempt,
    /// since a retry replays the body.
    pub frames: FrameScanner,
    /// Counts the response's messages and bytes.
    pub resp_frames: FrameScanner,
    /// The endpoint of the latest attempt: the one that answered, if any did.
    pub endpoint: Option<SocketAddr>,
    /// This call's per-method counters (none without `[admin]`, or before routing, or for a
    /// method without its own series yet: see `unlisted_method`).
    pub method_metrics: Option<Arc<crate::metrics::MethodMetrics>>,
    /// The gRPC path of a routed call whose method has no series of its own yet: whether it
    /// gets one is decided when the call ends (`finished_method_metrics`).
    pub unlisted_method: Option<Box<str>>,
    /// The call's trace when tracing is on (sampled or not: the upstream gets a `traceparent`
    /// either way).
    pub trace: Option<CallTrace>,
    /// A browser (gRPC-Web) or REST (JSON) call: how its request and answer are translated.
    pub web: Option<crate::proxy::web::WebCall>,
    /// Who the route's `auth` accepted (none on an open route).
    pub principal: Option<Arc<Principal>>,
    /// Why the route's `auth` refused the call.
    pub denied: Option<DenyReason>,
    /// Headers the call's identity changes upstream: the credential removed, the claim and
    /// client-certificate headers set, and every identity header the caller sent removed.
    pub identity: IdentityHeaders,
}

impl CallCtx {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            target: None,
            in_flight_permit: None,
            deadline: None,
            caller_deadline: false,
            region: None,
            tried: Vec::new(),
            attempt: None,
            last_failure: None,
            last_turned_away: false,
            caller_trusted: false,
            forwarded_for: None,
            response_started: false,
            upstream_status: None,
            pending_retry: None,
            local_status: None,
            call_guard: None,
            not_grpc: false,
            in_flight_gauge: None,
            frames: Default::default(),
            resp_frames: Default::default(),
            endpoint: None,
            method_metrics: None,
            unlisted_method: None,
            trace: None,
            web: None,
            principal: None,
            denied: None,
            identity: IdentityHeaders::default(),
        }
    }

    /// The access log's line for this finished call.
    pub fn access_record(
        &self,
        listener: &str,
        path: &str,
        user_agent: Option<&HeaderValue>,
        peer: Option<String>,
        code: Code,
    ) -> CallRecord {
        let elapsed = self.started.elapsed();
        CallRecord {
            ts: SystemTime::now() - elapsed,
            listener: listener.to_string(),
            peer,
            method: Some(path.to_string()),
            route: self.target.as_ref().map(|t| t.route.to_string()),
            upstream: self.target.as_ref().map(|t| t.upstream.name.clone()),
            endpoint: self.endpoint.map(|a| a.to_string()),
            attempts: self.tried.len() as u32,
            code: Some(code as u8),
            status: Some(code.as_str()),
            message: self.local_status.as_ref().map(|s| s.message.clone()),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            req_bytes: self.frames.bytes,
            resp_bytes: self.resp_frames.bytes,
            req_msgs: self.frames.messages,
            resp_msgs: self.resp_frames.messages,
            region: self.region.clone(),
            user_agent: user_agent.and_then(|v| v.to_str().ok()).map(str::to_string),
            trace_id: self.trace.as_ref().map(CallTrace::trace_id),
            protocol: self.protocol().as_str(),
            principal: self
                .principal
                .as_ref()
                .map(|p| format!("{}:{}", p.provider, p.subject)),
            denied: self.denied.map(DenyReason::label),
        }
    }

    /// Whether this call shows its method is real, so it may get series of its own: a backend
    /// answered it with something other than UNIMPLEMENTED, or the config names it (a route
    /// for that exact method, or a transcoding descriptor, through which every JSON call
    /// came). Made-up names a caller sends fail all three and count as `other`, so they cannot
    /// take the `max_methods` slots from real ones.
    pub fn vouches_for_its_method(&self) -> bool {
        let answered = self.response_started && self.upstream_status != Some(Code::Unimplemented);
        let named_by_route = self.target.as_ref().is_some_and(|t| t.route.contains('/'));
        answered || named_by_route || self.protocol() == crate::proxy::web::Protocol::Json
    }

    /// The per-method counters a finished call is recorded in: its method's own, or `other`
    /// (the method is not known yet and this call does not vouch for it).
    pub fn finished_method_metrics(&mut self) -> Option<Arc<crate::metrics::MethodMetrics>> {
        if let Some(known) = &self.method_metrics {
            return Some(known.clone());
        }
        let path = self.unlisted_method.take()?;
        let route = self.target.as_ref()?.metrics.as_ref()?;
        let grpc = crate::routing::parse_grpc_path(&path)?;
        let vouched = self.vouches_for_its_method();
        Some(
            route
                .methods
                .for_finished_call(&path, grpc.service, grpc.method, vouched),
        )
    }

    /// How the call arrived: native gRPC, gRPC-Web or JSON.
    pub fn protocol(&self) -> crate::proxy::web::Protocol {
        self.web
            .as_ref()
            .map_or(crate::proxy::web::Protocol::Grpc, |w| w.protocol())
    }

    /// Remaining budget, `Some(ZERO)` once the deadline has passed, `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    pub fn deadline_passed(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }

    /// The status this call ended with, as far as the gateway knows.
    pub fn final_code(&self) -> Option<Code> {
        self.local_status
            .as_ref()
            .map(|s| s.code)
            .or(self.upstream_status)
    }

    /// Ends the current attempt, feeding its outcome (`None`: no verdict) to the endpoint's
    /// breaker under the upstream's ejection cap.
    pub fn finish_attempt(&mut self, outcome: Option<Outcome>, counted_as: Option<AttemptOutcome>) {
        if let Some(attempt) = self.attempt.take() {
            self.end_attempt(attempt, outcome, counted_as);
        }
    }

    /// Ends `attempt` (the current one, or one of a hedged call's others): its endpoint's
    /// counters, its span and its breaker see how it went.
    pub fn end_attempt(
        &mut self,
        attempt: Attempt,
        outcome: Option<Outcome>,
        counted_as: Option<AttemptOutcome>,
    ) {
        if let Some(counted_as) = counted_as {
            attempt.endpoint.count_attempt(counted_as);
        }
        if let (Some(start), Some(trace)) = (attempt.started, self.trace.as_mut()) {
            trace.attempt_ended(AttemptTiming {
                endpoint: attempt.endpoint.addr,
                start,
                end: SystemTime::now(),
                outcome: counted_as.map_or("cancelled", AttemptOutcome::as_str),
            });
        }
        match (outcome, &self.target) {
            (Some(Outcome::Failure), Some(target)) => {
                let endpoint = &attempt.endpoint;
                target.upstream.with_ejection_rules(endpoint, |may_open| {
                    endpoint.record(Outcome::Failure, attempt.trial, may_open)
                })
            }
            (Some(outcome), _) => attempt.endpoint.record(outcome, attempt.trial, true),
            (None, _) if attempt.trial => attempt.endpoint.release_trial(),
            (None, _) => {}
        }
    }

    pub fn upstream_name(&self) -> &str {
        self.target
            .as_ref()
            .map(|t| t.upstream.name.as_str())
            .unwrap_or("-")
    }
}

impl Default for CallCtx {
    fn default() -> Self {
        Self::new()
    }
}
