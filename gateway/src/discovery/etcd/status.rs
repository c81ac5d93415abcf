//! What the rest of the gateway (logs, later metrics and /readyz) may know about discovery.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why an etcd entry was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    BadKey,
    BadJson,
    MissingAddr,
    BadAddr,
    WeightOutOfRange,
    BadVersion,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] = [
        RejectReason::BadKey,
        RejectReason::BadJson,
        RejectReason::MissingAddr,
        RejectReason::BadAddr,
        RejectReason::WeightOutOfRange,
        RejectReason::BadVersion,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadKey => "bad_key",
            RejectReason::BadJson => "bad_json",
            RejectReason::MissingAddr => "missing_addr",
            RejectReason::BadAddr => "bad_addr",
            RejectReason::WeightOutOfRange => "weight_out_of_range",
            RejectReason::BadVersion => "bad_version",
        }
    }
}

#[derive(Debug, Default)]
pub struct DiscoveryStatus {
    synced_once: AtomicBool,
    connected: AtomicBool,
    last_sync_unix_ms: AtomicU64,
    events_applied: AtomicU64,
    rejected: [AtomicU64; 6],
    last_error: Mutex<Option<String>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl DiscoveryStatus {
    pub fn set_synced(&self) {
        self.synced_once.store(true, Ordering::Release);
        self.connected.store(true, Ordering::Release);
        self.last_sync_unix_ms.store(now_ms(), Ordering::Release);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn set_disconnected(&self, error: Option<String>) {
        self.connected.store(false, Ordering::Release);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    pub fn synced_once(&self) -> bool {
        self.synced_once.load(Ordering::Acquire)
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How out of date the view may be: zero while the watch is live, else the time since the
    /// last successful sync (since start when there never was one).
    pub fn staleness(&self) -> Duration {
        if self.connected() {
            return Duration::ZERO;
        }
        let last = self.last_sync_unix_ms.load(Ordering::Acquire);
        if last == 0 {
            return Duration::MAX;
        }
        Duration::from_millis(now_ms().saturating_sub(last))
    }

    pub fn count_applied(&self) {
        self.events_applied.fetch_add(1, Ordering::Relaxed);
    }

    pub fn applied(&self) -> u64 {
        self.events_applied.load(Ordering::Relaxed)
    }

    pub fn count_rejected(&self, reason: RejectReason) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
    }
}
