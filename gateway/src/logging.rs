//! The process's log: tracing's formatter writing through a bounded queue to a thread of its
//! own, so a slow or blocked stderr (a full pipe, a stalled journald) never stalls the
//! workers. When the queue is full, lines are dropped and counted
//! (`strait_log_lines_dropped_total`) instead: callers control how much the gateway has to
//! say, and must not control how fast it serves.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines waiting for stderr at most; beyond it new lines are dropped. At ~200 bytes a line,
/// about 3 MiB.
pub const QUEUE_LINES: usize = 16_384;

/// Keeps the writer thread; dropping it flushes what is queued (at the end of `main`).
pub struct Logging {
    _guard: WorkerGuard,
    dropped: ErrorCounter,
}

impl Logging {
    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> LogDrops {
        LogDrops(Some(self.dropped.clone()))
    }
}

/// A handle on the dropped-lines count, for the metrics (`default()`: nothing is counted, as
/// in tests that install no logger).
#[derive(Clone, Default)]
pub struct LogDrops(Option<ErrorCounter>);

impl LogDrops {
    pub fn count(&self) -> u64 {
        self.0.as_ref().map_or(0, |c| c.dropped_lines() as u64)
    }
}

impl std::fmt::Debug for LogDrops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogDrops({})", self.count())
    }
}

/// Installs the global subscriber: `STRAIT_LOG` (default `info`) filters, lines go to stderr
/// through the queue.
pub fn init() -> Logging {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("strait-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("STRAIT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Logging {
        _guard: guard,
        dropped,
    }
}

/// A few log lines a second at most (`LINES_PER_SECOND`) for a kind of event callers can cause
/// at will (refused calls, failed handshakes, refused certificates); the lines not written are
/// counted into the next second's first line. Metrics count every event; the access log has
/// every call.
#[derive(Debug, Default)]
pub struct LogThrottle {
    /// The Unix second of the latest line written.
    second: AtomicU64,
    /// Lines written in that second.
    lines: AtomicU64,
    suppressed: AtomicU64,
}

/// Enough to see what kinds of trouble there are, too few to flood a log.
pub const LINES_PER_SECOND: u64 = 5;

impl LogThrottle {
    /// `Some(lines not written before this one)` when this one may be written.
    pub fn take_turn(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.take_turn_at(now)
    }

    fn take_turn_at(&self, now: u64) -> Option<u64> {
        let last = self.second.load(Ordering::Relaxed);
        if last != now
            && self
                .second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.lines.store(1, Ordering::Relaxed);
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) < LINES_PER_SECOND {
            return Some(0);
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_a_second_and_the_rest_counted_into_the_next() {
        let throttle = LogThrottle::default();
        for _ in 0..LINES_PER_SECOND {
            assert_eq!(throttle.take_turn_at(100), Some(0));
        }
        assert_eq!(throttle.take_turn_at(100), None);
        assert_eq!(throttle.take_turn_at(100), None);
        assert_eq!(throttle.take_turn_at(101), Some(2));
        for _ in 1..LINES_PER_SECOND {
            assert!(throttle.take_turn_at(101).is_some());
        }
        assert_eq!(throttle.take_turn_at(101), None);
        assert_eq!(throttle.take_turn_at(250), Some(1));
    }
}
