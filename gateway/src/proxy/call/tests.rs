//! The call core's decisions, on snapshots built from real config text.

use std::path::Path;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};

use super::*;
use crate::breaker::Outcome;
use crate::discovery::Views;
use crate::grpc::{Code, FrameError, LocalStatus};
use crate::metrics::AttemptOutcome;
use crate::policy::Refusal;
use crate::routing::RoutingSnapshot;

const CONFIG: &str = r#"
[etcd]
endpoints = ["http://127.0.0.1:1"]
prefix = "/services/"

[gateway]
region = "home"
region_header = "x-region"

[[listener]]
name = "l"
listen = "127.0.0.1:1"

[[route]]
listener = "l"
service = "plain.P"
upstream = "three"
timeout = "2s"

[[route]]
listener = "l"
service = "retried.R"
upstream = "three"
retry = { on = ["UNAVAILABLE"], max_attempts = 4, backoff = "1ms", max_backoff = "2ms", buffer = "1KiB" }

[[route]]
listener = "l"
service = "hedged.H"
upstream = "three"
idempotent = true
hedge = { delay = "50ms", max_attempts = 2 }

[[route]]
listener = "l"
service = "lonely.L"
upstream = "one"

[[route]]
listener = "l"
service = "named.N"
method = "Exact"
upstream = "one"

[[route]]
listener = "l"
service = "empty.E"
upstream = "none"

[[route]]
listener = "l"
service = "drained.D"
upstream = "drained"

[[upstream]]
name = "three"
max_attempts = 2
endpoints = [
  { addr = "127.0.0.1:10001" },
  { addr = "127.0.0.1:10002" },
  { addr = "127.0.0.1:10003" },
]

[[upstream]]
name = "one"
connect_timeout = "30s"
endpoints = [{ addr = "127.0.0.1:10004" }]

[[upstream]]
name = "none"
discovery = "etcd"
service = "none"

[[route]]
listener = "l"
service = "flaky.F"
upstream = "flaky"

[[upstream]]
name = "flaky"
endpoints = [{ addr = "127.0.0.1:10007" }]
breaker = { consecutive_failures = 1, open_for = "1ms", half_open_calls = 1, max_ejected_percent = 100 }

[[upstream]]
name = "drained"
endpoints = [{ addr = "127.0.0.1:10005", weight = 0 }, { addr = "127.0.0.1:10006", weight = 0 }]
"#;

fn snapshot() -> RoutingSnapshot {
    snapshot_with(&crate::routing::Lasting::default())
}

fn snapshot_with(lasting: &crate::routing::Lasting) -> RoutingSnapshot {
    let config = crate::config::parse(CONFIG, Path::new("t.toml"), Path::new(".")).unwrap();
    RoutingSnapshot::build(&config, Views::default(), lasting, None).unwrap()
}

fn settings() -> CallSettings {
    CallSettings {
        region: Some("home".into()),
        region_header: Some(http::HeaderName::from_static("x-region")),
    }
}

/// A request on listener "l" from a trusted source without a peer address.
fn request<'a>(path: &'a str, headers: &'a HeaderMap) -> Request<'a> {
    Request {
        listener: "l",
        path,
        headers,
        peer: None,
        peer_identity: None,
        trusted_source: true,
    }
}

fn admit_with(path: &str, headers: &HeaderMap) -> (CallCtx, Result<(), LocalStatus>) {
    let snapshot = snapshot();
    let mut ctx = CallCtx::new();
    let admitted = ctx.admit(&snapshot, &settings(), request(path, headers));
    (ctx, admitted)
}

/// A call admitted on `path` without metadata under `snapshot`.
fn admit_on(snapshot: &RoutingSnapshot, path: &str) -> CallCtx {
    let mut ctx = CallCtx::new();
    ctx.admit(snapshot, &settings(), request(path, &HeaderMap::new()))
        .unwrap();
    ctx
}

/// A call admitted on `path` without metadata.
fn admitted(path: &str) -> CallCtx {
    let (ctx, admitted) = admit_with(path, &HeaderMap::new());
    admitted.unwrap();
    ctx
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

fn failure(connecting: bool, unprocessed: bool) -> AttemptFailure {
    AttemptFailure {
        connecting,
        by_caller: false,
        timed_out: false,
        unprocessed,
        reason: "connection refused".into(),
    }
}

/// Claims an attempt and makes it the call's current one.
fn claim_current(ctx: &mut CallCtx, why: Resend) -> Claimed {
    let (claimed, attempt) = ctx.claim(why).unwrap();
    ctx.attempt = Some(attempt);
    claimed
}

#[test]
fn admission_refuses_malformed_and_unrouted_paths() {
    let (_, admitted) = admit_with("not-a-path", &HeaderMap::new());
    let status = admitted.unwrap_err();
    assert_eq!(status.code, Code::Unimplemented);
    assert_eq!(status.message, "malformed gRPC path \"not-a-path\"");

    let (ctx, admitted) = admit_with("/nowhere.N/M", &HeaderMap::new());
    let status = admitted.unwrap_err();
    assert_eq!(status.code, Code::Unimplemented);
    assert_eq!(
        status.message,
        "no route for /nowhere.N/M on listener \"l\""
    );
    assert!(ctx.target.is_none());
}

#[test]
fn admission_fixes_the_deadline_from_the_caller_else_the_route() {
    let ctx = admitted("/plain.P/M");
    assert!(!ctx.caller_deadline);
    let budget = ctx.deadline.unwrap() - ctx.started;
    assert_eq!(budget, Duration::from_secs(2), "the route's timeout");

    let (ctx, result) = admit_with("/plain.P/M", &headers(&[("grpc-timeout", "300m")]));
    result.unwrap();
    assert!(ctx.caller_deadline);
    assert_eq!(
        ctx.deadline.unwrap() - ctx.started,
        Duration::from_millis(300)
    );

    let ctx = admitted("/lonely.L/M");
    assert_eq!(ctx.deadline, None, "no timeout anywhere: no deadline");

    let (_, result) = admit_with("/plain.P/M", &headers(&[("grpc-timeout", "soon")]));
    let status = result.unwrap_err();
    assert_eq!(status.code, Code::InvalidArgument);
    assert_eq!(status.message, "malformed grpc-timeout header \"soon\"");
}

#[test]
fn admission_takes_the_callers_region_else_the_gateways() {
    let ctx = admitted("/plain.P/M");
    assert_eq!(ctx.region.as_deref(), Some("home"));
    let (ctx, _) = admit_with("/plain.P/M", &headers(&[("x-region", " away ")]));
    assert_eq!(ctx.region.as_deref(), Some("away"));
    let (ctx, _) = admit_with("/plain.P/M", &headers(&[("x-region", &"r".repeat(65))]));
    assert_eq!(
        ctx.region.as_deref(),
        Some("home"),
        "over 64 bytes: ignored"
    );
    let (ctx, _) = admit_with("/plain.P/M", &headers(&[("x-region", "")]));
    assert_eq!(ctx.region.as_deref(), Some("home"));
}

#[test]
fn only_trusted_or_authenticated_callers_choose_their_region() {
    let snapshot = snapshot();
    let stated = headers(&[("x-region", "away")]);
    let mut ctx = CallCtx::new();
    let request = Request {
        listener: "l",
        path: "/plain.P/M",
        headers: &stated,
        peer: Some("203.0.113.9".parse().unwrap()),
        peer_identity: None,
        trusted_source: false,
    };
    ctx.admit(&snapshot, &settings(), request).unwrap();
    assert_eq!(
        ctx.region.as_deref(),
        Some("home"),
        "an untrusted caller gets the gateway's region"
    );
    let settings = settings();
    assert_eq!(
        settings.preferred_region(&stated, true).as_deref(),
        Some("away")
    );
    assert_eq!(
        settings.preferred_region(&stated, false).as_deref(),
        Some("home")
    );
}

#[test]
fn admission_gives_the_call_its_route_and_permit() {
    let ctx = admitted("/retried.R/M");
    let target = ctx.target.as_ref().unwrap();
    assert_eq!(&*target.route, "retried.R");
    assert_eq!(target.upstream.name, "three");
    assert!(ctx.in_flight_permit.is_some());
}

#[test]
fn attempts_come_from_the_route_policy_else_the_upstream() {
    assert_eq!(admitted("/plain.P/M").max_attempts(), 2);
    assert_eq!(admitted("/retried.R/M").max_attempts(), 4);
    assert_eq!(admitted("/hedged.H/M").max_attempts(), 2);
    assert_eq!(CallCtx::new().max_attempts(), 1, "unrouted: one");
}

#[test]
fn claims_go_to_endpoints_not_yet_tried() {
    let mut ctx = admitted("/plain.P/M");
    let first = claim_current(&mut ctx, Resend::First);
    assert!(
        !ctx.attempt.as_ref().unwrap().trial,
        "a closed breaker's attempt is no half-open trial"
    );
    assert_eq!(ctx.tried, vec![first.index]);
    assert_eq!(ctx.endpoint, Some(first.endpoint().addr));
    assert_eq!(first.endpoint().state.in_flight(), 1);
    ctx.finish_attempt(None, None);
    assert_eq!(first.endpoint().state.in_flight(), 0);

    let second = claim_current(&mut ctx, Resend::Unprocessed);
    assert_ne!(second.index, first.index);
    assert_eq!(ctx.tried, vec![first.index, second.index]);
    ctx.finish_attempt(None, None);
    // max_attempts = 2: no third.
    let status = ctx.claim(Resend::Unprocessed).unwrap_err();
    assert_eq!(status.code, Code::Unavailable);
}

#[test]
fn a_status_retry_may_go_back_to_the_only_endpoint() {
    let mut ctx = admitted("/lonely.L/M");
    // The upstream's default max_attempts leaves room for a second attempt.
    assert!(ctx.max_attempts() >= 2);
    claim_current(&mut ctx, Resend::First);
    ctx.finish_attempt(None, None);
    let status = ctx.claim(Resend::Unprocessed).unwrap_err();
    assert_eq!(
        status.code,
        Code::Unavailable,
        "nothing untried for a resend"
    );
    let again = claim_current(&mut ctx, Resend::Status);
    assert_eq!(ctx.tried, vec![0, 0]);
    assert_eq!(again.index, 0);
}

/// A stream the only endpoint turned away unprocessed (above its GOAWAY's last-stream-id) is
/// sent to it again, on a new connection; an endpoint that refused the connection is not.
#[test]
fn a_turned_away_stream_may_go_back_to_the_only_endpoint_a_refused_dial_not() {
    let mut ctx = admitted("/lonely.L/M");
    claim_current(&mut ctx, Resend::First);
    ctx.attempt_failed(&failure(false, true));
    assert!(ctx.resend_after(&failure(false, true), true));
    let again = claim_current(&mut ctx, Resend::Unprocessed);
    assert_eq!(again.index, 0);
    assert_eq!(ctx.tried, vec![0, 0]);

    let mut ctx = admitted("/lonely.L/M");
    claim_current(&mut ctx, Resend::First);
    ctx.attempt_failed(&failure(true, false));
    assert!(ctx.resend_after(&failure(true, false), true));
    let status = ctx.claim(Resend::Unprocessed).unwrap_err();
    assert_eq!(
        status.code,
        Code::Unavailable,
        "no second dial to the same endpoint"
    );
}

#[test]
fn claims_are_refused_past_the_deadline_and_unrouted() {
    let mut ctx = admitted("/plain.P/M");
    ctx.deadline = Some(Instant::now());
    let status = ctx.claim(Resend::First).unwrap_err();
    assert_eq!(status.code, Code::DeadlineExceeded);
    assert!(ctx.tried.is_empty());

    let status = CallCtx::new().claim(Resend::First).unwrap_err();
    assert_eq!(status.code, Code::Internal);
}

#[test]
fn one_dial_in_flight_per_endpoint() {
    let mut ctx = admitted("/lonely.L/M");
    let (claimed, mut first) = ctx.claim(Resend::First).unwrap();
    assert!(ctx.dial_turn(&claimed, &mut first).is_none());
    let ticket = first.dial.take().expect("the first attempt dials");
    let (claimed, mut second) = ctx.claim(Resend::Status).unwrap();
    assert!(
        ctx.dial_turn(&claimed, &mut second).is_some(),
        "a second attempt waits for the dial in flight"
    );
    assert!(second.dial.is_none());
    ticket.connected();
    let mut third = Attempt::new(claimed.endpoint().state.clone(), false);
    assert!(ctx.dial_turn(&claimed, &mut third).is_none());
    assert!(third.dial.is_none(), "connected: go ahead, no dial");
}

#[tokio::test]
async fn a_waiting_attempt_goes_when_the_dial_settles() {
    let mut ctx = admitted("/lonely.L/M");
    let (claimed, mut first) = ctx.claim(Resend::First).unwrap();
    assert!(ctx.dial_turn(&claimed, &mut first).is_none());
    let ticket = first.dial.take().expect("the first attempt dials");
    let (claimed, mut second) = ctx.claim(Resend::Status).unwrap();
    let wait = ctx
        .dial_turn(&claimed, &mut second)
        .expect("the second waits");
    let mut waiting = Box::pin(wait.settled());
    tokio::select! {
        biased;
        _ = &mut waiting => panic!("went ahead while the dial was under way"),
        _ = tokio::task::yield_now() => {}
    }
    ticket.connected();
    // The bound is the upstream's connect timeout, 30 s: only the settled dial ends it now.
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the settled dial let the waiting attempt go");
}

#[tokio::test]
async fn a_wait_for_a_dial_is_bounded_by_the_calls_budget() {
    let mut ctx = admitted("/lonely.L/M");
    let (claimed, mut first) = ctx.claim(Resend::First).unwrap();
    assert!(ctx.dial_turn(&claimed, &mut first).is_none());
    let _never_settled = first.dial.take().expect("the first attempt dials");
    ctx.deadline = Some(Instant::now() + Duration::from_millis(50));
    let (claimed, mut second) = ctx.claim(Resend::Status).unwrap();
    let wait = ctx
        .dial_turn(&claimed, &mut second)
        .expect("the second waits");
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), wait.settled())
        .await
        .expect("the call's budget, not the 30 s connect timeout, bounds the wait");
    assert!(started.elapsed() >= Duration::from_millis(40));
}

#[test]
fn failures_are_judged_by_whose_doing_they_were() {
    let mut ctx = admitted("/plain.P/M");
    assert_eq!(
        ctx.failure_verdict(&failure(true, false)),
        Some(AttemptOutcome::ConnectError)
    );
    assert_eq!(
        ctx.failure_verdict(&failure(false, false)),
        Some(AttemptOutcome::Reset)
    );
    let timed_out = AttemptFailure {
        timed_out: true,
        ..failure(false, false)
    };
    assert_eq!(
        ctx.failure_verdict(&timed_out),
        Some(AttemptOutcome::Timeout)
    );
    let by_caller = AttemptFailure {
        by_caller: true,
        ..failure(true, false)
    };
    assert_eq!(ctx.failure_verdict(&by_caller), None);
    // The route's deadline passed: the endpoint was too slow.
    ctx.deadline = Some(Instant::now());
    assert_eq!(
        ctx.failure_verdict(&failure(false, false)),
        Some(AttemptOutcome::Timeout)
    );
    // The caller's own deadline passed: nobody's fault.
    ctx.caller_deadline = true;
    assert_eq!(ctx.failure_verdict(&failure(false, false)), None);
}

#[test]
fn a_failed_attempt_is_ended_and_remembered() {
    let mut ctx = admitted("/plain.P/M");
    let claimed = claim_current(&mut ctx, Resend::First);
    ctx.attempt_failed(&failure(true, false));
    assert!(ctx.attempt.is_none());
    assert_eq!(claimed.endpoint().state.in_flight(), 0);
    assert_eq!(
        ctx.last_failure.as_deref(),
        Some("connection refused"),
        "the caller learns what happened, not the endpoint's address"
    );
}

#[test]
fn only_calls_the_backend_never_saw_are_sent_again() {
    let mut ctx = admitted("/plain.P/M");
    claim_current(&mut ctx, Resend::First);
    assert!(ctx.resend_after(&failure(true, false), true));
    assert!(ctx.resend_after(&failure(false, true), true));
    assert!(
        !ctx.resend_after(&failure(false, false), true),
        "maybe processed"
    );
    assert!(
        !ctx.resend_after(&failure(false, true), false),
        "body not kept"
    );
    ctx.response_started = true;
    assert!(
        !ctx.resend_after(&failure(false, true), true),
        "answer begun"
    );
    ctx.response_started = false;
    claim_current(&mut ctx, Resend::Unprocessed);
    assert!(
        !ctx.resend_after(&failure(true, false), true),
        "attempts used up"
    );
    let mut late = admitted("/plain.P/M");
    claim_current(&mut late, Resend::First);
    late.deadline = Some(Instant::now());
    assert!(
        !late.resend_after(&failure(true, false), true),
        "deadline passed"
    );
}

#[test]
fn answers_are_judged_by_the_upstreams_failure_codes() {
    let mut ctx = admitted("/plain.P/M");
    assert_eq!(
        ctx.classify_response(false),
        Some(Outcome::Failure),
        "no status"
    );
    assert_eq!(ctx.classify_response(true), None, "explained by the error");
    ctx.upstream_status = Some(Code::Ok);
    assert_eq!(ctx.classify_response(false), Some(Outcome::Success));
    ctx.upstream_status = Some(Code::NotFound);
    assert_eq!(ctx.classify_response(true), Some(Outcome::Success));
    for code in [Code::Unavailable, Code::Internal, Code::Unknown] {
        ctx.upstream_status = Some(code);
        assert_eq!(ctx.classify_response(false), Some(Outcome::Failure));
    }
    // DEADLINE_EXCEEDED on the route's deadline is the endpoint's slowness...
    ctx.upstream_status = Some(Code::DeadlineExceeded);
    ctx.deadline = Some(Instant::now());
    assert_eq!(ctx.classify_response(false), Some(Outcome::Failure));
    // ...on the caller's own deadline, nobody's fault.
    ctx.caller_deadline = true;
    assert_eq!(ctx.classify_response(false), None);
    ctx.upstream_status = Some(Code::Cancelled);
    assert_eq!(ctx.classify_response(false), None);
    // Far from the deadline, the code speaks for itself.
    ctx.deadline = Some(Instant::now() + Duration::from_secs(10));
    ctx.upstream_status = Some(Code::DeadlineExceeded);
    assert_eq!(ctx.classify_response(false), Some(Outcome::Failure));
    assert_eq!(CallCtx::new().classify_response(false), None, "unrouted");
}

#[test]
fn finishing_an_answered_attempt_counts_it() {
    let mut ctx = admitted("/plain.P/M");
    let claimed = claim_current(&mut ctx, Resend::First);
    ctx.upstream_status = Some(Code::Ok);
    ctx.finish_answered(false);
    assert!(ctx.attempt.is_none());
    assert_eq!(claimed.endpoint().state.in_flight(), 0);
}

#[test]
fn cancelled_at_the_deadline_is_told_as_deadline_exceeded() {
    let mut ctx = admitted("/plain.P/M");
    ctx.deadline = Some(Instant::now() + DEADLINE_SLACK / 2);
    let status = ctx.status_seen(Code::Cancelled).unwrap();
    assert_eq!(status.code, Code::DeadlineExceeded);
    assert!(status.message.starts_with("deadline exceeded after "));
    assert_eq!(ctx.upstream_status, Some(Code::DeadlineExceeded));

    assert_eq!(ctx.status_seen(Code::Unavailable), None, "other codes pass");
    assert_eq!(ctx.upstream_status, Some(Code::Unavailable));

    ctx.deadline = Some(Instant::now() + Duration::from_secs(5));
    assert_eq!(
        ctx.status_seen(Code::Cancelled),
        None,
        "far from the deadline"
    );
    assert_eq!(ctx.upstream_status, Some(Code::Cancelled));

    let mut open_ended = admitted("/lonely.L/M");
    assert_eq!(open_ended.status_seen(Code::Cancelled), None, "no deadline");
}

#[test]
fn status_retries_follow_the_routes_policy() {
    let facts = StatusFacts {
        pushback: None,
        copy_truncated: false,
    };
    let mut ctx = admitted("/retried.R/M");
    claim_current(&mut ctx, Resend::First);
    let wait = ctx.retry_on_status(Code::Unavailable, facts).unwrap();
    assert!(wait < Duration::from_millis(2));
    assert_eq!(
        ctx.retry_on_status(Code::Internal, facts),
        None,
        "not listed"
    );
    let truncated = StatusFacts {
        copy_truncated: true,
        ..facts
    };
    assert_eq!(ctx.retry_on_status(Code::Unavailable, truncated), None);
    let pushback = StatusFacts {
        pushback: Some(b"7"),
        ..facts
    };
    assert_eq!(
        ctx.retry_on_status(Code::Unavailable, pushback),
        Some(Duration::from_millis(7))
    );
    let refused = StatusFacts {
        pushback: Some(b"-1"),
        ..facts
    };
    assert_eq!(ctx.retry_on_status(Code::Unavailable, refused), None);

    let mut plain = admitted("/plain.P/M");
    claim_current(&mut plain, Resend::First);
    assert_eq!(
        plain.retry_on_status(Code::Unavailable, facts),
        None,
        "no retry"
    );
}

#[test]
fn a_held_back_status_ends_the_attempt_quietly() {
    let mut ctx = admitted("/retried.R/M");
    let claimed = claim_current(&mut ctx, Resend::First);
    ctx.upstream_status = Some(Code::Unavailable);
    ctx.hold_back_for_retry(Code::Unavailable, Duration::from_millis(3));
    assert!(ctx.attempt.is_none());
    assert_eq!(claimed.endpoint().state.in_flight(), 0);
    assert_eq!(ctx.upstream_status, None, "the caller has seen nothing");
    assert_eq!(ctx.pending_retry, Some(Duration::from_millis(3)));
    assert_eq!(
        ctx.last_failure,
        Some("an endpoint answered UNAVAILABLE".to_string())
    );
}

#[test]
fn each_attempt_carries_its_budget_and_number() {
    let mut ctx = admitted("/plain.P/M");
    claim_current(&mut ctx, Resend::First);
    let headers = ctx.attempt_headers();
    assert!(headers.remove.is_none());
    let set: Vec<_> = headers.to_set().collect();
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].0, "grpc-timeout");
    assert!(set[0].1.is_sensitive(), "never indexed by HPACK");
    let budget = crate::grpc::parse_grpc_timeout(set[0].1.as_bytes()).unwrap();
    assert!(budget <= Duration::from_secs(2) && budget > Duration::from_secs(1));

    ctx.finish_attempt(None, None);
    claim_current(&mut ctx, Resend::Unprocessed);
    let set: Vec<_> = ctx.attempt_headers().to_set().collect();
    assert_eq!(set.len(), 2);
    assert_eq!(set[1].0, "grpc-previous-rpc-attempts");
    assert_eq!(set[1].1, "1");

    let mut open_ended = admitted("/lonely.L/M");
    claim_current(&mut open_ended, Resend::First);
    assert_eq!(open_ended.attempt_headers().to_set().count(), 0);
}

#[test]
fn no_endpoint_messages_say_what_an_operator_can_act_on() {
    let ctx = admitted("/empty.E/M");
    let status = ctx.no_endpoint_status();
    assert_eq!(status.code, Code::Unavailable);
    assert_eq!(
        status.message,
        format!(
            "upstream \"none\" has no endpoints: {}",
            ctx.target
                .as_ref()
                .unwrap()
                .upstream
                .empty_reason
                .as_deref()
                .unwrap()
        )
    );

    let mut ctx = admitted("/plain.P/M");
    ctx.tried = vec![0];
    ctx.last_failure = Some("connection refused".into());
    assert_eq!(
        ctx.no_endpoint_status().message,
        "upstream \"three\": no endpoint could take the call after 1 attempt; \
         last error: connection refused"
    );
    ctx.tried = vec![0, 1];
    assert!(ctx
        .no_endpoint_status()
        .message
        .contains("after 2 attempts;"));

    let ctx = admitted("/drained.D/M");
    assert_eq!(
        ctx.no_endpoint_status().message,
        "upstream \"drained\": no usable endpoint (2 drained of 2)"
    );
    assert_eq!(
        CallCtx::new().no_endpoint_status().message,
        "upstream \"-\": no usable endpoint"
    );
}

#[test]
fn the_closing_status_depends_on_how_far_the_call_got() {
    let mut ctx = admitted("/plain.P/M");
    ctx.upstream_status = Some(Code::Ok);
    assert_eq!(
        ctx.closing_status(false),
        None,
        "the backend's status went out"
    );

    let mut ctx = admitted("/plain.P/M");
    ctx.local_status = Some(LocalStatus::new(Code::ResourceExhausted, "too big"));
    assert_eq!(ctx.closing_status(false).unwrap().message, "too big");

    let mut ctx = admitted("/plain.P/M");
    assert_eq!(ctx.closing_status(true), None, "nobody left to answer");
    assert_eq!(ctx.local_status.as_ref().unwrap().code, Code::Cancelled);

    let mut ctx = admitted("/plain.P/M");
    ctx.response_started = true;
    let status = ctx.closing_status(false).unwrap();
    assert_eq!(status.code, Code::Unavailable);
    assert_eq!(
        status.message,
        "upstream \"three\" failed mid-call: stream ended without trailers"
    );
    assert_eq!(ctx.local_status, Some(status));

    let mut ctx = admitted("/plain.P/M");
    ctx.deadline = Some(Instant::now());
    assert_eq!(
        ctx.closing_status(true).unwrap().code,
        Code::DeadlineExceeded,
        "the deadline explains it first"
    );

    let mut ctx = admitted("/empty.E/M");
    let status = ctx.closing_status(false).unwrap();
    assert!(status.message.contains("has no endpoints"));
}

#[test]
fn refusals_and_bad_bodies_have_their_own_statuses() {
    let limited = refusal_status(
        Refusal::RateLimited {
            limit: "10/s".into(),
            retry_after: Duration::from_millis(40),
        },
        "r",
    );
    assert_eq!(limited.code, Code::ResourceExhausted);
    assert_eq!(limited.message, "rate limit of route \"r\" exceeded: 10/s");
    assert_eq!(limited.retry_pushback, Some(Duration::from_millis(40)));
    let shed = refusal_status(
        Refusal::Shed {
            upstream: "u".into(),
            max: 3,
        },
        "r",
    );
    assert_eq!(shed.code, Code::Unavailable);
    assert_eq!(
        shed.message,
        "upstream \"u\" is at its max_in_flight of 3 calls; call shed"
    );
    let large = request_body_status(FrameError::TooLarge {
        length: 9,
        limit: 4,
    });
    assert_eq!(large.code, Code::ResourceExhausted);
    assert_eq!(
        large.message,
        "request message of 9 bytes is larger than this listener's max_message_size (4 bytes)"
    );
    assert_eq!(
        request_body_status(FrameError::Truncated).code,
        Code::Internal
    );
}

#[test]
fn the_access_record_says_when_the_call_began_and_how_long_it_took() {
    let mut ctx = admitted("/plain.P/M");
    ctx.started = Instant::now().checked_sub(Duration::from_secs(2)).unwrap();
    let before = std::time::SystemTime::now();
    let agent = HeaderValue::from_static("grpc-test/1");
    let record = ctx.access_record("l", "/plain.P/M", Some(&agent), None, Code::NotFound);
    assert!(record.ts < before, "the call began before it was recorded");
    assert!(record.ts > before - Duration::from_secs(10));
    assert!(
        (2000.0..60_000.0).contains(&record.duration_ms),
        "{} ms",
        record.duration_ms
    );
    assert_eq!(record.method.as_deref(), Some("/plain.P/M"));
    assert_eq!(record.route.as_deref(), Some("plain.P"));
    assert_eq!(record.upstream.as_deref(), Some("three"));
    assert_eq!(record.user_agent.as_deref(), Some("grpc-test/1"));
    assert_eq!(record.code, Some(5));
}

#[test]
fn the_final_code_is_the_gateways_own_else_the_backends() {
    let mut ctx = CallCtx::new();
    assert_eq!(ctx.final_code(), None);
    ctx.upstream_status = Some(Code::NotFound);
    assert_eq!(ctx.final_code(), Some(Code::NotFound));
    ctx.local_status = Some(LocalStatus::new(Code::Unavailable, "gone"));
    assert_eq!(ctx.final_code(), Some(Code::Unavailable));
}

#[test]
fn an_ended_attempt_feeds_its_endpoints_breaker_and_counters() {
    let metrics = crate::metrics::Metrics::new(true, 16, std::time::Duration::from_secs(600));
    let lasting = crate::routing::Lasting::with_metrics(Some(metrics.clone()));
    let snapshot = snapshot_with(&lasting);
    let mut ctx = admit_on(&snapshot, "/flaky.F/M");
    let claimed = claim_current(&mut ctx, Resend::First);
    ctx.upstream_status = Some(Code::Unavailable);
    ctx.finish_answered(false);
    let state = &claimed.endpoint().state;
    assert_ne!(
        state.breaker_state(),
        crate::breaker::State::Closed,
        "one failure opens this breaker"
    );
    let text = metrics.render();
    let counted = text
        .lines()
        .find(|l| {
            l.starts_with("strait_upstream_attempts_total")
                && l.contains("outcome=\"grpc_failure\"")
                && l.contains("upstream=\"flaky\"")
        })
        .unwrap_or_else(|| panic!("no attempt counted:\n{text}"));
    assert!(counted.ends_with(" 1"), "{counted}");
}

#[test]
fn a_trial_that_ends_without_a_verdict_gives_its_slot_back() {
    // One snapshot, so every call meets the same endpoint state.
    let snapshot = snapshot();
    let call = || admit_on(&snapshot, "/flaky.F/M");
    let mut first = call();
    claim_current(&mut first, Resend::First);
    first.finish_attempt(Some(Outcome::Failure), Some(AttemptOutcome::Reset));
    // Open for 1 ms, then half-open with one trial at a time.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut holder = call();
    loop {
        if let Ok((_, attempt)) = holder.claim(Resend::First) {
            holder.attempt = Some(attempt);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker never went half-open"
        );
        holder = call();
        std::thread::yield_now();
    }
    assert!(
        holder.attempt.as_ref().unwrap().trial,
        "a half-open breaker's attempt is its trial"
    );
    assert!(
        call().claim(Resend::First).is_err(),
        "the one trial slot is taken"
    );
    holder.finish_attempt(None, None);
    let (_, again) = call()
        .claim(Resend::First)
        .expect("the slot was given back");
    assert!(again.trial);
}

#[test]
fn an_attempt_from_before_the_breaker_opened_frees_no_trial_slot() {
    let snapshot = snapshot();
    let call = || admit_on(&snapshot, "/flaky.F/M");
    // An attempt admitted while the breaker was closed, still running...
    let mut early = call();
    claim_current(&mut early, Resend::First);
    assert!(!early.attempt.as_ref().unwrap().trial);
    // ...when another attempt's failure opens the breaker, which then goes half-open.
    let mut failing = call();
    claim_current(&mut failing, Resend::First);
    failing.finish_attempt(Some(Outcome::Failure), Some(AttemptOutcome::Reset));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut trial = call();
    while trial
        .claim(Resend::First)
        .map(|(_, a)| trial.attempt = Some(a))
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the breaker never went half-open"
        );
        trial = call();
        std::thread::yield_now();
    }
    // The early attempt ends without a verdict: the trial's slot stays taken.
    early.finish_attempt(None, None);
    assert!(
        call().claim(Resend::First).is_err(),
        "the one trial slot is still the trial's"
    );
}

#[test]
fn a_method_gets_its_own_series_only_once_something_vouches_for_it() {
    let metrics = crate::metrics::Metrics::new(true, 16, std::time::Duration::from_secs(600));
    let lasting = crate::routing::Lasting::with_metrics(Some(metrics.clone()));
    let snapshot = snapshot_with(&lasting);
    let call = |path: &'static str| admit_on(&snapshot, path);
    let mut ctx = call("/plain.P/MadeUp");
    assert!(ctx.method_metrics.is_none(), "unknown when the call begins");
    assert!(!ctx.vouches_for_its_method(), "no answer yet");
    ctx.response_started = true;
    ctx.upstream_status = Some(Code::Unimplemented);
    assert!(
        !ctx.vouches_for_its_method(),
        "UNIMPLEMENTED vouches for nothing"
    );
    let other = ctx.finished_method_metrics().unwrap();

    let mut ctx = call("/plain.P/Real");
    ctx.response_started = true;
    ctx.upstream_status = Some(Code::NotFound);
    assert!(ctx.vouches_for_its_method(), "any other answer does");
    let real = ctx.finished_method_metrics().unwrap();
    assert!(!std::sync::Arc::ptr_eq(&real, &other));
    let ctx = call("/plain.P/Real");
    assert!(
        ctx.method_metrics
            .as_ref()
            .is_some_and(|m| std::sync::Arc::ptr_eq(m, &real)),
        "known from then on, resolved when the call begins"
    );
    // A route naming the exact method vouches for it whatever the answer.
    let ctx = call("/named.N/Exact");
    assert!(ctx.vouches_for_its_method());
}

#[test]
fn a_body_read_whole_waits_for_the_body_limit_or_the_calls_deadline_whichever_comes_first() {
    let limit = Duration::from_secs(30);
    let mut ctx = CallCtx::new();
    let before = Instant::now();
    let at = ctx.body_deadline(limit);
    assert!(at >= before + limit && at <= Instant::now() + limit);
    assert!(ctx
        .body_timeout_status(limit)
        .message
        .contains("request_body_timeout (30000 ms)"));
    ctx.deadline = Some(before + Duration::from_secs(2));
    assert_eq!(ctx.body_deadline(limit), before + Duration::from_secs(2));
    ctx.deadline = Some(Instant::now());
    let status = ctx.body_timeout_status(limit);
    assert_eq!(status.code, Code::DeadlineExceeded);
    assert!(
        status.message.contains("deadline exceeded"),
        "{}",
        status.message
    );
}
