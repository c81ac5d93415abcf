//! Traffic policy through real clients: routing by metadata, weighted and sticky splits, rate
//! limits, load shedding, region spill, and reloads that change any of them under traffic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_tests::etcd::Etcd;
use strait_tests::gateway::strait_command;
use strait_tests::net::{free_addr, http_get, metric, wait_metrics};
use strait_tests::pb::echo_client::EchoClient;
use strait_tests::pb::EchoRequest;
use strait_tests::{Backend, BackendOptions, Gateway};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::ServingStatus;

use crate::fixture::{client, req};

/// Backends by name, a gateway whose config the test wrote, and its admin address.
struct Fleet {
    backends: HashMap<String, Backend>,
    gateway: Gateway,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Fleet {
    /// Starts one backend per name, then a gateway with `body(addresses)` below a listener
    /// "public" and an admin listener.
    async fn start(names: &[&str], body: impl Fn(&HashMap<String, SocketAddr>) -> String) -> Fleet {
        let mut backends = HashMap::new();
        for name in names {
            backends.insert(
                name.to_string(),
                Backend::start(BackendOptions::named(name)).await,
            );
        }
        let (listen, admin) = (free_addr(), free_addr());
        let text = render(listen, admin, &body(&addresses(&backends)));
        let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
        Fleet {
            backends,
            gateway,
            listen,
            admin,
        }
    }

    async fn client(&self) -> EchoClient<Channel> {
        client(self.listen).await
    }

    fn backend(&self, name: &str) -> &Backend {
        &self.backends[name]
    }

    /// Writes a new body and reloads; panics when the gateway refuses it.
    fn reload(&self, body: impl Fn(&HashMap<String, SocketAddr>) -> String) {
        let text = render(self.listen, self.admin, &body(&addresses(&self.backends)));
        self.gateway.write_config(&text);
        let (code, out) = tokio::task::block_in_place(|| {
            strait_command(&["reload", "--admin", &self.admin.to_string()])
        });
        assert_eq!(code, 0, "reload refused: {out}");
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, text) = tokio::task::block_in_place(|| http_get(self.admin, "/metrics"));
        metric(&text, name, labels)
    }

    /// Waits (bounded) until `/metrics` shows `name{labels}` satisfying `ok`.
    fn wait_metric(&self, name: &str, labels: &[(&str, &str)], ok: impl Fn(f64) -> bool) -> f64 {
        let text = tokio::task::block_in_place(|| {
            wait_metrics(self.admin, Duration::from_secs(10), |text| {
                metric(text, name, labels).is_some_and(&ok)
            })
        });
        let text = text.unwrap_or_else(|| panic!("{name}{labels:?} never reached the value"));
        metric(&text, name, labels).unwrap()
    }
}

fn addresses(backends: &HashMap<String, Backend>) -> HashMap<String, SocketAddr> {
    backends.iter().map(|(n, b)| (n.clone(), b.addr)).collect()
}

fn render(listen: SocketAddr, admin: SocketAddr, body: &str) -> String {
    format!(
        "[gateway]\nregion = \"eu-west\"\nthreads = 2\nshutdown_grace = \"10s\"\n\n\
         [[listener]]\nname = \"public\"\nlisten = \"{listen}\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n{body}"
    )
}

/// `[[upstream]]` `name` with one endpoint per backend, each `(backend, region)`, weight 100.
fn upstream(
    name: &str,
    addrs: &HashMap<String, SocketAddr>,
    eps: &[(&str, &str)],
    extra: &str,
) -> String {
    let endpoints: Vec<String> = eps
        .iter()
        .map(|(backend, region)| {
            format!(
                "{{ addr = \"{}\", weight = 100, region = \"{region}\" }}",
                addrs[*backend]
            )
        })
        .collect();
    format!(
        "[[upstream]]\nname = \"{name}\"\nendpoints = [{}]\nconnect_timeout = \"500ms\"\n{extra}\n\n",
        endpoints.join(", ")
    )
}

/// A unary call carrying the given metadata.
fn with_metadata(pairs: &[(&'static str, String)], body: EchoRequest) -> Request<EchoRequest> {
    let mut request = Request::new(body);
    for (name, value) in pairs {
        request
            .metadata_mut()
            .insert(*name, MetadataValue::try_from(value.as_str()).unwrap());
    }
    request
}

/// Who served each of `n` calls with this metadata (every call must succeed).
async fn served(
    c: &mut EchoClient<Channel>,
    n: usize,
    metadata: &[(&'static str, String)],
) -> HashMap<String, usize> {
    let mut tally = HashMap::new();
    for i in 0..n {
        let reply = c
            .unary(with_metadata(metadata, req(b"")))
            .await
            .unwrap_or_else(|s| panic!("call {i} failed: {s:?}"));
        *tally.entry(reply.into_inner().served_by).or_insert(0) += 1;
    }
    tally
}

fn share(tally: &HashMap<String, usize>, name: &str) -> usize {
    tally.get(name).copied().unwrap_or(0)
}

fn canary_routes(addrs: &HashMap<String, SocketAddr>) -> String {
    format!(
        "[[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\nupstream = \"stable\"\n\n\
         [[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\n\
         match = {{ headers = {{ \"x-canary\" = \"true\", \"x-tenant\" = \"*\" }} }}\nupstream = \"canary\"\n\n\
         [[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\nmethod = \"Unary\"\n\
         match = {{ headers = {{ \"x-tenant\" = \"blue\" }} }}\nupstream = \"blue\"\n\n\
         {}{}{}",
        upstream("stable", addrs, &[("v1", "eu-west")], ""),
        upstream("canary", addrs, &[("v2", "eu-west")], ""),
        upstream("blue", addrs, &[("blue", "eu-west")], ""),
    )
}

/// Routes with `match` win over the fallback (even one written before them) when every listed
/// header matches; a method route's match wins over the service's; anything else falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_picks_the_route_and_the_rest_falls_back() {
    let fleet = Fleet::start(&["v1", "v2", "blue"], canary_routes).await;
    let mut c = fleet.client().await;
    let canary = [
        ("x-canary", "true".to_string()),
        ("x-tenant", "a".to_string()),
    ];
    assert_eq!(share(&served(&mut c, 20, &canary).await, "v2"), 20);
    // Not every header matches: the fallback.
    let half = [("x-canary", "true".to_string())];
    assert_eq!(share(&served(&mut c, 20, &half).await, "v1"), 20);
    let wrong_value = [
        ("x-canary", "yes".to_string()),
        ("x-tenant", "a".to_string()),
    ];
    assert_eq!(share(&served(&mut c, 20, &wrong_value).await, "v1"), 20);
    assert_eq!(share(&served(&mut c, 20, &[]).await, "v1"), 20);
    // The method route (more specific) comes before the service's routes.
    let blue = [
        ("x-tenant", "blue".to_string()),
        ("x-canary", "true".to_string()),
    ];
    assert_eq!(share(&served(&mut c, 20, &blue).await, "blue"), 20);
}

fn split_routes(addrs: &HashMap<String, SocketAddr>, weights: (u32, u32), hash: bool) -> String {
    let hash_header = if hash {
        "hash_header = \"x-user-id\"\n"
    } else {
        ""
    };
    format!(
        "[[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\n\
         split = [ {{ upstream = \"cart\", weight = {} }}, {{ upstream = \"cart-v2\", weight = {} }} ]\n\
         {hash_header}\n{}{}",
        weights.0,
        weights.1,
        upstream("cart", addrs, &[("v1", "eu-west")], ""),
        upstream("cart-v2", addrs, &[("v2", "eu-west")], ""),
    )
}

/// 1,000 calls over a 90/10 split land within 3 points of the weights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_holds_its_shares() {
    let fleet = Fleet::start(&["v1", "v2"], |a| split_routes(a, (90, 10), false)).await;
    let mut c = fleet.client().await;
    let tally = served(&mut c, 1000, &[]).await;
    let canary = share(&tally, "v2");
    assert!((70..=130).contains(&canary), "{tally:?}");
    assert_eq!(share(&tally, "v1") + canary, 1000);
}

/// With `hash_header`, each user stays on one side through every call; the users still divide
/// roughly by weight, and calls without the header split by weight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_split_keeps_each_user_on_one_side() {
    let fleet = Fleet::start(&["v1", "v2"], |a| split_routes(a, (70, 30), true)).await;
    let mut c = fleet.client().await;
    let mut users_on_v2 = 0;
    for user in 0..200 {
        let id = [("x-user-id", format!("user-{user}"))];
        let tally = served(&mut c, 5, &id).await;
        assert_eq!(tally.len(), 1, "user-{user} was split: {tally:?}");
        users_on_v2 += share(&tally, "v2");
    }
    let users_on_v2 = users_on_v2 / 5;
    assert!(
        (30..=90).contains(&users_on_v2),
        "{users_on_v2} of 200 users on the 30% side"
    );
    let anonymous = served(&mut c, 100, &[]).await;
    assert_eq!(share(&anonymous, "v2"), 30, "{anonymous:?}");
}

/// A reload changes the split (and adds a rate limit) under continuous calls: none fails, and
/// the new weights take effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_policy_without_failing_a_call() {
    let fleet = Fleet::start(&["v1", "v2"], |a| split_routes(a, (100, 0), false)).await;
    let mut c = fleet.client().await;
    assert_eq!(share(&served(&mut c, 50, &[]).await, "v1"), 50);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let mut c = fleet.client().await;
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match c.unary(req(b"")).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    fleet.reload(|a| {
        split_routes(a, (50, 50), false).replace(
            "split =",
            "rate_limit = { per_second = 100000, key = \"peer\" }\nsplit =",
        )
    });
    fleet.reload(|a| split_routes(a, (0, 100), false));
    let after = served(&mut c, 40, &[]).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert_eq!(share(&after, "v2"), 40, "{after:?}");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 0);
}

fn limited_route(addrs: &HashMap<String, SocketAddr>, limit: &str) -> String {
    format!(
        "[[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\nupstream = \"echo\"\n\
         rate_limit = {{ {limit} }}\n\n{}",
        upstream("echo", addrs, &[("echo", "eu-west")], ""),
    )
}

/// Four callers as fast as they can for 5 s against 100/s: what gets through is the burst plus
/// 100 per second, within 10%. Refusals are RESOURCE_EXHAUSTED with a pushback and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_its_rate() {
    let fleet = Fleet::start(&["echo"], |a| {
        limited_route(a, "per_second = 100, burst = 20")
    })
    .await;
    let flood = flood(fleet.listen, Duration::from_secs(5)).await;
    // A token comes every 10 ms: nobody is told to wait longer.
    assert!(
        flood.pushbacks.iter().all(|p| (1..=10).contains(p)),
        "{:?}",
        flood.pushbacks
    );
    flood.assert_rate(20.0, 100.0);
    assert!(flood.refused > 0, "the callers never exceeded the limit");
    fleet.wait_metric(
        "strait_rate_limited_total",
        &[("route", "bench.Echo")],
        |v| v == flood.refused as f64,
    );
    assert_eq!(fleet.backend("echo").calls(), flood.ok);
}

/// What four callers calling as fast as they can got through a rate limit.
struct Flood {
    ok: u64,
    refused: u64,
    pushbacks: Vec<u64>,
    /// The message of one refusal (none if nothing was refused).
    refusal: Option<String>,
    elapsed: f64,
}

impl Flood {
    /// Admitted: the burst plus the rate over the time taken, within 10% of the rate's share.
    #[track_caller]
    fn assert_rate(&self, burst: f64, per_second: f64) {
        let expected = burst + per_second * self.elapsed;
        assert!(
            (self.ok as f64 - expected).abs() <= 0.1 * per_second * self.elapsed,
            "{} admitted in {:.2} s, expected {expected:.0}",
            self.ok,
            self.elapsed
        );
    }
}

/// Four callers on `listen` for `window`; every refusal must be a rate limit's, with a pushback.
async fn flood(listen: SocketAddr, window: Duration) -> Flood {
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..4 {
        let mut c = client(listen).await;
        callers.push(tokio::spawn(async move {
            let (mut ok, mut refused, mut pushbacks) = (0u64, 0u64, Vec::new());
            let mut refusal = None;
            while started.elapsed() < window {
                match c.unary(req(b"")).await {
                    Ok(_) => ok += 1,
                    Err(status) => {
                        refusal = Some(status.message().to_string());
                        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                        assert!(status.message().contains("rate limit"), "{status:?}");
                        let pushback = status
                            .metadata()
                            .get("grpc-retry-pushback-ms")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                            .expect("grpc-retry-pushback-ms");
                        pushbacks.push(pushback);
                        refused += 1;
                    }
                }
            }
            (ok, refused, pushbacks, refusal)
        }));
    }
    let mut flood = Flood {
        ok: 0,
        refused: 0,
        pushbacks: Vec::new(),
        refusal: None,
        elapsed: 0.0,
    };
    for caller in callers {
        let (ok, refused, pushbacks, refusal) = caller.await.unwrap();
        flood.ok += ok;
        flood.refused += refused;
        flood.pushbacks.extend(pushbacks);
        flood.refusal = flood.refusal.or(refusal);
    }
    flood.elapsed = started.elapsed().as_secs_f64();
    flood
}

/// A gateway on `etcd_url` with a cluster-wide limit of 100/s (burst 10) in front of `backend`.
fn cluster_gateway(etcd_url: &str, backend: SocketAddr) -> (Gateway, SocketAddr, SocketAddr) {
    let (listen, admin) = (free_addr(), free_addr());
    let addrs = HashMap::from([("echo".to_string(), backend)]);
    let body = format!(
        "[etcd]\nendpoints = [\"{etcd_url}\"]\ndial_timeout = \"1s\"\n\n{}",
        limited_route(&addrs, "per_second = 100, burst = 10, scope = \"cluster\"")
    );
    let text = render(listen, admin, &body);
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    (gateway, listen, admin)
}

fn wait_gateways(admin: SocketAddr, n: f64) {
    let seen = tokio::task::block_in_place(|| {
        wait_metrics(admin, Duration::from_secs(15), |text| {
            metric(text, "strait_cluster_gateways", &[]) == Some(n)
        })
    });
    assert!(seen.is_some(), "{admin} never counted {n} gateways");
}

/// Two gateways on one etcd share a cluster-wide limit of 100/s: each counts two gateways and
/// admits 50/s. When the other's registration goes, the one left takes the whole 100/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_limit_is_shared_by_the_registered_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = tokio::task::block_in_place(|| Etcd::single(dir.path()));
    let backend = Backend::start(BackendOptions::named("echo")).await;
    let (_a, a_listen, a_admin) = cluster_gateway(&etcd.url(), backend.addr);
    let (b, _b_listen, b_admin) = cluster_gateway(&etcd.url(), backend.addr);
    wait_gateways(a_admin, 2.0);
    wait_gateways(b_admin, 2.0);
    let half = flood(a_listen, Duration::from_secs(3)).await;
    half.assert_rate(5.0, 50.0);
    // A refusal seen during the flood (a call made after it could find a refilled token).
    let refusal = half.refusal.expect("the flood was refused");
    assert!(
        refusal.contains("across the cluster (50/s on each of 2 gateways)"),
        "{refusal}"
    );

    // The other gateway's registration disappears (as when its lease expires).
    let mut kv = etcd_client::Client::connect([etcd.url()], None)
        .await
        .unwrap();
    let listed = kv
        .get(
            "/strait/gateways/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let b_key = listed
        .kvs()
        .iter()
        .find(|kv| {
            kv.value_str()
                .unwrap()
                .contains(&format!("\"pid\":{},", b.pid()))
        })
        .map(|kv| kv.key().to_vec())
        .expect("gateway b is registered");
    kv.delete(b_key, None).await.unwrap();
    wait_gateways(a_admin, 1.0);
    let whole = flood(a_listen, Duration::from_secs(2)).await;
    whole.assert_rate(10.0, 100.0);
}

/// Keyed by a header, each value has its own bucket: one tenant running dry leaves the other's
/// calls alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_rate_limit_gives_each_key_its_own_bucket() {
    let fleet = Fleet::start(&["echo"], |a| {
        limited_route(a, "per_second = 1, burst = 3, key = \"header:x-tenant\"")
    })
    .await;
    let mut c = fleet.client().await;
    let a = admitted(&mut c, "a").await;
    let b = admitted(&mut c, "b").await;
    // The burst, plus at most one token refilled while the calls ran.
    assert!((3..=4).contains(&a), "tenant a: {a}");
    assert!((3..=4).contains(&b), "tenant b: {b}");
}

/// How many of 6 quick calls as `tenant` are admitted.
async fn admitted(c: &mut EchoClient<Channel>, tenant: &str) -> usize {
    let mut ok = 0;
    for _ in 0..6 {
        let call = with_metadata(&[("x-tenant", tenant.to_string())], req(b""));
        if c.unary(call).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

/// Beyond `max_in_flight` a call is shed at once with UNAVAILABLE, while the calls holding the
/// slots are still running at the backend; once they end, calls are admitted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_max_in_flight_are_shed_at_once() {
    let fleet = Fleet::start(&["echo"], |a| {
        format!(
            "[[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\nupstream = \"echo\"\n\n{}",
            upstream("echo", a, &[("echo", "eu-west")], "max_in_flight = 2")
        )
    })
    .await;
    let slow = || EchoRequest {
        delay_ms: 3000,
        ..Default::default()
    };
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut c = fleet.client().await;
        let call = slow();
        holders.push(tokio::spawn(async move { c.unary(call).await }));
    }
    let backend = fleet.backend("echo");
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.active() < 2 {
        assert!(Instant::now() < deadline, "the slow calls never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut c = fleet.client().await;
    let shed = c.unary(req(b"")).await.unwrap_err();
    assert_eq!(shed.code(), Code::Unavailable, "{shed:?}");
    assert!(shed.message().contains("max_in_flight of 2"), "{shed:?}");
    // Shed, not queued: the slow calls still hold both slots and the backend never saw it.
    assert_eq!(backend.active(), 2);
    assert_eq!(backend.calls(), 2);
    let (_, json) = tokio::task::block_in_place(|| http_get(fleet.admin, "/upstreams"));
    let view: serde_json::Value = serde_json::from_str(&json).unwrap();
    let echo = &view["upstreams"][0];
    assert_eq!(
        (&echo["calls_in_flight"], &echo["max_in_flight"]),
        (&2.into(), &2.into()),
        "{json}"
    );
    assert_eq!(
        fleet.metric("strait_shed_total", &[("upstream", "echo")]),
        Some(1.0)
    );
    for holder in holders {
        holder.await.unwrap().expect("the slow calls finish");
    }
    c.unary(req(b""))
        .await
        .expect("admitted once the slots are free");
}

fn spill_upstream(addrs: &HashMap<String, SocketAddr>, overprovision: &str) -> String {
    format!(
        "[[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\nupstream = \"echo\"\n\n{}",
        upstream(
            "echo",
            addrs,
            &[("eu-a", "eu-west"), ("eu-b", "eu-west"), ("eu-c", "eu-west"), ("us", "us-east")],
            &format!(
                "region_overprovision = {overprovision}\n\
                 health = {{ interval = \"10s\", timeout = \"1s\", unhealthy_after = 2, healthy_after = 1 }}"
            ),
        )
    )
}

/// The gateway's region lost 2 of its 3 endpoints: it keeps 1/3 x 1.4 of its calls and spills
/// the rest to the other region (within 3 points over 1,000 calls), and says so in a gauge and a
/// log line. Reloaded to `region_overprovision = 0`, nothing spills any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_lost_capacity_spills_its_share() {
    let fleet = Fleet::start(&["eu-a", "eu-b", "eu-c", "us"], |a| {
        spill_upstream(a, "1.4")
    })
    .await;
    let mut c = fleet.client().await;
    let all_healthy = served(&mut c, 100, &[]).await;
    assert_eq!(share(&all_healthy, "us"), 0, "{all_healthy:?}");
    // Every probe connects (its Watch reports at once), then two local endpoints go away.
    let deadline = Instant::now() + Duration::from_secs(15);
    while fleet.backends.values().any(|b| b.connections() < 1) {
        assert!(Instant::now() < deadline, "the probes never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fleet
        .backend("eu-b")
        .set_health(ServingStatus::NotServing)
        .await;
    fleet
        .backend("eu-c")
        .set_health(ServingStatus::NotServing)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tally = served(&mut c, 20, &[]).await;
        if share(&tally, "eu-b") + share(&tally, "eu-c") == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "eu-b and eu-c still serve: {tally:?}"
        );
    }

    let tally = served(&mut c, 1000, &[]).await;
    let kept = share(&tally, "eu-a") as f64 / 1000.0;
    let expected = 1.0 / 3.0 * 1.4;
    assert!(
        (kept - expected).abs() <= 0.03,
        "kept {kept}, expected {expected:.3}: {tally:?}"
    );
    assert_eq!(
        share(&tally, "eu-a") + share(&tally, "us"),
        1000,
        "{tally:?}"
    );
    let gauge = fleet.metric("strait_region_spill_ratio", &[("upstream", "echo")]);
    assert_eq!(gauge, Some(0.533), "{gauge:?}");
    assert!(fleet.gateway.count_logs("region spill changed") >= 1);

    fleet.reload(|a| spill_upstream(a, "0"));
    // The reloaded upstream keeps its health state: eu-b and eu-c are still out.
    let strict = served(&mut c, 100, &[]).await;
    assert_eq!(share(&strict, "eu-a"), 100, "{strict:?}");
    let gauge = fleet.metric("strait_region_spill_ratio", &[("upstream", "echo")]);
    assert_eq!(gauge, Some(0.0));
}

/// Route "bench.Echo" to upstream "echo" (backends "a" and "b" in eu-west) with this `retry`
/// and these extra upstream lines.
fn retrying(addrs: &HashMap<String, SocketAddr>, retry: &str, upstream_extra: &str) -> String {
    format!(
        "[[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\nupstream = \"echo\"\n\
         retry = {{ {retry} }}\n\n{}",
        upstream(
            "echo",
            addrs,
            &[("a", "eu-west"), ("b", "eu-west")],
            upstream_extra
        ),
    )
}

/// A unary call with an id the backends count arrivals of, failing with `fail_code` when set.
fn tagged(id: &str, fail_code: Code, metadata: &[(&'static str, &str)]) -> Request<EchoRequest> {
    let mut pairs = vec![("x-call-id", id.to_string())];
    pairs.extend(metadata.iter().map(|(k, v)| (*k, v.to_string())));
    with_metadata(
        &pairs,
        EchoRequest {
            fail_code: fail_code as i32,
            fail_message: "asked for".into(),
            ..Default::default()
        },
    )
}

fn arrivals(fleet: &Fleet, id: &str) -> u32 {
    fleet.backends.values().map(|b| b.arrivals_of(id)).sum()
}

/// Both backends fail 30% of calls trailers-only UNAVAILABLE; with `retry` on UNAVAILABLE and
/// the default budget every call succeeds, the retries say they are retries, and they are
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_retries_hide_backends_failing_30_percent() {
    let fleet = Fleet::start(&["a", "b"], |a| {
        retrying(a, "on = [\"UNAVAILABLE\"], max_attempts = 3", "")
    })
    .await;
    for backend in fleet.backends.values() {
        backend.fail_share(30);
    }
    let mut c = fleet.client().await;
    let mut marked_as_retries = 0;
    for i in 0..300 {
        let reply = c
            .unary(req(b""))
            .await
            .unwrap_or_else(|s| panic!("call {i} failed: {s:?}"));
        if let Some(previous) = reply.metadata().get("x-seen-previous-rpc-attempts") {
            let previous: u64 = previous.to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&previous), "{previous}");
            marked_as_retries += previous;
        }
    }
    let attempts: u64 = fleet.backends.values().map(|b| b.calls()).sum();
    let retries = attempts - 300;
    // 30% of every attempt fails, retries included: about 300 x 0.3 / 0.7 = 129 retries,
    // within the default budget (20% of 300 calls plus 10/s over 10 s = 160).
    assert!((100..=160).contains(&retries), "{retries} retries");
    // The attempt that succeeded knew of every attempt before it.
    assert_eq!(marked_as_retries, retries);
    fleet.wait_metric(
        "strait_retries_total",
        &[("upstream", "echo"), ("reason", "status")],
        |v| v == retries as f64,
    );
}

/// A backend that always fails: retries stop once the budget (10% of the calls plus 1/s over
/// 10 s) is spent, and each refusal is counted; the callers get the backend's own status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_retries_stop_when_the_budget_is_spent() {
    let fleet = Fleet::start(&["a", "b"], |a| {
        retrying(
            a,
            "on = [\"UNAVAILABLE\"], max_attempts = 2",
            // UNAVAILABLE is no breaker failure here: the breakers stay out of the count.
            "retry_budget = { percent = 10, min_per_second = 1 }\nbreaker = { failure_codes = [\"DATA_LOSS\"] }",
        )
    })
    .await;
    for backend in fleet.backends.values() {
        backend.force_status(Some(Code::Unavailable));
    }
    let mut c = fleet.client().await;
    for i in 0..200 {
        let status = c.unary(req(b"")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "call {i}: {status:?}");
        assert!(
            status.message().contains("forced by the test"),
            "{status:?}"
        );
    }
    let attempts: u64 = fleet.backends.values().map(|b| b.calls()).sum();
    let retries = attempts - 200;
    // 10% of 200 calls plus 1/s x 10 s; the calls took well under the 10 s window.
    assert!((28..=32).contains(&retries), "{retries} retries");
    fleet.wait_metric(
        "strait_retry_budget_exhausted_total",
        &[("upstream", "echo")],
        |v| v == (200 - retries) as f64,
    );
}

/// What the retry policy must not retry: a status not listed, a request larger than `buffer`,
/// a backend's negative pushback, and anything after a response message. A listed status with
/// a pushback of 0 is retried up to `max_attempts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_retries_only_where_safe() {
    let fleet = Fleet::start(&["a", "b"], |a| {
        retrying(
            a,
            "on = [\"UNAVAILABLE\", \"RESOURCE_EXHAUSTED\"], max_attempts = 3, buffer = \"1KiB\"",
            "",
        )
    })
    .await;
    let mut c = fleet.client().await;

    let status = c
        .unary(tagged(
            "listed",
            Code::Unavailable,
            &[("x-echo-pushback", "0")],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(arrivals(&fleet, "listed"), 3, "retried up to max_attempts");

    c.unary(tagged("unlisted", Code::Internal, &[]))
        .await
        .unwrap_err();
    assert_eq!(arrivals(&fleet, "unlisted"), 1);

    let status = c
        .unary(tagged(
            "stop",
            Code::ResourceExhausted,
            &[("x-echo-pushback", "-1")],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        arrivals(&fleet, "stop"),
        1,
        "a negative pushback means: do not retry"
    );

    let mut large = tagged("large", Code::Unavailable, &[]);
    large.get_mut().payload = vec![7; 2000];
    c.unary(large).await.unwrap_err();
    assert_eq!(arrivals(&fleet, "large"), 1, "larger than the retry buffer");

    let mut stream_call = tagged("streamed", Code::Unavailable, &[]);
    stream_call.get_mut().reply_count = 1;
    let mut stream = c.server_stream(stream_call).await.unwrap().into_inner();
    assert!(
        stream.message().await.unwrap().is_some(),
        "the first message arrives"
    );
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        arrivals(&fleet, "streamed"),
        1,
        "no retry after a response message"
    );
}

fn hedged_route(addrs: &HashMap<String, SocketAddr>, hedge: &str) -> String {
    format!(
        "[[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\nupstream = \"echo\"\n\
         idempotent = true\nhedge = {{ {hedge} }}\n\n{}",
        upstream(
            "echo",
            addrs,
            &[("slow", "eu-west"), ("fast", "eu-west")],
            ""
        ),
    )
}

/// One backend takes 3 s to answer: every call whose first attempt went there is answered by a
/// hedge to the other backend; the slow attempts are cancelled at the backend (their handlers
/// end long before their 3 s), and the hedges are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_answers_when_the_first_attempt_is_slow() {
    let fleet = Fleet::start(&["slow", "fast"], |a| {
        hedged_route(a, "delay = \"50ms\", max_attempts = 2")
    })
    .await;
    fleet.backend("slow").slow_share(100, 3000);
    let mut c = fleet.client().await;
    let started = Instant::now();
    let tally = served(&mut c, 20, &[]).await;
    assert_eq!(share(&tally, "fast"), 20, "{tally:?}");
    // Smooth WRR sent every other first attempt to the slow backend.
    let slow = fleet.backend("slow");
    assert_eq!(slow.calls(), 10);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a call waited for the slow backend"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while slow.active() > 0 {
        assert!(
            Instant::now() < deadline,
            "the slow attempts were not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fleet.wait_metric(
        "strait_retries_total",
        &[("upstream", "echo"), ("reason", "hedge")],
        |v| v == 10.0,
    );
    // The access to the fast backend: hedged attempts say they are not the first.
    let reply = c.unary(req(b"")).await.unwrap();
    assert_eq!(reply.get_ref().served_by, "fast");
}

/// A hedged route answers what the first attempt to respond sent, error statuses included,
/// and a call whose request is larger than 64 KiB is refused clearly instead of hedged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_route_relays_statuses_and_refuses_large_requests() {
    let fleet = Fleet::start(&["slow", "fast"], |a| {
        hedged_route(a, "delay = \"1s\", max_attempts = 3")
    })
    .await;
    let mut c = fleet.client().await;
    let status = c
        .unary(tagged("failing", Code::NotFound, &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "asked for");
    assert_eq!(
        arrivals(&fleet, "failing"),
        1,
        "answered before the hedge delay"
    );
    let mut large = req(b"");
    large.payload = vec![1; 70 * 1024];
    let status = c.unary(large).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("at most 64 KiB"), "{status:?}");
    // A streamed response is relayed message by message.
    let call = EchoRequest {
        reply_count: 3,
        ..Default::default()
    };
    let mut stream = c.server_stream(call).await.unwrap().into_inner();
    let mut replies = 0;
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.seq, replies);
        replies += 1;
    }
    assert_eq!(replies, 3);
}

/// A hedged call is held to the listener's `max_message_size` like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_call_keeps_the_listeners_message_limit() {
    let fleet = Fleet::start(&["slow", "fast"], |a| {
        // Refers to the listener "public" above (the latest [[listener]]).
        "[listener.limits]\nmax_message_size = 2048\n\n".to_string()
            + &hedged_route(a, "delay = \"1s\"")
    })
    .await;
    let mut c = fleet.client().await;
    c.unary(req(&[1; 1000])).await.expect("a small call passes");
    let status = c.unary(req(&[1; 3000])).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_message_size (2048 bytes)"),
        "{status:?}"
    );
    let reached: u64 = fleet.backends.values().map(|b| b.calls()).sum();
    assert_eq!(reached, 1, "the large call never reached a backend");
}

/// A backend that answers CANCELLED as the caller's deadline runs out (tonic does when its own
/// timer wins the race with the gateway's) is reported to the caller as DEADLINE_EXCEEDED on
/// the relay too, as on pingora's path: the caller's deadline is what expired (at 507e6a3 the
/// relay passed the CANCELLED on). A CANCELLED with time to spare is the backend's own word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_call_cancelled_at_its_deadline_is_told_deadline_exceeded() {
    let fleet = Fleet::start(&["slow", "fast"], |a| {
        hedged_route(a, "delay = \"1s\", max_attempts = 2")
    })
    .await;
    let cancelled = |id: &str| {
        strait_tests::raw::grpc_frame(&prost::Message::encode_to_vec(&EchoRequest {
            fail_code: Code::Cancelled as i32,
            fail_message: id.into(),
            ..Default::default()
        }))
    };
    // The raw client enforces no deadline of its own: what it reads is the gateway's word.
    for (id, timeout, status) in [("late", "40m", "4"), ("early", "5S", "1")] {
        let response = strait_tests::raw::call(
            fleet.listen,
            "/bench.Echo/Unary",
            &[("grpc-timeout", timeout)],
            cancelled(id),
        )
        .await
        .expect("h2 call");
        assert_eq!(
            response.grpc_status().as_deref(),
            Some(status),
            "{id}: {response:?}"
        );
    }
}

/// A caller that starts a hedged call (whose body the gateway reads whole before the first
/// attempt) and then stops sending is answered DEADLINE_EXCEEDED at `request_body_timeout`:
/// it holds its in-flight slot no longer, and no backend sees the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_cut_at_request_body_timeout() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = format!(
        "[gateway]\nthreads = 2\n\n[[listener]]\nname = \"public\"\nlisten = \"{listen}\"\n\
         [listener.limits]\nrequest_body_timeout = \"1s\"\n\n\
         [[route]]\nlistener = \"public\"\nservice = \"bench.Echo\"\nupstream = \"echo\"\n\
         idempotent = true\nhedge = {{ delay = \"50ms\", max_attempts = 2 }}\n\n\
         [[upstream]]\nname = \"echo\"\nendpoints = [{{ addr = \"{}\" }}]\n\n\
         [admin]\nlisten = \"{admin}\"\n",
        backend.addr
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{listen}/bench.Echo/Unary"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut sender = sender.ready().await.unwrap();
    let started = Instant::now();
    let (response, mut body) = sender.send_request(request, false).unwrap();
    // Three bytes of a five-byte message prefix, then nothing.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0]), false)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered, not left waiting")
        .expect("a response");
    let took = started.elapsed();
    assert_eq!(
        response.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"4"[..]),
        "{response:?}"
    );
    let message = response.headers()["grpc-message"].to_str().unwrap();
    assert!(message.contains("request_body_timeout"), "{message}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert_eq!(backend.calls(), 0, "no backend saw the call");
    let text = tokio::task::block_in_place(|| {
        wait_metrics(admin, Duration::from_secs(10), |m| {
            metric(m, "strait_calls_in_flight", &[("listener", "public")]) == Some(0.0)
        })
    });
    assert!(text.is_some(), "the slot is free again");
    drop(body);
}
