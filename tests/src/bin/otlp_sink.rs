//! `strait-otlp-sink`: the OTLP trace receiver of the tests as a process, for benchmarks that
//! run the gateway with tracing on. On SIGTERM or SIGINT it prints the spans and export
//! requests it received.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
#[command(about = "OTLP/gRPC trace receiver that keeps count of what it is sent")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    runtime.block_on(async {
        let receiver = strait_tests::otlp::OtlpReceiver::start_at(args.listen).await;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        println!(
            "spans={} exports={}",
            receiver.spans().len(),
            receiver.exports()
        );
    });
}
