//! Supervised background tasks: each of the etcd watch, the health probes and the control
//! thread is made to panic through the test-only hook; the gateway logs it, counts it, says so
//! in `/readyz` (and for etcd in `strait_etcd_connected`) while the task is down, and after the
//! restart the task does its job again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use strait_tests::etcd::{self, instance_value, Etcd};
use strait_tests::net::{free_addr, http_get, http_request, metric};
use strait_tests::{Backend, BackendOptions, Gateway};
use tonic_health::ServingStatus;

use crate::fixture::{call_until, call_until_served_by_n, client, etcd_config};

const WAIT: Duration = Duration::from_secs(15);

fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics").1
}

fn restarts(admin: SocketAddr, task: &str) -> f64 {
    metric(
        &metrics(admin),
        "strait_background_restarts_total",
        &[("task", task)],
    )
    .unwrap_or(0.0)
}

/// Polls until `check` holds (bounded), returning what it returned.
fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fires the hook for `task`, sees the gateway not ready while it is down (with `while_down`
/// checked then), and ready again after the restart.
fn panic_and_recover(admin: SocketAddr, task: &str, while_down: impl Fn(&str)) {
    let before = restarts(admin, task);
    let (status, body) = http_request(admin, "POST", &format!("/test/panic?task={task}"));
    assert_eq!(status, 200, "{body}");
    let reason = wait_until(&format!("/readyz to say {task} is down"), || {
        let (status, body) = http_get(admin, "/readyz");
        (status == 503 && body.contains(task)).then_some(body)
    });
    assert!(reason.contains("failed and is restarting"), "{reason}");
    while_down(&metrics(admin));
    assert_eq!(restarts(admin, task), before + 1.0);
    wait_until(
        &format!("/readyz ready again after {task} restarted"),
        || (http_get(admin, "/readyz").0 == 200).then_some(()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicked_background_tasks_are_restarted_and_readiness_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = tokio::task::block_in_place(|| Etcd::single(dir.path()));
    let mut kv = etcd::client(&[etcd.url()]).await;
    let (b0, b1) = (
        Backend::start(BackendOptions::named("b0")).await,
        Backend::start(BackendOptions::named("b1")).await,
    );
    kv.put(
        "/services/echo/b0",
        instance_value(b0.addr, 100, "eu-west", "1.0.0", &[]),
        None,
    )
    .await
    .unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let text = format!(
        "{}\nhealth = {{ interval = \"200ms\", timeout = \"100ms\", unhealthy_after = 1 }}\n\n[admin]\nlisten = \"{admin}\"\n",
        etcd_config(listen, &[etcd.url()], "")
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, admin));
    let mut calls = client(listen).await;
    call_until(&mut calls, WAIT, "b0 serves", |b| b == "b0").await;

    // The etcd watch: down means disconnected; after the restart it watches again.
    tokio::task::block_in_place(|| {
        wait_until("etcd connected", || {
            (metric(&metrics(admin), "strait_etcd_connected", &[]) == Some(1.0)).then_some(())
        });
        panic_and_recover(admin, "etcd_watch", |m| {
            assert_eq!(metric(m, "strait_etcd_connected", &[]), Some(0.0), "{m}");
        });
    });
    assert!(gateway
        .wait_for_log(
            &["background task panicked", "etcd_watch"],
            Duration::from_secs(5)
        )
        .is_some());
    kv.put(
        "/services/echo/b1",
        instance_value(b1.addr, 100, "eu-west", "1.0.0", &[]),
        None,
    )
    .await
    .unwrap();
    call_until_served_by_n(&mut calls, WAIT, 2).await;

    // The health probes: after the restart a backend that turns NOT_SERVING is ejected.
    tokio::task::block_in_place(|| panic_and_recover(admin, "health_probes", |_| {}));
    b1.set_health(ServingStatus::NotServing).await;
    // Round robin over two: ten b0 in a row happen only once b1 is ejected.
    let mut in_a_row = 0;
    call_until(&mut calls, WAIT, "only b0 serves", |b| {
        in_a_row = if b == "b0" { in_a_row + 1 } else { 0 };
        in_a_row == 10
    })
    .await;
    for _ in 0..20 {
        let served = calls
            .unary(crate::fixture::req(b""))
            .await
            .expect("b0 still serves")
            .into_inner()
            .served_by;
        assert_eq!(served, "b0", "the probes restarted and eject b1");
    }

    // The control thread: a reload still answers after its restart.
    tokio::task::block_in_place(|| {
        panic_and_recover(admin, "control", |_| {});
        let (status, body) = http_request(admin, "POST", "/reload");
        assert_eq!(status, 200, "{body}");
    });

    // Unknown tasks are refused.
    let (status, _) = http_request(admin, "POST", "/test/panic?task=nothing");
    assert_eq!(status, 404);
}
