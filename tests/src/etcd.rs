//! Real etcd servers for tests: Debian's `etcd-server`, on free loopback ports, data in a temp dir.
//!
//! A missing etcd binary is a test failure, never a skip (`make test` installs it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::{free_port, wait_for_port};

/// Finds the `etcd` binary: `$ETCD_BIN`, else on `PATH`, else Debian's location.
pub fn etcd_bin() -> PathBuf {
    if let Ok(path) = std::env::var("ETCD_BIN") {
        return PathBuf::from(path);
    }
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for candidate in candidates
        .into_iter()
        .chain([PathBuf::from("/usr/bin/etcd")])
    {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "etcd not found (CI={}): install Debian's etcd-server (`bash .ci/install-deps` does) or set ETCD_BIN",
        std::env::var("CI").unwrap_or_default()
    );
}

/// TLS material for an etcd member's client port.
#[derive(Clone)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One etcd member. Killed when dropped.
pub struct Etcd {
    pub name: String,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    data_dir: PathBuf,
    initial_cluster: String,
    tls: Option<EtcdTls>,
    child: Option<Child>,
}

impl Etcd {
    /// A single-member cluster in `dir`.
    pub fn single(dir: &Path) -> Etcd {
        Self::single_with(dir, None)
    }

    pub fn single_with(dir: &Path, tls: Option<EtcdTls>) -> Etcd {
        let mut members = Self::plan(dir, 1, tls);
        let mut etcd = members.pop().expect("one member");
        etcd.start();
        etcd.wait_ready();
        etcd
    }

    /// A single member on a chosen client port (for "etcd comes up later" tests). Not started.
    pub fn unstarted_on(dir: &Path, client_port: u16) -> Etcd {
        let mut members = Self::plan(dir, 1, None);
        let mut etcd = members.pop().expect("one member");
        etcd.client_addr = SocketAddr::from(([127, 0, 0, 1], client_port));
        etcd
    }

    /// A cluster of `n` members, all started and ready.
    pub fn cluster(dir: &Path, n: usize) -> Vec<Etcd> {
        let mut members = Self::plan(dir, n, None);
        for m in &mut members {
            m.start();
        }
        for m in &members {
            m.wait_ready();
        }
        members
    }

    fn plan(dir: &Path, n: usize, tls: Option<EtcdTls>) -> Vec<Etcd> {
        let members: Vec<(String, SocketAddr, SocketAddr)> = (0..n)
            .map(|i| {
                (
                    format!("m{i}"),
                    SocketAddr::from(([127, 0, 0, 1], free_port())),
                    SocketAddr::from(([127, 0, 0, 1], free_port())),
                )
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|(name, _, peer)| format!("{name}=http://{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        members
            .into_iter()
            .map(|(name, client_addr, peer_addr)| Etcd {
                data_dir: dir.join(format!("{name}.etcd")),
                name,
                client_addr,
                peer_addr,
                initial_cluster: initial_cluster.clone(),
                tls: tls.clone(),
                child: None,
            })
            .collect()
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr)
    }

    /// Starts (or restarts, on the same data dir) this member.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let url = self.url();
        let mut command = Command::new(etcd_bin());
        command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&url)
            .arg("--advertise-client-urls")
            .arg(&url)
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", self.peer_addr))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", self.peer_addr))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("strait-test")
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key);
        }
        self.child = Some(command.spawn().expect("spawning etcd"));
    }

    pub fn wait_ready(&self) {
        assert!(
            wait_for_port(self.client_addr, Duration::from_secs(20)),
            "etcd {} did not listen on {}",
            self.name,
            self.client_addr
        );
    }

    /// kill -9: no goodbye to clients or peers.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (STOP, CONT, ...) to this member's process.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            crate::gateway::send_signal(child.id(), signal);
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
    }
}

/// A client for the test's own etcd operations, retried while the cluster settles.
pub async fn client(urls: &[String]) -> etcd_client::Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let options =
            etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        match etcd_client::Client::connect(urls, Some(options)).await {
            Ok(mut c) => {
                if c.status().await.is_ok() {
                    return c;
                }
            }
            Err(e) if Instant::now() > deadline => panic!("cannot reach etcd at {urls:?}: {e}"),
            Err(_) => {}
        }
        if Instant::now() > deadline {
            panic!("etcd at {urls:?} never answered");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The JSON value the registry contract defines.
pub fn instance_value(
    addr: SocketAddr,
    weight: u32,
    region: &str,
    version: &str,
    extra_labels: &[(&str, &str)],
) -> String {
    let mut labels = vec![format!("\"region\": \"{region}\"")];
    labels.extend(
        extra_labels
            .iter()
            .map(|(k, v)| format!("\"{k}\": \"{v}\"")),
    );
    format!(
        r#"{{"addr": "{addr}", "version": "{version}", "weight": {weight}, "labels": {{{}}}}}"#,
        labels.join(", ")
    )
}

/// The root password `enable_auth` sets.
pub const ROOT_PASSWORD: &str = "rootpw";

/// Turns on etcd authentication: a root user, and `user` with only `permission`.
pub async fn enable_auth(
    admin: &mut etcd_client::Client,
    user: &str,
    password: &str,
    permission: etcd_client::Permission,
) {
    let role = format!("{user}-role");
    admin
        .user_add("root", ROOT_PASSWORD, None)
        .await
        .expect("add root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    admin.role_add(role.as_str()).await.expect("add role");
    admin
        .role_grant_permission(role.as_str(), permission)
        .await
        .expect("grant permission");
    admin
        .user_add(user, password, None)
        .await
        .expect("add user");
    admin
        .user_grant_role(user, role.as_str())
        .await
        .expect("grant role");
    admin.auth_enable().await.expect("enable auth");
}
