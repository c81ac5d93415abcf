//! `strait-discovery-bench`: how fast etcd changes reach the routing, and what a large registry
//! costs. Runs a real etcd, real backends and the real `strait` binary (release build next to
//! this executable).
//!
//!   cargo build --release --workspace --bins && target/release/strait-discovery-bench
//!
//! Propagation: a local-region instance is put, then deleted, `--changes` times; for each
//! change, the time from the etcd write returning to the first call routed to (or away from)
//! it. Region preference makes that observable: while the local instance exists every call goes
//! to it; once it is gone every call goes to the remote one.
//!
//! Scale: `--instances` keys under one service; gateway start-up to routable snapshot, a full
//! resync after an etcd restart, and the gateway's resident memory with and without them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Client, Txn, TxnOp};
use hdrhistogram::Histogram;
use strait_tests::attack::rss_kib;
use strait_tests::etcd::{self, instance_value, Etcd};
use strait_tests::net::free_addr;
use strait_tests::pb::echo_client::EchoClient;
use strait_tests::pb::EchoRequest;
use strait_tests::{Backend, BackendOptions, Gateway};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    /// Put+delete cycles for the propagation measurement.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Instances for the scale measurement (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Client threads making back-to-back calls through the gateway during the propagation
    /// measurement (0: no load).
    #[arg(long, default_value_t = 2)]
    load_threads: usize,
    /// Propagation runs, each of `--changes` put+delete cycles.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// Back-to-back calls from `threads` OS threads (each its own runtime and connection) until
/// the returned flag is set; returns the flag and the threads, which report their call counts.
fn background_load(
    target: SocketAddr,
    threads: usize,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Vec<std::thread::JoinHandle<u64>>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let handles = (0..threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let mut client = connect(target).await;
                    let mut calls = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let _ = client.unary(EchoRequest::default()).await;
                        calls += 1;
                    }
                    calls
                })
            })
        })
        .collect();
    (stop, handles)
}

fn gateway_config(listen: SocketAddr, etcd_url: &str, service: &str) -> String {
    format!(
        r#"
[gateway]
region = "eu-west"
threads = 1
shutdown_grace = "1s"

[etcd]
endpoints = ["{etcd_url}"]
prefix = "/services/"

[[listener]]
name = "bench"
listen = "{listen}"

[[route]]
listener = "bench"
service = "bench.Echo"
upstream = "echo"

[[upstream]]
name = "echo"
discovery = "etcd"
service = "{service}"
"#
    )
}

async fn connect(addr: SocketAddr) -> EchoClient<Channel> {
    EchoClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("gateway"),
    )
}

async fn served_by(client: &mut EchoClient<Channel>) -> String {
    match client.unary(EchoRequest::default()).await {
        Ok(r) => r.into_inner().served_by,
        Err(_) => String::new(),
    }
}

/// Calls until one is served by `target`; returns the time since `since`.
async fn until_served_by(
    client: &mut EchoClient<Channel>,
    target: &str,
    since: Instant,
) -> Duration {
    loop {
        if served_by(client).await == target {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "change never propagated"
        );
    }
}

fn print_histogram(what: &str, h: &Histogram<u64>) {
    println!(
        "{what}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

async fn propagation(args: &Args, etcd_url: &str, etcd_client: &mut Client) {
    let local = Backend::start(BackendOptions::named("local")).await;
    let remote = Backend::start(BackendOptions::named("remote")).await;
    etcd_client
        .put(
            "/services/prop/remote",
            instance_value(remote.addr, 100, "us-east", "v1.0.0", &[]),
            None,
        )
        .await
        .unwrap();
    let listen = free_addr();
    let _gateway = Gateway::start(&gateway_config(listen, etcd_url, "prop"), listen);
    let mut client = connect(listen).await;
    until_served_by(&mut client, "remote", Instant::now()).await;
    let (stop, load) = background_load(listen, args.load_threads);
    let local_value = instance_value(local.addr, 100, "eu-west", "v1.0.0", &[]);
    for run in 1..=args.runs {
        let mut put_h = Histogram::<u64>::new(3).unwrap();
        let mut del_h = Histogram::<u64>::new(3).unwrap();
        for _ in 0..args.changes {
            etcd_client
                .put("/services/prop/local", local_value.clone(), None)
                .await
                .unwrap();
            let t = Instant::now();
            put_h
                .record(until_served_by(&mut client, "local", t).await.as_micros() as u64)
                .unwrap();
            etcd_client
                .delete("/services/prop/local", None)
                .await
                .unwrap();
            let t = Instant::now();
            del_h
                .record(until_served_by(&mut client, "remote", t).await.as_micros() as u64)
                .unwrap();
        }
        println!(
            "run {run} of {}, {} load threads:",
            args.runs, args.load_threads
        );
        print_histogram("  propagation put -> first call routed to it", &put_h);
        print_histogram("  propagation delete -> first call routed away", &del_h);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let load_calls: u64 = load.into_iter().map(|h| h.join().unwrap()).sum();
    println!("background load: {load_calls} calls");
}

/// Waits for the gateway's log line "routing snapshot rebuilt" with `instances` and returns
/// (list+parse ms, snapshot build µs) from the most recent sync.
fn wait_synced(gateway: &Gateway, instances: usize, after_line: usize) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = gateway.logs();
        let fresh = &logs[after_line.min(logs.len())..];
        let synced = fresh.iter().rev().find(|l| {
            l.contains("etcd view synced") && l.contains(&format!("instances={instances}"))
        });
        let built = fresh.iter().rev().find(|l| {
            l.contains("routing snapshot rebuilt") && l.contains(&format!("instances={instances}"))
        });
        if let (Some(s), Some(b)) = (synced, built) {
            let field = |line: &str, name: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            return (field(s, "elapsed_ms"), field(b, "build_us"));
        }
        assert!(
            Instant::now() < deadline,
            "gateway never synced {instances} instances"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn scale(args: &Args, member: &mut Etcd, etcd_client: &mut Client) {
    // Write the instances in transactions of 100 puts (etcd allows 128 operations per txn).
    let started = Instant::now();
    for chunk in (0..args.instances).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                // Addresses are data only: no call is ever sent to them.
                let addr = SocketAddr::from(([127, 0, 0, 1], 20_000 + (*i % 40_000) as u16));
                let value = instance_value(
                    addr,
                    50,
                    if i % 2 == 0 { "eu-west" } else { "us-east" },
                    "v1.2.3",
                    &[("env", "prod")],
                );
                TxnOp::put(format!("/services/big/i-{i:06}"), value, None)
            })
            .collect();
        etcd_client.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    println!(
        "wrote {} instances in {:.1} s",
        args.instances,
        started.elapsed().as_secs_f64()
    );

    let env_debug = [("STRAIT_LOG", "info,strait=debug")];
    for (k, v) in env_debug {
        std::env::set_var(k, v);
    }
    let empty_listen = free_addr();
    let empty = Gateway::start(
        &gateway_config(empty_listen, &member.url(), "none"),
        empty_listen,
    );
    std::thread::sleep(Duration::from_secs(1));
    let empty_rss = rss_kib(empty.pid());

    let listen = free_addr();
    let spawned = Instant::now();
    let big = Gateway::start(&gateway_config(listen, &member.url(), "big"), listen);
    let (list_ms, build_us) = wait_synced(&big, args.instances + 1, 0);
    let to_routable = spawned.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let big_rss = rss_kib(big.pid());
    println!(
        "initial load: {} instances listed+parsed in {list_ms} ms, snapshot built in {:.1} ms; process start to routable {:.0} ms",
        args.instances + 1,
        build_us as f64 / 1000.0,
        to_routable.as_secs_f64() * 1000.0
    );
    println!(
        "memory: gateway RSS {:.1} MiB with {} instances, {:.1} MiB with an empty service: {:.1} MiB for the registry",
        big_rss as f64 / 1024.0,
        args.instances,
        empty_rss as f64 / 1024.0,
        (big_rss.saturating_sub(empty_rss)) as f64 / 1024.0
    );

    let before = big.logs().len();
    let restart = Instant::now();
    member.kill();
    member.start();
    member.wait_ready();
    let (list_ms, build_us) = wait_synced(&big, args.instances + 1, before);
    println!(
        "full resync after an etcd restart: listed+parsed in {list_ms} ms, snapshot built in {:.1} ms ({:.1} s from kill, including etcd's own restart and the reconnect back-off)",
        build_us as f64 / 1000.0,
        restart.elapsed().as_secs_f64()
    );
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut member = Etcd::single(dir.path());
        let mut client = etcd::client(&[member.url()]).await;
        propagation(&args, &member.url(), &mut client).await;
        if args.instances > 0 {
            scale(&args, &mut member, &mut client).await;
        }
    });
}
