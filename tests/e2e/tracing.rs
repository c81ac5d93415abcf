//! OpenTelemetry tracing against a real OTLP receiver (a tonic server of the collector's trace
//! service): a trace crosses caller -> gateway -> backend with one trace id, the caller's
//! sampling decision is followed, a retried call has a child span per attempt, a collector
//! that is down costs no call, and `[tracing]` follows reload.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use strait_tests::net::{dead_addr, free_addr, metric, wait_metric, wait_metrics};
use strait_tests::otlp::{Attr, OtlpReceiver, ReceivedSpan};
use strait_tests::{raw, Backend, BackendOptions, Gateway};
use tonic::Request;

use crate::fixture::{client, config, req, Ep};

const WAIT: Duration = Duration::from_secs(10);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn endpoints(addrs: &[SocketAddr]) -> Vec<Ep> {
    addrs
        .iter()
        .map(|addr| Ep {
            addr: *addr,
            weight: 100,
            region: "eu-west",
        })
        .collect()
}

/// A gateway with the access log and `[tracing]` (the receiver's endpoint plus `settings`) in
/// front of `backends`, and the receiver it exports to.
struct Traced {
    receiver: OtlpReceiver,
    listen: SocketAddr,
    admin: SocketAddr,
    gateway: Gateway,
}

async fn start_traced(backends: &[SocketAddr], settings: &str) -> Traced {
    let receiver = OtlpReceiver::start().await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = with_tracing(
        listen,
        &endpoints(backends),
        admin,
        &format!("otlp_endpoint = \"{}\"\n{settings}", receiver.endpoint()),
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    Traced {
        receiver,
        listen,
        admin,
        gateway,
    }
}

fn with_tracing(listen: SocketAddr, eps: &[Ep], admin: SocketAddr, tracing: &str) -> String {
    format!(
        "{}\n[admin]\nlisten = \"{admin}\"\n\n[access_log]\npath = \"access.log\"\n\n[tracing]\n{tracing}\n",
        config(listen, eps, "", "")
    )
}

/// A unary call carrying `headers`; returns what the backend saw of the trace context.
async fn call_with(
    listen: SocketAddr,
    headers: &[(&'static str, &str)],
) -> (Option<String>, Option<String>) {
    let mut c = client(listen).await;
    let mut request = Request::new(req(b"traced"));
    request
        .metadata_mut()
        .insert("x-echo-trace-context", "1".parse().expect("ascii"));
    for (name, value) in headers {
        request
            .metadata_mut()
            .insert(*name, value.parse().expect("ascii"));
    }
    let response = c.unary(request).await.expect("served");
    let seen = |name: &str| {
        response
            .metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    (seen("x-seen-traceparent"), seen("x-seen-tracestate"))
}

/// `00-TRACE-SPAN-FLAGS` split into its parts.
fn parts(traceparent: &str) -> (String, String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00", "{traceparent}");
    (
        fields[1].to_string(),
        fields[2].to_string(),
        fields[3].to_string(),
    )
}

fn access_lines(gateway: &Gateway, n: usize) -> Vec<serde_json::Value> {
    let path = gateway.dir.path().join("access.log");
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn span_of_trace(spans: &[ReceivedSpan], trace: &str) -> Vec<ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace)
        .cloned()
        .collect()
}

/// The caller's trace goes on through the gateway to the backend: one trace id, the gateway's
/// span between them with the RPC conventions' attributes, `tracestate` unchanged; the access
/// log names the trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_crosses_caller_gateway_backend() {
    let b0 = Backend::start(BackendOptions::named("b0")).await;
    let Traced {
        receiver,
        listen,
        admin,
        gateway,
    } = start_traced(&[b0.addr], "service_name = \"edge-test\"\nsample = 0.0").await;
    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (seen, state) = call_with(
        listen,
        &[
            ("traceparent", &caller),
            ("tracestate", "vendor=abc,other=1"),
        ],
    )
    .await;
    let (trace, parent, flags) = parts(&seen.expect("the backend got a traceparent"));
    assert_eq!(trace, TRACE, "the same trace reaches the backend");
    assert_ne!(
        parent, CALLER_SPAN,
        "the backend's parent is the gateway's span"
    );
    assert_eq!(flags, "01");
    assert_eq!(state.as_deref(), Some("vendor=abc,other=1"));

    let spans = receiver
        .wait_for(WAIT, |spans| !span_of_trace(spans, TRACE).is_empty())
        .await;
    let ours = span_of_trace(&spans, TRACE);
    assert_eq!(ours.len(), 1, "{ours:#?}");
    let span = &ours[0];
    assert_eq!(span.span_id, parent);
    assert_eq!(span.parent_span_id, CALLER_SPAN);
    assert_eq!(span.name, "bench.Echo/Unary");
    assert_eq!(span.kind, 2, "a server span");
    assert_eq!(span.service_name.as_deref(), Some("edge-test"));
    assert_eq!(span.str_attr("rpc.system"), Some("grpc"));
    assert_eq!(span.str_attr("rpc.service"), Some("bench.Echo"));
    assert_eq!(span.str_attr("rpc.method"), Some("Unary"));
    assert_eq!(span.int_attr("rpc.grpc.status_code"), Some(0));
    assert_eq!(span.str_attr("server.address"), Some("127.0.0.1"));
    assert_eq!(span.int_attr("server.port"), Some(i64::from(listen.port())));
    assert_eq!(span.str_attr("network.peer.address"), Some("127.0.0.1"));
    assert_eq!(span.str_attr("strait.upstream"), Some("echo"));
    assert_eq!(
        span.str_attr("strait.endpoint"),
        Some(b0.addr.to_string().as_str())
    );
    assert_eq!(span.attr("strait.attempts"), Some(&Attr::Int(1)));
    assert_eq!(span.status_code, 0, "OK leaves the status unset");
    assert!(span.end_unix_nano >= span.start_unix_nano && span.start_unix_nano > 0);

    let lines = tokio::task::block_in_place(|| access_lines(&gateway, 1));
    assert_eq!(lines[0]["trace_id"], TRACE);
    // Counted once the collector has answered the export.
    assert_eq!(
        tokio::task::block_in_place(|| wait_metric(
            admin,
            "strait_trace_spans_total",
            &[("result", "exported")],
            1.0
        )),
        Some(1.0)
    );
}

/// With `sample = 0` only a caller's sampled flag makes a span. Every call still carries a
/// traceparent upstream (a fresh trace without a parent; the caller's trace with its flag),
/// and a malformed traceparent restarts the trace and drops the caller's tracestate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_sampling_decision_is_followed() {
    let b0 = Backend::start(BackendOptions::named("b0")).await;
    let Traced {
        receiver,
        listen,
        gateway,
        ..
    } = start_traced(&[b0.addr], "sample = 0").await;

    let (fresh, _) = call_with(listen, &[]).await;
    let (fresh_trace, _, fresh_flags) = parts(&fresh.expect("a traceparent"));
    assert_eq!(fresh_flags, "00", "not sampled at sample = 0");
    assert_ne!(fresh_trace, "0".repeat(32));

    let unsampled = format!("00-{TRACE}-{CALLER_SPAN}-00");
    let (seen, _) = call_with(listen, &[("traceparent", &unsampled)]).await;
    let (trace, parent, flags) = parts(&seen.expect("a traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
    assert_ne!(parent, CALLER_SPAN);

    let (seen, state) = call_with(
        listen,
        &[
            ("traceparent", "00-not-a-trace-01"),
            ("tracestate", "vendor=abc"),
        ],
    )
    .await;
    let (restarted, _, _) = parts(&seen.expect("a traceparent"));
    assert_ne!(restarted, TRACE);
    assert_eq!(
        state, None,
        "a broken traceparent's tracestate is not forwarded"
    );

    let sampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let sampled = format!("00-{sampled_trace}-b7ad6b7169203331-01");
    call_with(listen, &[("traceparent", &sampled)]).await;

    // Spans leave in the order calls end: once the sampled one is here, the others had their
    // chance.
    let spans = receiver
        .wait_for(WAIT, |spans| {
            !span_of_trace(spans, sampled_trace).is_empty()
        })
        .await;
    assert_eq!(span_of_trace(&spans, sampled_trace).len(), 1);
    assert_eq!(spans.len(), 1, "only the sampled parent's call: {spans:#?}");

    let lines = tokio::task::block_in_place(|| access_lines(&gateway, 4));
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            fresh_trace.as_str(),
            TRACE,
            restarted.as_str(),
            sampled_trace
        ]
    );
}

/// Without a parent, `sample = 1` traces every call as a root span; the gateway's own errors
/// are error spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_parent_are_sampled_by_ratio() {
    let b0 = Backend::start(BackendOptions::named("b0")).await;
    // The gateway is bound: fields left to `..` would be dropped with the temporary.
    let Traced {
        receiver,
        listen,
        gateway: _gateway,
        ..
    } = start_traced(&[b0.addr], "sample = 1.0").await;
    let (seen, _) = call_with(listen, &[]).await;
    let (trace, span_id, flags) = parts(&seen.expect("a traceparent"));
    assert_eq!(flags, "01");
    let unrouted = raw::call(listen, "/other.Service/Call", &[], raw::grpc_frame(b"x"))
        .await
        .unwrap();
    assert_eq!(unrouted.grpc_status().as_deref(), Some("12"));

    let spans = receiver.wait_for(WAIT, |spans| spans.len() >= 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let root = spans
        .iter()
        .find(|s| s.trace_id == trace)
        .expect("the call's span");
    assert_eq!(root.span_id, span_id);
    assert_eq!(root.parent_span_id, "", "a root span");
    let failed = spans
        .iter()
        .find(|s| s.name == "other.Service/Call")
        .expect("the unrouted call's span");
    assert_eq!(failed.int_attr("rpc.grpc.status_code"), Some(12));
    assert_eq!(failed.status_code, 2, "UNIMPLEMENTED is a server error");
    assert_eq!(failed.attr("strait.attempts"), Some(&Attr::Int(0)));
    assert_eq!(failed.attr("strait.upstream"), None);
}

/// A call retried after a refused connect: the server span counts two attempts and has one
/// client span per attempt, each naming its endpoint and how it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_call_has_a_span_per_attempt() {
    let b0 = Backend::start(BackendOptions::named("b0")).await;
    let dead = dead_addr();
    // Equal weights, the dead endpoint first: the first call tries it first.
    // The gateway is bound: fields left to `..` would be dropped with the temporary.
    let Traced {
        receiver,
        listen,
        gateway: _gateway,
        ..
    } = start_traced(&[dead, b0.addr], "sample = 1").await;
    let (server, attempts) = two_attempt_spans(&receiver, listen).await;
    let server_span = server.span_id.clone();
    for (n, (attempt, (endpoint, outcome, status))) in attempts
        .iter()
        .zip([(dead, "connect_error", 2), (b0.addr, "ok", 0)])
        .enumerate()
    {
        assert_eq!(
            attempt.parent_span_id, server_span,
            "a child of the call's span"
        );
        assert_eq!(attempt.name, "bench.Echo/Unary");
        assert_eq!(attempt.int_attr("strait.attempt"), Some(n as i64 + 1));
        assert_eq!(
            attempt.str_attr("strait.endpoint"),
            Some(endpoint.to_string().as_str())
        );
        assert_eq!(attempt.str_attr("strait.outcome"), Some(outcome));
        assert_eq!(attempt.status_code, status);
        assert!(attempt.start_unix_nano >= server.start_unix_nano);
        assert!(attempt.end_unix_nano <= server.end_unix_nano);
    }
    assert!(attempts[0].end_unix_nano <= attempts[1].start_unix_nano);
}

/// A collector that is down: every call is served, the spans are counted as failed exports;
/// once a collector listens there, spans arrive again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_no_call() {
    let b0 = Backend::start(BackendOptions::named("b0")).await;
    let (listen, admin, collector) = (free_addr(), free_addr(), free_addr());
    let text = with_tracing(
        listen,
        &endpoints(&[b0.addr]),
        admin,
        &format!("otlp_endpoint = \"http://{collector}\"\nsample = 1"),
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut c = client(listen).await;
    for _ in 0..50 {
        c.unary(req(b"while the collector is down"))
            .await
            .expect("served without a collector");
    }
    let failed = tokio::task::block_in_place(|| {
        wait_metrics(admin, WAIT, |text| {
            metric(
                text,
                "strait_trace_spans_total",
                &[("result", "export_failed")],
            )
            .is_some_and(|n| n >= 1.0)
        })
    });
    assert!(failed.is_some(), "failed exports are counted");
    assert!(gateway
        .wait_for_log(&["could not export spans"], WAIT)
        .is_some());

    let receiver = OtlpReceiver::start_at(collector).await;
    // tonic's channel reconnects with back-off: keep calling until a span gets through.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut calls = 50;
    while receiver.spans().is_empty() {
        assert!(
            Instant::now() < deadline,
            "spans never reached the restarted collector"
        );
        c.unary(req(b"collector back")).await.expect("served");
        calls += 1;
        receiver
            .wait_for(Duration::from_millis(300), |s| !s.is_empty())
            .await;
    }
    assert_eq!(b0.calls(), calls);
}

/// `[tracing]` added by reload starts tracing (the backend gets the gateway's traceparent);
/// removed, a caller's traceparent passes through untouched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_tracing() {
    let receiver = OtlpReceiver::start().await;
    let b0 = Backend::start(BackendOptions::named("b0")).await;
    let listen = free_addr();
    let without = config(listen, &endpoints(&[b0.addr]), "", "");
    let with = format!(
        "{without}\n[tracing]\notlp_endpoint = \"{}\"\nsample = 1\n",
        receiver.endpoint()
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&without, listen));
    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (seen, _) = call_with(listen, &[("traceparent", &caller)]).await;
    assert_eq!(
        seen.as_deref(),
        Some(caller.as_str()),
        "untouched without [tracing]"
    );

    gateway.write_config(&with);
    gateway.signal("HUP");
    assert!(tokio::task::block_in_place(|| gateway
        .wait_for_log(&["reloaded"], WAIT)
        .is_some()));
    let (seen, _) = call_with(listen, &[("traceparent", &caller)]).await;
    let (trace, parent, _) = parts(&seen.expect("a traceparent"));
    assert_eq!(trace, TRACE);
    assert_ne!(parent, CALLER_SPAN, "the gateway's span is the parent now");
    let spans = receiver.wait_for(WAIT, |s| !s.is_empty()).await;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span_id, parent);

    gateway.write_config(&without);
    gateway.signal("HUP");
    assert!(
        tokio::task::block_in_place(|| gateway.wait_for_log_count("reloaded", 2, WAIT)),
        "the second reload never happened"
    );
    let (seen, _) = call_with(listen, &[("traceparent", &caller)]).await;
    assert_eq!(seen.as_deref(), Some(caller.as_str()), "untouched again");
}

/// A hedged call is carried by the relay, which records a client span per attempt like
/// pingora's path (at 507e6a3 it recorded none): the attempt at a dead endpoint fails to
/// connect, the next one (sent at once, as a hedge) answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_call_has_a_span_per_attempt() {
    let b0 = Backend::start(BackendOptions::named("b0")).await;
    let dead = dead_addr();
    let receiver = OtlpReceiver::start().await;
    let (listen, admin) = (free_addr(), free_addr());
    // Equal weights, the dead endpoint first: the first call tries it first.
    let text = with_tracing(
        listen,
        &endpoints(&[dead, b0.addr]),
        admin,
        &format!("otlp_endpoint = \"{}\"\nsample = 1", receiver.endpoint()),
    )
    .replace(
        "upstream = \"echo\"\n",
        "upstream = \"echo\"\nidempotent = true\nhedge = { delay = \"5s\", max_attempts = 2 }\n",
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let (server, attempts) = two_attempt_spans(&receiver, listen).await;
    for (attempt, (endpoint, outcome)) in attempts
        .iter()
        .zip([(dead, "connect_error"), (b0.addr, "ok")])
    {
        assert_eq!(attempt.parent_span_id, server.span_id);
        assert_eq!(
            attempt.str_attr("strait.endpoint"),
            Some(endpoint.to_string().as_str())
        );
        assert_eq!(attempt.str_attr("strait.outcome"), Some(outcome));
    }
}

/// A call of two attempts, and its spans at the receiver: the server span (counting two
/// attempts) and the two client spans in attempt order.
async fn two_attempt_spans(
    receiver: &OtlpReceiver,
    listen: SocketAddr,
) -> (ReceivedSpan, Vec<ReceivedSpan>) {
    let (seen, _) = call_with(listen, &[]).await;
    let (trace, server_span, _) = parts(&seen.expect("a traceparent"));
    let spans = receiver
        .wait_for(WAIT, |spans| span_of_trace(spans, &trace).len() >= 3)
        .await;
    let ours = span_of_trace(&spans, &trace);
    assert_eq!(ours.len(), 3, "{ours:#?}");
    let server = ours
        .iter()
        .find(|s| s.kind == 2)
        .expect("the server span")
        .clone();
    assert_eq!(server.span_id, server_span);
    assert_eq!(server.attr("strait.attempts"), Some(&Attr::Int(2)));
    let mut attempts: Vec<ReceivedSpan> = ours.into_iter().filter(|s| s.kind == 3).collect();
    attempts.sort_by_key(|s| s.int_attr("strait.attempt"));
    assert_eq!(attempts.len(), 2);
    (server, attempts)
}

/// Issue #34 item 7: a caller outside the listener's `trusted_sources` (here everyone on
/// loopback) cannot make the gateway record and export its calls by sending a sampled
/// `traceparent`: at `sample = 0` its call makes no span, though the trace id goes on to the
/// backend. The same caller authenticated by the route's `auth` is trusted, and its sampled
/// flag is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_or_authenticated_callers_force_sampling() {
    let b0 = Backend::start(BackendOptions::named("b0")).await;
    let receiver = OtlpReceiver::start().await;
    let (listen, admin) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.txt"),
        strait_tests::jwt::api_key_line("ci", "key-ci"),
    )
    .unwrap();
    let text = with_tracing(
        listen,
        &endpoints(&[b0.addr]),
        admin,
        &format!("otlp_endpoint = \"{}\"\nsample = 0", receiver.endpoint()),
    )
    .replace(
        &format!("listen = \"{listen}\"\n"),
        &format!("listen = \"{listen}\"\ntrusted_sources = [\"10.0.0.0/8\"]\n"),
    ) + r#"
[[route]]
listener = "public"
service = "bench.Echo"
method = "ClientStream"
upstream = "echo"
auth = ["keys"]

[[auth]]
name = "keys"
[auth.api_keys]
keys_file = "keys.txt"
"#;
    let _gateway = tokio::task::block_in_place(|| Gateway::start_in(dir, &text, listen));

    let forced = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (seen, _) = call_with(listen, &[("traceparent", &forced)]).await;
    let (trace, _, flags) = parts(&seen.expect("a traceparent"));
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        (TRACE, "00"),
        "the trace goes on, unsampled: sample = 0 decides for an untrusted caller"
    );

    let authenticated_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut c = client(listen).await;
    let mut request = Request::new(tokio_stream::iter(vec![req(b"one")]));
    let metadata = request.metadata_mut();
    metadata.insert("x-api-key", "key-ci".parse().unwrap());
    metadata.insert(
        "traceparent",
        format!("00-{authenticated_trace}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    c.client_stream(request).await.expect("served");

    // Spans leave in the order calls end: once the authenticated call's is here, the untrusted
    // one had its chance.
    let spans = receiver
        .wait_for(WAIT, |spans| {
            !span_of_trace(spans, authenticated_trace).is_empty()
        })
        .await;
    assert_eq!(span_of_trace(&spans, authenticated_trace).len(), 1);
    assert!(
        span_of_trace(&spans, TRACE).is_empty(),
        "the untrusted caller's sampled flag was followed: {spans:#?}"
    );
}
