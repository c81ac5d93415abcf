//! Circuit breakers and health probes against real backends (tasks and processes).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    // Give the probes their first (spread) start and their Watch streams.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
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

/// A backend killed under steady load: only calls in flight on it fail, later calls go
/// elsewhere, its breaker opens; restarted, it comes back through half-open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_fails_only_its_in_flight_calls() {
    let victim_addr = free_addr();
    let mut victim = tokio::task::block_in_place(|| EchoProcess::start("victim", victim_addr));
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
    let failures = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    const WORKERS: u64 = 4;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (stop, failures, calls, mut c) =
            (stop.clone(), failures.clone(), calls.clone(), c.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = EchoRequest {
                    delay_ms: 20,
                    ..Default::default()
                };
                if c.unary(request).await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| victim.kill());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failed_at_kill = failures.load(Ordering::Relaxed);
    assert!(
        failed_at_kill <= WORKERS,
        "{failed_at_kill} calls failed; only the {WORKERS} in flight may"
    );
    assert!(
        !transitions(&gateway, victim_addr, "open").is_empty(),
        "the victim's breaker opened"
    );

    let _victim = tokio::task::block_in_place(|| EchoProcess::start("victim", victim_addr));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while transitions(&gateway, victim_addr, "closed").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker never closed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        failed_at_kill,
        "no failure after the kill settled"
    );
    assert!(calls.load(Ordering::Relaxed) > 100);
}

/// When every endpoint is open the call fails fast with UNAVAILABLE saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_open_fails_fast_with_reason() {
    let b = backends(&["a", "b"]).await;
    let (_gateway, listen) = start_gateway(
        &eps(&b, &["eu-west", "us-east"]),
        "breaker = { consecutive_failures = 1, open_for = \"60s\", max_ejected_percent = 100 }",
    );
    let mut c = client(listen).await;
    for backend in &b {
        backend.force_status(Some(Code::Unavailable));
    }
    outcomes(&mut c, 2).await;
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
