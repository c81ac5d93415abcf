//! Discovery from a real etcd: leases, watches, weights, subsets, malformed values, and every
//! etcd fault the gateway must ride through on its last known good view.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, CompactionOptions, PutOptions};
use strait_tests::etcd::{self, instance_value, Etcd};
use strait_tests::net::{free_addr, free_port, metric, wait_metrics};
use strait_tests::{Backend, BackendOptions, Gateway};
use tonic::Code;

use crate::fixture::{
    call_until, call_until_served_by_n, client, count, etcd_config, req, served_by,
};

const PROPAGATION: Duration = Duration::from_secs(10);

struct World {
    _dir: tempfile::TempDir,
    etcd: Vec<Etcd>,
    backends: Vec<Backend>,
    gateway: Gateway,
    listen: std::net::SocketAddr,
}

impl World {
    /// One etcd member (or a cluster), `n` backends named b0..bn, and a gateway on etcd.
    async fn start(members: usize, backends: usize, extra_upstream: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let etcd = tokio::task::block_in_place(|| {
            if members == 1 {
                vec![Etcd::single(dir.path())]
            } else {
                Etcd::cluster(dir.path(), members)
            }
        });
        let mut started = Vec::new();
        for i in 0..backends {
            started.push(Backend::start(BackendOptions::named(&format!("b{i}"))).await);
        }
        let listen = free_addr();
        let urls: Vec<String> = etcd.iter().map(Etcd::url).collect();
        let text = etcd_config(listen, &urls, extra_upstream);
        let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
        World {
            _dir: dir,
            etcd,
            backends: started,
            gateway,
            listen,
        }
    }

    fn urls(&self) -> Vec<String> {
        self.etcd
            .iter()
            .filter(|e| e.is_running())
            .map(Etcd::url)
            .collect()
    }

    async fn etcd_client(&self) -> Client {
        etcd::client(&self.urls()).await
    }

    fn addr(&self, i: usize) -> std::net::SocketAddr {
        self.backends[i].addr
    }
}

/// Once b0 is gone from the resynced view, b1 and b2 split the calls exactly evenly: nothing
/// stale stayed, nothing live was lost.
async fn only_b1_and_b2_after_the_resync(
    c: &mut strait_tests::pb::echo_client::EchoClient<tonic::transport::Channel>,
) {
    let mut clean = 0;
    call_until(
        c,
        Duration::from_secs(30),
        "only b1 and b2 after the resync",
        |b| {
            clean = if b == "b0" { 0 } else { clean + 1 };
            clean >= 40
        },
    )
    .await;
    let names = served_by(c, 100).await;
    assert_eq!(
        (
            count(&names, "b0"),
            count(&names, "b1"),
            count(&names, "b2")
        ),
        (0, 50, 50)
    );
}

/// Compacts (physically) all of etcd's history up to now.
async fn compact_history(c: &mut Client) {
    let revision = c.get("/", None).await.unwrap().header().unwrap().revision();
    c.compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
}

/// Waits until the cluster accepts writes again (a killed member may have been the leader).
async fn wait_writable(c: &mut Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while c.put("/unrelated/probe", "x", None).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster never accepted writes again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Registers `addr` as instance `id` in eu-west, version v1.0.0, without a lease.
async fn register(c: &mut Client, id: &str, addr: std::net::SocketAddr, weight: u32) {
    put(
        c,
        id,
        instance_value(addr, weight, "eu-west", "v1.0.0", &[]),
        None,
    )
    .await;
}

async fn put(c: &mut Client, id: &str, value: String, lease: Option<i64>) {
    let options = lease.map(|l| PutOptions::new().with_lease(l));
    c.put(format!("/services/echo/{id}"), value, options)
        .await
        .expect("etcd put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_instances_are_routed_and_revoked_or_expired_leases_stop_calls() {
    let w = World::start(1, 3, "").await;
    let mut etcd = w.etcd_client().await;
    let long = etcd.lease_grant(60, None).await.unwrap().id();
    let short = etcd.lease_grant(2, None).await.unwrap().id();
    put(
        &mut etcd,
        "b0",
        instance_value(w.addr(0), 100, "eu-west", "v1.0.0", &[]),
        Some(long),
    )
    .await;
    register(&mut etcd, "b1", w.addr(1), 100).await;
    put(
        &mut etcd,
        "b2",
        instance_value(w.addr(2), 100, "eu-west", "v1.0.0", &[]),
        Some(short),
    )
    .await;
    let mut c = client(w.listen).await;
    call_until_served_by_n(&mut c, PROPAGATION, 3).await;

    // Revoke b0's lease: its key goes, and so do its calls.
    etcd.lease_revoke(long).await.unwrap();
    // b2's 2 s lease is never kept alive: it expires.
    let mut clean = 0;
    call_until(&mut c, PROPAGATION, "b0 and b2 gone", |b| {
        clean = if b == "b1" { clean + 1 } else { 0 };
        clean >= 20
    })
    .await;
    let names = served_by(&mut c, 60).await;
    assert_eq!(count(&names, "b1"), 60, "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_change_changes_the_split() {
    let w = World::start(1, 2, "").await;
    let mut etcd = w.etcd_client().await;
    register(&mut etcd, "b0", w.addr(0), 100).await;
    register(&mut etcd, "b1", w.addr(1), 100).await;
    let mut c = client(w.listen).await;
    call_until_served_by_n(&mut c, PROPAGATION, 2).await;
    let even = served_by(&mut c, 100).await;
    assert_eq!(count(&even, "b0"), 50);

    register(&mut etcd, "b1", w.addr(1), 25).await;
    // Once applied, every window of 5 calls holds exactly four b0 and one b1 (weights 100:25).
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    loop {
        let window = served_by(&mut c, 10).await;
        if count(&window, "b0") == 8 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "weight change never applied"
        );
    }
    let names = served_by(&mut c, 500).await;
    assert_eq!((count(&names, "b0"), count(&names, "b1")), (400, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_keeps_only_matching_versions_and_labels() {
    let w = World::start(
        1,
        3,
        "select = { version = \"^2.2\", labels = { env = \"prod\" } }",
    )
    .await;
    let mut etcd = w.etcd_client().await;
    put(
        &mut etcd,
        "b0",
        instance_value(w.addr(0), 100, "eu-west", "v2.3.0", &[("env", "prod")]),
        None,
    )
    .await;
    put(
        &mut etcd,
        "b1",
        instance_value(w.addr(1), 100, "eu-west", "v1.9.0", &[("env", "prod")]),
        None,
    )
    .await;
    put(
        &mut etcd,
        "b2",
        instance_value(w.addr(2), 100, "eu-west", "v2.4.1", &[("env", "staging")]),
        None,
    )
    .await;
    let mut c = client(w.listen).await;
    call_until(&mut c, PROPAGATION, "b0 serves", |b| b == "b0").await;
    let names = served_by(&mut c, 50).await;
    assert_eq!(count(&names, "b0"), 50, "{names:?}");
    assert_eq!(w.backends[1].calls() + w.backends[2].calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_skipped_and_never_disturb_others() {
    let w = World::start(1, 2, "").await;
    let mut etcd = w.etcd_client().await;
    register(&mut etcd, "b0", w.addr(0), 100).await;
    let mut c = client(w.listen).await;
    call_until(&mut c, PROPAGATION, "b0 serves", |b| b == "b0").await;

    put(&mut etcd, "garbage", "{not json".into(), None).await;
    put(&mut etcd, "no-addr", r#"{"weight": 5}"#.into(), None).await;
    put(
        &mut etcd,
        "heavy",
        format!(r#"{{"addr": "{}", "weight": 1000}}"#, w.addr(1)),
        None,
    )
    .await;
    put(
        &mut etcd,
        "typed",
        format!(r#"{{"addr": "{}", "weight": "ten"}}"#, w.addr(1)),
        None,
    )
    .await;
    // A malformed update of a live instance keeps its last valid value.
    put(&mut etcd, "b0", r#"{"addr": 12}"#.into(), None).await;
    // A valid instance added after all that still arrives.
    register(&mut etcd, "b1", w.addr(1), 100).await;
    call_until_served_by_n(&mut c, PROPAGATION, 2).await;
    let names = served_by(&mut c, 40).await;
    assert_eq!((count(&names, "b0"), count(&names, "b1")), (20, 20));
    let logs = w.gateway.logs().join("\n");
    for key in ["garbage", "no-addr", "heavy", "typed"] {
        assert!(
            logs.contains(&format!("/services/echo/{key}")),
            "no log line for {key}:\n{logs}"
        );
    }
    assert!(
        logs.contains("bad_json")
            && logs.contains("missing_addr")
            && logs.contains("weight_out_of_range")
    );
    assert!(logs.contains("kept_previous=true"), "{logs}");
}

/// Steady calls while etcd is killed and restarted on the same data dir: none fails, and a
/// change made after the restart is picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_is_ridden_out_on_the_last_known_view() {
    let mut w = World::start(1, 3, "").await;
    let mut etcd = w.etcd_client().await;
    register(&mut etcd, "b0", w.addr(0), 100).await;
    register(&mut etcd, "b1", w.addr(1), 100).await;
    let mut c = client(w.listen).await;
    call_until_served_by_n(&mut c, PROPAGATION, 2).await;

    let failures = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (failures, calls, stop) = (failures.clone(), calls.clone(), stop.clone());
        let mut c = c.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if c.unary(req(b"")).await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    drop(etcd);
    tokio::task::block_in_place(|| w.etcd[0].kill());
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| {
        w.etcd[0].start();
        w.etcd[0].wait_ready();
    });
    let mut etcd = w.etcd_client().await;
    register(&mut etcd, "b2", w.addr(2), 100).await;
    call_until(
        &mut c,
        Duration::from_secs(20),
        "b2 registered after the restart",
        |b| b == "b2",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(
        calls.load(Ordering::Relaxed) > 200,
        "load ran during the outage"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "calls failed while etcd was down"
    );
}

/// A three-member cluster loses its leader: updates keep arriving through the others, and no
/// call fails while a new leader is elected (calls never wait on etcd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_leader_loss_does_not_stop_updates() {
    let mut w = World::start(3, 2, "").await;
    let mut etcd = w.etcd_client().await;
    register(&mut etcd, "b0", w.addr(0), 100).await;
    let mut c = client(w.listen).await;
    call_until(&mut c, PROPAGATION, "b0 serves", |b| b == "b0").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, calls, failures, mut c) =
            (stop.clone(), calls.clone(), failures.clone(), c.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut request = tonic::Request::new(req(b""));
                request.set_timeout(Duration::from_secs(5));
                if c.unary(request).await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let leader_id = etcd.status().await.unwrap().leader();
    let members = etcd.member_list().await.unwrap();
    let leader_name = members
        .members()
        .iter()
        .find(|m| m.id() == leader_id)
        .map(|m| m.name().to_string())
        .expect("leader is a member");
    drop(etcd);
    let leader = w.etcd.iter_mut().find(|e| e.name == leader_name).unwrap();
    tokio::task::block_in_place(|| leader.kill());

    let mut etcd = w.etcd_client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // The put itself may fail while a new leader is elected.
        let value = instance_value(w.addr(1), 100, "eu-west", "v1.0.0", &[]);
        if etcd.put("/services/echo/b1", value, None).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster never accepted the put"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    call_until(
        &mut c,
        Duration::from_secs(20),
        "b1 added after the leader died",
        |b| b == "b1",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let calls = calls.load(Ordering::Relaxed);
    assert!(calls > 20, "load ran through the election: {calls}");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "calls failed during the election ({calls} made)"
    );
}

/// A member that hangs (SIGSTOP) without closing its connections: the etcd client's HTTP/2
/// keep-alive notices (strait_etcd_connected drops to 0) instead of the watch waiting forever;
/// calls go on from the last known view; once the member resumes, what changed meanwhile
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_member_is_noticed_by_the_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let members = tokio::task::block_in_place(|| Etcd::cluster(dir.path(), 3));
    let mut backends = Vec::new();
    for i in 0..2 {
        backends.push(Backend::start(BackendOptions::named(&format!("b{i}"))).await);
    }
    let (listen, admin) = (free_addr(), free_addr());
    let text = format!(
        "{}\n[admin]\nlisten = \"{admin}\"\n",
        etcd_config(listen, &[members[0].url()], "")
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut etcd = etcd::client(&[members[1].url(), members[2].url()]).await;
    register(&mut etcd, "b0", backends[0].addr, 100).await;
    let mut c = client(listen).await;
    call_until(&mut c, PROPAGATION, "b0 serves", |b| b == "b0").await;
    let connected = |want: f64| {
        tokio::task::block_in_place(|| {
            wait_metrics(admin, Duration::from_secs(30), |m| {
                metric(m, "strait_etcd_connected", &[]) == Some(want)
            })
        })
        .is_some()
    };
    assert!(connected(1.0), "the watch is live");

    members[0].signal("STOP");
    assert!(
        connected(0.0),
        "the hung member was never noticed: {:?}",
        gateway.logs().last()
    );
    assert_eq!(
        count(&served_by(&mut c, 20).await, "b0"),
        20,
        "last view serves"
    );
    wait_writable(&mut etcd).await;
    register(&mut etcd, "b1", backends[1].addr, 100).await;

    members[0].signal("CONT");
    call_until(
        &mut c,
        Duration::from_secs(30),
        "b1, registered while the member hung, serves",
        |b| b == "b1",
    )
    .await;
    drop(members);
}

/// A watch etcd cancels while connected, because the gateway fell behind and the history it
/// still needed was compacted (the gateway process is stopped while 10 MB of changes pile up,
/// then compacted): the gateway lists again and routes to exactly the live set, losing none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cancelled_by_compaction_while_connected_resyncs() {
    let w = World::start(1, 3, "").await;
    let mut etcd = w.etcd_client().await;
    register(&mut etcd, "b0", w.addr(0), 100).await;
    register(&mut etcd, "b1", w.addr(1), 100).await;
    let mut c = client(w.listen).await;
    call_until_served_by_n(&mut c, PROPAGATION, 2).await;

    w.gateway.signal("STOP");
    // Far more than the watch's buffers hold: etcd marks the watcher as lagging. The changes
    // that matter come after it, so only a fresh list can show them.
    let filler = "x".repeat(10_000);
    for i in 0..1000 {
        let value = instance_value(w.addr(0), 1, "eu-west", "v1.0.0", &[("filler", &filler)]);
        etcd.put(format!("/services/noise/n{}", i % 10), value, None)
            .await
            .unwrap();
    }
    etcd.delete("/services/echo/b0", None).await.unwrap();
    register(&mut etcd, "b2", w.addr(2), 100).await;
    compact_history(&mut etcd).await;
    w.gateway.signal("CONT");

    let cancelled = tokio::task::block_in_place(|| {
        w.gateway
            .wait_for_log(&["watch cancelled by etcd"], Duration::from_secs(30))
    });
    assert!(cancelled.is_some(), "etcd did not cancel the lagging watch");
    only_b1_and_b2_after_the_resync(&mut c).await;
}

/// The gateway knows only member A. While A is down, instances change through member B and
/// the history is compacted past the gateway's watch revision. When A returns, the gateway
/// resyncs and routes to exactly the live set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_after_compaction_routes_to_exactly_the_live_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = tokio::task::block_in_place(|| Etcd::cluster(dir.path(), 3));
    let mut backends = Vec::new();
    for i in 0..3 {
        backends.push(Backend::start(BackendOptions::named(&format!("b{i}"))).await);
    }
    let listen = free_addr();
    let text = etcd_config(listen, &[members[0].url()], "");
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut etcd = etcd::client(&[members[1].url(), members[2].url()]).await;
    register(&mut etcd, "b0", backends[0].addr, 100).await;
    register(&mut etcd, "b1", backends[1].addr, 100).await;
    let mut c = client(listen).await;
    call_until_served_by_n(&mut c, PROPAGATION, 2).await;

    tokio::task::block_in_place(|| members[0].kill());
    wait_writable(&mut etcd).await;
    etcd.delete("/services/echo/b0", None).await.unwrap();
    register(&mut etcd, "b2", backends[2].addr, 100).await;
    for i in 0..20 {
        etcd.put("/unrelated/churn", format!("{i}"), None)
            .await
            .unwrap();
    }
    compact_history(&mut etcd).await;
    // During the outage the gateway still serves its last view (b0 and b1 are both alive).
    let during = served_by(&mut c, 20).await;
    assert_eq!(count(&during, "b2"), 0);

    tokio::task::block_in_place(|| {
        members[0].start();
        members[0].wait_ready();
    });
    only_b1_and_b2_after_the_resync(&mut c).await;
}

/// Before the first sync, calls to an etcd upstream fail fast with a clear UNAVAILABLE; once
/// etcd comes up they are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_until_the_first_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd_member = Etcd::unstarted_on(dir.path(), free_port());
    let backend = Backend::start(BackendOptions::named("b0")).await;
    let listen = free_addr();
    let text = etcd_config(listen, &[etcd_member.url()], "");
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut c = client(listen).await;
    let status = c.unary(req(b"")).await.expect_err("no etcd yet");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .contains("waiting for the first sync from etcd"),
        "{}",
        status.message()
    );

    tokio::task::block_in_place(|| {
        etcd_member.start();
        etcd_member.wait_ready();
    });
    let mut etcd = etcd::client(&[etcd_member.url()]).await;
    register(&mut etcd, "b0", backend.addr, 100).await;
    call_until(
        &mut c,
        Duration::from_secs(20),
        "served after etcd came up",
        |b| b == "b0",
    )
    .await;
}

/// An etcd upstream with nothing registered says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_service_is_unavailable_with_reason() {
    let w = World::start(1, 0, "").await;
    let mut c = client(w.listen).await;
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    loop {
        let status = c.unary(req(b"")).await.expect_err("nothing registered");
        assert_eq!(status.code(), Code::Unavailable);
        if status
            .message()
            .contains("no instance registered under /services/echo/")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            status.message()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// etcd with authentication on: the gateway logs in with username and password file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_authentication_works() {
    let dir = tempfile::tempdir().unwrap();
    let member = tokio::task::block_in_place(|| Etcd::single(dir.path()));
    let backend = Backend::start(BackendOptions::named("b0")).await;
    let mut admin = etcd::client(&[member.url()]).await;
    register(&mut admin, "b0", backend.addr, 100).await;
    etcd::enable_auth(
        &mut admin,
        "strait",
        "s3cret",
        etcd_client::Permission::read("/services/").with_prefix(),
    )
    .await;

    let password_file = dir.path().join("etcd-pass");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let listen = free_addr();
    let admin_addr = free_addr();
    let text = etcd_config(
        listen,
        &[member.url()],
        &format!("\n[admin]\nlisten = \"{admin_addr}\"\n"),
    )
    .replace(
        "dial_timeout = \"1s\"",
        &format!(
            "dial_timeout = \"1s\"\nusername = \"strait\"\npassword_file = \"{}\"",
            password_file.display()
        ),
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut c = client(listen).await;
    call_until(
        &mut c,
        PROPAGATION,
        "served through an authenticated watch",
        |b| b == "b0",
    )
    .await;
    // The read-only role cannot register under members_prefix: cluster-wide limits would count
    // this gateway alone. It keeps serving, and says so in /readyz, a metric and the log.
    let metrics = tokio::task::block_in_place(|| {
        wait_metrics(admin_addr, PROPAGATION, |m| {
            metric(m, "strait_cluster_registered", &[]) == Some(0.0)
        })
    })
    .expect("strait_cluster_registered 0");
    assert_eq!(metric(&metrics, "strait_cluster_gateways", &[]), Some(0.0));
    let (status, body) =
        tokio::task::block_in_place(|| strait_tests::net::http_get(admin_addr, "/readyz"));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ready\n")
            && body.contains("warning: not registered under members_prefix \"/strait/gateways/\"")
            && body.contains("readwrite"),
        "{body}"
    );
    let line = tokio::task::block_in_place(|| {
        gateway.wait_for_log(&["cannot register this gateway"], PROPAGATION)
    });
    assert!(
        line.is_some_and(|l| l.contains("ERROR") && l.contains("permission denied")),
        "{}",
        gateway.logs().join("\n")
    );
}

/// Two fleets (different `[etcd] prefix`) registered under one `members_prefix`: the other
/// fleet's gateways are not counted, and the overlap is said in /readyz, a metric and the log.
/// Gateways that register no prefix (older versions) are counted as this fleet's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_prefix_shared_with_another_fleet_is_detected() {
    let admin = free_addr();
    let w = World::start(1, 1, &format!("\n[admin]\nlisten = \"{admin}\"\n")).await;
    let mut etcd = w.etcd_client().await;
    let gateways = |m: &str| metric(m, "strait_cluster_gateways", &[]);
    tokio::task::block_in_place(|| {
        wait_metrics(admin, PROPAGATION, |m| {
            gateways(m) == Some(1.0) && metric(m, "strait_cluster_registered", &[]) == Some(1.0)
        })
    })
    .expect("registered, alone");
    etcd.put(
        "/strait/gateways/staging-1",
        r#"{"id":"staging-1","prefix":"/staging/services/"}"#,
        None,
    )
    .await
    .unwrap();
    etcd.put("/strait/gateways/old-1", r#"{"id":"old-1","pid":7}"#, None)
        .await
        .unwrap();
    let text = tokio::task::block_in_place(|| {
        wait_metrics(admin, PROPAGATION, |m| {
            metric(m, "strait_cluster_foreign_gateways", &[]) == Some(1.0)
                && gateways(m) == Some(2.0)
        })
    })
    .expect("one foreign gateway, two of this fleet");
    assert_eq!(metric(&text, "strait_cluster_registered", &[]), Some(1.0));
    let (status, body) =
        tokio::task::block_in_place(|| strait_tests::net::http_get(admin, "/readyz"));
    assert_eq!(status, 200);
    assert!(
        body.contains("shared with 1 gateway(s) of another fleet (prefix /staging/services/)"),
        "{body}"
    );
    assert!(tokio::task::block_in_place(|| w
        .gateway
        .wait_for_log(&["shared with gateways of another fleet"], PROPAGATION))
    .is_some());
    etcd.delete("/strait/gateways/staging-1", None)
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        wait_metrics(admin, PROPAGATION, |m| {
            metric(m, "strait_cluster_foreign_gateways", &[]) == Some(0.0)
        })
    })
    .expect("the overlap is gone");
    let (_, body) = tokio::task::block_in_place(|| strait_tests::net::http_get(admin, "/readyz"));
    assert_eq!(body, "ready\n");
}

/// etcd's client port over TLS: the gateway verifies it with the configured CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_works() {
    let dir = tempfile::tempdir().unwrap();
    let pki = strait_tests::tls::generate(dir.path());
    let member = tokio::task::block_in_place(|| {
        Etcd::single_with(
            dir.path(),
            Some(etcd::EtcdTls {
                cert: pki.server_cert.clone(),
                key: pki.server_key.clone(),
            }),
        )
    });
    let backend = Backend::start(BackendOptions::named("b0")).await;
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(pki.ca_pem.clone()));
    let mut admin = etcd_client::Client::connect(
        [member.url()],
        Some(etcd_client::ConnectOptions::new().with_tls(tls)),
    )
    .await
    .unwrap();
    register(&mut admin, "b0", backend.addr, 100).await;

    let listen = free_addr();
    let text = etcd_config(listen, &[member.url()], "").replace(
        "dial_timeout = \"1s\"",
        &format!(
            "dial_timeout = \"1s\"\ntls = {{ ca = \"{}\" }}",
            pki.ca_cert.display()
        ),
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let mut c = client(listen).await;
    call_until(&mut c, PROPAGATION, "served through a TLS watch", |b| {
        b == "b0"
    })
    .await;
}

/// Registrations that must never be routed, whoever wrote them into etcd: a cloud metadata
/// address (link-local), the gateway's own listener and admin addresses, `0.0.0.0`, and with
/// `allowed_networks` anything outside it. Each is logged and counted once; the real backend
/// serves every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_addresses_the_upstream_does_not_allow_are_never_routed() {
    let admin = free_addr();
    let w = World::start(
        1,
        1,
        &format!("allowed_networks = [\"127.0.0.1/32\", \"169.254.0.0/16\"]\n\n[admin]\nlisten = \"{admin}\"\n"),
    )
    .await;
    let mut etcd = w.etcd_client().await;
    register(&mut etcd, "b0", w.addr(0), 100).await;
    let mut c = client(w.listen).await;
    call_until(&mut c, PROPAGATION, "b0 serves", |b| b == "b0").await;
    let refused = [
        ("self", w.listen, "own_address"),
        ("admin", admin, "own_address"),
        (
            "zero",
            format!("0.0.0.0:{}", free_port()).parse().unwrap(),
            "unspecified",
        ),
        (
            "outside",
            format!("127.0.0.2:{}", free_port()).parse().unwrap(),
            "not_allowed",
        ),
    ];
    for (id, addr, _) in &refused {
        register(&mut etcd, id, *addr, 100).await;
    }
    let counted = |m: &str, reason: &str| {
        metric(
            m,
            "strait_discovery_refused_total",
            &[("upstream", "echo"), ("reason", reason)],
        )
    };
    let text = tokio::task::block_in_place(|| {
        wait_metrics(admin, PROPAGATION, |m| {
            counted(m, "own_address") == Some(2.0)
                && counted(m, "unspecified") == Some(1.0)
                && counted(m, "not_allowed") == Some(1.0)
        })
    })
    .expect("each refusal counted once");
    let names = served_by(&mut c, 40).await;
    assert_eq!(count(&names, "b0"), 40, "{names:?}");
    // A later change elsewhere rebuilds the upstream: the refusals are not counted again.
    register(&mut etcd, "b0", w.addr(0), 50).await;
    call_until(&mut c, PROPAGATION, "b0 still serves", |b| b == "b0").await;
    let (_, again) = tokio::task::block_in_place(|| strait_tests::net::http_get(admin, "/metrics"));
    for reason in ["own_address", "unspecified", "not_allowed"] {
        assert_eq!(counted(&again, reason), counted(&text, reason), "{reason}");
    }
    for (_, addr, _) in &refused {
        assert!(
            !again.contains(&format!("endpoint=\"{addr}\"")),
            "{addr} was never an endpoint: no attempt, breaker or probe series"
        );
    }
    let logs = w.gateway.logs().join("\n");
    for (_, addr, reason) in &refused {
        assert!(
            logs.lines()
                .any(|l| l.contains("discovered address refused")
                    && l.contains(&addr.to_string())
                    && l.contains(reason)),
            "no log line for {addr}:\n{logs}"
        );
    }
}

/// Without `allowed_networks`: link-local addresses (where cloud metadata services answer) are
/// refused, everything else discovered is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_local_registrations_are_refused_by_default() {
    let admin = free_addr();
    let w = World::start(1, 1, &format!("\n[admin]\nlisten = \"{admin}\"\n")).await;
    let mut etcd = w.etcd_client().await;
    register(
        &mut etcd,
        "metadata",
        "169.254.169.254:80".parse().unwrap(),
        100,
    )
    .await;
    register(&mut etcd, "b0", w.addr(0), 1).await;
    let mut c = client(w.listen).await;
    call_until(&mut c, PROPAGATION, "b0 serves", |b| b == "b0").await;
    tokio::task::block_in_place(|| {
        wait_metrics(admin, PROPAGATION, |m| {
            metric(
                m,
                "strait_discovery_refused_total",
                &[("upstream", "echo"), ("reason", "link_local")],
            ) == Some(1.0)
        })
    })
    .expect("the metadata address counted as refused");
    // Weight 100 against 1 would send it nearly every call: none goes anywhere but b0.
    let names = served_by(&mut c, 20).await;
    assert_eq!(count(&names, "b0"), 20, "{names:?}");
    let (_, text) = tokio::task::block_in_place(|| strait_tests::net::http_get(admin, "/metrics"));
    assert!(
        !text.contains("endpoint=\"169.254.169.254:80\""),
        "never an endpoint, never dialled"
    );
    let (_, upstreams) =
        tokio::task::block_in_place(|| strait_tests::net::http_get(admin, "/upstreams"));
    assert!(!upstreams.contains("169.254.169.254"), "{upstreams}");
}
