//! DNS discovery against a real authoritative DNS server on loopback, whose records change while
//! calls run: addresses added and removed, TTLs honoured, the server down (last good set kept),
//! NXDOMAIN at start, and a reload that adds a dns upstream.
//!
//! Every address of a name shares the host's port, so the backends listen on one port at
//! distinct loopback addresses (127.0.0.1, 127.0.0.2): all traffic stays on `lo`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strait_tests::dns::DnsServer;
use strait_tests::net::{free_addr, http_get, metric, wait_metrics};
use strait_tests::{Backend, BackendOptions, Gateway};
use tonic::Code;

use crate::fixture::{call_until, call_until_served_by_n, client, count, req, served_by};

const NAME: &str = "echo.strait.test";
const PROPAGATION: Duration = Duration::from_secs(10);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Two backends on one port: b0 at 127.0.0.1, b1 at 127.0.0.2.
async fn two_backends_on_one_port() -> (Backend, Backend, u16) {
    for _ in 0..20 {
        let b0 = Backend::start(BackendOptions::named("b0")).await;
        let port = b0.addr.port();
        let addr = SocketAddr::new(ip("127.0.0.2"), port);
        if std::net::TcpListener::bind(addr).is_ok() {
            let b1 = Backend::start(BackendOptions {
                addr: Some(addr),
                ..BackendOptions::named("b1")
            })
            .await;
            return (b0, b1, port);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// Calls until b1 has served `n` calls in a row (panics after `PROPAGATION`, naming `what`).
async fn only_b1_in_a_row(
    c: &mut strait_tests::pb::echo_client::EchoClient<tonic::transport::Channel>,
    n: usize,
    what: &str,
) {
    let mut in_a_row = 0;
    call_until(c, PROPAGATION, what, |b| {
        in_a_row = if b == "b1" { in_a_row + 1 } else { 0 };
        in_a_row >= n
    })
    .await;
}

/// What most tests start from: b0 and b1 on one port, a DNS server answering `NAME` with
/// 127.0.0.1 (TTL `ttl`), and a gateway resolving it every `refresh`, already serving from b0.
struct Serving {
    b0: Backend,
    b1: Backend,
    port: u16,
    dns: DnsServer,
    gateway: Gateway,
    listen: SocketAddr,
    admin: SocketAddr,
    c: strait_tests::pb::echo_client::EchoClient<tonic::transport::Channel>,
}

async fn serving_b0(ttl: u32, refresh: &str) -> Serving {
    let (b0, b1, port) = two_backends_on_one_port().await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &[ip("127.0.0.1")], ttl);
    let (listen, admin) = (free_addr(), free_addr());
    let text = dns_config(listen, admin, dns.addr, port, refresh);
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut c = client(listen).await;
    call_until(&mut c, PROPAGATION, "b0 serves", |b| b == "b0").await;
    Serving {
        b0,
        b1,
        port,
        dns,
        gateway,
        listen,
        admin,
        c,
    }
}

fn dns_config(
    listen: SocketAddr,
    admin: SocketAddr,
    dns: SocketAddr,
    port: u16,
    refresh: &str,
) -> String {
    format!(
        r#"
[gateway]
threads = 2
shutdown_grace = "2s"

[admin]
listen = "{admin}"

[dns]
servers = ["{dns}"]
timeout = "300ms"

[[listener]]
name = "public"
listen = "{listen}"

[[route]]
listener = "public"
service = "bench.Echo"
upstream = "echo"

[[upstream]]
name = "echo"
discovery = "dns"
hosts = [{{ name = "{NAME}", port = {port} }}]
refresh = "{refresh}"
connect_timeout = "500ms"
"#
    )
}

fn upstreams(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(admin, "/upstreams");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("/upstreams is JSON")
}

/// Calls in a loop until stopped; counts the ones that failed.
struct Traffic {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    async fn start(listen: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let mut c = client(listen).await;
        let task = tokio::spawn({
            let (stop, failed, done) = (stop.clone(), failed.clone(), done.clone());
            async move {
                // Bounded: at most 20,000 calls, however long the test takes.
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Err(status) = c.unary(req(b"")).await {
                        eprintln!("call failed: {status:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        Traffic {
            stop,
            failed,
            done,
            task,
        }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// refresh 1s with a TTL of an hour: every change is seen within about a second (a long TTL
/// never lengthens the refresh, and nothing caches the answer), and no call fails through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_added_and_removed_while_calls_run() {
    let Serving {
        b0,
        b1,
        port,
        dns,
        gateway: _gateway,
        listen,
        admin,
        mut c,
    } = serving_b0(3600, "1s").await;
    let b0_state = tokio::task::block_in_place(|| upstreams(admin));
    let endpoints = &b0_state["upstreams"][0]["endpoints"];
    assert_eq!(endpoints.as_array().unwrap().len(), 1, "{b0_state}");
    assert_eq!(endpoints[0]["source"]["kind"], "dns");
    assert_eq!(endpoints[0]["source"]["name"], NAME);

    let traffic = Traffic::start(listen).await;
    dns.set(NAME, &[ip("127.0.0.1"), ip("127.0.0.2")], 3600);
    call_until_served_by_n(&mut c, PROPAGATION, 2).await;
    // Shared with the traffic task's calls, so not an exact alternation.
    let names = served_by(&mut c, 100).await;
    assert!(
        count(&names, "b0") >= 25 && count(&names, "b1") >= 25,
        "{names:?}"
    );

    dns.set(NAME, &[ip("127.0.0.2")], 3600);
    only_b1_in_a_row(&mut c, 40, "only b1 after the removal").await;
    let (calls, failed) = traffic.finish().await;
    assert!(calls > 0);
    assert_eq!(
        failed, 0,
        "{failed} of {calls} calls failed while the records changed"
    );
    assert!(b0.calls() > 0 && b1.calls() > 0);

    let view = tokio::task::block_in_place(|| upstreams(admin));
    let upstream = &view["upstreams"][0];
    assert_eq!(upstream["discovery"], "dns");
    assert_eq!(upstream["dns"][0]["state"], "resolved", "{upstream}");
    assert_eq!(upstream["dns"][0]["addresses"], 1);
    assert_eq!(upstream["dns"][0]["ttl_seconds"], 3600);
    assert_eq!(upstream["staleness_seconds"], 0.0);
    let addrs: Vec<&str> = upstream["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["addr"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, [format!("127.0.0.2:{port}")]);
    let (_, page) = tokio::task::block_in_place(|| http_get(admin, "/"));
    assert!(page.contains(&format!("dns {NAME}")), "{page}");
    let (_, metrics) = tokio::task::block_in_place(|| http_get(admin, "/metrics"));
    assert_eq!(
        metric(&metrics, "strait_dns_addresses", &[("name", NAME)]),
        Some(1.0)
    );
    assert!(
        metric(
            &metrics,
            "strait_dns_resolutions_total",
            &[("name", NAME), ("result", "ok")]
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{metrics}"
    );
}

/// refresh 1h with a TTL of 1s: the TTL shortens the refresh, so a change is seen in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_ttl_shortens_a_long_refresh() {
    let Serving {
        b0: _b0,
        b1: _b1,
        port: _,
        dns,
        gateway: _gateway,
        listen: _,
        admin,
        mut c,
    } = serving_b0(1, "1h").await;
    dns.set(NAME, &[ip("127.0.0.2")], 1);
    only_b1_in_a_row(&mut c, 20, "only b1 once the TTL ran out").await;
    let view = tokio::task::block_in_place(|| upstreams(admin));
    assert_eq!(view["upstreams"][0]["dns"][0]["ttl_seconds"], 1);
    // Never below one second: a TTL of 0 must not turn into a query loop.
    dns.set(NAME, &[ip("127.0.0.2")], 0);
    let before = dns.queries(NAME);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = dns.queries(NAME) - before;
    // A and AAAA per resolution, at most one resolution a second (plus the one in progress).
    assert!(asked <= 2 * 4, "{asked} queries in 3 s with TTL 0");
}

/// With the DNS server down the last good set keeps serving, the failures are counted and
/// logged and staleness grows; when the server is back, its answer is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_keeps_the_last_good_set() {
    let Serving {
        b0: _b0,
        b1: _b1,
        port: _,
        mut dns,
        gateway,
        listen: _,
        admin,
        mut c,
    } = serving_b0(1, "1s").await;

    dns.stop().await;
    let failing = tokio::task::block_in_place(|| {
        wait_metrics(admin, PROPAGATION, |m| {
            metric(
                m,
                "strait_dns_resolutions_total",
                &[("name", NAME), ("result", "error")],
            )
            .unwrap_or(0.0)
                >= 2.0
                && metric(
                    m,
                    "strait_discovery_staleness_seconds",
                    &[("upstream", "echo")],
                )
                .unwrap_or(0.0)
                    > 0.0
        })
    });
    assert!(failing.is_some(), "resolution failures were never counted");
    let names = served_by(&mut c, 50).await;
    assert_eq!(count(&names, "b0"), 50, "the last good set serves");
    let view = tokio::task::block_in_place(|| upstreams(admin));
    let name = &view["upstreams"][0]["dns"][0];
    assert_eq!(name["state"], "stale", "{name}");
    assert_eq!(name["addresses"], 1);
    assert!(name["last_error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(gateway
        .wait_for_log(&["dns resolution failed", NAME], PROPAGATION)
        .is_some());

    dns.set(NAME, &[ip("127.0.0.1"), ip("127.0.0.2")], 1);
    dns.restart().await;
    call_until_served_by_n(&mut c, PROPAGATION, 2).await;
    let view = tokio::task::block_in_place(|| upstreams(admin));
    assert_eq!(view["upstreams"][0]["dns"][0]["state"], "resolved");
}

/// A name that does not exist at start: calls get UNAVAILABLE naming the reason, `/upstreams`
/// says it too; once the record appears, calls are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_at_start_then_the_record_appears() {
    let (_b0, _b1, port) = two_backends_on_one_port().await;
    let dns = DnsServer::start().await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = dns_config(listen, admin, dns.addr, port, "1s");
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut c = client(listen).await;
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    loop {
        let status = c.unary(req(b"")).await.expect_err("no such name yet");
        assert_eq!(status.code(), Code::Unavailable);
        if status.message().contains("NXDOMAIN") {
            assert!(status.message().contains(NAME), "{}", status.message());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never told NXDOMAIN: {}",
            status.message()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = tokio::task::block_in_place(|| upstreams(admin));
    let upstream = &view["upstreams"][0];
    assert_eq!(upstream["dns"][0]["state"], "unresolved");
    assert_eq!(upstream["staleness_seconds"], -1.0);
    assert!(upstream["empty_reason"]
        .as_str()
        .is_some_and(|r| r.contains("has not resolved: NXDOMAIN")));
    let (_, metrics) = tokio::task::block_in_place(|| http_get(admin, "/metrics"));
    assert!(
        metric(
            &metrics,
            "strait_dns_resolutions_total",
            &[("name", NAME), ("result", "no_records")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    dns.set(NAME, &[ip("127.0.0.2")], 1);
    call_until(&mut c, PROPAGATION, "b1 serves once the name exists", |b| {
        b == "b1"
    })
    .await;
}

/// A reload that turns a static upstream into a dns one: the new name is resolved at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_dns_upstream() {
    let (_b0, _b1, port) = two_backends_on_one_port().await;
    let dns = DnsServer::start().await;
    dns.set(NAME, &[ip("127.0.0.2")], 60);
    let (listen, admin) = (free_addr(), free_addr());
    let dns_text = dns_config(listen, admin, dns.addr, port, "1m");
    let static_text = dns_text.replace(
        &format!("discovery = \"dns\"\nhosts = [{{ name = \"{NAME}\", port = {port} }}]\nrefresh = \"1m\""),
        &format!("endpoints = [{{ addr = \"127.0.0.1:{port}\" }}]"),
    );
    assert_ne!(static_text, dns_text);
    let gateway = tokio::task::block_in_place(|| Gateway::start(&static_text, listen));
    let mut c = client(listen).await;
    call_until(&mut c, PROPAGATION, "b0 serves", |b| b == "b0").await;
    assert_eq!(dns.queries(NAME), 0);

    gateway.write_config(&dns_text);
    gateway.signal("HUP");
    only_b1_in_a_row(&mut c, 20, "b1 serves after the reload").await;
    assert!(dns.queries(NAME) > 0);
}

/// The DNS thread panics (test hook): the supervisor restarts it, the last good set serves
/// throughout (even with the server gone, so nothing could be resolved again), and once the
/// server is back the restarted task follows changes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_dns_task_keeps_the_last_good_set() {
    let Serving {
        b0: _b0,
        b1: _b1,
        port: _,
        mut dns,
        gateway,
        listen: _,
        admin,
        mut c,
    } = serving_b0(1, "1s").await;
    dns.stop().await;

    let (status, body) = tokio::task::block_in_place(|| {
        strait_tests::net::http_request(admin, "POST", "/test/panic?task=dns_discovery")
    });
    assert_eq!(status, 200, "{body}");
    assert!(gateway
        .wait_for_log(&["background task restarted", "dns_discovery"], PROPAGATION)
        .is_some());
    // Wait for the restarted task's own first (failing) resolution before judging.
    let errors = |m: &str| {
        metric(
            m,
            "strait_dns_resolutions_total",
            &[("name", NAME), ("result", "error")],
        )
        .unwrap_or(0.0)
    };
    let at_restart = errors(&tokio::task::block_in_place(|| http_get(admin, "/metrics")).1);
    let failed_again = tokio::task::block_in_place(|| {
        wait_metrics(admin, PROPAGATION, |m| errors(m) >= at_restart + 1.0)
    });
    assert!(failed_again.is_some(), "the restarted task never resolved");
    let names = served_by(&mut c, 50).await;
    assert_eq!(
        count(&names, "b0"),
        50,
        "the last good set outlives the restart"
    );

    dns.set(NAME, &[ip("127.0.0.2")], 1);
    dns.restart().await;
    only_b1_in_a_row(&mut c, 20, "b1 after the restarted task resolves").await;
}
