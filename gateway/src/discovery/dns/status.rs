//! What operators may know about each name: when it last resolved, the latest error, how many
//! resolutions ended how. Written by the DNS task, read by `/upstreams`, the status page and
//! `/metrics`; never on the call path.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How one resolution ended, as counted in `strait_dns_resolutions_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// NXDOMAIN, or an answer without A and AAAA records.
    NoRecords,
    /// Timeout, refused, unreachable server, unreadable resolver configuration.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::NoRecords, Outcome::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NoRecords => "no_records",
            Outcome::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct NameStatus {
    /// Addresses in the set routing uses (the last good one).
    pub addresses: usize,
    pub last_ok: Option<SystemTime>,
    /// The latest attempt's error; `None` once one succeeds.
    pub last_error: Option<String>,
    /// The smallest TTL of the last good answer.
    pub ttl: Option<Duration>,
    pub counts: [u64; 3],
}

impl NameStatus {
    /// "pending" (not asked yet), "resolved", "stale" (serving the last good set while
    /// resolution fails) or "unresolved" (never resolved).
    pub fn state(&self) -> &'static str {
        match (self.last_ok, &self.last_error) {
            (None, None) => "pending",
            (Some(_), None) => "resolved",
            (Some(_), Some(_)) => "stale",
            (None, Some(_)) => "unresolved",
        }
    }

    /// Like etcd's: zero while the latest attempt succeeded, else the time since the last good
    /// answer; `None` when there never was one.
    pub fn staleness(&self, now: SystemTime) -> Option<Duration> {
        let last_ok = self.last_ok?;
        if self.last_error.is_none() {
            return Some(Duration::ZERO);
        }
        Some(now.duration_since(last_ok).unwrap_or_default())
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.counts[outcome as usize]
    }
}

#[derive(Debug, Default)]
pub struct DnsStatus {
    names: Mutex<BTreeMap<String, NameStatus>>,
}

impl DnsStatus {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, NameStatus>) -> R) -> R {
        f(&mut self.names.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn resolved(&self, name: &str, addresses: usize, ttl: Option<Duration>) {
        self.with(|names| {
            let status = names.entry(name.to_string()).or_default();
            status.addresses = addresses;
            status.last_ok = Some(SystemTime::now());
            status.last_error = None;
            status.ttl = ttl;
            status.counts[Outcome::Ok as usize] += 1;
        })
    }

    /// A failed or empty resolution; the address count (last good set) stays.
    pub fn failed(&self, name: &str, outcome: Outcome, error: String) {
        self.with(|names| {
            let status = names.entry(name.to_string()).or_default();
            status.last_error = Some(error);
            status.counts[outcome as usize] += 1;
        })
    }

    pub fn get(&self, name: &str) -> Option<NameStatus> {
        self.with(|names| names.get(name).cloned())
    }

    pub fn all(&self) -> Vec<(String, NameStatus)> {
        self.with(|names| names.iter().map(|(n, s)| (n.clone(), s.clone())).collect())
    }

    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.with(|names| names.retain(|name, _| keep(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_attempts() {
        let status = DnsStatus::default();
        status.failed("a", Outcome::NoRecords, "NXDOMAIN".into());
        let a = status.get("a").unwrap();
        assert_eq!(a.state(), "unresolved");
        assert_eq!(a.staleness(SystemTime::now()), None);
        status.resolved("a", 2, Some(Duration::from_secs(30)));
        let a = status.get("a").unwrap();
        assert_eq!(a.state(), "resolved");
        assert_eq!(a.staleness(SystemTime::now()), Some(Duration::ZERO));
        status.failed("a", Outcome::Error, "timed out".into());
        let a = status.get("a").unwrap();
        assert_eq!(a.state(), "stale");
        assert_eq!(a.addresses, 2, "the last good set is still served");
        let later = SystemTime::now() + Duration::from_secs(10);
        assert!(a.staleness(later).unwrap() >= Duration::from_secs(9));
        assert_eq!(
            (
                a.count(Outcome::Ok),
                a.count(Outcome::NoRecords),
                a.count(Outcome::Error)
            ),
            (1, 1, 1)
        );
    }
}
