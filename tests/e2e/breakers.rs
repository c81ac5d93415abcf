//! Circuit breakers and health probes against real backends (tasks and processes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strait_tests::gateway::EchoProcess;
use strait_tests::net::free_addr;
use strait_tests::pb::EchoRequest;
use strait_tests::{Backend, BackendOptions, Gateway};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::ServingStatus;

use crate::fixture::{call_until, client, config, count, req, Ep};

/// A gateway in front of the given endpoints, with extra lines in its upstream section.
fn start_gateway(endpoints: &[Ep], upstream_extra: &str) -> (Gateway, std::net::SocketAddr) {
    let listen = free_addr();
    let text = config(listen, endpoints, "", "").replace(
        "max_attempts = 3",
        &format!("max_attempts = 3\n{upstream_extra}"),
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    (gateway, listen)
}

async fn backends(names: &[&str]) -> Vec<Backend> {
    let mut out = Vec::new();
    for n in names {
        out.push(Backend::start(BackendOptions::named(n)).await);
    }
    out
}

fn eps(backends: &[Backend], regions: &[&'static str]) -> Vec<Ep> {
    backends
        .iter()
        .zip(regions)
        .map(|(b, r)| Ep {
            addr: b.addr,
            weight: 100,
            region: r,
        })
        .collect()
}

/// Who served each of `n` calls; failed calls are recorded as "!CODE".
async fn outcomes(
    c: &mut strait_tests::pb::echo_client::EchoClient<tonic::transport::Channel>,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(match c.unary(req(b"")).await {
            Ok(r) => r.into_inner().served_by,
            Err(s) => format!("!{:?}", s.code()),
        });
    }
    out
}

fn transitions(gateway: &Gateway, addr: std::net::SocketAddr, to: &str) -> Vec<String> {
    gateway
        .logs()
        .into_iter()
        .filter(|l| {
            l.contains("breaker transition")
                && l.contains(&format!("endpoint={addr}"))
                && l.contains(&format!("to={to}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_opens_the_breaker_not_found_does_not() {
    let b = backends(&["sick", "fine"]).await;
    let (gateway, listen) = start_gateway(
        &eps(&b, &["eu-west", "eu-west"]),
        "breaker = { consecutive_failures = 3, open_for = \"30s\" }",
    );
    let mut c = client(listen).await;

    b[0].force_status(Some(Code::NotFound));
    let names = outcomes(&mut c, 40).await;
    assert_eq!(
        count(&names, "!NotFound"),
        20,
        "NOT_FOUND is an answer, not a failure: {names:?}"
    );
    assert!(transitions(&gateway, b[0].addr, "open").is_empty());

    b[0].force_status(Some(Code::Unavailable));
    let names = outcomes(&mut c, 40).await;
    assert_eq!(
        count(&names, "!Unavailable"),
        3,
        "three failures open the breaker: {names:?}"
    );
    assert_eq!(
        &names[names.len() - 20..],
        vec!["fine".to_string(); 20].as_slice()
    );
    let opened = transitions(&gateway, b[0].addr, "open");
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert!(opened[0].contains("consecutive_failures"), "{opened:?}");
}

/// A failure status that arrives in trailers after streamed messages counts too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_in_trailers_after_a_stream_counts() {
    let b = backends(&["sick", "fine"]).await;
    let (gateway, listen) = start_gateway(
        &eps(&b, &["eu-west", "eu-west"]),
        "breaker = { consecutive_failures = 2, open_for = \"30s\" }",
    );
    let mut c = client(listen).await;
    b[0].force_status(Some(Code::Internal));
    let mut served = Vec::new();
    for _ in 0..12 {
        let request = EchoRequest {
            reply_count: 2,
            ..Default::default()
        };
        let mut stream = c
            .server_stream(request)
            .await
            .expect("stream starts")
            .into_inner();
        let mut who = String::new();
        let mut status = Code::Ok;
        while let Some(item) = stream.next().await {
            match item {
                Ok(reply) => who = reply.served_by,
                Err(s) => status = s.code(),
            }
        }
        served.push(format!("{who}:{status:?}"));
    }
    assert_eq!(
        served.iter().filter(|s| *s == "sick:Internal").count(),
        2,
        "{served:?}"
    );
    assert!(served[6..].iter().all(|s| s == "fine:Ok"), "{served:?}");
    assert_eq!(transitions(&gateway, b[0].addr, "open").len(), 1);
}

/// After the open period, trials go through half-open and close the breaker; open periods grow
/// with each consecutive trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_through_half_open_and_growing_open_periods() {
    let b = backends(&["flaky", "fine"]).await;
    let (gateway, listen) = start_gateway(
        &eps(&b, &["eu-west", "eu-west"]),
        "breaker = { consecutive_failures = 2, open_for = \"200ms\", backoff = \"exponential\", max_open_for = \"5s\", half_open_calls = 2 }",
    );
    let mut c = client(listen).await;
    b[0].force_status(Some(Code::Unavailable));
    // Keep calling through three trips: each half-open trial fails and reopens for longer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while transitions(&gateway, b[0].addr, "open").len() < 3 {
        outcomes(&mut c, 5).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker did not trip three times"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let periods: Vec<u64> = transitions(&gateway, b[0].addr, "open")
        .iter()
        .map(|l| {
            l.split("open_ms=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(&periods[..3], &[200, 400, 800], "exponential back-off");

    b[0].force_status(None);
    call_until(
        &mut c,
        Duration::from_secs(10),
        "the recovered backend serves again",
        |who| who == "flaky",
    )
    .await;
    // Both trials must succeed before the breaker closes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while transitions(&gateway, b[0].addr, "closed").is_empty() {
        outcomes(&mut c, 2).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker never closed"
        );
    }
    let half_open = transitions(&gateway, b[0].addr, "half_open");
    let closed = transitions(&gateway, b[0].addr, "closed");
    assert!(half_open.len() >= 3, "{half_open:?}");
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(closed[0].contains("trials_succeeded"), "{closed:?}");
}

/// 3 of 4 endpoints failing with a 50% cap: at most 2 are ejected, the third keeps its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_cap_holds() {
    let b = backends(&["s1", "s2", "s3", "ok"]).await;
    let (gateway, listen) = start_gateway(
        &eps(&b, &["eu-west", "eu-west", "eu-west", "eu-west"]),
        "breaker = { consecutive_failures = 2, open_for = \"60s\", max_ejected_percent = 50 }",
    );
    let mut c = client(listen).await;
    for backend in &b[..3] {
        backend.force_status(Some(Code::Unavailable));
    }
    outcomes(&mut c, 40).await;
    let names = outcomes(&mut c, 40).await;
    let opened: usize = b[..3]
        .iter()
        .map(|x| transitions(&gateway, x.addr, "open").len())
        .sum();
    assert_eq!(opened, 2, "exactly two breakers may open");
    assert_eq!(
        count(&names, "!Unavailable"),
        20,
        "the capped endpoint keeps half the calls: {names:?}"
    );
    assert_eq!(count(&names, "ok"), 20);
}

/// A whole region open: calls fall back to the other region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_region_falls_back_to_others() {
    let b = backends(&["local", "remote"]).await;
    let (_gateway, listen) = start_gateway(
        &eps(&b, &["eu-west", "us-east"]),
        "breaker = { consecutive_failures = 2, open_for = \"60s\", max_ejected_percent = 50 }",
    );
    let mut c = client(listen).await;
    assert_eq!(outcomes(&mut c, 5).await, vec!["local".to_string(); 5]);
    b[0].force_status(Some(Code::Unavailable));
    let names = outcomes(&mut c, 12).await;
    assert_eq!(count(&names, "!Unavailable"), 2);
    assert_eq!(&names[2..], vec!["remote".to_string(); 10].as_slice());
}

/// Health/Watch: NOT_SERVING stops new calls at once (the poll interval is 10 s, so only the
/// Watch can explain it); SERVING again brings the endpoint back through its probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_on_watch_stops_calls_at_once() {
    let b = backends(&["draining", "steady"]).await;
    let (_gateway, listen) = start_gateway(
        &eps(&b, &["eu-west", "eu-west"]),
        "health = { interval = \"10s\", timeout = \"1s\", unhealthy_after = 2, healthy_after = 1 }",
    );
    let mut c = client(listen).await;
    // The probes start spread over the interval; wait until each has connected (no call has
    // been made, so only a probe connects). Its Watch then reports the current status at once.
    wait_until(Duration::from_secs(15), "both probes connect", || {
        b.iter().all(|x| x.connections() >= 1)
    })
    .await;
    assert_eq!(count(&outcomes(&mut c, 10).await, "draining"), 5);
    b[0].set_health(ServingStatus::NotServing).await;
    let mut clean = 0;
    call_until(
        &mut c,
        Duration::from_secs(3),
        "no calls to the draining backend",
        |who| {
            clean = if who == "steady" { clean + 1 } else { 0 };
            clean >= 10
        },
    )
    .await;
    let before = b[0].calls();
    outcomes(&mut c, 20).await;
    assert_eq!(
        b[0].calls(),
        before,
        "a NOT_SERVING backend gets no new calls"
    );
    b[0].set_health(ServingStatus::Serving).await;
    call_until(
        &mut c,
        Duration::from_secs(5),
        "back in rotation after SERVING",
        |who| who == "draining",
    )
    .await;
}

/// A hung backend (SIGSTOP) is excluded once its Check probes time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_backend_is_excluded_after_the_probe_timeout() {
    let hung_addr = free_addr();
    let hung = tokio::task::block_in_place(|| EchoProcess::start("hung", hung_addr));
    let steady = Backend::start(BackendOptions::named("steady")).await;
    let (_gateway, listen) = start_gateway(
        &[Ep { addr: hung_addr, weight: 100, region: "eu-west" }, Ep { addr: steady.addr, weight: 100, region: "eu-west" }],
        "health = { interval = \"300ms\", timeout = \"200ms\", unhealthy_after = 2, healthy_after = 2 }",
    );
    let mut c = client(listen).await;
    call_until(
        &mut c,
        Duration::from_secs(5),
        "the process backend serves",
        |who| who == "hung",
    )
    .await;
    hung.signal("STOP");
    // Calls with a short deadline: those caught by the hung backend time out, until probes
    // exclude it (2 x 300 ms + 200 ms).
    let mut clean = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while clean < 30 {
        let mut request = tonic::Request::new(req(b""));
        request.set_timeout(Duration::from_millis(300));
        clean = match c.unary(request).await {
            Ok(r) if r.get_ref().served_by == "steady" => clean + 1,
            _ => 0,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "hung backend never excluded"
        );
    }
    hung.signal("CONT");
    call_until(
        &mut c,
        Duration::from_secs(10),
        "the resumed backend serves again",
        |who| who == "hung",
    )
    .await;
}

/// Call ids that reached each backend: the victim process's arrivals log plus the in-process
/// backend's own count.
fn arrivals_by_id(log: &std::path::Path, steady: &Backend) -> HashMap<String, u32> {
    let mut seen = steady.arrivals();
    for id in std::fs::read_to_string(log).unwrap_or_default().lines() {
        *seen.entry(id.to_string()).or_default() += 1;
    }
    seen
}

/// A backend killed under steady load: only calls in flight on it fail, later calls go
/// elsewhere, its breaker opens; restarted, it comes back through half-open. No call the victim
/// received is sent again (gRPC calls are not idempotent): every call id arrives at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_fails_only_its_in_flight_calls() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("victim-arrivals");
    let victim_addr = free_addr();
    let mut victim = tokio::task::block_in_place(|| {
        EchoProcess::start_logging("victim", victim_addr, Some(&log))
    });
    let steady = Backend::start(BackendOptions::named("steady")).await;
    let (gateway, listen) = start_gateway(
        &[
            Ep {
                addr: victim_addr,
                weight: 100,
                region: "eu-west",
            },
            Ep {
                addr: steady.addr,
                weight: 100,
                region: "eu-west",
            },
        ],
        "breaker = { consecutive_failures = 3, open_for = \"500ms\", backoff = \"fixed\" }",
    );
    let c = client(listen).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failed_ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let calls = Arc::new(AtomicU64::new(0));
    const WORKERS: u64 = 4;
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (stop, failed_ids, calls, mut c) =
            (stop.clone(), failed_ids.clone(), calls.clone(), c.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("w{w}-{n}");
                n += 1;
                let mut request = tonic::Request::new(EchoRequest {
                    delay_ms: 20,
                    ..Default::default()
                });
                request
                    .metadata_mut()
                    .insert("x-call-id", id.parse().unwrap());
                if c.unary(request).await.is_err() {
                    failed_ids.lock().unwrap().push(id);
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let failures = || failed_ids.lock().unwrap().len() as u64;
    // Kill only once both backends carry load.
    wait_until(Duration::from_secs(10), "both backends serve", || {
        steady.calls() >= 10 && std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() >= 10)
    })
    .await;
    assert_eq!(failures(), 0, "no failure before the kill");
    tokio::task::block_in_place(|| victim.kill());
    wait_until(
        Duration::from_secs(10),
        "the victim's breaker opens",
        || !transitions(&gateway, victim_addr, "open").is_empty(),
    )
    .await;
    // Settled: 100 further calls finish after the breaker opened.
    let settled = calls.load(Ordering::Relaxed) + 100;
    wait_until(Duration::from_secs(20), "calls flow on", || {
        calls.load(Ordering::Relaxed) >= settled
    })
    .await;
    let failed_at_kill = failures();
    assert!(
        failed_at_kill <= WORKERS,
        "{failed_at_kill} calls failed; only the {WORKERS} in flight may"
    );

    let _victim = tokio::task::block_in_place(|| {
        EchoProcess::start_logging("victim", victim_addr, Some(&log))
    });
    wait_until(
        Duration::from_secs(10),
        "breaker closes after the restart",
        || !transitions(&gateway, victim_addr, "closed").is_empty(),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failures(),
        failed_at_kill,
        "no failure after the kill settled"
    );
    let total = calls.load(Ordering::Relaxed);
    assert!(total > 100, "{total}");
    let seen = arrivals_by_id(&log, &steady);
    let replayed: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(replayed.is_empty(), "calls sent twice: {replayed:?}");
    // Every successful call arrived exactly once; a failed one at most once (at the victim).
    let failed = failed_ids.lock().unwrap().clone();
    assert_eq!(
        seen.len() as u64 + failed.iter().filter(|id| !seen.contains_key(*id)).count() as u64,
        total,
        "every call accounted for"
    );
    for id in &failed {
        assert_eq!(
            steady.arrivals_of(id),
            0,
            "failed call {id} also reached steady"
        );
    }
}

/// Polls `done` every 10 ms until it holds; panics after `timeout` naming `what`.
async fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// When every endpoint is open the call fails fast with UNAVAILABLE saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_open_fails_fast_with_reason() {
    let b = backends(&["a", "b"]).await;
    let (gateway, listen) = start_gateway(
        &eps(&b, &["eu-west", "us-east"]),
        "breaker = { consecutive_failures = 1, open_for = \"60s\", max_ejected_percent = 100 }",
    );
    let mut c = client(listen).await;
    for backend in &b {
        backend.force_status(Some(Code::Unavailable));
    }
    outcomes(&mut c, 2).await;
    // A call's outcome reaches its breaker in pingora's logging phase, which may run just
    // after the caller has its answer: the second call can still find the first endpoint
    // closed and go there again, leaving the other one untried. Call (at most 20 times) until
    // both breakers have opened, waiting a little between calls.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for _ in 0..20 {
        if b.iter()
            .all(|x| !transitions(&gateway, x.addr, "open").is_empty())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the breakers never both opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        if b.iter()
            .any(|x| transitions(&gateway, x.addr, "open").is_empty())
        {
            let _ = c.unary(req(b"")).await;
        }
    }
    assert!(
        b.iter()
            .all(|x| !transitions(&gateway, x.addr, "open").is_empty()),
        "both breakers open"
    );
    let before: u64 = b.iter().map(|x| x.calls()).sum();
    let status = c.unary(req(b"")).await.expect_err("nothing usable");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("all 2 endpoints open"),
        "{}",
        status.message()
    );
    assert_eq!(
        b.iter().map(|x| x.calls()).sum::<u64>(),
        before,
        "failed fast, no backend call"
    );
}

/// A caller sending malformed messages makes every backend answer INTERNAL (a default
/// failure code): failures all endpoints show alike eject none, so good callers keep all three.
/// One endpoint failing alone among healthy peers is still ejected, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_every_endpoint_shows_alike_eject_none() {
    let b = backends(&["a", "b", "c"]).await;
    let listen = free_addr();
    let admin = free_addr();
    let text = config(listen, &eps(&b, &["eu-west", "eu-west", "eu-west"]), "", "")
        + &format!("\n[admin]\nlisten = \"{admin}\"\n");
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut c = client(listen).await;
    // Ordinary traffic first: the endpoints have recent calls to compare.
    let names = outcomes(&mut c, 30).await;
    assert_eq!(
        (count(&names, "a"), count(&names, "b"), count(&names, "c")),
        (10, 10, 10)
    );
    // 90 calls whose message is not an EchoRequest: every backend answers INTERNAL.
    let mut internal = 0;
    for _ in 0..90 {
        let response = strait_tests::raw::call(
            listen,
            "/bench.Echo/Unary",
            &[],
            strait_tests::raw::grpc_frame(&[0xff, 0xff, 0xff]),
        )
        .await
        .unwrap();
        if response.grpc_status().as_deref() == Some("13") {
            internal += 1;
        }
    }
    assert_eq!(
        internal, 90,
        "every malformed call answered INTERNAL by a backend"
    );
    for backend in &b {
        assert!(
            transitions(&gateway, backend.addr, "open").is_empty(),
            "{} was ejected for failures its peers showed alike:\n{}",
            backend.addr,
            gateway.logs().join("\n")
        );
    }
    let names = outcomes(&mut c, 30).await;
    assert_eq!(
        (count(&names, "a"), count(&names, "b"), count(&names, "c")),
        (10, 10, 10),
        "good callers keep all three endpoints: {names:?}"
    );
    let (_, metrics) =
        tokio::task::block_in_place(|| strait_tests::net::http_get(admin, "/metrics"));
    let withheld = strait_tests::net::metric(
        &metrics,
        "strait_ejections_withheld_total",
        &[("upstream", "echo")],
    );
    assert!(withheld.is_some_and(|n| n > 0.0), "{withheld:?}");

    // One endpoint failing on its own, its peers healthy: ejected as before.
    b[0].force_status(Some(Code::Internal));
    let names = outcomes(&mut c, 120).await;
    let opened = transitions(&gateway, b[0].addr, "open");
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(
        &names[names.len() - 20..]
            .iter()
            .filter(|n| n.as_str() == "a" || n.starts_with('!'))
            .count(),
        &0,
        "after its ejection a takes no calls: {names:?}"
    );
}
