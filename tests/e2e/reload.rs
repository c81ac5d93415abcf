//! Reloading the config (SIGHUP or `strait reload`): routes, upstreams, listeners and settings
//! change without a restart; a bad file changes nothing; calls in flight never fail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_tests::gateway::strait_command;
use strait_tests::net::{dead_addr, free_addr, http_get, metric, wait_metric, wait_metrics};
use strait_tests::tcp::{exchange, TcpEcho};
use strait_tests::{Backend, BackendOptions, Gateway};
use tokio_stream::StreamExt;

use crate::fixture::{client, req, PingPong};

/// Renders a config from parts; every test below edits only the parts it changes.
struct Parts {
    admin: SocketAddr,
    listeners: String,
    routes: String,
    upstreams: String,
}

impl Parts {
    /// Listener "public" routing everything to upstream "one" with a single endpoint.
    fn one_route(public: SocketAddr, admin: SocketAddr, endpoint: SocketAddr) -> Parts {
        Parts {
            admin,
            listeners: grpc_listener("public", public),
            routes: route("public", "one"),
            upstreams: upstream("one", &[(endpoint, 100)], ""),
        }
    }

    fn render(&self) -> String {
        format!(
            "[gateway]\nthreads = 2\nshutdown_grace = \"10s\"\n\n{}\n{}\n{}\n[admin]\nlisten = \"{}\"\n",
            self.listeners, self.routes, self.upstreams, self.admin
        )
    }
}

fn grpc_listener(name: &str, addr: SocketAddr) -> String {
    format!("[[listener]]\nname = \"{name}\"\nlisten = \"{addr}\"\n\n")
}

fn route(listener: &str, upstream: &str) -> String {
    format!("[[route]]\nlistener = \"{listener}\"\nservice = \"bench.Echo\"\nupstream = \"{upstream}\"\n\n")
}

fn upstream(name: &str, endpoints: &[(SocketAddr, u32)], extra: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, w)| format!("{{ addr = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        "[[upstream]]\nname = \"{name}\"\nendpoints = [{}]\nconnect_timeout = \"300ms\"\n{extra}\n\n",
        eps.join(", ")
    )
}

fn reload(admin: SocketAddr) -> (i32, String) {
    strait_command(&["reload", "--admin", &admin.to_string()])
}

fn endpoint_view(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let (_, json) = http_get(admin, "/upstreams");
    let view: serde_json::Value = serde_json::from_str(&json).unwrap();
    view["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|u| u["endpoints"].as_array().unwrap().clone())
        .find(|e| e["addr"] == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} not in /upstreams: {json}"))
}

async fn served_by(addr: SocketAddr) -> String {
    client(addr)
        .await
        .unary(req(b"who"))
        .await
        .expect("call succeeds")
        .into_inner()
        .served_by
}

/// A reload moves a route to another upstream, opens a gRPC and a tcp listener, and a later one
/// closes a listener; an endpoint that stays keeps its breaker state across all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_routes_upstreams_and_listeners() {
    let a = Backend::start(BackendOptions::named("a")).await;
    let b = Backend::start(BackendOptions::named("b")).await;
    let raw_backend = TcpEcho::start("t").await;
    let dead = dead_addr();
    let (public, second, raw, admin) = (free_addr(), free_addr(), free_addr(), free_addr());
    let breaker =
        "max_attempts = 3\n[upstream.breaker]\nconsecutive_failures = 1\nopen_for = \"60s\"";
    let mut parts = Parts {
        admin,
        listeners: grpc_listener("public", public),
        routes: route("public", "one"),
        upstreams: upstream("one", &[(a.addr, 100), (dead, 100)], breaker)
            + &upstream("two", &[(b.addr, 100)], ""),
    };
    let gateway = tokio::task::block_in_place(|| Gateway::start(&parts.render(), public));
    for _ in 0..4 {
        assert_eq!(served_by(public).await, "a");
    }
    let before = tokio::task::block_in_place(|| endpoint_view(admin, dead));
    assert_eq!(before["breaker_state"], "open", "{before}");

    // v2 by SIGHUP: the route moves to "two", a second gRPC listener and a tcp listener appear,
    // and the breaker settings of "one" change.
    parts.listeners = grpc_listener("public", public)
        + &grpc_listener("second", second)
        + &format!("[[listener]]\nname = \"raw\"\nlisten = \"{raw}\"\nprotocol = \"tcp\"\nupstream = \"tcp\"\n\n");
    parts.routes = route("public", "two") + &route("second", "one");
    parts.upstreams = upstream(
        "one",
        &[(a.addr, 100), (dead, 100)],
        "max_attempts = 3\n[upstream.breaker]\nconsecutive_failures = 2\nopen_for = \"50s\"",
    ) + &upstream("two", &[(b.addr, 100)], "")
        + &upstream("tcp", &[(raw_backend.addr, 100)], "");
    gateway.write_config(&parts.render());
    gateway.signal("HUP");
    let line = tokio::task::block_in_place(|| {
        gateway.wait_for_log(&["reloaded: 3 listener(s)"], Duration::from_secs(5))
    })
    .unwrap_or_else(|| panic!("no reload line:\n{}", gateway.logs().join("\n")));
    assert!(
        line.contains("opened: ") && line.contains("second") && line.contains("raw"),
        "{line}"
    );
    assert_eq!(
        served_by(public).await,
        "b",
        "the route moved to upstream two"
    );
    assert_eq!(
        served_by(second).await,
        "a",
        "the new listener serves its route"
    );
    let (name, echoed) = exchange(raw, b"l4 after reload")
        .await
        .expect("tcp listener opened");
    assert_eq!(
        (name.as_str(), echoed.as_slice()),
        ("t", &b"l4 after reload"[..])
    );
    let after = tokio::task::block_in_place(|| endpoint_view(admin, dead));
    assert_eq!(
        after["breaker_state"], "open",
        "breaker state survives the reload: {after}"
    );
    assert_eq!(
        after["last_transition"], before["last_transition"],
        "no new transition: the endpoint kept its state"
    );

    // v3 by `strait reload`: the second listener goes away while a slow call is in flight on it.
    let mut slow_client = client(second).await;
    let slow = tokio::spawn(async move {
        let mut request = req(b"slow");
        request.delay_ms = 1000;
        slow_client.unary(request).await
    });
    // The slow call is in flight once a backend has it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.active() + b.active() == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow call never reached a backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    parts.listeners = grpc_listener("public", public)
        + &format!("[[listener]]\nname = \"raw\"\nlisten = \"{raw}\"\nprotocol = \"tcp\"\nupstream = \"tcp\"\n\n");
    parts.routes = route("public", "two");
    gateway.write_config(&parts.render());
    let (code, output) = tokio::task::block_in_place(|| reload(admin));
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("closed: second"), "{output}");
    assert!(
        tokio::net::TcpStream::connect(second).await.is_err(),
        "the removed listener no longer accepts"
    );
    assert_eq!(served_by(public).await, "b");
    let finished = slow
        .await
        .unwrap()
        .expect("the call in flight on the removed listener completes");
    assert_eq!(finished.into_inner().served_by, "a");
    let (_, text) = tokio::task::block_in_place(|| http_get(admin, "/metrics"));
    assert_eq!(
        metric(&text, "strait_config_reloads_total", &[("result", "ok")]),
        Some(2.0)
    );
}

/// An endpoint that leaves (here by a reload) keeps its per-endpoint series for
/// `endpoint_series_grace`, then they go; the endpoint that stays keeps its series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_endpoints_series_are_removed_after_the_grace() {
    let a = Backend::start(BackendOptions::named("a")).await;
    let b = Backend::start(BackendOptions::named("b")).await;
    let (public, admin) = (free_addr(), free_addr());
    let mut parts = Parts::one_route(public, admin, a.addr);
    parts.upstreams = upstream("one", &[(a.addr, 100), (b.addr, 100)], "");
    let grace =
        |text: String| text.replace("[admin]\n", "[admin]\nendpoint_series_grace = \"5s\"\n");
    let gateway = tokio::task::block_in_place(|| Gateway::start(&grace(parts.render()), public));
    for _ in 0..4 {
        served_by(public).await;
    }
    let attempts = |text: &str, addr: SocketAddr| {
        metric(
            text,
            "strait_upstream_attempts_total",
            &[("endpoint", &addr.to_string()), ("outcome", "ok")],
        )
    };
    // A call's attempt is counted as the call ends, just after its caller has the answer:
    // wait (bounded) until all four are.
    let text = tokio::task::block_in_place(|| {
        wait_metrics(admin, Duration::from_secs(10), |text| {
            attempts(text, a.addr).unwrap_or(0.0) + attempts(text, b.addr).unwrap_or(0.0) >= 4.0
        })
    })
    .expect("the four calls are counted");
    assert_eq!(attempts(&text, b.addr), Some(2.0), "{text}");

    parts.upstreams = upstream("one", &[(a.addr, 100)], "");
    gateway.write_config(&grace(parts.render()));
    let (code, output) = tokio::task::block_in_place(|| reload(admin));
    assert_eq!(code, 0, "{output}");
    let left = Instant::now();
    let (_, text) = tokio::task::block_in_place(|| http_get(admin, "/metrics"));
    assert_eq!(
        attempts(&text, b.addr),
        Some(2.0),
        "kept within the grace so the last scrapes see the final count"
    );
    let deadline = left + Duration::from_secs(20);
    let gone = loop {
        let (_, text) = tokio::task::block_in_place(|| http_get(admin, "/metrics"));
        if attempts(&text, b.addr).is_none() {
            break text;
        }
        assert!(Instant::now() < deadline, "b's series never went: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        left.elapsed() >= Duration::from_secs(5),
        "not before the grace ran out"
    );
    assert!(
        !gone.contains(&format!("endpoint=\"{}\"", b.addr)),
        "no series of b at all"
    );
    assert_eq!(attempts(&gone, a.addr), Some(2.0), "a keeps its series");
}

/// A reload that cannot be applied changes nothing: a file that does not parse, a change that
/// needs a restart, a listener address that is taken. Each is reported, logged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reloads_keep_the_running_config() {
    let a = Backend::start(BackendOptions::named("a")).await;
    let (public, admin) = (free_addr(), free_addr());
    let parts = Parts {
        admin,
        listeners: grpc_listener("public", public),
        routes: route("public", "one"),
        upstreams: upstream("one", &[(a.addr, 100)], ""),
    };
    let good = parts.render();
    let gateway = tokio::task::block_in_place(|| Gateway::start(&good, public));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let cases = [
        (
            "listen = [not toml".to_string(),
            vec!["the new config is invalid", "strait.toml:1:"],
        ),
        (
            good.replace("upstream = \"one\"\n", "upstream = \"nope\"\n"),
            vec!["route[0].upstream", "no upstream named \"nope\""],
        ),
        (
            good.replace("threads = 2", "threads = 1"),
            vec!["changing [gateway] needs a restart"],
        ),
        (
            format!(
                "{}{}",
                grpc_listener("extra", taken_addr.parse().unwrap()),
                good
            ),
            vec!["cannot bind listener \"extra\"", &taken_addr],
        ),
    ];
    for (text, expected) in &cases {
        gateway.write_config(text);
        let (code, output) = tokio::task::block_in_place(|| reload(admin));
        assert_ne!(code, 0, "{output}");
        for e in expected {
            assert!(output.contains(e), "missing {e:?} in:\n{output}");
        }
        assert!(output.contains("running config stays"), "{output}");
        assert_eq!(
            served_by(public).await,
            "a",
            "the running config still serves"
        );
    }
    // SIGHUP with a bad file: logged, counted, still serving.
    gateway.write_config("listen = [not toml");
    gateway.signal("HUP");
    assert!(tokio::task::block_in_place(
        || gateway.wait_for_log(&["reload refused"], Duration::from_secs(5))
    )
    .is_some());
    let refused = tokio::task::block_in_place(|| {
        wait_metric(
            admin,
            "strait_config_reloads_total",
            &[("result", "error")],
            cases.len() as f64 + 1.0,
        )
    });
    let (_, text) = tokio::task::block_in_place(|| http_get(admin, "/metrics"));
    assert_eq!(refused, Some(cases.len() as f64 + 1.0));
    assert_eq!(
        metric(&text, "strait_config_reloads_total", &[("result", "ok")]),
        None
    );
    assert_eq!(gateway.count_logs("reload refused"), cases.len() + 1);
    drop(taken);
}

/// Steady unary and streaming load while the config is reloaded over and over, alternating
/// weights, breaker and health settings, a route timeout, and a listener that comes and goes:
/// not one call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_call() {
    let a = Backend::start(BackendOptions::named("a")).await;
    let b = Backend::start(BackendOptions::named("b")).await;
    let (public, extra, admin) = (free_addr(), free_addr(), free_addr());
    let versions = [
        Parts {
            admin,
            listeners: grpc_listener("public", public),
            routes: route("public", "echo"),
            upstreams: upstream("echo", &[(a.addr, 100), (b.addr, 100)], ""),
        },
        Parts {
            admin,
            listeners: grpc_listener("public", public) + &grpc_listener("extra", extra),
            routes: route("public", "echo").replace(
                "upstream = \"echo\"",
                "upstream = \"echo\"\ntimeout = \"30s\"",
            ) + &route("extra", "echo"),
            upstreams: upstream(
                "echo",
                &[(a.addr, 100), (b.addr, 20)],
                "max_attempts = 2\n[upstream.health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\n\
                 [upstream.breaker]\nconsecutive_failures = 3",
            ),
        },
    ];
    let gateway = tokio::task::block_in_place(|| Gateway::start(&versions[0].render(), public));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut c = client(public).await;
            while !stop.load(Ordering::Relaxed) {
                let result = if worker == 0 {
                    // A server stream of 20 replies per call.
                    let mut request = req(b"s");
                    request.reply_count = 20;
                    match c.server_stream(request).await {
                        Ok(r) => {
                            let mut stream = r.into_inner();
                            let mut n = 0;
                            let mut error = None;
                            while let Some(item) = stream.next().await {
                                match item {
                                    Ok(_) => n += 1,
                                    Err(e) => error = Some(format!("{e:?}")),
                                }
                            }
                            match error {
                                Some(e) => Err(e),
                                None if n == 20 => Ok(()),
                                None => Err(format!("stream ended after {n} replies")),
                            }
                        }
                        Err(e) => Err(format!("{e:?}")),
                    }
                } else {
                    c.unary(req(b"u"))
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("{e:?}"))
                };
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failed.lock().unwrap().push(e);
                        0
                    }
                };
            }
        }));
    }
    let reloads = 24;
    for i in 0..reloads {
        gateway.write_config(&versions[(i + 1) % 2].render());
        let (code, output) = tokio::task::block_in_place(|| reload(admin));
        assert_eq!(code, 0, "reload {i}: {output}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = failed.lock().unwrap().clone();
    let succeeded = ok.load(Ordering::Relaxed);
    println!(
        "{reloads} reloads under load: {succeeded} calls ok, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(succeeded > 200, "load kept flowing: {succeeded}");
    assert!(a.calls() > 0 && b.calls() > 0);
    let (_, text) = tokio::task::block_in_place(|| http_get(admin, "/metrics"));
    assert_eq!(
        metric(&text, "strait_config_reloads_total", &[("result", "ok")]),
        Some(reloads as f64)
    );
}

/// A listener whose limits change is replaced on its own socket: not one connection attempt is
/// refused while it happens, and the new limits apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_replaced_on_the_same_address_refuses_no_connection() {
    let a = Backend::start(BackendOptions::named("a")).await;
    let (public, admin) = (free_addr(), free_addr());
    let mut parts = Parts::one_route(public, admin, a.addr);
    let gateway = tokio::task::block_in_place(|| Gateway::start(&parts.render(), public));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
    let dialer = {
        let (stop, refused, attempts) = (stop.clone(), refused.clone(), attempts.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                attempts.fetch_add(1, Ordering::Relaxed);
                if tokio::net::TcpStream::connect(public).await.is_err() {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for streams in [10, 20, 30] {
        parts.listeners = grpc_listener("public", public)
            + &format!("[listener.limits]\nmax_concurrent_streams = {streams}\n\n");
        gateway.write_config(&parts.render());
        let (code, output) = tokio::task::block_in_place(|| reload(admin));
        assert_eq!(code, 0, "{output}");
        assert!(output.contains("restarted: public"), "{output}");
        assert_eq!(served_by(public).await, "a");
    }
    stop.store(true, Ordering::Relaxed);
    dialer.await.unwrap();
    assert!(attempts.load(Ordering::Relaxed) > 20);
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "a connection was refused during a restart"
    );
}

/// A stream opened before reloads runs to completion across them: one that moves its upstream
/// to another backend, then one that replaces its listener on the same address. New calls see
/// each new config at once; the stream stays on the backend it started on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_stream_survives_reloads_that_change_its_path() {
    let a = Backend::start(BackendOptions::named("a")).await;
    let b = Backend::start(BackendOptions::named("b")).await;
    let (public, admin) = (free_addr(), free_addr());
    let mut parts = Parts::one_route(public, admin, a.addr);
    let gateway = tokio::task::block_in_place(|| Gateway::start(&parts.render(), public));
    let mut stream = PingPong::open(public).await;
    assert_eq!(stream.ping().await, "a");

    parts.upstreams = upstream("one", &[(b.addr, 100)], "");
    gateway.write_config(&parts.render());
    let (code, output) = tokio::task::block_in_place(|| reload(admin));
    assert_eq!(code, 0, "{output}");
    assert_eq!(
        served_by(public).await,
        "b",
        "new calls follow the new upstream"
    );
    assert_eq!(
        stream.ping().await,
        "a",
        "the open stream keeps its backend"
    );

    parts.listeners =
        grpc_listener("public", public) + "[listener.limits]\nmax_concurrent_streams = 50\n\n";
    gateway.write_config(&parts.render());
    let (code, output) = tokio::task::block_in_place(|| reload(admin));
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("restarted: public"), "{output}");
    assert_eq!(served_by(public).await, "b");
    for _ in 0..3 {
        assert_eq!(stream.ping().await, "a", "the stream outlives its listener");
    }
    stream.finish().await;
    assert_eq!(a.calls(), 1, "only the long-lived stream reached a");
}
