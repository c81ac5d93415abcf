//! The set of registered instances as last read from etcd, and how events change it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::warn;

use super::status::{DiscoveryStatus, RejectReason};
use crate::discovery::instance::{parse_instance, Instance, InstanceError};

/// One instance and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub instance: Instance,
    /// etcd revision of the value in use.
    pub mod_revision: i64,
}

/// An immutable picture of every valid instance under the prefix.
#[derive(Debug, Clone, Default)]
pub struct EtcdView {
    pub prefix: String,
    entries: BTreeMap<String, Arc<Registered>>,
}

impl EtcdView {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The instances of one service, in key order: `{prefix}{service}/...`.
    pub fn service(&self, service: &str) -> impl Iterator<Item = (&str, &Registered)> {
        let start = format!("{}{service}/", self.prefix);
        self.entries
            .range(start.clone()..)
            .take_while(move |(k, _)| k.starts_with(&start))
            .map(|(k, v)| (k.as_str(), v.as_ref()))
    }
}

/// Counts of what a resync changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

/// Keeps the live view and applies list results and watch events to it.
pub struct ViewBuilder {
    prefix: String,
    entries: BTreeMap<String, Arc<Registered>>,
    status: Arc<DiscoveryStatus>,
}

impl ViewBuilder {
    pub fn new(prefix: String, status: Arc<DiscoveryStatus>) -> Self {
        Self {
            prefix,
            entries: BTreeMap::new(),
            status,
        }
    }

    pub fn view(&self) -> Arc<EtcdView> {
        Arc::new(EtcdView {
            prefix: self.prefix.clone(),
            entries: self.entries.clone(),
        })
    }

    /// Replaces the view with a full listing. Keys absent from the listing are gone (deleted or
    /// expired while we were not watching); a key whose new value is malformed keeps its last
    /// valid value, as a rejected update would.
    pub fn resync(
        &mut self,
        listing: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
        revision: i64,
    ) -> Diff {
        let mut fresh = BTreeMap::new();
        for (key, value) in listing {
            let Some(key) = self.instance_key(&key) else {
                continue;
            };
            match parse_instance(&value) {
                Ok(instance) => {
                    fresh.insert(
                        key,
                        Arc::new(Registered {
                            instance,
                            mod_revision: revision,
                        }),
                    );
                }
                Err(e) => {
                    self.reject(&key, &e);
                    if let Some(previous) = self.entries.get(&key) {
                        fresh.insert(key, previous.clone());
                    }
                }
            }
        }
        let mut diff = Diff::default();
        for (key, entry) in &fresh {
            match self.entries.get(key) {
                None => diff.added += 1,
                Some(old) if old.instance != entry.instance => diff.changed += 1,
                Some(_) => {}
            }
        }
        diff.removed = self
            .entries
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .count();
        // Keep the revision of unchanged entries: it says when the instance last changed.
        for (key, entry) in fresh.iter_mut() {
            if let Some(old) = self.entries.get(key) {
                if old.instance == entry.instance {
                    *entry = old.clone();
                }
            }
        }
        self.entries = fresh;
        diff
    }

    /// Applies a put. Returns whether the view changed.
    pub fn put(&mut self, key: &[u8], value: &[u8], mod_revision: i64) -> bool {
        let Some(key) = self.instance_key(key) else {
            return false;
        };
        match parse_instance(value) {
            Ok(instance) => {
                self.status.count_applied();
                let unchanged = self
                    .entries
                    .get(&key)
                    .is_some_and(|e| e.instance == instance);
                self.entries.insert(
                    key,
                    Arc::new(Registered {
                        instance,
                        mod_revision,
                    }),
                );
                !unchanged
            }
            Err(e) => {
                self.reject(&key, &e);
                false
            }
        }
    }

    /// Applies a delete (or lease expiry). Returns whether the view changed.
    pub fn delete(&mut self, key: &[u8], _mod_revision: i64) -> bool {
        let Ok(key) = std::str::from_utf8(key) else {
            return false;
        };
        let removed = self.entries.remove(key).is_some();
        if removed {
            self.status.count_applied();
        }
        removed
    }

    /// `{prefix}{service}/{id}` with non-empty service and id, as UTF-8; anything else is skipped.
    fn instance_key(&self, key: &[u8]) -> Option<String> {
        let text = match std::str::from_utf8(key) {
            Ok(t) => t,
            Err(_) => {
                self.count_bad_key(&String::from_utf8_lossy(key), "key is not UTF-8");
                return None;
            }
        };
        let rest = text.strip_prefix(&self.prefix)?;
        match rest.split_once('/') {
            Some((service, id)) if !service.is_empty() && !id.is_empty() && !id.contains('/') => {
                Some(text.to_string())
            }
            _ => {
                self.count_bad_key(text, "expected {prefix}{service}/{instance_id}");
                None
            }
        }
    }

    fn count_bad_key(&self, key: &str, why: &str) {
        self.status.count_rejected(RejectReason::BadKey);
        warn!(key, reason = "bad_key", detail = why, "skipped etcd entry");
    }

    fn reject(&self, key: &str, error: &InstanceError) {
        let reason = match error {
            InstanceError::BadJson(_) => RejectReason::BadJson,
            InstanceError::MissingAddr => RejectReason::MissingAddr,
            InstanceError::BadAddr(_) => RejectReason::BadAddr,
            InstanceError::WeightOutOfRange(_) => RejectReason::WeightOutOfRange,
            InstanceError::BadVersion(_) => RejectReason::BadVersion,
        };
        self.status.count_rejected(reason);
        let kept = self.entries.contains_key(key);
        warn!(key, reason = reason.as_str(), detail = %error, kept_previous = kept, "skipped etcd entry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> ViewBuilder {
        ViewBuilder::new("/services/".into(), Arc::new(DiscoveryStatus::default()))
    }

    fn value(addr: &str, weight: u32) -> Vec<u8> {
        format!(r#"{{"addr": "{addr}", "weight": {weight}}}"#).into_bytes()
    }

    fn addrs(view: &EtcdView, service: &str) -> Vec<String> {
        view.service(service)
            .map(|(_, r)| r.instance.addr.to_string())
            .collect()
    }

    #[test]
    fn put_delete_and_service_ranges() {
        let mut b = builder();
        assert!(b.put(b"/services/echo/a", &value("127.0.0.1:1", 10), 5));
        assert!(b.put(b"/services/echo/b", &value("127.0.0.1:2", 10), 6));
        assert!(b.put(b"/services/echoes/c", &value("127.0.0.1:3", 10), 7));
        assert!(
            !b.put(b"/services/echo/a", &value("127.0.0.1:1", 10), 8),
            "same value is no change"
        );
        let view = b.view();
        assert_eq!(addrs(&view, "echo"), vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(addrs(&view, "echoes"), vec!["127.0.0.1:3"]);
        assert!(b.delete(b"/services/echo/a", 9));
        assert!(!b.delete(b"/services/echo/a", 10));
        assert_eq!(addrs(&b.view(), "echo"), vec!["127.0.0.1:2"]);
    }

    #[test]
    fn malformed_values_and_keys_are_skipped_without_disturbing_others() {
        let status = Arc::new(DiscoveryStatus::default());
        let mut b = ViewBuilder::new("/services/".into(), status.clone());
        b.put(b"/services/echo/a", &value("127.0.0.1:1", 10), 1);
        assert!(
            !b.put(b"/services/echo/a", b"{broken", 2),
            "bad update keeps the last good value"
        );
        assert!(!b.put(b"/services/echo/new", br#"{"weight": 3}"#, 3));
        assert!(!b.put(b"/services/echo", &value("127.0.0.1:9", 1), 4));
        assert!(!b.put(b"/services/echo/x/y", &value("127.0.0.1:9", 1), 5));
        assert_eq!(addrs(&b.view(), "echo"), vec!["127.0.0.1:1"]);
        assert_eq!(status.rejected(RejectReason::BadJson), 1);
        assert_eq!(status.rejected(RejectReason::MissingAddr), 1);
        assert_eq!(status.rejected(RejectReason::BadKey), 2);
    }

    #[test]
    fn resync_applies_the_difference_and_keeps_last_good_values() {
        let mut b = builder();
        b.put(b"/services/echo/a", &value("127.0.0.1:1", 10), 1);
        b.put(b"/services/echo/b", &value("127.0.0.1:2", 10), 2);
        b.put(b"/services/echo/c", &value("127.0.0.1:3", 10), 3);
        let listing = vec![
            (b"/services/echo/a".to_vec(), value("127.0.0.1:1", 10)), // unchanged
            (b"/services/echo/b".to_vec(), b"garbage".to_vec()),      // now malformed: kept
            (b"/services/echo/d".to_vec(), value("127.0.0.1:4", 50)), // new
        ]; // c was deleted during the outage
        let diff = b.resync(listing, 100);
        assert_eq!(
            diff,
            Diff {
                added: 1,
                removed: 1,
                changed: 0
            }
        );
        let view = b.view();
        assert_eq!(
            addrs(&view, "echo"),
            vec!["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:4"]
        );
        let a = view.service("echo").next().unwrap().1;
        assert_eq!(a.mod_revision, 1, "unchanged entries keep their revision");
    }

    #[test]
    fn empty_listing_empties_the_view() {
        let mut b = builder();
        b.put(b"/services/echo/a", &value("127.0.0.1:1", 10), 1);
        let diff = b.resync(Vec::new(), 5);
        assert_eq!(diff.removed, 1);
        assert!(b.view().is_empty());
    }
}
