//! L4 listeners: raw TCP balanced over an upstream's endpoints with the L7 policy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use strait_tests::net::{dead_addr, free_addr, http_get, metric, wait_metric};
use strait_tests::tcp::{exchange, TcpEcho};
use strait_tests::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway with one tcp listener in front of `endpoints` (address, weight) and an admin port.
fn tcp_config(
    listen: SocketAddr,
    admin: SocketAddr,
    endpoints: &[(SocketAddr, u32)],
    extra: &str,
) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(addr, weight)| format!("{{ addr = \"{addr}\", weight = {weight} }}"))
        .collect();
    format!(
        r#"
[gateway]
threads = 2
shutdown_grace = "10s"

[[listener]]
name = "raw"
listen = "{listen}"
protocol = "tcp"
upstream = "echo"
{extra}

[[upstream]]
name = "echo"
endpoints = [{}]
connect_timeout = "500ms"
max_attempts = 3

[upstream.breaker]
consecutive_failures = 2
open_for = "30s"

[admin]
listen = "{admin}"
"#,
        eps.join(", ")
    )
}

/// Connections are spread by weight, a dead endpoint costs no connection (the next endpoint is
/// tried and its breaker opens), bytes flow both ways and a half-close reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_balances_relays_and_skips_dead_endpoints() {
    let a = TcpEcho::start("a").await;
    let b = TcpEcho::start("b").await;
    let dead = dead_addr();
    let (listen, admin) = (free_addr(), free_addr());
    let text = tcp_config(
        listen,
        admin,
        &[(a.addr, 100), (b.addr, 100), (dead, 100)],
        "",
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, admin));

    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let (name, echoed) = exchange(listen, &payload)
            .await
            .expect("relayed connection");
        assert!(
            echoed == payload,
            "256 KiB come back byte for byte after the half-close"
        );
        *served.entry(name).or_insert(0) += 1;
    }
    println!("connections per backend: {served:?}");
    assert_eq!(served.values().sum::<i32>(), 30, "no connection failed");
    assert!(served["a"] >= 10 && served["b"] >= 10, "{served:?}");
    assert_eq!(a.connections() + b.connections(), 30);

    // The gateway counts a connection a moment after the client saw it end.
    let closed = tokio::task::block_in_place(|| {
        let labels = [("listener", "raw"), ("outcome", "closed")];
        wait_metric(admin, "strait_tcp_connections_total", &labels, 30.0)
    });
    assert_eq!(closed, Some(30.0));
    let (_, text) = tokio::task::block_in_place(|| http_get(admin, "/metrics"));
    let failed = metric(
        &text,
        "strait_upstream_attempts_total",
        &[
            ("endpoint", &dead.to_string()),
            ("outcome", "connect_error"),
        ],
    );
    assert_eq!(
        failed,
        Some(2.0),
        "two connect failures open the breaker, then it is skipped"
    );
    let up = metric(
        &text,
        "strait_tcp_bytes_total",
        &[("listener", "raw"), ("direction", "upstream")],
    );
    assert_eq!(up, Some(30.0 * payload.len() as f64));
    let (_, json) = tokio::task::block_in_place(|| http_get(admin, "/upstreams"));
    let view: serde_json::Value = serde_json::from_str(&json).unwrap();
    let dead_view = view["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["addr"] == dead.to_string())
        .cloned()
        .unwrap();
    assert_eq!(dead_view["breaker_state"], "open", "{dead_view}");
    drop(gateway);
}

/// No reachable endpoint: the connection is closed at once, with a log line and a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_closes_connections_it_cannot_place() {
    let (listen, admin) = (free_addr(), free_addr());
    let text = tcp_config(listen, admin, &[(dead_addr(), 100)], "");
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, admin));
    let result = exchange(listen, b"hello").await;
    assert!(result.is_err(), "nothing to relay to: {result:?}");
    let refused = tokio::task::block_in_place(|| {
        wait_metric(
            admin,
            "strait_tcp_connections_total",
            &[("outcome", "no_endpoint")],
            1.0,
        )
    });
    assert_eq!(refused, Some(1.0));
    assert!(
        gateway.logs().iter().any(
            |l| l.contains("tcp connection refused: no endpoint reachable")
                && l.contains("Connection refused")
        ),
        "{:#?}",
        gateway.logs()
    );
}

/// A connection with no byte either way for `idle_timeout` is closed; an active one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_idle_connections_are_closed() {
    let a = TcpEcho::start("a").await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = tcp_config(listen, admin, &[(a.addr, 100)], "idle_timeout = \"2s\"");
    let _gateway = tokio::task::block_in_place(|| Gateway::start(&text, admin));

    let mut busy = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut quiet = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut greeting = [0u8; 2];
    busy.read_exact(&mut greeting).await.unwrap();
    quiet.read_exact(&mut greeting).await.unwrap();
    let opened = Instant::now();
    let quiet_closed = tokio::spawn(async move {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), quiet.read_to_end(&mut rest))
            .await
            .map(|read| read.unwrap_or(0))
    });
    // The busy connection exchanges a byte every 50 ms for as long as the quiet one stays open,
    // and well past the idle timeout: it is never idle, so it must outlive the quiet one.
    while !quiet_closed.is_finished() || opened.elapsed() < Duration::from_secs(3) {
        busy.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        busy.read_exact(&mut one)
            .await
            .expect("the busy connection relays while the quiet one idles");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = quiet_closed
        .await
        .unwrap()
        .expect("the quiet connection is closed by the gateway");
    assert_eq!(n, 0, "closed without data");
    busy.write_all(b"y").await.unwrap();
    let mut one = [0u8; 1];
    busy.read_exact(&mut one)
        .await
        .expect("the busy connection still relays");
    assert_eq!(&one, b"y");
    let idle = tokio::task::block_in_place(|| {
        wait_metric(
            admin,
            "strait_tcp_connections_total",
            &[("outcome", "idle_timeout")],
            1.0,
        )
    });
    assert_eq!(idle, Some(1.0));
}

/// SIGTERM: the tcp listener stops accepting, an open connection keeps relaying, and the
/// process exits as soon as it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_drain_on_shutdown() {
    let a = TcpEcho::start("a").await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = tcp_config(listen, admin, &[(a.addr, 100)], "");
    let mut gateway = tokio::task::block_in_place(|| Gateway::start(&text, admin));
    let mut open = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut greeting = [0u8; 2];
    open.read_exact(&mut greeting).await.unwrap();

    gateway.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(listen).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the listener still accepts after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for round in 0..5u8 {
        open.write_all(&[round]).await.unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one)
            .await
            .expect("the open connection keeps relaying");
        assert_eq!(one[0], round);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gateway.try_wait().is_none(),
        "the gateway waits for the open connection"
    );
    drop(open);
    let status = tokio::task::block_in_place(|| gateway.wait_exit(Duration::from_secs(5)))
        .expect("exits once the connection closed");
    assert!(status.success(), "{status}");
}
