//! `strait-xds-bench`: what the xDS server costs per client and how fast a registry change
//! reaches a fleet of them. Runs a real etcd and the real `strait` binary (release build next to
//! this executable) with `[xds]`; the clients are raw ADS streams (tonic, the Envoy types), each
//! on its own connection, subscribed to the upstream's ClusterLoadAssignment and ACKing every
//! response as gRPC clients do.
//!
//!   cargo build --release --workspace --bins
//!   ulimit -n 65536; target/release/strait-xds-bench --clients 1000 --changes 20
//!
//! Per change (one instance's weight flipped in etcd), the time from the etcd write returning to
//! each client's receipt of the new assignment; the gateway's CPU for all the pushes; and the
//! gateway's resident memory before and after the clients connected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use hdrhistogram::Histogram;
use strait_tests::attack::{cpu_ticks, rss_kib};
use strait_tests::etcd::{self, instance_value, Etcd};
use strait_tests::net::free_addr;
use strait_tests::xds::eds_request;
use strait_tests::Gateway;
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser)]
struct Args {
    /// ADS clients, each on its own connection.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Instances registered under the published upstream, split over two regions.
    #[arg(long, default_value_t = 20)]
    instances: usize,
    /// Weight changes to propagate.
    #[arg(long, default_value_t = 20)]
    changes: usize,
}

/// One client: subscribes, ACKs every response, and reports each response's arrival time. A
/// refused connection (a burst of thousands overflows the listen backlog) is tried again, as a
/// gRPC client's back-off would.
async fn client(
    xds: SocketAddr,
    id: usize,
    arrivals: mpsc::UnboundedSender<(usize, String, Instant)>,
) {
    let region = if id.is_multiple_of(2) {
        "eu-west"
    } else {
        "us-east"
    };
    let node = format!("bench-{id}");
    let request = |version: &str, nonce: &str| eds_request(&node, region, version, nonce);
    loop {
        let Ok(mut ads) = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}")).await
        else {
            tokio::time::sleep(Duration::from_millis(50 + (id % 200) as u64)).await;
            continue;
        };
        let (requests, rx) = mpsc::channel(4);
        requests.send(request("", "")).await.unwrap();
        let Ok(responses) = ads
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(50 + (id % 200) as u64)).await;
            continue;
        };
        let mut responses = responses.into_inner();
        while let Ok(Some(response)) = responses.message().await {
            let _ = arrivals.send((id, response.version_info.clone(), Instant::now()));
            if requests
                .send(request(&response.version_info, &response.nonce))
                .await
                .is_err()
            {
                return;
            }
        }
        // The stream broke: reconnect (counted again as a first answer; the bench waits for
        // every client only once, so this only shows as a slower start).
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().unwrap();
    let etcd_server = tokio::task::block_in_place(|| Etcd::single(dir.path()));
    let mut etcd = etcd::client(&[etcd_server.url()]).await;
    for i in 0..args.instances {
        let region = if i.is_multiple_of(2) {
            "eu-west"
        } else {
            "us-east"
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16));
        etcd.put(
            format!("/services/echo/i{i}"),
            instance_value(addr, 100, region, "v1.0.0", &[]),
            None,
        )
        .await
        .unwrap();
    }
    let (listen, xds) = (free_addr(), free_addr());
    let config = format!(
        r#"
[gateway]
threads = 1

[etcd]
endpoints = ["{}"]

[[listener]]
name = "public"
listen = "{listen}"

[[route]]
listener = "public"
service = "*"
upstream = "echo"

[[upstream]]
name = "echo"
discovery = "etcd"
service = "echo"

[xds]
listen = "{xds}"
"#,
        etcd_server.url()
    );
    let gateway = tokio::task::block_in_place(|| Gateway::start(&config, listen));
    let pid = gateway.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib(pid);

    let (tx, mut arrivals) = mpsc::unbounded_channel();
    let started = Instant::now();
    for id in 0..args.clients {
        tokio::spawn(client(xds, id, tx.clone()));
    }
    // Every client has its first assignment.
    let mut served = std::collections::HashSet::new();
    while served.len() < args.clients {
        let (id, _, _) = tokio::time::timeout(Duration::from_secs(60), arrivals.recv())
            .await
            .expect("clients connect within 60 s")
            .unwrap();
        served.insert(id);
    }
    println!(
        "{} clients connected and served in {:.2} s",
        args.clients,
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(pid);
    println!(
        "gateway RSS: {rss_before} KiB without clients, {rss_after} KiB with them: {:.1} KiB per client",
        (rss_after.saturating_sub(rss_before)) as f64 / args.clients as f64
    );

    let arrivals = Arc::new(Mutex::new(arrivals));
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let mut fleet = Histogram::<u64>::new(3).unwrap();
    let cpu_before = cpu_ticks(pid);
    for change in 0..args.changes {
        let weight = if change.is_multiple_of(2) { 50 } else { 100 };
        let addr = SocketAddr::from(([127, 0, 0, 1], 20_000));
        // Answers to earlier changes (a client that reconnected) must not count for this one.
        {
            let mut arrivals = arrivals.lock().await;
            while arrivals.try_recv().is_ok() {}
        }
        let put = etcd
            .put(
                "/services/echo/i0",
                instance_value(addr, weight, "eu-west", "v1.0.0", &[]),
                None,
            )
            .await;
        let written = Instant::now();
        put.unwrap();
        let mut got = std::collections::HashSet::new();
        let mut arrivals = arrivals.lock().await;
        while got.len() < args.clients {
            let (id, _, at) = tokio::time::timeout(Duration::from_secs(30), arrivals.recv())
                .await
                .expect("every client gets the change within 30 s")
                .unwrap();
            if got.insert(id) {
                latency
                    .record(at.saturating_duration_since(written).as_micros() as u64)
                    .unwrap();
            }
        }
        fleet.record(written.elapsed().as_micros() as u64).unwrap();
        // Let the ACKs land before the next change.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu = cpu_ticks(pid) - cpu_before;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "etcd write -> a client has the new assignment: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} receipts)",
        ms(&latency, 0.5),
        ms(&latency, 0.99),
        latency.max() as f64 / 1000.0,
        latency.len()
    );
    println!(
        "etcd write -> all {} clients have it: p50 {:.1} ms, max {:.1} ms ({} changes)",
        args.clients,
        ms(&fleet, 0.5),
        fleet.max() as f64 / 1000.0,
        args.changes
    );
    println!(
        "gateway CPU over the changes: {:.2} s, {:.1} µs per client per change (ACKs included)",
        cpu as f64 / 100.0,
        cpu as f64 * 10_000.0 / (args.clients * args.changes) as f64
    );
}
