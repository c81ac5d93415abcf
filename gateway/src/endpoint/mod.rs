//! Per-endpoint state that outlives routing snapshots, and how to reach each endpoint.
//!
//! A snapshot is rebuilt whenever configuration or discovery changes; the state of an endpoint
//! (calls in flight now; breaker and health later) must not reset just because a new snapshot
//! was built. The registry hands out one `Arc<EndpointState>` per (upstream, address) and the
//! snapshot keeps a clone. All state is atomics: the call path never takes a lock here.

mod peer;

pub use peer::{PeerTemplate, PeerTemplateError};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Live state of one endpoint, shared by every snapshot that contains it.
#[derive(Debug, Default)]
pub struct EndpointState {
    in_flight: AtomicU64,
}

impl EndpointState {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts an attempt on this endpoint until the returned guard is dropped.
    pub fn start_attempt(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }
}

/// Decrements the endpoint's in-flight count when the attempt ends, however it ends.
#[derive(Debug)]
pub struct InFlightGuard(Arc<EndpointState>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Hands out the state for an endpoint, reusing it while any snapshot still holds it.
/// Only snapshot builders use this (never the call path), so a mutex is fine.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    states: Mutex<HashMap<(String, SocketAddr), Weak<EndpointState>>>,
}

impl EndpointRegistry {
    pub fn state_for(&self, upstream: &str, addr: SocketAddr) -> Arc<EndpointState> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let key = (upstream.to_string(), addr);
        if let Some(existing) = states.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let fresh = Arc::new(EndpointState::default());
        states.insert(key, Arc::downgrade(&fresh));
        fresh
    }

    /// Forgets endpoints that no snapshot holds any more, so the map does not grow forever.
    /// Called once per snapshot build (not per endpoint: that would be quadratic).
    pub fn prune(&self) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|_, weak| weak.strong_count() > 0);
    }

    pub fn len(&self) -> usize {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_while_held_and_is_shared() {
        let registry = EndpointRegistry::default();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = registry.state_for("u", addr);
        let _guard = a.start_attempt();
        let b = registry.state_for("u", addr);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(b.in_flight(), 1);
        let other = registry.state_for("v", addr);
        assert!(
            !Arc::ptr_eq(&a, &other),
            "same address in another upstream is another endpoint"
        );
    }

    #[test]
    fn prune_forgets_endpoints_no_snapshot_holds() {
        let registry = EndpointRegistry::default();
        let kept = registry.state_for("u", "127.0.0.1:1".parse().unwrap());
        drop(registry.state_for("u", "127.0.0.1:2".parse().unwrap()));
        assert_eq!(registry.len(), 2);
        registry.prune();
        assert_eq!(registry.len(), 1);
        assert!(Arc::ptr_eq(
            &kept,
            &registry.state_for("u", "127.0.0.1:1".parse().unwrap())
        ));
    }

    #[test]
    fn guard_decrements_on_drop() {
        let state = Arc::new(EndpointState::default());
        let g1 = state.start_attempt();
        let g2 = state.start_attempt();
        assert_eq!(state.in_flight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(state.in_flight(), 0);
    }
}
