//! TLS, non-gRPC callers, and graceful shutdown.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use strait_tests::net::free_addr;
use strait_tests::pb::echo_client::EchoClient;
use strait_tests::pb::EchoRequest;
use strait_tests::{tls, Backend, BackendOptions, Gateway};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::fixture::{req, single_backend_config, tls_listener_config, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_grpc_with_alpn_h2() {
    let backend = Backend::start(BackendOptions::named("a")).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::generate(dir.path());
    let listen = free_addr();
    let text = tls_listener_config(
        listen,
        backend.addr,
        "cert = \"server.crt\", key = \"server.key\"",
    );
    let _gateway = tokio::task::block_in_place(|| Gateway::start_in(dir, &text, listen));
    let tls_config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", listen.port()))
        .unwrap()
        .tls_config(tls_config)
        .unwrap()
        .connect()
        .await
        .expect("TLS connect with ALPN h2");
    let mut client = EchoClient::new(channel);
    let reply = client
        .unary(req(b"secure"))
        .await
        .expect("call over TLS")
        .into_inner();
    assert_eq!(reply.payload, b"secure");
    assert_eq!(backend.calls(), 1);
}

/// Upstream TLS: the gateway speaks h2 over TLS to a backend, verifying it with the given CA
/// and server name; with the wrong name the call fails with UNAVAILABLE naming TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_with_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::generate(dir.path());
    let cert = std::fs::read_to_string(&pki.server_cert).unwrap();
    let key = std::fs::read_to_string(&pki.server_key).unwrap();
    let backend = Backend::start(BackendOptions {
        name: "tls-backend".into(),
        addr: None,
        tls: Some((cert, key)),
        client_ca: None,
        arrivals_log: None,
    })
    .await;
    for (server_name, should_work) in [("localhost", true), ("wrong.example", false)] {
        let listen = free_addr();
        let text = single_backend_config(listen, backend.addr).replace(
            "max_attempts = 3",
            &format!(
                "max_attempts = 1\ntls = {{ ca = \"{}\", server_name = \"{server_name}\" }}",
                pki.ca_cert.display()
            ),
        );
        let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
        let mut client = crate::fixture::client(listen).await;
        let result = client.unary(req(b"over tls")).await;
        if should_work {
            assert_eq!(
                result
                    .expect("call over upstream TLS")
                    .into_inner()
                    .served_by,
                "tls-backend"
            );
        } else {
            let status = result.expect_err("certificate name mismatch must fail");
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert!(
                status.message().to_lowercase().contains("tls")
                    || status.message().contains("certificate"),
                "{}",
                status.message()
            );
        }
    }
    assert_eq!(backend.calls(), 1);
}

/// HTTP/1.1 on the gRPC port: a clear HTTP error, and the listener keeps serving gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_request_gets_clear_error_and_listener_keeps_serving() {
    let setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let addr = setup.addr;
    let text = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST /bench.Echo/Unary HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 505"), "{text}");
    assert!(text.contains("gRPC over HTTP/2 only"), "{text}");
    let mut client = setup.client().await;
    client
        .unary(req(b"still here"))
        .await
        .expect("gRPC still served");
}

/// SIGTERM: the call in flight finishes, new connections are refused, the process exits 0
/// soon after the last call instead of sleeping the whole grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls_then_exits() {
    let mut setup = Setup::start(&[("a", 100, "eu-west")]).await;
    let mut client = setup.client().await;
    let in_flight = tokio::spawn(async move {
        client
            .unary(EchoRequest {
                delay_ms: 1500,
                payload: b"finish me".to_vec(),
                ..Default::default()
            })
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while setup.backend("a").active() == 0 {
        assert!(
            Instant::now() < deadline,
            "the call never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let signalled = Instant::now();
    setup.gateway.signal("TERM");
    let reply = in_flight
        .await
        .unwrap()
        .expect("in-flight call completes during drain");
    assert_eq!(reply.into_inner().payload, b"finish me");
    // The listener closed when the drain began (the call above was still running then).
    assert!(
        std::net::TcpStream::connect_timeout(&setup.addr, Duration::from_millis(500)).is_err(),
        "listener still accepts during drain"
    );
    let status = tokio::task::block_in_place(|| setup.gateway.wait_exit(Duration::from_secs(8)))
        .expect("gateway exits before the 10 s grace period ends");
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(8));
}

/// The demo's printed proxyless client: grpcio with the bootstrap the demo wrote calls
/// `xds:///echo` straight to echo-us-east, its own region.
fn demo_xds_client_calls_us_east(demo_dir: &std::path::Path, root: &std::path::Path) {
    let bootstrap = demo_dir.join("xds-us-east.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut command = std::process::Command::new("bash");
        command.arg("-c").arg(format!(
            "echo 'call 10' | GRPC_XDS_BOOTSTRAP={} /usr/bin/python3 {}",
            bootstrap.display(),
            root.join("tests/xds/client.py").display()
        ));
        let output = strait_tests::net::run_bounded(command, Duration::from_secs(60))
            .expect("the xDS client ran within 60 s");
        let line = String::from_utf8_lossy(&output.stdout).to_string();
        if line.trim() == r#"{"ok":{"echo-us-east":10},"errors":{}}"# {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the demo's xDS client said {line:?}, {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `make run`'s demo (scripts/demo.sh) stops cleanly: after Ctrl-C (SIGINT to its process
/// group, as a terminal sends it) or SIGTERM to the script, none of the processes it started
/// is left, and none of its ports is still taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_leaves_nothing_behind() {
    use std::os::unix::process::CommandExt;
    use strait_tests::net::wait_for_port;
    let _heavy = strait_tests::attack::HEAVY.lock().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = strait_tests::gateway::strait_bin()
        .parent()
        .unwrap()
        .to_path_buf();
    let ports = [2379u16, 8080, 9901, 18000, 50051, 50052];
    for signal in ["-INT", "-TERM"] {
        let demo_dir = tempfile::tempdir().unwrap();
        let mut demo = std::process::Command::new("bash")
            .arg(root.join("scripts/demo.sh"))
            .env("STRAIT_BIN_DIR", &bin_dir)
            .env("STRAIT_DEMO_DIR", demo_dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting the demo");
        // Serving: a call through the gateway reaches a registered backend.
        let gateway: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(
            tokio::task::block_in_place(|| wait_for_port(gateway, Duration::from_secs(60))),
            "the demo gateway never listened"
        );
        let mut client = crate::fixture::client(gateway).await;
        crate::fixture::call_until(
            &mut client,
            Duration::from_secs(30),
            "a demo backend serves",
            |b| b.starts_with("echo-"),
        )
        .await;
        drop(client);
        if signal == "-INT" {
            demo_xds_client_calls_us_east(demo_dir.path(), &root);
        }
        let target = if signal == "-INT" {
            format!("-{}", demo.id()) // the whole process group, like Ctrl-C
        } else {
            demo.id().to_string()
        };
        let sent = std::process::Command::new("kill")
            .args([signal, "--", &target])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = demo.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not stop after {signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "demo exited with {status} after {signal}");
        // Every process it started is gone: its ports are free and no process still runs from
        // its data directory or its binaries.
        for port in ports {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            assert!(
                !wait_for_port(addr, Duration::from_millis(200)),
                "port {port} still taken after {signal}"
            );
        }
        let leftovers: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| {
                c.contains(&demo_dir.path().display().to_string())
                    || c.contains("--name echo-eu-west")
                    || c.contains("--name echo-us-east")
                    // The demo's own ids, not the registrar tests' `--id echo-1` running
                    // beside this test.
                    || c.contains("--id echo-eu-west")
                    || c.contains("--id echo-us-east")
            })
            .collect();
        assert!(
            leftovers.is_empty(),
            "left behind after {signal}: {leftovers:?}"
        );
    }
}
