//! The access log: exactly one line per finished call (gateway-made errors and retries
//! included) and per tcp connection, JSON or text, sampling of OK calls only, SIGUSR1 reopening
//! a rotated file without losing a line, and `[access_log]` added and removed by reload.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use strait_tests::net::{dead_addr, free_addr, http_get, metric};
use strait_tests::{raw, Backend, BackendOptions, Gateway};

use crate::fixture::{client, config, req, Ep};

const WAIT: Duration = Duration::from_secs(10);

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits (bounded) until `path` holds at least `n` lines; returns them.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = lines(path);
        if found.len() >= n || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn with_log(listen: SocketAddr, endpoints: &[Ep], admin: SocketAddr, log: &str) -> String {
    format!(
        "{}\n[admin]\nlisten = \"{admin}\"\n\n[access_log]\n{log}\n",
        config(listen, endpoints, "", "")
    )
}

async fn three_kinds_of_call(listen: SocketAddr) {
    let mut c = client(listen).await;
    for _ in 0..3 {
        c.unary(req(b"hello")).await.expect("served");
    }
    let unrouted = raw::call(listen, "/other.Service/Call", &[], raw::grpc_frame(b"x"))
        .await
        .unwrap();
    assert_eq!(unrouted.grpc_status().as_deref(), Some("12"));
}

/// Three calls (the first retried after a refused connect), one unrouted call answered by the
/// gateway: four lines, every field as the calls were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_is_one_json_line_with_its_fields() {
    let b0 = Backend::start(BackendOptions::named("b0")).await;
    let dead = dead_addr();
    let (listen, admin) = (free_addr(), free_addr());
    let endpoints = [
        Ep {
            addr: dead,
            weight: 100,
            region: "eu-west",
        },
        Ep {
            addr: b0.addr,
            weight: 100,
            region: "eu-west",
        },
    ];
    let text = with_log(
        listen,
        &endpoints,
        admin,
        "path = \"access.log\"\nformat = \"json\"",
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    three_kinds_of_call(listen).await;
    let path = gateway.dir.path().join("access.log");
    let found = tokio::task::block_in_place(|| wait_lines(&path, 4));
    assert_eq!(found.len(), 4, "{found:#?}");
    let records: Vec<serde_json::Value> = found.iter().map(|l| json(l)).collect();

    let served: Vec<&serde_json::Value> = records.iter().filter(|r| r["code"] == 0).collect();
    assert_eq!(served.len(), 3);
    for r in &served {
        assert_eq!(r["listener"], "public");
        assert_eq!(r["method"], "/bench.Echo/Unary");
        assert_eq!(r["route"], "bench.Echo");
        assert_eq!(r["upstream"], "echo");
        assert_eq!(r["endpoint"], b0.addr.to_string());
        assert_eq!(r["status"], "OK");
        assert!(r["message"].is_null());
        assert_eq!(r["region"], "eu-west");
        assert_eq!(
            (r["req_msgs"].as_u64(), r["resp_msgs"].as_u64()),
            (Some(1), Some(1))
        );
        // One message: 5-byte prefix plus the encoded request / reply.
        assert!(r["req_bytes"].as_u64().unwrap() > 5);
        assert!(r["resp_bytes"].as_u64().unwrap() > 5);
        assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(r["user_agent"].as_str().unwrap().contains("tonic"));
        assert!(r["duration_ms"].as_f64().unwrap() > 0.0);
        assert!(r["trace_id"].is_null());
        let ts = r["ts"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() == "2026-12-03T10:00:00.000000Z".len(),
            "{ts}"
        );
    }
    // The first pick is the dead endpoint (first of two equal weights): refused, then retried.
    assert_eq!(served[0]["attempts"], 2, "{}", served[0]);

    let unrouted = records
        .iter()
        .find(|r| r["code"] == 12)
        .expect("the unrouted call");
    assert_eq!(unrouted["status"], "UNIMPLEMENTED");
    assert_eq!(unrouted["method"], "/other.Service/Call");
    assert!(unrouted["route"].is_null() && unrouted["upstream"].is_null());
    assert!(unrouted["endpoint"].is_null());
    assert_eq!(unrouted["attempts"], 0);
    assert!(unrouted["message"]
        .as_str()
        .unwrap()
        .contains("no route for /other.Service/Call"));
    let (_, metrics) = tokio::task::block_in_place(|| http_get(admin, "/metrics"));
    assert_eq!(
        metric(&metrics, "strait_access_log_dropped_total", &[]),
        Some(0.0)
    );
}

/// `sample = 0` writes no OK call but every failed one; `format = "text"` is one line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_spares_only_ok_calls_and_text_is_one_line() {
    let b0 = Backend::start(BackendOptions::named("b0")).await;
    let (listen, admin) = (free_addr(), free_addr());
    let endpoints = [Ep {
        addr: b0.addr,
        weight: 100,
        region: "eu-west",
    }];
    let text = with_log(
        listen,
        &endpoints,
        admin,
        "path = \"calls.log\"\nformat = \"text\"\nsample = 0.0",
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    three_kinds_of_call(listen).await;
    let path = gateway.dir.path().join("calls.log");
    let found = tokio::task::block_in_place(|| wait_lines(&path, 1));
    assert_eq!(found.len(), 1, "{found:#?}");
    let line = &found[0];
    assert!(line.contains(" public 127.0.0.1:"), "{line}");
    assert!(
        line.contains(" /other.Service/Call UNIMPLEMENTED 12 "),
        "{line}"
    );
    assert!(
        line.contains("message=\"no route for /other.Service/Call"),
        "{line}"
    );
    // Let a late OK line show itself, if one were (wrongly) written: the error came last.
    assert_eq!(b0.calls(), 3);
    assert_eq!(lines(&path).len(), 1);
}

/// logrotate: the file is renamed away, SIGUSR1 reopens the path; every call is in one of the
/// two files, none lost and none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_without_losing_a_line() {
    let b0 = Backend::start(BackendOptions::named("b0")).await;
    let (listen, admin) = (free_addr(), free_addr());
    let endpoints = [Ep {
        addr: b0.addr,
        weight: 100,
        region: "eu-west",
    }];
    let text = with_log(listen, &endpoints, admin, "path = \"access.log\"");
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let path = gateway.dir.path().join("access.log");
    let rotated = gateway.dir.path().join("access.log.1");
    let mut c = client(listen).await;
    for _ in 0..20 {
        c.unary(req(b"before")).await.unwrap();
    }
    tokio::task::block_in_place(|| wait_lines(&path, 20));
    std::fs::rename(&path, &rotated).unwrap();
    // Calls between the rename and the signal still land in the renamed file.
    for _ in 0..10 {
        c.unary(req(b"between")).await.unwrap();
    }
    gateway.signal("USR1");
    let deadline = Instant::now() + WAIT;
    let mut after = 0;
    while !path.exists() {
        assert!(Instant::now() < deadline, "the path was never reopened");
        c.unary(req(b"after")).await.unwrap();
        after += 1;
    }
    for _ in 0..10 {
        c.unary(req(b"after")).await.unwrap();
        after += 1;
    }
    let total = 30 + after;
    let deadline = Instant::now() + WAIT;
    loop {
        let (old, new) = (lines(&rotated).len(), lines(&path).len());
        if old + new >= total {
            assert_eq!(old + new, total, "lines: {old} + {new} for {total} calls");
            // The 20 written before the rename stay in the rotated file, the calls made once
            // the new file exists are in it; the 10 in between may be in either.
            assert!(old >= 20 && new >= 10, "{old} / {new}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{old} + {new} lines for {total} calls"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b0.calls(), total as u64);
}

/// `[access_log]` added by reload starts logging; removed, it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_the_log() {
    let b0 = Backend::start(BackendOptions::named("b0")).await;
    let listen = free_addr();
    let endpoints = [Ep {
        addr: b0.addr,
        weight: 100,
        region: "eu-west",
    }];
    let without = config(listen, &endpoints, "", "");
    let with = format!("{without}\n[access_log]\npath = \"access.log\"\n");
    let gateway = tokio::task::block_in_place(|| Gateway::start(&without, listen));
    let path = gateway.dir.path().join("access.log");
    let mut c = client(listen).await;
    c.unary(req(b"")).await.unwrap();
    gateway.write_config(&with);
    gateway.signal("HUP");
    assert!(tokio::task::block_in_place(|| gateway
        .wait_for_log(&["reloaded"], WAIT)
        .is_some()));
    for _ in 0..5 {
        c.unary(req(b"")).await.unwrap();
    }
    assert_eq!(
        tokio::task::block_in_place(|| wait_lines(&path, 5)).len(),
        5
    );
    gateway.write_config(&without);
    gateway.signal("HUP");
    assert!(
        tokio::task::block_in_place(|| gateway.wait_for_log_count("reloaded", 2, WAIT)),
        "the second reload never happened"
    );
    for _ in 0..5 {
        c.unary(req(b"")).await.unwrap();
    }
    assert_eq!(b0.calls(), 11);
    assert_eq!(lines(&path).len(), 5, "no line once the log is removed");
}

/// A tcp listener writes one line per connection: no method or code, how it ended as status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_is_one_line() {
    let echo = strait_tests::tcp::TcpEcho::start("pg").await;
    let listen = free_addr();
    let text = format!(
        r#"
[[listener]]
name = "pg"
listen = "{listen}"
protocol = "tcp"
upstream = "pg"

[[upstream]]
name = "pg"
endpoints = [{{ addr = "{}" }}]

[access_log]
path = "access.log"
"#,
        echo.addr
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&text, listen));
    let (name, back) = strait_tests::tcp::exchange(listen, b"ping").await.unwrap();
    assert_eq!((name.as_str(), back.as_slice()), ("pg", &b"ping"[..]));
    let path = gateway.dir.path().join("access.log");
    // The harness's own readiness probe (connect, close at once) is a connection too: two
    // lines. How the probe's ended (closed, or error if it left while the backend's greeting was
    // on its way) is a race of the probe, not a property of the log.
    let found = tokio::task::block_in_place(|| wait_lines(&path, 2));
    assert_eq!(found.len(), 2, "{found:#?}");
    let (mine, probe): (Vec<serde_json::Value>, Vec<serde_json::Value>) = found
        .iter()
        .map(|l| json(l))
        .partition(|r| r["req_bytes"] == 4);
    assert_eq!((mine.len(), probe.len()), (1, 1), "{found:#?}");
    assert_eq!(probe[0]["listener"], "pg");
    let r = &mine[0];
    assert_eq!(r["listener"], "pg");
    assert_eq!(r["upstream"], "pg");
    assert_eq!(r["endpoint"], echo.addr.to_string());
    assert_eq!(r["status"], "closed");
    assert!(r["method"].is_null() && r["code"].is_null());
    // Up: "ping"; down: the greeting line "pg\n" and the echo.
    assert_eq!(
        (r["req_bytes"].as_u64(), r["resp_bytes"].as_u64()),
        (Some(4), Some(7))
    );
    assert_eq!(r["attempts"], 1);
}
