//! Proxyless gRPC (issue #18): grpcio's own xDS client (Debian's python3-grpcio, driven by
//! tests/xds/client.py) and grpc-js with grpc-js-xds (vendored npm packages, driven by
//! tests/xds/node/client.mjs) call `xds:///echo` with a bootstrap written by `strait xds-bootstrap`,
//! against real tonic backends registered on leases in a real etcd. The gateway is only the xDS
//! server here: every call goes from the client straight to a backend, so where calls land shows
//! what the client learnt over xDS.
//!
//! A raw ADS client (tonic, the Envoy types) checks what the server says on the wire and how it
//! takes garbage, NACKs and clients that vanish.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use etcd_client::PutOptions;
use prost::Message;
use serde_json::Value;
use strait_tests::etcd::{self, instance_value, Etcd};
use strait_tests::gateway::strait_bin;
use strait_tests::net::{free_addr, http_get, metric, wait_metrics};
use strait_tests::xds::{eds_request, EDS};
use strait_tests::{tls, Backend, BackendOptions, Gateway};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::ServingStatus;

use crate::fixture::etcd_config;

/// Bound on every wait for the client to follow a change (probes, push, priority switch).
const FOLLOW: Duration = Duration::from_secs(20);

/// Debian's grpcio: `.ci/install-deps` installs python3-grpcio; without it these tests fail.
const PYTHON: &str = "/usr/bin/python3";

fn xds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("xds")
}

/// Where the calls of one batch went: backend name -> calls, and failures by status.
#[derive(Debug, Default)]
struct Tally {
    ok: BTreeMap<String, u32>,
    errors: BTreeMap<String, u32>,
}

impl Tally {
    /// The client's line: `{"ok": {backend: n}, "errors": {STATUS: n}}`.
    fn parse(line: &str) -> Option<Tally> {
        let value: Value = serde_json::from_str(line).ok()?;
        let counts = |key: &str| -> Option<BTreeMap<String, u32>> {
            value[key]
                .as_object()?
                .iter()
                .map(|(k, v)| Some((k.clone(), u32::try_from(v.as_u64()?).ok()?)))
                .collect()
        };
        Some(Tally {
            ok: counts("ok")?,
            errors: counts("errors")?,
        })
    }

    fn only(&self, backends: &[&str]) -> bool {
        self.errors.is_empty()
            && !self.ok.is_empty()
            && self.ok.keys().all(|k| backends.contains(&k.as_str()))
    }

    fn served(&self, backend: &str) -> u32 {
        self.ok.get(backend).copied().unwrap_or(0)
    }
}

/// A gRPC library's own xDS client in its own process, one channel for its whole life.
struct XdsClient {
    child: Child,
    stdin: ChildStdin,
    /// The client's lines, read by a thread so that a hung client fails the test in time.
    lines: std::sync::mpsc::Receiver<String>,
}

impl XdsClient {
    /// grpcio (C-core): tests/xds/client.py on Debian's python3-grpcio.
    fn python(bootstrap: &Path) -> XdsClient {
        let probe = Command::new(PYTHON).args(["-c", "import grpc"]).output();
        assert!(
            probe.as_ref().is_ok_and(|o| o.status.success()),
            "{PYTHON} with grpcio is needed (Debian's python3-grpcio; `bash .ci/install-deps` \
             installs it): {probe:?}"
        );
        let mut command = Command::new(PYTHON);
        command.arg(xds_dir().join("client.py"));
        Self::start(command, bootstrap)
    }

    /// grpc-js with grpc-js-xds: tests/xds/node/client.mjs, installed offline from the vendored
    /// packages on the first use.
    fn node(bootstrap: &Path) -> XdsClient {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let status = Command::new("bash")
                .arg(xds_dir().join("node/install.sh"))
                .status()
                .expect("bash runs tests/xds/node/install.sh");
            assert!(
                status.success(),
                "tests/xds/node/install.sh failed: Node.js and npm come from `bash .ci/install-deps`"
            );
        });
        let mut command = Command::new("node");
        command.arg(xds_dir().join("node/client.mjs"));
        Self::start(command, bootstrap)
    }

    fn start(mut command: Command, bootstrap: &Path) -> XdsClient {
        let mut child = command
            .env("GRPC_XDS_BOOTSTRAP", bootstrap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the xDS client");
        let stdin = child.stdin.take().unwrap();
        let stdout: BufReader<ChildStdout> = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        XdsClient {
            child,
            stdin,
            lines,
        }
    }

    /// `n` calls, one after another (each with a 2 s deadline).
    fn call(&mut self, n: u32) -> Tally {
        tokio::task::block_in_place(|| {
            writeln!(self.stdin, "call {n}").expect("writing to the client");
            let bound = Duration::from_secs(2 * u64::from(n) + 30);
            let line = self
                .lines
                .recv_timeout(bound)
                .unwrap_or_else(|e| panic!("no answer from the client within {bound:?}: {e}"));
            Tally::parse(&line).unwrap_or_else(|| panic!("the client said {line:?}"))
        })
    }

    /// Batches of `n` calls until one satisfies `done` (bounded by FOLLOW); returns that batch
    /// and how long it took to get there.
    fn call_until(&mut self, n: u32, done: impl Fn(&Tally) -> bool) -> (Tally, Duration) {
        let started = Instant::now();
        loop {
            let tally = self.call(n);
            if done(&tally) {
                return (tally, started.elapsed());
            }
            assert!(
                started.elapsed() < FOLLOW,
                "the client never got there; last batch: {tally:?}"
            );
        }
    }
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd, backends registered on one lease, and a gateway whose `[xds]` publishes upstream echo
/// (probed every 200 ms).
struct World {
    dir: tempfile::TempDir,
    etcd_server: Etcd,
    etcd: etcd_client::Client,
    lease: i64,
    backends: BTreeMap<String, Backend>,
    gateway: Gateway,
    /// The gateway's config and its listener, to start it again.
    config: String,
    listen: SocketAddr,
    admin: SocketAddr,
    xds: SocketAddr,
}

impl World {
    async fn start(instances: &[(&str, &str, u32)]) -> World {
        Self::start_with(instances, |_| String::new()).await
    }

    /// `start` with more `[xds]` keys, written knowing the test's directory.
    async fn start_with(
        instances: &[(&str, &str, u32)],
        xds_extra: impl FnOnce(&Path) -> String,
    ) -> World {
        let dir = tempfile::tempdir().unwrap();
        let xds_extra = xds_extra(dir.path());
        let etcd_server = tokio::task::block_in_place(|| Etcd::single(dir.path()));
        let mut etcd = etcd::client(&[etcd_server.url()]).await;
        let lease = etcd.lease_grant(120, None).await.unwrap().id();
        let (listen, admin, xds) = (free_addr(), free_addr(), free_addr());
        let health = "[upstream.health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
                      unhealthy_after = 2\nhealthy_after = 1";
        let config = format!(
            "{}\n[admin]\nlisten = \"{admin}\"\n\n[xds]\nlisten = \"{xds}\"\n{xds_extra}\n",
            etcd_config(listen, &[etcd_server.url()], health)
        );
        let gateway = tokio::task::block_in_place(|| Gateway::start(&config, listen));
        let mut world = World {
            dir,
            etcd_server,
            etcd,
            lease,
            backends: BTreeMap::new(),
            gateway,
            config,
            listen,
            admin,
            xds,
        };
        for (name, region, weight) in instances {
            world.add(name, region, *weight).await;
        }
        world
    }

    /// Starts backend `name` and registers it in `region` with `weight`.
    async fn add(&mut self, name: &str, region: &str, weight: u32) {
        let backend = Backend::start(BackendOptions::named(name)).await;
        let addr = backend.addr;
        self.backends.insert(name.to_string(), backend);
        self.register(name, addr, region, weight).await;
    }

    async fn register(&mut self, name: &str, addr: SocketAddr, region: &str, weight: u32) {
        self.etcd
            .put(
                format!("/services/echo/{name}"),
                instance_value(addr, weight, region, "v1.0.0", &[]),
                Some(PutOptions::new().with_lease(self.lease)),
            )
            .await
            .expect("etcd put");
    }

    /// A bootstrap for a client in `region`, written by `strait xds-bootstrap`.
    fn bootstrap(&self, node: &str, region: &str) -> PathBuf {
        let output = Command::new(strait_bin())
            .args(["xds-bootstrap", "--server", &self.xds.to_string()])
            .args(["--region", region, "--node-id", node])
            .output()
            .expect("running strait xds-bootstrap");
        assert!(output.status.success(), "{output:?}");
        let path = self.dir.path().join(format!("{node}.json"));
        std::fs::write(&path, &output.stdout).unwrap();
        path
    }

    fn client(&self, node: &str, region: &str) -> XdsClient {
        XdsClient::python(&self.bootstrap(node, region))
    }

    fn upstreams(&self) -> Value {
        let (status, body) = http_get(self.admin, "/upstreams");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until the gateway's view of echo has `n` endpoints (etcd synced).
    fn wait_endpoints(&self, n: usize) {
        let deadline = Instant::now() + FOLLOW;
        loop {
            let view = self.upstreams();
            let got = view["upstreams"][0]["endpoints"]
                .as_array()
                .map_or(0, Vec::len);
            if got == n {
                return;
            }
            assert!(Instant::now() < deadline, "gateway view: {view}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Calls stay in the client's own region; when that region's only endpoint is killed (its lease
/// still alive, so only the probes can tell), the client moves to the other region, and comes
/// back when a new instance registers there. The client shows in `/upstreams` and the status
/// page with its node id and region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stay_in_region_fail_over_when_it_dies_and_follow_new_instances() {
    let mut w = World::start(&[("eu0", "eu-west", 100), ("us0", "us-east", 100)]).await;
    tokio::task::block_in_place(|| w.wait_endpoints(2));
    let mut eu = w.client("py-eu", "eu-west");
    let mut us = w.client("py-us", "us-east");
    let (first, _) = eu.call_until(20, |t| t.errors.is_empty());
    assert!(first.only(&["eu0"]), "eu-west client: {first:?}");
    let (first, _) = us.call_until(20, |t| t.errors.is_empty());
    assert!(first.only(&["us0"]), "us-east client: {first:?}");
    for _ in 0..3 {
        let t = eu.call(20);
        assert!(t.only(&["eu0"]), "calls stay local: {t:?}");
    }

    // Operators see both clients.
    let clients = tokio::task::block_in_place(|| w.upstreams())["xds_clients"].clone();
    let mut seen: Vec<(String, String)> = clients
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            for t in ["lds", "rds", "cds", "eds"] {
                assert!(c["acked"][t].is_string(), "{t} accepted: {c}");
            }
            (
                c["node_id"].as_str().unwrap().to_string(),
                c["region"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("py-eu".to_string(), "eu-west".to_string()),
            ("py-us".to_string(), "us-east".to_string())
        ]
    );
    let (_, page) = tokio::task::block_in_place(|| http_get(w.admin, "/"));
    assert!(
        page.contains("data-node=\"py-eu\""),
        "status page lists the client"
    );
    let metrics = tokio::task::block_in_place(|| http_get(w.admin, "/metrics")).1;
    assert_eq!(metric(&metrics, "strait_xds_clients", &[]), Some(2.0));
    assert!(metric(&metrics, "strait_xds_pushes_total", &[("type", "eds")]).unwrap() >= 2.0);

    // eu0 dies; its registration stays until its lease runs out.
    w.backends.remove("eu0").unwrap().stop().await;
    let (moved, took) = eu.call_until(10, |t| t.only(&["us0"]));
    eprintln!("failed over to us-east in {took:?}: {moved:?}");
    // The client noticed the dead connection itself; the gateway's probes agree a moment later,
    // and publish it.
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + FOLLOW;
        while !w.upstreams()["upstreams"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["region"] == "eu-west" && e["health"] == "unhealthy")
        {
            assert!(Instant::now() < deadline, "eu0 never marked unhealthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let t = eu.call(20);
    assert!(t.only(&["us0"]), "{t:?}");

    // A new instance in eu-west takes the eu client back; the us client never moved.
    w.add("eu1", "eu-west", 100).await;
    let (back, took) = eu.call_until(10, |t| t.only(&["eu1"]));
    eprintln!("back in eu-west on the new instance in {took:?}: {back:?}");
    let t = us.call(20);
    assert!(t.only(&["us0"]), "{t:?}");
}

/// A backend that still answers but says NOT_SERVING, or is drained to weight 0 in etcd, loses
/// the client's calls: only what the xDS server published can have moved them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_and_drained_endpoints_lose_the_clients_calls() {
    let mut w = World::start(&[
        ("eu0", "eu-west", 100),
        ("eu1", "eu-west", 100),
        ("us0", "us-east", 100),
    ])
    .await;
    tokio::task::block_in_place(|| w.wait_endpoints(3));
    let mut eu = w.client("py-eu", "eu-west");
    let (t, _) = eu.call_until(20, |t| t.errors.is_empty());
    assert!(t.only(&["eu0", "eu1"]), "{t:?}");
    assert!(
        t.served("eu0") > 0 && t.served("eu1") > 0,
        "round robin: {t:?}"
    );

    w.backends["eu0"]
        .set_health(ServingStatus::NotServing)
        .await;
    let (t, took) = eu.call_until(20, |t| t.only(&["eu1"]));
    eprintln!("NOT_SERVING endpoint left in {took:?}: {t:?}");

    let eu1 = w.backends["eu1"].addr;
    w.register("eu1", eu1, "eu-west", 0).await;
    let (t, took) = eu.call_until(20, |t| t.only(&["us0"]));
    eprintln!("drained endpoint left in {took:?}: {t:?}");

    // Both come back: serving again, and weight restored.
    w.backends["eu0"].set_health(ServingStatus::Serving).await;
    w.register("eu1", eu1, "eu-west", 100).await;
    eu.call_until(20, |t| {
        t.only(&["eu0", "eu1"]) && t.served("eu0") > 0 && t.served("eu1") > 0
    });
}

/// A client in a region with no endpoints gets every region at priority 0, each locality
/// weighted by its endpoints' weights: grpcio splits its calls 3:1 as published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_weights_split_a_remote_clients_calls() {
    let w = World::start(&[("eu0", "eu-west", 75), ("us0", "us-east", 25)]).await;
    tokio::task::block_in_place(|| w.wait_endpoints(2));
    let mut ap = w.client("py-ap", "ap-south");
    eu_and_us_ready(&mut ap);
    let t = ap.call(400);
    assert!(t.errors.is_empty(), "{t:?}");
    let eu_share = f64::from(t.served("eu0")) / 400.0;
    eprintln!("eu-west share {eu_share:.3} (published 0.75): {t:?}");
    // Binomial(400, 0.75) has a standard deviation of 0.022: this is more than four of them.
    assert!((0.65..=0.85).contains(&eu_share), "{t:?}");
}

/// The second language: grpc-js with grpc-js-xds keeps to its region, leaves a drained
/// endpoint, fails over to the other region, takes a new instance, and splits a remote client's
/// calls by locality weight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_follows_region_drain_failover_new_instances_and_weights() {
    let mut w = World::start(&[
        ("eu0", "eu-west", 75),
        ("eu1", "eu-west", 75),
        ("us0", "us-east", 50),
    ])
    .await;
    tokio::task::block_in_place(|| w.wait_endpoints(3));
    let mut eu = XdsClient::node(&w.bootstrap("js-eu", "eu-west"));
    let (t, _) = eu.call_until(20, |t| t.errors.is_empty());
    assert!(t.only(&["eu0", "eu1"]), "{t:?}");

    // A remote client: eu-west (150) against us-east (50), 3:1.
    let mut ap = XdsClient::node(&w.bootstrap("js-ap", "ap-south"));
    ap.call_until(40, |t| {
        t.served("us0") > 0 && (t.served("eu0") > 0 || t.served("eu1") > 0)
    });
    let t = ap.call(400);
    assert!(t.errors.is_empty(), "{t:?}");
    let eu_share = f64::from(t.served("eu0") + t.served("eu1")) / 400.0;
    eprintln!("grpc-js eu-west share {eu_share:.3} (published 0.75): {t:?}");
    assert!((0.65..=0.85).contains(&eu_share), "{t:?}");

    let eu0 = w.backends["eu0"].addr;
    w.register("eu0", eu0, "eu-west", 0).await;
    let (t, took) = eu.call_until(20, |t| t.only(&["eu1"]));
    eprintln!("grpc-js left the drained endpoint in {took:?}: {t:?}");
    w.backends["eu1"]
        .set_health(ServingStatus::NotServing)
        .await;
    let (t, took) = eu.call_until(20, |t| t.only(&["us0"]));
    eprintln!("grpc-js failed over to us-east in {took:?}: {t:?}");
    w.add("eu2", "eu-west", 75).await;
    let (t, took) = eu.call_until(20, |t| t.only(&["eu2"]));
    eprintln!("grpc-js took the new instance in {took:?}: {t:?}");
}

fn eu_and_us_ready(client: &mut XdsClient) {
    client.call_until(40, |t| t.served("eu0") > 0 && t.served("us0") > 0);
}

// ---- The wire: a raw ADS client ----

type AdsClient = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

struct RawStream {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl RawStream {
    async fn open(xds: SocketAddr) -> RawStream {
        let mut client = AdsClient::connect(format!("http://{xds}")).await.unwrap();
        let (requests, rx) = mpsc::channel(8);
        let responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("ADS stream")
            .into_inner();
        RawStream {
            requests,
            responses,
        }
    }

    async fn send(&self, request: DiscoveryRequest) {
        self.requests.send(request).await.unwrap();
    }

    /// The next response, or `None` when none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<DiscoveryResponse> {
        match tokio::time::timeout(wait, self.responses.message()).await {
            Ok(Ok(Some(r))) => Some(r),
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => None,
        }
    }
}

fn health_of(response: &DiscoveryResponse) -> Vec<(u32, i32)> {
    let cla = ClusterLoadAssignment::decode(response.resources[0].value.as_slice()).unwrap();
    cla.endpoints
        .iter()
        .flat_map(|l| l.lb_endpoints.iter().map(|e| (l.priority, e.health_status)))
        .collect()
}

/// On the wire: a NOT_SERVING endpoint is pushed as UNHEALTHY with a new version and nonce; a
/// client that NACKs everything is counted and logged and not sent the same set again; garbage
/// bytes, an unknown type and clients that vanish mid-stream leave the server serving grpcio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pushes_health_and_survives_nacks_garbage_and_vanishing_clients() {
    let w = World::start(&[("eu0", "eu-west", 100), ("us0", "us-east", 100)]).await;
    tokio::task::block_in_place(|| w.wait_endpoints(2));
    // A connection that never says anything (checked at the end: it is closed after 10 s).
    let silent = std::net::TcpStream::connect(w.xds).unwrap();

    // A client that NACKs every response.
    let mut nacker = RawStream::open(w.xds).await;
    nacker.send(eds_request("nacker", "eu-west", "", "")).await;
    let first = nacker
        .next(FOLLOW)
        .await
        .expect("the current state at once");
    assert_eq!(first.type_url, EDS);
    let healthy = health_of(&first);
    assert_eq!(healthy.len(), 2);
    assert!(
        healthy
            .iter()
            .all(|(_, h)| *h == HealthStatus::Healthy as i32),
        "{healthy:?}"
    );
    assert_eq!(
        healthy.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![0, 1],
        "own region first"
    );
    let mut nack = eds_request("nacker", "eu-west", "", &first.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "this client rejects everything".into(),
        details: vec![],
    });
    nacker.send(nack.clone()).await;
    tokio::task::block_in_place(|| {
        wait_metrics(w.admin, FOLLOW, |m| {
            metric(m, "strait_xds_nacks_total", &[("type", "eds")]) == Some(1.0)
        })
        .expect("the NACK is counted");
    });
    assert!(
        nacker.next(Duration::from_millis(700)).await.is_none(),
        "a NACKed set is not sent again"
    );

    // Health changes: pushed with a new version and nonce, even to the client that NACKed.
    w.backends["eu0"]
        .set_health(ServingStatus::NotServing)
        .await;
    let pushed = nacker
        .next(FOLLOW)
        .await
        .expect("the health change is pushed");
    assert_ne!(pushed.nonce, first.nonce);
    assert_ne!(pushed.version_info, first.version_info);
    let eu0 = health_of(&pushed)[0];
    assert_eq!(eu0, (0, HealthStatus::Unhealthy as i32));
    nack.response_nonce = pushed.nonce.clone();
    nacker.send(nack).await;

    // Garbage: bytes that are not HTTP/2, and a gRPC request body that is not a DiscoveryRequest.
    tokio::task::block_in_place(|| {
        use std::io::Read;
        let mut raw = std::net::TcpStream::connect(w.xds).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage")
            .unwrap();
        let mut buf = [0u8; 256];
        let _ = raw.read(&mut buf);
    });
    garbage_grpc_body(w.xds).await;

    // An unknown type, then a client that vanishes mid-stream.
    let mut unknown = RawStream::open(w.xds).await;
    let mut odd = eds_request("odd", "eu-west", "", "");
    odd.type_url = "type.googleapis.com/envoy.config.core.v3.Nothing".into();
    unknown.send(odd).await;
    assert!(unknown.next(Duration::from_millis(500)).await.is_none());
    let mut vanishing = RawStream::open(w.xds).await;
    vanishing
        .send(eds_request("vanish", "us-east", "", ""))
        .await;
    vanishing.next(FOLLOW).await.expect("answered");
    drop(vanishing);
    drop(unknown);
    tokio::task::block_in_place(|| {
        wait_metrics(w.admin, FOLLOW, |m| {
            metric(m, "strait_xds_clients", &[]) == Some(1.0)
                && metric(
                    m,
                    "strait_xds_requests_rejected_total",
                    &[("reason", "unknown_type")],
                ) == Some(1.0)
                && metric(
                    m,
                    "strait_xds_requests_rejected_total",
                    &[("reason", "stream_error")],
                )
                .is_some_and(|v| v >= 1.0)
        })
        .expect("only the NACKing client is left, the rest counted");
    });
    tokio::task::block_in_place(|| {
        wait_metrics(w.admin, FOLLOW, |m| {
            metric(m, "strait_xds_nacks_total", &[("type", "eds")]) == Some(2.0)
        })
        .expect("the second NACK is counted");
    });
    let nacker_view = tokio::task::block_in_place(|| w.upstreams())["xds_clients"][0].clone();
    assert_eq!(nacker_view["node_id"], "nacker");
    assert_eq!(nacker_view["nacks"], 2);
    assert_eq!(
        nacker_view["last_nack"], "this client rejects everything",
        "{nacker_view}"
    );

    // Through it all, grpcio is served: eu0 is unhealthy, so the eu client uses us0.
    let mut eu = w.client("py-eu", "eu-west");
    let (t, _) = eu.call_until(10, |t| t.errors.is_empty());
    assert!(t.only(&["us0"]), "{t:?}");

    // The silent connection lost its slot.
    tokio::task::block_in_place(|| {
        wait_metrics(w.admin, FOLLOW, |m| {
            metric(
                m,
                "strait_xds_requests_rejected_total",
                &[("reason", "handshake_timeout")],
            ) == Some(1.0)
        })
        .expect("the silent connection is closed and counted");
        use std::io::Read;
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            (&silent).read(&mut buf).ok(),
            Some(0),
            "closed by the server"
        );
    });
}

/// A gRPC call to the ADS method whose message is not a DiscoveryRequest.
async fn garbage_grpc_body(xds: SocketAddr) {
    let tcp = tokio::net::TcpStream::connect(xds).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!(
        "http://{xds}/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, mut body) = h2.send_request(request, false).unwrap();
    // A length-prefixed message of bytes that do not parse as protobuf.
    let mut frame = vec![0u8, 0, 0, 0, 6];
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    body.send_data(frame.into(), true).unwrap();
    let response = tokio::time::timeout(FOLLOW, response)
        .await
        .expect("answered")
        .unwrap();
    let mut stream = response.into_body();
    while let Some(chunk) = tokio::time::timeout(FOLLOW, stream.data())
        .await
        .expect("ended")
    {
        if chunk.is_err() {
            break;
        }
    }
    let trailers = tokio::time::timeout(FOLLOW, stream.trailers())
        .await
        .expect("trailers")
        .ok()
        .flatten()
        .expect("a gRPC status");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("13"),
        "a decode error is INTERNAL: {trailers:?}"
    );
}

/// With `tls` and `client_ca`, the ADS server speaks only TLS to clients holding a certificate
/// from that CA; `strait xds-bootstrap --ca-file` writes the matching channel credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_over_mutual_tls_serves_only_clients_with_a_certificate() {
    let mut pki = None;
    let w = World::start_with(&[("eu0", "eu-west", 100)], |dir| {
        let issued = tls::generate(dir);
        let text = format!(
            "tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}",
            issued.server_cert.display(),
            issued.server_key.display(),
            issued.ca_cert.display()
        );
        pki = Some(issued);
        text
    })
    .await;
    let pki = pki.unwrap();
    tokio::task::block_in_place(|| w.wait_endpoints(1));
    let client_cert = pki.issue_client("xds-client", "xds-client", false);

    let endpoint = |identity: bool| {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
            .domain_name("localhost");
        if identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                &client_cert.cert_pem,
                &client_cert.key_pem,
            ));
        }
        tonic::transport::Endpoint::from_shared(format!("https://{}", w.xds))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
    };
    let channel = endpoint(true)
        .connect()
        .await
        .expect("TLS with a certificate");
    let mut client = AdsClient::new(channel);
    let (requests, rx) = mpsc::channel(1);
    requests
        .send(eds_request("tls-client", "eu-west", "", ""))
        .await
        .unwrap();
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("ADS over TLS")
        .into_inner();
    let first = tokio::time::timeout(FOLLOW, responses.message())
        .await
        .expect("answered")
        .unwrap()
        .unwrap();
    assert_eq!(health_of(&first), vec![(0, HealthStatus::Healthy as i32)]);

    // No certificate: the handshake or the first call fails, and nothing is served.
    let refused = match endpoint(false).connect().await {
        Err(_) => true,
        Ok(channel) => {
            let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
            AdsClient::new(channel)
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await
                .is_err()
        }
    };
    assert!(refused, "a client without a certificate was served");

    // Plaintext to a TLS server is refused too.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", w.xds))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let plain_served = match plain.connect().await {
        Err(_) => false,
        Ok(channel) => {
            let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
            AdsClient::new(channel)
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await
                .is_ok()
        }
    };
    assert!(!plain_served);

    let output = Command::new(strait_bin())
        .args([
            "xds-bootstrap",
            "--server",
            &format!("localhost:{}", w.xds.port()),
        ])
        .args(["--region", "eu-west", "--ca-file"])
        .arg(&pki.ca_cert)
        .output()
        .unwrap();
    let bootstrap: Value = serde_json::from_slice(&output.stdout).unwrap();
    let creds = &bootstrap["xds_servers"][0]["channel_creds"][0];
    assert_eq!(creds["type"], "tls", "{bootstrap}");
    assert_eq!(
        creds["config"]["ca_certificate_file"],
        pki.ca_cert.display().to_string()
    );
    let bad = Command::new(strait_bin())
        .args(["xds-bootstrap", "--server", "no-port"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not host:port"));
}

/// A gateway restarted while etcd is down publishes no assignment for its etcd upstream (it does
/// not know it yet) instead of an empty one: the reconnected client keeps the endpoints it had
/// and its calls go on; once etcd is back, changes flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_without_etcd_leaves_clients_their_endpoints() {
    let mut w = World::start(&[("eu0", "eu-west", 100)]).await;
    tokio::task::block_in_place(|| w.wait_endpoints(1));
    let mut eu = w.client("py-eu", "eu-west");
    let (t, _) = eu.call_until(10, |t| t.errors.is_empty());
    assert!(t.only(&["eu0"]), "{t:?}");

    tokio::task::block_in_place(|| {
        w.etcd_server.kill();
        // Replace the gateway: the client's ADS stream breaks and reconnects to the new one.
        w.gateway.signal("KILL");
        assert!(w.gateway.wait_exit(FOLLOW).is_some(), "the gateway is gone");
        w.gateway = Gateway::start(&w.config, w.listen);
        let deadline = Instant::now() + FOLLOW;
        while w.upstreams()["xds_clients"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            assert!(Instant::now() < deadline, "the client never reconnected");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            w.upstreams()["upstreams"][0]["empty_reason"],
            "waiting for the first sync from etcd"
        );
    });
    for _ in 0..3 {
        let t = eu.call(20);
        assert!(t.only(&["eu0"]), "the client kept its endpoints: {t:?}");
    }
}

/// One address cannot take all of the xDS server's connection slots: the 65th connection from
/// 127.0.0.1 is closed at once and counted, another address still gets in, and the slots come
/// back when the connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_xds_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = World::start(&[("eu0", "eu-west", 100)]).await;
    tokio::task::block_in_place(|| w.wait_endpoints(1));
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut s = tokio::net::TcpStream::connect(w.xds).await.unwrap();
        s.write_all(preface).await.unwrap();
        held.push(s);
    }
    let mut extra = tokio::net::TcpStream::connect(w.xds).await.unwrap();
    let _ = extra.write_all(preface).await;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match extra.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "the 65th connection from one address is closed"
    );
    tokio::task::block_in_place(|| {
        wait_metrics(w.admin, FOLLOW, |m| {
            metric(
                m,
                "strait_xds_requests_rejected_total",
                &[("reason", "max_connections_per_source")],
            ) == Some(1.0)
        })
        .expect("counted");
    });
    // Another address is served meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let other = socket.connect(w.xds).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(other)
        .await
        .expect("an HTTP/2 session");
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            w.xds
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    sender = sender.ready().await.expect("ready");
    let (response, _stream) = sender.send_request(request, false).unwrap();
    let response = tokio::time::timeout(FOLLOW, response)
        .await
        .expect("answered in time")
        .expect("a response from 127.0.0.2");
    assert_eq!(response.status(), 200);
    // The slots come back: grpcio from 127.0.0.1 is served once the 64 are closed.
    drop(held);
    let mut eu = w.client("py-eu", "eu-west");
    let (t, _) = eu.call_until(10, |t| t.errors.is_empty());
    assert!(t.only(&["eu0"]), "{t:?}");
}

/// A client that subscribes and then never reads (its HTTP/2 window stays shut) holds at most
/// two queued responses: when the next push has waited 10 s it is dropped and counted, and the
/// server goes on serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped() {
    let mut w = World::start(&[("eu0", "eu-west", 100), ("us0", "us-east", 100)]).await;
    tokio::task::block_in_place(|| w.wait_endpoints(2));
    let _stuck = stuck_client(w.xds, [127, 0, 0, 1].into(), "stuck".into()).await;
    tokio::task::block_in_place(|| {
        wait_metrics(w.admin, FOLLOW, |m| {
            metric(m, "strait_xds_clients", &[]) == Some(1.0)
        })
        .expect("subscribed");
    });
    // Weight changes make pushes the client never takes.
    let not_reading = |m: &str| {
        metric(
            m,
            "strait_xds_requests_rejected_total",
            &[("reason", "not_reading")],
        )
    };
    let us0 = w.backends["us0"].addr;
    let deadline = Instant::now() + Duration::from_secs(60);
    for weight in (0..).map(|i| 50 + i % 40) {
        w.register("us0", us0, "us-east", weight).await;
        let (_, text) = tokio::task::block_in_place(|| http_get(w.admin, "/metrics"));
        if not_reading(&text) == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stuck client was never dropped: {text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::task::block_in_place(|| {
        wait_metrics(w.admin, FOLLOW, |m| {
            metric(m, "strait_xds_clients", &[]) == Some(0.0)
        })
        .expect("the stuck client is gone from the list");
    });
    // Everyone else is served.
    let mut eu = w.client("py-eu", "eu-west");
    let (t, _) = eu.call_until(10, |t| t.errors.is_empty());
    assert!(t.only(&["eu0"]), "{t:?}");
}

/// Opens an ADS stream from `source` on a connection whose HTTP/2 window stays shut, subscribes
/// to EDS, and never reads: the server can queue responses to it, never deliver them.
async fn stuck_client(
    xds: SocketAddr,
    source: std::net::IpAddr,
    node: String,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::SendStream<bytes::Bytes>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = socket.connect(xds).await.unwrap();
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("an HTTP/2 session");
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{xds}/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut sender = sender.ready().await.expect("ready");
    let (_response, mut body) = sender.send_request(request, false).unwrap();
    let message = eds_request(&node, "eu-west", "", "").encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    body.send_data(framed.into(), false).unwrap();
    (sender, body)
}

/// 1,000 xDS clients (from 20 addresses, under the per-address cap) subscribe and never read
/// while the registry changes: the gateway's memory stays bounded, every one of them is dropped
/// once its next push has waited 10 s, and the data plane serves every call throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_that_never_read_cost_bounded_memory() {
    let mut w = World::start(&[("eu0", "eu-west", 100), ("us0", "us-east", 100)]).await;
    tokio::task::block_in_place(|| w.wait_endpoints(2));
    let rss_before = strait_tests::attack::rss_kib(w.gateway.pid());
    let mut stuck = Vec::new();
    for i in 0..1000u32 {
        let source = std::net::IpAddr::from([127, 0, 1, (i / 50) as u8 + 1]);
        stuck.push(stuck_client(w.xds, source, format!("stuck-{i}")).await);
    }
    tokio::task::block_in_place(|| {
        wait_metrics(w.admin, Duration::from_secs(60), |m| {
            metric(m, "strait_xds_clients", &[]) == Some(1000.0)
        })
        .expect("all 1,000 subscribed");
    });
    // Calls keep flowing through the data plane while the registry changes under the clients.
    let listen = w.listen;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let caller = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut c = crate::fixture::client(listen).await;
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let call = c.unary(crate::fixture::req(b"while xds floods"));
                match tokio::time::timeout(Duration::from_secs(10), call).await {
                    Ok(Ok(_)) => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    let us0 = w.backends["us0"].addr;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut peak = rss_before;
    for weight in (0..).map(|i| 50 + i % 40) {
        w.register("us0", us0, "us-east", weight).await;
        peak = peak.max(strait_tests::attack::rss_kib(w.gateway.pid()));
        let (_, text) = tokio::task::block_in_place(|| http_get(w.admin, "/metrics"));
        let dropped = metric(
            &text,
            "strait_xds_requests_rejected_total",
            &[("reason", "not_reading")],
        );
        if dropped == Some(1000.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every stuck client was dropped: {dropped:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = caller.await.unwrap();
    println!(
        "1,000 xDS clients that never read: gateway RSS {rss_before} KiB before, peak {peak} KiB \
         (+{} KiB); data plane {ok} calls ok, {failed} failed",
        peak - rss_before
    );
    assert_eq!(failed, 0, "the data plane served every call");
    assert!(ok > 0);
    assert!(
        peak < rss_before + 128 * 1024,
        "memory grew from {rss_before} to {peak} KiB"
    );
    tokio::task::block_in_place(|| {
        wait_metrics(w.admin, FOLLOW, |m| {
            metric(m, "strait_xds_clients", &[]) == Some(0.0)
        })
        .expect("the stuck clients are gone from the list");
    });
    drop(stuck);
}
