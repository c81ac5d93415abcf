//! A gRPC C-core backend: tests/ccore/backend.py on Debian's python3-grpcio, for tests where
//! what the backend's own HTTP/2 stack tolerates matters (see that file for what it serves).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::free_addr;

/// Debian's interpreter, which has python3-grpcio (`.ci/install-deps` installs it).
const PYTHON: &str = "/usr/bin/python3";

/// A running C-core backend; killed when dropped.
pub struct CCoreBackend {
    pub addr: SocketAddr,
    child: Child,
}

impl CCoreBackend {
    /// Starts the backend and waits (bounded) until it says it serves.
    pub fn start() -> CCoreBackend {
        let probe = Command::new(PYTHON).args(["-c", "import grpc"]).output();
        assert!(
            probe.as_ref().is_ok_and(|o| o.status.success()),
            "{PYTHON} with grpcio is needed (Debian's python3-grpcio; `bash .ci/install-deps` \
             installs it): {probe:?}"
        );
        let addr = free_addr();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ccore/backend.py");
        let mut child = Command::new(PYTHON)
            .arg(script)
            .arg(addr.port().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the C-core backend");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(20));
        assert_eq!(
            ready.as_deref(),
            Ok("ready"),
            "the C-core backend did not start"
        );
        CCoreBackend { addr, child }
    }
}

impl Drop for CCoreBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
