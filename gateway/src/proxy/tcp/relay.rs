//! Copies bytes both ways between two connections until both directions are done.
//!
//! Half-close is honoured: when one side stops sending (FIN), the other side's write half is shut
//! down and the opposite direction keeps flowing. The connection ends on both FINs, on an error
//! (one side reset), after `idle` with no byte either way, or when `drain` resolves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
// tokio's clock, so tests can run the idle timer on paused time.
use tokio::time::Instant;

/// Each direction's buffer starts small, so an idle or chatty connection costs little memory,
/// grows while reads fill it (bulk transfers make fewer, larger system calls), and shrinks back
/// once reads are small again.
const MIN_BUFFER: usize = 2 * 1024;
const MAX_BUFFER: usize = 64 * 1024;

/// Why the relay stopped.
#[derive(Debug)]
pub enum RelayEnd {
    Closed,
    Idle,
    Drained,
    Error(std::io::Error),
}

/// Byte counts and the time of the last byte, shared by both directions.
#[derive(Debug)]
pub struct RelayStats {
    upstream: AtomicU64,
    downstream: AtomicU64,
    /// Milliseconds after `started` at which a byte last moved.
    last_activity_ms: AtomicU64,
    started: Instant,
}

impl Default for RelayStats {
    fn default() -> Self {
        Self {
            upstream: AtomicU64::new(0),
            downstream: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl RelayStats {
    /// (client to server, server to client) bytes.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.upstream.load(Ordering::Relaxed),
            self.downstream.load(Ordering::Relaxed),
        )
    }

    fn moved(&self, counter: &AtomicU64, bytes: usize) {
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

async fn copy_one_way<R, W>(
    mut from: R,
    mut to: W,
    stats: &RelayStats,
    counter: &AtomicU64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; MIN_BUFFER];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            // Pass the FIN on; the other direction goes on until it sees its own.
            to.shutdown().await?;
            return Ok(());
        }
        to.write_all(&buffer[..n]).await?;
        // pingora's downstream stream buffers writes.
        to.flush().await?;
        stats.moved(counter, n);
        let capacity = buffer.len();
        if n == capacity && capacity < MAX_BUFFER {
            buffer = vec![0u8; (capacity * 4).min(MAX_BUFFER)];
        } else if n <= capacity / 16 && capacity > MIN_BUFFER {
            buffer = vec![0u8; MIN_BUFFER];
        }
    }
}

async fn idle_watch(stats: &RelayStats, idle: Duration) {
    loop {
        let idle_for = stats.idle_for();
        if idle_for >= idle {
            return;
        }
        tokio::time::sleep(idle - idle_for).await;
    }
}

pub async fn relay<C, S>(
    client: C,
    server: S,
    idle: Duration,
    drain: impl std::future::Future<Output = ()>,
    stats: &RelayStats,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    let both = async {
        tokio::try_join!(
            copy_one_way(client_read, server_write, stats, &stats.upstream),
            copy_one_way(server_read, client_write, stats, &stats.downstream),
        )
    };
    tokio::select! {
        result = both => match result {
            Ok(_) => RelayEnd::Closed,
            Err(e) => RelayEnd::Error(e),
        },
        _ = idle_watch(stats, idle) => RelayEnd::Idle,
        _ = drain => RelayEnd::Drained,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn half_close_lets_the_other_direction_finish() {
        let (mut client, proxy_client) = duplex(1024);
        let (proxy_server, mut server) = duplex(1024);
        let stats = RelayStats::default();
        let relay = relay(
            proxy_client,
            proxy_server,
            Duration::from_secs(5),
            std::future::pending(),
            &stats,
        );
        let peers = async {
            client.write_all(b"ping").await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"ping", "the server sees the bytes, then EOF");
            // The server still answers after the client's FIN.
            server.write_all(b"pong after fin").await.unwrap();
            server.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"pong after fin");
        };
        let (end, ()) = tokio::join!(relay, peers);
        assert!(matches!(end, RelayEnd::Closed), "{end:?}");
        assert_eq!(stats.totals(), (4, 14));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let (_client, proxy_client) = duplex(64);
        let (proxy_server, _server) = duplex(64);
        let stats = RelayStats::default();
        let end = relay(
            proxy_client,
            proxy_server,
            Duration::from_secs(30),
            std::future::pending(),
            &stats,
        )
        .await;
        assert!(matches!(end, RelayEnd::Idle), "{end:?}");
        assert!(stats.idle_for() >= Duration::from_secs(30));
    }

    #[tokio::test]
    async fn drain_ends_the_relay() {
        let (_client, proxy_client) = duplex(64);
        let (proxy_server, _server) = duplex(64);
        let stats = RelayStats::default();
        let end = relay(
            proxy_client,
            proxy_server,
            Duration::from_secs(30),
            async {},
            &stats,
        )
        .await;
        assert!(matches!(end, RelayEnd::Drained), "{end:?}");
    }
}
