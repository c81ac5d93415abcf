//! The gateway as a real process, started from a config text and stopped with real signals.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::net::wait_for_port;

/// Path of the `strait` binary: `$STRAIT_BIN`, else next to this test executable in the cargo
/// target directory (`make test` builds it first).
pub fn strait_bin() -> PathBuf {
    if let Ok(path) = std::env::var("STRAIT_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe
        .parent()
        .expect("executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("strait");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p strait` (make test does this)",
        bin.display()
    );
    bin
}

/// A running `strait run` process; killed when dropped.
pub struct Gateway {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Writes `config` to a temp dir and starts the gateway, waiting until `wait_addr` accepts.
    pub fn start(config: &str, wait_addr: SocketAddr) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, config, wait_addr)
    }

    /// Like `start`, in a directory prepared by the caller (certificates, etc.).
    pub fn start_in(dir: tempfile::TempDir, config: &str, wait_addr: SocketAddr) -> Gateway {
        let config_path = dir.path().join("strait.toml");
        std::fs::write(&config_path, config).expect("writing config");
        let mut child = Command::new(strait_bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env(
                "STRAIT_LOG",
                std::env::var("STRAIT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning strait");
        let logs = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if std::env::var_os("STRAIT_TEST_ECHO_LOGS").is_some() {
                        eprintln!("[strait] {line}");
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let mut gateway = Gateway {
            child: Some(child),
            dir,
            config_path,
            logs,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = gateway.try_wait() {
                panic!(
                    "strait exited early with {status}; logs:\n{}",
                    gateway.logs().join("\n")
                );
            }
            if wait_for_port(wait_addr, Duration::from_millis(100)) {
                return gateway;
            }
        }
        panic!(
            "strait did not listen on {wait_addr}; logs:\n{}",
            gateway.logs().join("\n")
        );
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit on its own, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `strait check --config <file>` and returns (exit code, stdout+stderr).
pub fn check_config(path: &Path) -> (i32, String) {
    let output = Command::new(strait_bin())
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .expect("running strait check");
    let mut text = String::from_utf8_lossy(&output.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}
