//! `strait-tcpbench`: the L4 benchmark's echo server and clients.
//!
//! - `echo --listen A`: echoes every byte back (the backend).
//! - `bulk --target A`: `--connections` streams each writing 64 KiB chunks as fast as the echo
//!   comes back, for `--duration`; reports echoed MiB/s (every byte crosses the proxy twice).
//! - `rate --target A`: `--concurrency` loops of connect, 64 B round trip, close; reports
//!   connections/s and the p99 of one such exchange.
//! - `hold --target A --connections N`: opens N connections, makes one round trip on each (so
//!   each is relayed to the backend), prints `open=N` and keeps them until killed. The script
//!   reads the proxy's memory meanwhile.
//! - `h2idle --target A --connections N [--tls-ca CA]`: N idle HTTP/2 connections, h2c or TLS
//!   with ALPN h2 (for benches/idle_h2.sh).
//! - `pki --dir D`: writes a test CA (`ca.crt`) and a server certificate for localhost and
//!   127.0.0.1 (`server.crt`, `server.key`) for the TLS listeners of benches/idle_h2.sh.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    Bulk {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long, default_value = "-")]
        label: String,
    },
    Rate {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long, default_value = "-")]
        label: String,
    },
    Hold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 2000)]
        connections: usize,
    },
    /// Opens N idle HTTP/2 connections (preface, SETTINGS, SETTINGS ACK), prints `open=N`,
    /// holds them until killed.
    H2idle {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 10000)]
        connections: usize,
        /// Speak TLS (ALPN h2), trusting this CA for the server name `localhost`.
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
    },
    /// Writes a CA and a server certificate (see `strait_tests::tls::generate`).
    Pki {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
}

async fn h2idle(target: SocketAddr, connections: usize, tls_ca: Option<std::path::PathBuf>) {
    let ca_pem = tls_ca.map(|path| std::fs::read_to_string(path).expect("reading --tls-ca"));
    let mut held: Vec<Box<dyn Idle>> = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut s: Box<dyn Idle> = match &ca_pem {
            None => Box::new(TcpStream::connect(target).await.expect("connect")),
            Some(ca) => Box::new(
                strait_tests::attack::tls_connect(target, ca)
                    .await
                    .expect("TLS connect"),
            ),
        };
        h2_settings_exchange(&mut s).await;
        held.push(s);
    }
    println!("open={}", held.len());
    std::future::pending::<()>().await;
}

trait Idle: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Idle for T {}

/// Preface and SETTINGS out; the server's first frame (its SETTINGS) in; then the ACK.
async fn h2_settings_exchange(s: &mut Box<dyn Idle>) {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let ack = [0u8, 0, 0, 4, 1, 0, 0, 0, 0];
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&settings).await.expect("settings");
    let mut header = [0u8; 9];
    s.read_exact(&mut header).await.expect("server settings");
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.expect("settings payload");
    s.write_all(&ack).await.expect("ack");
    s.flush().await.expect("flush");
}

async fn echo(listen: SocketAddr) {
    let listener = TcpListener::bind(listen).await.expect("bind");
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = socket.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

async fn bulk(target: SocketAddr, connections: usize, duration: Duration) -> f64 {
    let echoed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (echoed, stop) = (echoed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(target).await.expect("connect");
            let _ = stream.set_nodelay(true);
            let (mut r, mut w) = stream.into_split();
            let writer = tokio::spawn(async move {
                let chunk = vec![7u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if w.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = w.shutdown().await;
            });
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        echoed.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
            let _ = writer.await;
        }));
    }
    // Measure a window that starts once every stream is flowing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_bytes = echoed.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let bytes = echoed.load(Ordering::Relaxed) - start_bytes;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    bytes as f64 / elapsed / (1024.0 * 1024.0)
}

async fn rate(target: SocketAddr, concurrency: usize, duration: Duration) -> (f64, u64, u64, u64) {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("histogram");
            let mut errors = 0u64;
            let message = [1u8; 64];
            while Instant::now() < deadline {
                let started = Instant::now();
                let result = async {
                    let mut s = TcpStream::connect(target).await?;
                    s.set_nodelay(true)?;
                    s.write_all(&message).await?;
                    let mut back = [0u8; 64];
                    s.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(())
                }
                .await;
                match result {
                    Ok(()) => {
                        let _ = histogram.record(started.elapsed().as_micros() as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (histogram, errors)
        }));
    }
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.expect("task");
        all.add(h).expect("same bounds");
        errors += e;
    }
    (
        all.len() as f64 / duration.as_secs_f64(),
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        errors,
    )
}

async fn hold(target: SocketAddr, connections: usize) {
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut s = TcpStream::connect(target).await.expect("connect");
        s.write_all(b"x").await.expect("write");
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.expect("relayed round trip");
        held.push(s);
    }
    println!("open={}", held.len());
    std::future::pending::<()>().await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    match Cli::parse().mode {
        Mode::Echo { listen } => echo(listen).await,
        Mode::Bulk {
            target,
            connections,
            duration,
            label,
        } => {
            let mib = bulk(target, connections, Duration::from_secs_f64(duration)).await;
            println!("label={label} connections={connections} mib_per_s={mib:.1}");
        }
        Mode::Rate {
            target,
            concurrency,
            duration,
            label,
        } => {
            let (per_s, p50, p99, errors) =
                rate(target, concurrency, Duration::from_secs_f64(duration)).await;
            println!(
                "label={label} concurrency={concurrency} conns_per_s={per_s:.0} p50_us={p50} p99_us={p99} errors={errors}"
            );
        }
        Mode::Hold {
            target,
            connections,
        } => hold(target, connections).await,
        Mode::H2idle {
            target,
            connections,
            tls_ca,
        } => h2idle(target, connections, tls_ca).await,
        Mode::Pki { dir } => {
            let pki = strait_tests::tls::generate(&dir);
            println!("{}", pki.ca_cert.display());
        }
    }
}
