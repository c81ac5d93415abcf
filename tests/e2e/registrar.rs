//! `strait register` against a real etcd, real backends and the real gateway.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_tests::etcd::{self, Etcd};
use strait_tests::gateway::strait_bin;
use strait_tests::net::free_addr;
use strait_tests::{Backend, BackendOptions, Gateway};
use tonic_health::ServingStatus;

use crate::fixture::{call_until, call_until_served_by_n, client, etcd_config, req};

/// A `strait register` process; killed when dropped.
struct Registrar {
    child: Option<Child>,
}

impl Registrar {
    fn start(etcd_url: &str, addr: std::net::SocketAddr, extra: &[&str]) -> Registrar {
        let mut command = Command::new(strait_bin());
        command
            .args([
                "register",
                "--etcd",
                etcd_url,
                "--service",
                "echo",
                "--addr",
            ])
            .arg(addr.to_string())
            .args(["--label", "region=eu-west", "--version", "v1.0.0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Registrar {
            child: Some(command.spawn().expect("spawning strait register")),
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
    }

    /// Waits for the process to exit; returns its status code and stderr.
    fn wait(&mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                self.child = None;
                return (status.code().unwrap_or(-1), err);
            }
            assert!(Instant::now() < deadline, "strait register did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Everything registered for service "echo".
async fn registered(c: &mut etcd_client::Client) -> etcd_client::GetResponse {
    c.get(
        "/services/echo/",
        Some(etcd_client::GetOptions::new().with_prefix()),
    )
    .await
    .unwrap()
}

async fn keys(c: &mut etcd_client::Client) -> Vec<(String, String)> {
    registered(c)
        .await
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn wait_keys(
    c: &mut etcd_client::Client,
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut(&[(String, String)]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if ok(&keys(c).await) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}; keys: {:?}",
            keys(c).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Remaining seconds of a lease (-1 once it is gone).
async fn lease_ttl(c: &mut etcd_client::Client, lease: i64) -> i64 {
    match c.lease_time_to_live(lease, None).await {
        Ok(r) => r.ttl(),
        Err(_) => -1,
    }
}

/// Waits until `lease` outlives its TTL: only a lease someone keeps alive does. Returns false
/// if it expires instead.
async fn lease_outlives_its_ttl(c: &mut etcd_client::Client, lease: i64) -> bool {
    let granted = match c.lease_time_to_live(lease, None).await {
        Ok(r) if r.ttl() > 0 => r.granted_ttl(),
        _ => return false,
    };
    let past_ttl = tokio::time::Instant::now() + Duration::from_secs(granted as u64 + 1);
    loop {
        if lease_ttl(c, lease).await <= 0 {
            return false;
        }
        if tokio::time::Instant::now() > past_ttl {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lease of the one key registered, waiting for it to exist.
async fn registered_lease(c: &mut etcd_client::Client, timeout: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let r = registered(c).await;
        if let [kv] = r.kvs() {
            return kv.lease();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no single registered key: {} keys",
            r.kvs().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_backend_is_routed_and_sigterm_deregisters_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let member = tokio::task::block_in_place(|| Etcd::single(dir.path()));
    let backend = Backend::start(BackendOptions::named("b0")).await;
    let listen = free_addr();
    let _gateway = tokio::task::block_in_place(|| {
        Gateway::start(&etcd_config(listen, &[member.url()], ""), listen)
    });
    let mut registrar = Registrar::start(&member.url(), backend.addr, &["--ttl", "10s"]);
    let mut c = client(listen).await;
    call_until(
        &mut c,
        Duration::from_secs(15),
        "routed to the registered backend",
        |b| b == "b0",
    )
    .await;
    let mut e = etcd::client(&[member.url()]).await;
    let registered = keys(&mut e).await;
    assert_eq!(registered.len(), 1);
    assert!(
        registered[0]
            .0
            .starts_with("/services/echo/echo-v1.0.0-default-"),
        "{registered:?}"
    );
    assert!(registered[0]
        .1
        .contains(&format!("\"addr\":\"{}\"", backend.addr)));

    registrar.signal("TERM");
    let (code, _) = tokio::task::block_in_place(|| registrar.wait(Duration::from_secs(10)));
    assert_eq!(code, 0, "clean deregistration exits 0");
    assert!(
        keys(&mut e).await.is_empty(),
        "the key is gone as soon as the registrar exits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_disappears_after_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let member = tokio::task::block_in_place(|| Etcd::single(dir.path()));
    let backend = Backend::start(BackendOptions::named("b0")).await;
    let mut registrar = Registrar::start(&member.url(), backend.addr, &["--ttl", "2s"]);
    let mut e = etcd::client(&[member.url()]).await;
    wait_keys(&mut e, "registered", Duration::from_secs(10), |k| {
        k.len() == 1
    })
    .await;
    registrar.signal("KILL");
    let _ = tokio::task::block_in_place(|| registrar.wait(Duration::from_secs(5)));
    assert_eq!(
        keys(&mut e).await.len(),
        1,
        "still there right after kill -9"
    );
    wait_keys(
        &mut e,
        "expired with the lease",
        Duration::from_secs(10),
        |k| k.is_empty(),
    )
    .await;
}

/// etcd down for longer than the TTL: the registration comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_longer_than_the_ttl_reregisters() {
    let dir = tempfile::tempdir().unwrap();
    let mut member = tokio::task::block_in_place(|| Etcd::single(dir.path()));
    let backend = Backend::start(BackendOptions::named("b0")).await;
    let _registrar = Registrar::start(&member.url(), backend.addr, &["--ttl", "2s"]);
    let mut e = etcd::client(&[member.url()]).await;
    wait_keys(&mut e, "registered", Duration::from_secs(10), |k| {
        k.len() == 1
    })
    .await;
    drop(e);
    tokio::task::block_in_place(|| member.kill());
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| {
        member.start();
        member.wait_ready();
    });
    let mut e = etcd::client(&[member.url()]).await;
    // Whatever etcd did with the old lease, a key is there under a lease the registrar keeps
    // alive (it outlives its TTL), so it stays.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lease = registered_lease(&mut e, Duration::from_secs(20)).await;
        if lease_outlives_its_ttl(&mut e, lease).await {
            assert_eq!(
                registered_lease(&mut e, Duration::from_secs(1)).await,
                lease
            );
            break;
        }
        // The old lease expired with its key: the registrar must register again.
        assert!(
            tokio::time::Instant::now() < deadline,
            "no registration stays alive"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_gated_registration_follows_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let member = tokio::task::block_in_place(|| Etcd::single(dir.path()));
    let backend = Backend::start(BackendOptions::named("b0")).await;
    backend.set_health(ServingStatus::NotServing).await;
    let _registrar = Registrar::start(
        &member.url(),
        backend.addr,
        &["--ttl", "3s", "--health-check"],
    );
    let mut e = etcd::client(&[member.url()]).await;
    // The registrar is connected and holds its lease (it asks for health after the grant and
    // before each keep-alive): once the lease has outlived its TTL, it was refreshed, so
    // health was checked at least once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lease = loop {
        if let Some(lease) = e.leases().await.unwrap().leases().first() {
            break lease.id();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the registrar never took a lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        lease_outlives_its_ttl(&mut e, lease).await,
        "the registrar keeps its lease alive"
    );
    assert!(
        keys(&mut e).await.is_empty(),
        "not registered while NOT_SERVING"
    );
    backend.set_health(ServingStatus::Serving).await;
    wait_keys(
        &mut e,
        "registered once SERVING",
        Duration::from_secs(10),
        |k| k.len() == 1,
    )
    .await;
    backend.set_health(ServingStatus::NotServing).await;
    wait_keys(
        &mut e,
        "withdrawn when NOT_SERVING",
        Duration::from_secs(10),
        |k| k.is_empty(),
    )
    .await;
    backend.set_health(ServingStatus::Serving).await;
    wait_keys(&mut e, "back when SERVING", Duration::from_secs(10), |k| {
        k.len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_id_cannot_be_taken_twice() {
    let dir = tempfile::tempdir().unwrap();
    let member = tokio::task::block_in_place(|| Etcd::single(dir.path()));
    let backend = Backend::start(BackendOptions::named("b0")).await;
    let _first = Registrar::start(&member.url(), backend.addr, &["--id", "echo-1"]);
    let mut e = etcd::client(&[member.url()]).await;
    wait_keys(&mut e, "first registered", Duration::from_secs(10), |k| {
        k.len() == 1
    })
    .await;
    let other = Backend::start(BackendOptions::named("b1")).await;
    let mut second = Registrar::start(&member.url(), other.addr, &["--id", "echo-1"]);
    let (code, stderr) = tokio::task::block_in_place(|| second.wait(Duration::from_secs(10)));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("already registered by another live process"),
        "{stderr}"
    );
    let k = keys(&mut e).await;
    assert!(
        k[0].1.contains(&backend.addr.to_string()),
        "the first registration is untouched"
    );
}

/// The headline: three backends with their registrars under steady load; each is restarted in
/// turn with --drain (a rolling deploy). Not one call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_with_drain_fails_no_call() {
    let dir = tempfile::tempdir().unwrap();
    let member = tokio::task::block_in_place(|| Etcd::single(dir.path()));
    let mut backends = Vec::new();
    let mut registrars = Vec::new();
    for i in 0..3 {
        let b = Backend::start(BackendOptions::named(&format!("b{i}"))).await;
        registrars.push(Registrar::start(
            &member.url(),
            b.addr,
            &["--ttl", "5s", "--drain", "1s", "--id", &format!("echo-{i}")],
        ));
        backends.push(Some(b));
    }
    let listen = free_addr();
    let _gateway = tokio::task::block_in_place(|| {
        Gateway::start(&etcd_config(listen, &[member.url()], ""), listen)
    });
    let mut c = client(listen).await;
    call_until_served_by_n(&mut c, Duration::from_secs(15), 3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, failures, calls, mut c) =
            (stop.clone(), failures.clone(), calls.clone(), c.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Err(status) = c.unary(req(b"deploy")).await {
                    eprintln!("failed call: {status:?}");
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for i in 0..3 {
        registrars[i].signal("TERM");
        let (code, err) =
            tokio::task::block_in_place(|| registrars[i].wait(Duration::from_secs(15)));
        assert_eq!(code, 0, "{err}");
        let old = backends[i].take().unwrap();
        let addr = old.addr;
        old.stop().await;
        let fresh = Backend::start(BackendOptions {
            name: format!("b{i}"),
            addr: Some(addr),
            tls: None,
            client_ca: None,
            arrivals_log: None,
        })
        .await;
        backends[i] = Some(fresh);
        registrars[i] = Registrar::start(
            &member.url(),
            addr,
            &["--ttl", "5s", "--drain", "1s", "--id", &format!("echo-{i}")],
        );
        call_until(
            &mut c,
            Duration::from_secs(15),
            "the restarted backend serves",
            |b| b == format!("b{i}"),
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        calls.load(Ordering::Relaxed) > 300,
        "load ran through the deploy"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "a call failed during the rolling deploy"
    );
}

/// Against an etcd with authentication on, the registrar logs in with its own user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_through_etcd_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let member = tokio::task::block_in_place(|| Etcd::single(dir.path()));
    let backend = Backend::start(BackendOptions::named("b0")).await;
    let mut admin = etcd::client(&[member.url()]).await;
    etcd::enable_auth(
        &mut admin,
        "reg",
        "regpw",
        etcd_client::Permission::read_write("/services/").with_prefix(),
    )
    .await;
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, "regpw\n").unwrap();
    let password_file = password_file.display().to_string();
    let _registrar = Registrar::start(
        &member.url(),
        backend.addr,
        &[
            "--etcd-username",
            "reg",
            "--etcd-password-file",
            &password_file,
        ],
    );
    let options = etcd_client::ConnectOptions::new().with_user("root", etcd::ROOT_PASSWORD);
    let mut e = etcd_client::Client::connect([member.url()], Some(options))
        .await
        .unwrap();
    wait_keys(
        &mut e,
        "registered through auth",
        Duration::from_secs(15),
        |k| k.len() == 1,
    )
    .await;
}
