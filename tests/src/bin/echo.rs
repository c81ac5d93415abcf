//! `strait-echo`: the echo backend as a process, for the demo, benchmarks and kill tests.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
#[command(about = "gRPC echo backend (bench.Echo + grpc.health.v1)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Name reported in every reply's `served_by`.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Append each call's `x-call-id` to this file as it arrives (for replay checks).
    #[arg(long)]
    arrivals: Option<std::path::PathBuf>,
    /// This percentage of unary calls answers after `--slow-ms` (a slow tail, for hedging).
    #[arg(long, default_value_t = 0)]
    slow_percent: u32,
    #[arg(long, default_value_t = 200)]
    slow_ms: u64,
}

fn main() {
    let args = Args::parse();
    let threads: usize = std::env::var("ECHO_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    runtime.block_on(strait_tests::echo::serve_forever(
        args.name,
        args.listen,
        args.arrivals,
        (args.slow_percent > 0).then_some((args.slow_percent, args.slow_ms)),
    ));
}
