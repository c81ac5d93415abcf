//! `strait-loadgen`: a gRPC load generator for `bench.Echo/Unary`, and the demo's client.
//!
//! It speaks HTTP/2 directly (the `h2` crate) rather than through tonic so that, on a small
//! machine, the client spends as little CPU as possible and the thing under test is the proxy.
//!
//! Modes:
//! - closed loop (default): `--concurrency` calls always outstanding, for `--duration`; reports
//!   throughput and latency.
//! - open loop (`--rate N`): N calls per second on a fixed schedule, whatever the answers take
//!   (a slow target does not slow the sender). Latency is measured from each call's actual start;
//!   how late starts were against the schedule is reported as `lag_p99_us` (tokio's 1 ms timer
//!   makes it up to ~1 ms; much more means the load generator could not keep up).
//! - `--calls N --show`: N calls one after another, printing who answered (the demo).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use hdrhistogram::Histogram;
use prost::Message;
use strait_tests::pb::{EchoReply, EchoRequest};
use strait_tests::raw;

#[derive(Parser, Clone)]
#[command(about = "gRPC load generator for bench.Echo/Unary and ServerStream")]
struct Args {
    /// Address of the gateway (or backend) to call.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// HTTP/2 connections to spread calls over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls outstanding at once (closed loop).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Run time in seconds (closed and open loop).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Open loop: calls per second on a fixed schedule.
    #[arg(long)]
    rate: Option<u64>,
    /// Payload bytes per request (and per reply: the backend echoes it).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Method of bench.Echo to call: `Unary` or `ServerStream`.
    #[arg(long, default_value = "Unary")]
    method: String,
    /// ServerStream: replies the backend sends per call.
    #[arg(long, default_value_t = 100)]
    replies: u32,
    /// Make exactly this many sequential calls and stop (with --show, print each answer).
    #[arg(long)]
    calls: Option<u64>,
    /// Print each call's answer (who served it, status).
    #[arg(long)]
    show: bool,
    /// Send x-strait-region with this value.
    #[arg(long)]
    region: Option<String>,
    /// Label printed in the result line.
    #[arg(long, default_value = "run")]
    label: String,
    /// Metadata sent with every call, as `name:value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// A file of bearer tokens, one per line: each call sends the next as `authorization`.
    #[arg(long)]
    tokens: Option<std::path::PathBuf>,
}

struct Outcome {
    ok: bool,
    served_by: String,
    status: String,
}

#[derive(Clone)]
struct Caller {
    send: h2::client::SendRequest<Bytes>,
    target: SocketAddr,
    path: Arc<str>,
    body: Bytes,
    region: Option<String>,
    headers: Arc<Vec<(String, String)>>,
    tokens: Option<Arc<(Vec<String>, std::sync::atomic::AtomicUsize)>>,
}

impl Caller {
    async fn call(&self) -> Result<Outcome, h2::Error> {
        // A closed connection fails here; the worker loop reconnects.
        let token = self.tokens.as_ref().map(|t| {
            let (list, next) = &**t;
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("Bearer {}", list[i % list.len()])
        });
        let region: Vec<(&str, &str)> = self
            .region
            .iter()
            .map(|r| ("x-strait-region", r.as_str()))
            .chain(self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .chain(token.iter().map(|t| ("authorization", t.as_str())))
            .collect();
        let response = raw::send(
            self.send.clone(),
            self.target,
            &self.path,
            &region,
            self.body.clone(),
        )
        .await?;
        let status = response.grpc_status().unwrap_or_else(|| "missing".into());
        let message = response.grpc_message().unwrap_or_default();
        let data = &response.body;
        // The first message names the backend (a stream carries many).
        let served_by = match data.get(1..5) {
            Some(len) => {
                let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
                data.get(5..5 + len)
                    .and_then(|m| EchoReply::decode(m).ok())
                    .map(|r| r.served_by)
                    .unwrap_or_default()
            }
            None => String::new(),
        };
        Ok(Outcome {
            ok: response.status == 200 && status == "0",
            served_by,
            status: if message.is_empty() {
                status
            } else {
                format!("{status} ({message})")
            },
        })
    }
}

fn framed_request(payload: usize, reply_count: u32) -> Bytes {
    let message = EchoRequest {
        payload: vec![b'x'; payload],
        reply_count,
        ..Default::default()
    }
    .encode_to_vec();
    let mut buf = BytesMut::with_capacity(5 + message.len());
    buf.put_u8(0);
    buf.put_u32(message.len() as u32);
    buf.put_slice(&message);
    buf.freeze()
}

async fn open_connection(target: SocketAddr) -> std::io::Result<h2::client::SendRequest<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(target).await?;
    tcp.set_nodelay(true).ok();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake(tcp)
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

async fn connect(args: &Args) -> Vec<Caller> {
    let streaming = args.method == "ServerStream";
    let body = framed_request(args.payload, if streaming { args.replies } else { 0 });
    let path: Arc<str> = format!("/bench.Echo/{}", args.method).into();
    let headers: Arc<Vec<(String, String)>> = Arc::new(
        args.headers
            .iter()
            .filter_map(|h| h.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect(),
    );
    // Shared by every connection: each call takes the next token.
    let tokens = args.tokens.as_ref().map(|file| {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| {
            eprintln!("strait-loadgen: cannot read {}: {e}", file.display());
            std::process::exit(2);
        });
        let list: Vec<String> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        Arc::new((list, std::sync::atomic::AtomicUsize::new(0)))
    });
    let mut callers = Vec::new();
    for _ in 0..args.connections.max(1) {
        let send = match open_connection(args.target).await {
            Ok(send) => send,
            Err(e) => {
                eprintln!("strait-loadgen: cannot connect to {}: {e}", args.target);
                std::process::exit(2);
            }
        };
        callers.push(Caller {
            send,
            target: args.target,
            path: path.clone(),
            body: body.clone(),
            region: args.region.clone(),
            headers: headers.clone(),
            tokens: tokens.clone(),
        });
    }
    callers
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds are valid")
}

fn report(label: &str, calls: u64, errors: u64, elapsed: Duration, hist: &Histogram<u64>) {
    let secs = elapsed.as_secs_f64();
    println!(
        "label={label} calls={calls} errors={errors} seconds={secs:.2} rps={:.0} p50_us={} p90_us={} p99_us={} p999_us={} max_us={}",
        calls as f64 / secs,
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.90),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max(),
    );
}

async fn sequential(args: &Args, count: u64) -> u64 {
    let callers = connect(args).await;
    let mut errors = 0;
    for i in 0..count {
        let caller = &callers[(i as usize) % callers.len()];
        match caller.call().await {
            Ok(o) => {
                if !o.ok {
                    errors += 1;
                }
                if args.show {
                    println!(
                        "call {:>3}: status {} served by {}",
                        i + 1,
                        o.status,
                        if o.served_by.is_empty() {
                            "-"
                        } else {
                            &o.served_by
                        }
                    );
                }
            }
            Err(e) => {
                errors += 1;
                if args.show {
                    println!("call {:>3}: transport error: {e}", i + 1);
                }
            }
        }
    }
    errors
}

async fn closed_loop(args: &Args) -> u64 {
    let callers = connect(args).await;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let mut caller = callers[w % callers.len()].clone();
        let stop = stop.clone();
        let errors = errors.clone();
        workers.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match caller.call().await {
                    Ok(o) if o.ok => {}
                    Ok(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        // The connection is gone (e.g. the server's GOAWAY): get a new one, and
                        // yield so a failing target cannot starve the stop timer.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if let Ok(send) = open_connection(caller.target).await {
                            caller.send = send;
                        }
                    }
                }
                hist.saturating_record(t.elapsed().as_micros() as u64);
                calls += 1;
            }
            (calls, hist)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = new_histogram();
    let mut calls = 0;
    for w in workers {
        let (c, h) = w.await.expect("worker");
        calls += c;
        hist.add(h).expect("same bounds");
    }
    let errors = errors.load(Ordering::Relaxed);
    report(&args.label, calls, errors, started.elapsed(), &hist);
    errors
}

async fn open_loop(args: &Args, rate: u64) -> u64 {
    let callers = connect(args).await;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let total = (rate as f64 * args.duration) as u64;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, u64)>();
    let mut lag = new_histogram();
    let started = Instant::now();
    for i in 0..total {
        let scheduled = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        lag.saturating_record(scheduled.elapsed().as_micros() as u64);
        let caller = callers[(i as usize) % callers.len()].clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let ok = matches!(caller.call().await, Ok(o) if o.ok);
            let _ = tx.send((ok, t.elapsed().as_micros() as u64));
        });
    }
    drop(tx);
    let mut hist = new_histogram();
    let mut errors = 0;
    let mut calls = 0;
    while let Some((ok, us)) = rx.recv().await {
        calls += 1;
        if !ok {
            errors += 1;
        }
        hist.saturating_record(us);
    }
    report(&args.label, calls, errors, started.elapsed(), &hist);
    println!(
        "label={} lag_p99_us={} lag_max_us={}",
        args.label,
        lag.value_at_quantile(0.99),
        lag.max()
    );
    errors
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let errors = runtime.block_on(async {
        if let Some(count) = args.calls {
            sequential(&args, count).await
        } else if let Some(rate) = args.rate {
            open_loop(&args, rate).await
        } else {
            closed_loop(&args).await
        }
    });
    if args.show || args.calls.is_some() {
        println!("{} error(s)", errors);
    }
    std::process::exit(if errors == 0 { 0 } else { 1 });
}
