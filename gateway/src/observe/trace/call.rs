//! One call's trace: the caller's W3C trace context read from its headers, the gateway's server
//! span (sampled parent-based), the `traceparent` the upstream receives, and at the end the
//! span's attributes and a child span per attempt when there was more than one.

use std::net::SocketAddr;
use std::time::SystemTime;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SdkTracer, ShouldSample, Span};

use crate::observe::access_log::CallRecord;

/// Reads W3C headers from a request's header map.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// When one attempt of a call ran, where, and how it ended (`AttemptOutcome::as_str`, or
/// "cancelled" when the caller ended it).
#[derive(Debug, Clone)]
pub struct AttemptTiming {
    pub endpoint: SocketAddr,
    pub start: SystemTime,
    pub end: SystemTime,
    pub outcome: &'static str,
}

/// The trace of one call, started when its request arrived.
#[derive(Debug)]
pub struct CallTrace {
    span: Span,
    tracer: SdkTracer,
    /// The caller sent a `traceparent` the gateway could not parse: the trace restarts here,
    /// and the caller's `tracestate`, which belonged to it, is not forwarded (W3C).
    pub restarted: bool,
    /// What the upstream receives, built once per call (every attempt sends the same).
    traceparent: http::HeaderValue,
    attempts: Vec<AttemptTiming>,
}

/// Span name until the call ends: the real one (the method) is set only on spans that are
/// recorded, so a call that is not sampled allocates no name.
const PENDING_NAME: &str = "grpc call";

/// The request's own parent context (empty without a valid `traceparent`), and whether it
/// carried one that was invalid.
fn caller_context(headers: &http::HeaderMap) -> (Context, bool) {
    let sent = headers.contains_key("traceparent");
    let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &Headers(headers));
    let valid = cx.span().span_context().is_valid();
    (cx, sent && !valid)
}

/// Who decides whether a call's trace is kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplingTrust {
    /// The caller (a trusted source, or authenticated): its `traceparent`'s sampled flag
    /// decides, as W3C intends between services of one operator.
    Caller,
    /// Anyone else: the configured ratio decides, whatever the flag says, so a caller cannot
    /// make the gateway record and export every one of its calls. Its trace id is kept, so a
    /// kept call still joins the caller's trace.
    Ratio(f64),
}

/// The caller's parent context with the sampling decision `trust` allows it.
fn parent_for(parent: Context, trust: SamplingTrust) -> Context {
    let SamplingTrust::Ratio(ratio) = trust else {
        return parent;
    };
    let sc = parent.span().span_context().clone();
    if !sc.is_valid() {
        // No parent: the configured sampler's root ratio decides anyway.
        return parent;
    }
    let decision = Sampler::TraceIdRatioBased(ratio)
        .should_sample(
            None,
            sc.trace_id(),
            PENDING_NAME,
            &SpanKind::Server,
            &[],
            &[],
        )
        .decision;
    let flags = if decision == SamplingDecision::RecordAndSample {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Context::new().with_remote_span_context(SpanContext::new(
        sc.trace_id(),
        sc.span_id(),
        flags,
        true,
        sc.trace_state().clone(),
    ))
}

impl CallTrace {
    /// Starts the server span of a call that arrived at `arrived` with `headers`.
    pub(super) fn start(
        tracer: &SdkTracer,
        headers: &http::HeaderMap,
        trust: SamplingTrust,
        arrived: SystemTime,
    ) -> Self {
        let (parent, restarted) = caller_context(headers);
        let parent = parent_for(parent, trust);
        let span = tracer
            .span_builder(PENDING_NAME)
            .with_kind(SpanKind::Server)
            .with_start_time(arrived)
            .start_with_context(tracer, &parent);
        let traceparent = traceparent(span.span_context());
        Self {
            span,
            tracer: tracer.clone(),
            restarted,
            traceparent,
            attempts: Vec::new(),
        }
    }

    /// Sampled: the span is recorded and exported when the call ends.
    pub fn is_recording(&self) -> bool {
        self.span.is_recording()
    }

    /// The trace id in lowercase hex, as in `traceparent` (the access log's `trace_id`).
    pub fn trace_id(&self) -> String {
        let id = &self.traceparent.as_bytes()[3..3 + 32];
        String::from_utf8_lossy(id).into_owned()
    }

    /// What the upstream receives: the same trace, the gateway's span as parent, the sampling
    /// decision. Marked sensitive: it differs on every call, so HPACK must not index it.
    pub fn traceparent(&self) -> &http::HeaderValue {
        &self.traceparent
    }

    /// Keeps an attempt's timing for its child span (only while recording).
    pub fn attempt_ended(&mut self, timing: AttemptTiming) {
        if self.is_recording() {
            self.attempts.push(timing);
        }
    }

    /// Ends the call's span: attributes from the finished call, the span status from its gRPC
    /// code, and a child span per attempt when there was more than one. `server` is the
    /// authority the caller addressed.
    pub fn finish(self, call: &CallRecord, server: Option<(&str, Option<u16>)>) {
        if !self.is_recording() {
            return;
        }
        let end = SystemTime::now();
        let Self {
            mut span,
            tracer,
            attempts,
            ..
        } = self;
        span.update_name(span_name(call));
        span.set_attributes(call_attributes(call, server));
        let code = call.code.unwrap_or(2);
        if is_server_error(code) {
            let why = call
                .message
                .clone()
                .or_else(|| call.status.map(str::to_string))
                .unwrap_or_default();
            span.set_status(Status::error(why));
        }
        if attempts.len() <= 1 {
            span.end_with_timestamp(end);
            return;
        }
        let name = span_name(call);
        let cx = Context::new().with_span(span);
        for (n, attempt) in attempts.iter().enumerate() {
            let mut child = tracer
                .span_builder(name.clone())
                .with_kind(SpanKind::Client)
                .with_start_time(attempt.start)
                .with_attributes(attempt_attributes(n + 1, attempt))
                .start_with_context(&tracer, &cx);
            if attempt.outcome != "ok" {
                child.set_status(Status::error(attempt.outcome));
            }
            child.end_with_timestamp(attempt.end);
        }
        cx.span().end_with_timestamp(end);
    }
}

/// `00-{trace id}-{span id}-{flags}`, written straight into its 55 bytes (this runs for every
/// call while tracing is on, sampled or not).
fn traceparent(cx: &SpanContext) -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    fn hex(out: &mut [u8], bytes: &[u8]) {
        for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
    }
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex(&mut text[3..35], &cx.trace_id().to_bytes());
    hex(&mut text[36..52], &cx.span_id().to_bytes());
    hex(&mut text[53..55], &[cx.trace_flags().to_u8()]);
    let mut value = http::HeaderValue::from_bytes(&text).expect("hex digits and dashes");
    value.set_sensitive(true);
    value
}

fn span_name(call: &CallRecord) -> String {
    let path = call.method.as_deref().unwrap_or("/");
    path.strip_prefix('/').unwrap_or(path).to_string()
}

/// gRPC codes that mark a server span as failed (OpenTelemetry's RPC conventions): the
/// others (NOT_FOUND, PERMISSION_DENIED, ...) are the caller's doing, not the server's.
fn is_server_error(code: u8) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

fn string(key: &'static str, value: &Option<String>) -> Option<KeyValue> {
    value.as_ref().map(|v| KeyValue::new(key, v.clone()))
}

fn split_addr(addr: &str) -> Option<(String, i64)> {
    let parsed: SocketAddr = addr.parse().ok()?;
    Some((parsed.ip().to_string(), i64::from(parsed.port())))
}

/// OpenTelemetry's RPC semantic-convention attributes, plus Strait's own.
fn call_attributes(call: &CallRecord, server: Option<(&str, Option<u16>)>) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(14);
    attrs.push(KeyValue::new("rpc.system", "grpc"));
    let name = span_name(call);
    if let Some((service, method)) = name.split_once('/') {
        attrs.push(KeyValue::new("rpc.service", service.to_string()));
        attrs.push(KeyValue::new("rpc.method", method.to_string()));
    }
    attrs.push(KeyValue::new(
        "rpc.grpc.status_code",
        i64::from(call.code.unwrap_or(2)),
    ));
    if let Some((host, port)) = server {
        attrs.push(KeyValue::new("server.address", host.to_string()));
        if let Some(port) = port {
            attrs.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    if let Some((ip, port)) = call.peer.as_deref().and_then(split_addr) {
        attrs.push(KeyValue::new("network.peer.address", ip));
        attrs.push(KeyValue::new("network.peer.port", port));
    }
    attrs.push(KeyValue::new("strait.listener", call.listener.clone()));
    attrs.extend(string("strait.route", &call.route));
    attrs.extend(string("strait.upstream", &call.upstream));
    attrs.extend(string("strait.endpoint", &call.endpoint));
    attrs.push(KeyValue::new("strait.attempts", i64::from(call.attempts)));
    attrs.extend(string("strait.region", &call.region));
    // The accepted caller's subject (never its credential).
    if let Some((_, subject)) = call.principal.as_deref().and_then(|p| p.split_once(':')) {
        attrs.push(KeyValue::new("enduser.id", subject.to_string()));
    }
    attrs
}

fn attempt_attributes(number: usize, attempt: &AttemptTiming) -> Vec<KeyValue> {
    vec![
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("server.address", attempt.endpoint.ip().to_string()),
        KeyValue::new("server.port", i64::from(attempt.endpoint.port())),
        KeyValue::new("strait.endpoint", attempt.endpoint.to_string()),
        KeyValue::new("strait.attempt", number as i64),
        KeyValue::new("strait.outcome", attempt.outcome),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_valid_traceparent_is_the_parent() {
        let (cx, restarted) = caller_context(&headers(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]));
        assert!(!restarted);
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_sampled() && sc.is_remote());
    }

    #[test]
    fn invalid_or_missing_traceparents_start_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "garbage",
        ] {
            let (cx, restarted) = caller_context(&headers(&[("traceparent", bad)]));
            assert!(restarted, "{bad}");
            assert!(!cx.span().span_context().is_valid(), "{bad}");
        }
        let (cx, restarted) = caller_context(&headers(&[]));
        assert!(!restarted && !cx.span().span_context().is_valid());
    }

    #[test]
    fn traceparent_is_w3c_text() {
        let cx = SpanContext::new(
            opentelemetry::trace::TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            opentelemetry::trace::SpanId::from(0x00f067aa0ba902b7_u64),
            opentelemetry::trace::TraceFlags::SAMPLED,
            false,
            Default::default(),
        );
        let value = traceparent(&cx);
        assert_eq!(
            value.to_str().unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        );
        assert!(value.is_sensitive());
        let unsampled = SpanContext::new(
            cx.trace_id(),
            cx.span_id(),
            opentelemetry::trace::TraceFlags::default(),
            false,
            Default::default(),
        );
        assert!(traceparent(&unsampled).to_str().unwrap().ends_with("-00"));
    }

    /// An untrusted caller's sampled flag forces nothing: the ratio decides, on its trace id.
    #[test]
    fn only_a_trusted_caller_forces_sampling() {
        let sampled = caller_context(&headers(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]))
        .0;
        let kept = |cx: &Context| cx.span().span_context().is_sampled();
        assert!(kept(&parent_for(sampled.clone(), SamplingTrust::Caller)));
        let never = parent_for(sampled.clone(), SamplingTrust::Ratio(0.0));
        assert!(!kept(&never));
        let sc = never.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c",
            "the trace id stays"
        );
        assert!(sc.is_remote());
        assert!(kept(&parent_for(sampled, SamplingTrust::Ratio(1.0))));
        // An unsampled parent may be kept by the ratio too: the operator's sampler decides.
        let unsampled = caller_context(&headers(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        )]))
        .0;
        assert!(kept(&parent_for(unsampled, SamplingTrust::Ratio(1.0))));
        // Without a parent there is nothing to rewrite.
        let none = parent_for(Context::new(), SamplingTrust::Ratio(1.0));
        assert!(!none.span().span_context().is_valid());
    }

    #[test]
    fn server_errors_follow_the_rpc_conventions() {
        let errors: Vec<u8> = (0..=16).filter(|c| is_server_error(*c)).collect();
        assert_eq!(errors, vec![2, 4, 12, 13, 14, 15]);
    }
}
