//! The gateway as a real process, started from a config text and stopped with real signals.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::net::wait_for_port;

/// Path of the `strait` binary: `$STRAIT_BIN`, else next to this test executable in the cargo
/// target directory (`make test` builds it first).
pub fn strait_bin() -> PathBuf {
    if let Ok(path) = std::env::var("STRAIT_BIN") {
        return PathBuf::from(path);
    }
    sibling_bin("strait")
}

/// A workspace binary next to the running executable (`cargo build --workspace --bins`).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe
        .parent()
        .expect("executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build --workspace --bins` (make test does this)",
        bin.display()
    );
    bin
}

/// `kill -SIGNAL pid`, best effort (the process may already be gone).
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// The echo backend as its own process, for tests that kill -9 or SIGSTOP it.
pub struct EchoProcess {
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl EchoProcess {
    pub fn start(name: &str, addr: SocketAddr) -> EchoProcess {
        Self::start_logging(name, addr, None)
    }

    /// `start`, appending each arriving call's `x-call-id` to `arrivals` (one per line).
    pub fn start_logging(name: &str, addr: SocketAddr, arrivals: Option<&Path>) -> EchoProcess {
        let mut command = Command::new(sibling_bin("strait-echo"));
        command
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--name")
            .arg(name);
        if let Some(path) = arrivals {
            command.arg("--arrivals").arg(path);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning strait-echo");
        assert!(
            wait_for_port(addr, Duration::from_secs(10)),
            "strait-echo {name} did not listen"
        );
        EchoProcess {
            name: name.to_string(),
            addr,
            child: Some(child),
        }
    }

    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            send_signal(child.id(), signal);
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
    }
}

/// A running `strait run` process; killed when dropped.
pub struct Gateway {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    /// While true the readers leave stdout and stderr unread, so the pipes fill up and a
    /// gateway writing its log synchronously would block (see `pause_logs`).
    paused: Arc<(Mutex<bool>, Condvar)>,
    /// The threads reading stdout and stderr; joined when the gateway is dropped, so its last
    /// lines are read before they are checked for a panic.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Writes `config` to a temp dir and starts the gateway, waiting until `wait_addr` accepts.
    pub fn start(config: &str, wait_addr: SocketAddr) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, config, wait_addr)
    }

    /// Like `start`, in a directory prepared by the caller (certificates, etc.).
    pub fn start_in(dir: tempfile::TempDir, config: &str, wait_addr: SocketAddr) -> Gateway {
        let log = std::env::var("STRAIT_LOG").unwrap_or_else(|_| "info".into());
        Self::start_logging(dir, config, wait_addr, &log)
    }

    /// Like `start_in`, with `STRAIT_LOG=log`.
    pub fn start_logging(
        dir: tempfile::TempDir,
        config: &str,
        wait_addr: SocketAddr,
        log: &str,
    ) -> Gateway {
        let config_path = dir.path().join("strait.toml");
        std::fs::write(&config_path, config).expect("writing config");
        let mut child = Command::new(strait_bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("STRAIT_LOG", log)
            // Lets tests make a background task panic (`POST /test/panic?task=NAME`).
            .env("STRAIT_TEST_HOOKS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning strait");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let paused = Arc::new((Mutex::new(false), Condvar::new()));
        let mut readers = Vec::new();
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
            let paused = paused.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let (flag, wake) = &*paused;
                    let mut held = flag.lock().unwrap();
                    while *held {
                        held = wake.wait(held).unwrap();
                    }
                    drop(held);
                    if std::env::var_os("STRAIT_TEST_ECHO_LOGS").is_some() {
                        eprintln!("[strait] {line}");
                    }
                    logs.lock().unwrap().push(line);
                }
            }));
        }
        let mut gateway = Gateway {
            child: Some(child),
            dir,
            config_path,
            logs,
            paused,
            readers,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = gateway.try_wait() {
                panic!(
                    "strait exited early with {status}; logs:\n{}",
                    gateway.logs().join("\n")
                );
            }
            if wait_for_port(wait_addr, Duration::from_millis(100))
                && admin_addr(config).is_none_or(|a| wait_for_port(a, Duration::from_millis(100)))
            {
                return gateway;
            }
        }
        panic!(
            "strait did not listen on {wait_addr}; logs:\n{}",
            gateway.logs().join("\n")
        );
    }

    /// Replaces the config file in place (write, then rename, like a deploy tool would).
    pub fn write_config(&self, text: &str) {
        let tmp = self.config_path.with_extension("toml.new");
        std::fs::write(&tmp, text).expect("writing the new config");
        std::fs::rename(&tmp, &self.config_path).expect("replacing the config");
    }

    /// Waits until a log line contains every one of `needles`; returns it.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .logs()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Some(line);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded by `timeout`) until at least `n` log lines contain `needle`.
    pub fn wait_for_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count_logs(needle) >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many log lines contain `needle`.
    pub fn count_logs(&self, needle: &str) -> usize {
        self.logs().iter().filter(|l| l.contains(needle)).count()
    }

    /// Stops reading the gateway's stdout and stderr: the pipes fill up, as when a log
    /// collector hangs.
    pub fn pause_logs(&self) {
        *self.paused.0.lock().unwrap() = true;
    }

    /// Reads the pipes again.
    pub fn resume_logs(&self) {
        *self.paused.0.lock().unwrap() = false;
        self.paused.1.notify_all();
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
        // Let the readers drain to the end of the pipes and finish.
        self.resume_logs();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        // Every test asserts that the gateway never panicked, whatever else it checks: a panic
        // in a task the test does not look at would otherwise pass unseen.
        let logs = self.logs();
        if !std::thread::panicking() && unexpected_panic(&logs) {
            panic!("the gateway panicked; {}", log_with_panics_last(&logs));
        }
    }
}

/// Whether the log shows more panics than the ones tests ask for through the gateway's test
/// hook (`POST /test/panic`; the message of such a panic is a line of its own starting
/// "test hook:"). Counted rather than paired: stdout and stderr interleave.
fn unexpected_panic(logs: &[String]) -> bool {
    let panics = logs.iter().filter(|l| l.contains("panicked at")).count();
    let asked_for = logs.iter().filter(|l| l.starts_with("test hook:")).count();
    panics > asked_for
}

/// The log, then each panic again with the lines after it: a CI report that keeps only the
/// head and tail of a long failure message still shows what panicked.
pub fn log_with_panics_last(logs: &[String]) -> String {
    let mut text = format!("its log:\n{}\n--- the panics again ---", logs.join("\n"));
    for (i, line) in logs.iter().enumerate() {
        if line.contains("panicked at") {
            for l in logs.iter().skip(i).take(12) {
                text.push('\n');
                text.push_str(l);
            }
        }
    }
    text
}

/// The admin listener of a config, if it has one (data listeners can open a moment before it).
fn admin_addr(config: &str) -> Option<SocketAddr> {
    let value: toml::Value = toml::from_str(config).ok()?;
    value.get("admin")?.get("listen")?.as_str()?.parse().ok()
}

/// Runs `strait check --config <file>` and returns (exit code, stdout+stderr).
pub fn check_config(path: &Path) -> (i32, String) {
    strait_command(&["check", "--config", &path.display().to_string()])
}

/// Runs `strait <args>` to completion: (exit code, stdout+stderr).
pub fn strait_command(args: &[&str]) -> (i32, String) {
    let output = Command::new(strait_bin())
        .args(args)
        .output()
        .expect("running strait");
    let mut text = String::from_utf8_lossy(&output.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}
