//! Per-endpoint state that outlives routing snapshots, and how to reach each endpoint.
//!
//! A snapshot is rebuilt whenever configuration or discovery changes; the state of an endpoint
//! (calls in flight now; breaker and health later) must not reset just because a new snapshot
//! was built. The registry hands out one `Arc<EndpointState>` per (upstream, address) and the
//! snapshot keeps a clone. All state is atomics: the call path never takes a lock here.

mod dial;
mod peer;
mod recent;

pub use dial::{DialGate, DialTicket, DialTurn};

pub use peer::{PeerTemplate, PeerTemplateError, PeerTls};
pub use recent::{clearly_worse_than_peers, RecentOutcomes};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Instant, SystemTime};

use tracing::{info, warn};

use crate::breaker::{Admission, Breaker, BreakerSettings, Outcome, State, Transition};
use crate::metrics::{AttemptOutcome, EndpointMetrics, Metrics};

/// The last breaker transition, kept for operators (admin API, metrics).
#[derive(Debug, Clone)]
pub struct TransitionRecord {
    pub transition: Transition,
    pub at: SystemTime,
}

/// Live state of one endpoint, shared by every snapshot that contains it.
///
/// The balancer reads `state_mirror` and `healthy` without locking; only endpoints whose
/// breaker is not closed, and the recording of a call's result, touch the breaker's mutex
/// (one per endpoint, never global).
#[derive(Debug)]
pub struct EndpointState {
    pub upstream: String,
    pub addr: SocketAddr,
    in_flight: AtomicU64,
    healthy: AtomicBool,
    state_mirror: AtomicU8,
    breaker: Mutex<Breaker>,
    last_transition: Mutex<Option<TransitionRecord>>,
    transitions: AtomicU64,
    metrics: Option<EndpointMetrics>,
    /// At most one upstream dial in flight to this endpoint.
    pub dial: Arc<DialGate>,
    /// Its last calls' outcomes, for comparing endpoints with their peers.
    pub recent: RecentOutcomes,
}

fn mirror(state: State) -> u8 {
    match state {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
    }
}

impl EndpointState {
    pub fn new(
        upstream: &str,
        addr: SocketAddr,
        settings: BreakerSettings,
        metrics: Option<&Metrics>,
    ) -> Self {
        Self {
            upstream: upstream.to_string(),
            addr,
            in_flight: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            state_mirror: AtomicU8::new(mirror(State::Closed)),
            breaker: Mutex::new(Breaker::new(settings)),
            last_transition: Mutex::new(None),
            transitions: AtomicU64::new(0),
            metrics: metrics.map(|m| m.endpoint(upstream, addr)),
            dial: Arc::default(),
            recent: RecentOutcomes::default(),
        }
    }

    /// Counts how an attempt on this endpoint ended.
    pub fn count_attempt(&self, outcome: AttemptOutcome) {
        if let Some(m) = &self.metrics {
            m.attempt(outcome);
        }
    }

    /// Counts one health probe result.
    pub fn count_probe(&self, ok: bool) {
        if let Some(m) = &self.metrics {
            m.probe(ok);
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts an attempt on this endpoint until the returned guard is dropped.
    pub fn start_attempt(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn breaker_state(&self) -> State {
        match self.state_mirror.load(Ordering::Acquire) {
            0 => State::Closed,
            1 => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Ejected: no ordinary calls go here (breaker not closed, or probes say unhealthy).
    pub fn is_ejected(&self) -> bool {
        !self.healthy() || self.breaker_state() != State::Closed
    }

    pub fn last_transition(&self) -> Option<TransitionRecord> {
        self.last_transition
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Quick, lock-free and clock-free for the common case: may this endpoint take a call now?
    pub fn is_usable(&self) -> bool {
        self.healthy()
            && (self.breaker_state() == State::Closed || self.lock().would_admit(Instant::now()))
    }

    /// Claims a call (or a half-open trial) on this endpoint.
    pub fn admit(&self, now: Instant) -> Admission {
        if !self.healthy() {
            return Admission::Rejected;
        }
        // Closed is the common case and admits every call: no lock. (A call admitted just as
        // the breaker opens is one more call, exactly as if it had come a moment earlier.)
        if self.breaker_state() == State::Closed {
            return Admission::Call;
        }
        let mut breaker = self.lock();
        let (admission, transition) = breaker.admit(now);
        self.publish(&breaker, transition);
        admission
    }

    /// Feeds a call's outcome to the breaker. `may_open` carries the upstream's ejection rules
    /// (its cap, and whether this endpoint fails clearly more than its peers).
    pub fn record(&self, outcome: Outcome, trial: bool, may_open: bool) {
        self.recent.record(outcome == Outcome::Failure);
        let mut breaker = self.lock();
        let transition = breaker.record(outcome, trial, Instant::now(), may_open);
        self.publish(&breaker, transition);
    }

    /// A trial call ended without a verdict: give its half-open slot back.
    /// A reload changed the breaker settings: keep the state, use the new thresholds.
    pub fn apply_breaker_settings(&self, settings: &BreakerSettings) {
        let mut breaker = self.lock();
        if breaker.settings() != settings {
            breaker.set_settings(settings.clone());
        }
    }

    pub fn release_trial(&self) {
        self.lock().release_trial();
    }

    /// Probes decided the endpoint is unhealthy (`healthy = false`) or healthy again.
    pub fn set_probe_health(&self, healthy: bool, may_open: bool) {
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if was == healthy {
            return;
        }
        let mut breaker = self.lock();
        if healthy {
            breaker.probe_healthy(Instant::now());
            info!(upstream = %self.upstream, endpoint = %self.addr, "health probes pass again");
        } else {
            let transition = breaker.probe_unhealthy(Instant::now(), may_open);
            if transition.is_none() && !may_open {
                warn!(upstream = %self.upstream, endpoint = %self.addr,
                      "health probes fail but the ejection cap keeps the endpoint in rotation");
                // Capped: stays in rotation as far as health is concerned too.
                self.healthy.store(true, Ordering::Release);
            }
            self.publish(&breaker, transition);
        }
    }

    fn publish(&self, breaker: &Breaker, transition: Option<Transition>) {
        self.state_mirror
            .store(mirror(breaker.state()), Ordering::Release);
        let Some(t) = transition else { return };
        self.transitions.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.transition(&t);
        }
        *self
            .last_transition
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(TransitionRecord {
            transition: t,
            at: SystemTime::now(),
        });
        let open_ms = t.open_for.map(|d| d.as_millis() as u64);
        if t.to == State::Open {
            warn!(upstream = %self.upstream, endpoint = %self.addr, from = %t.from, to = %t.to,
                  reason = t.reason.as_str(), open_ms, "breaker transition");
        } else {
            info!(upstream = %self.upstream, endpoint = %self.addr, from = %t.from, to = %t.to,
                  reason = t.reason.as_str(), "breaker transition");
        }
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
#[derive(Default)]
pub struct EndpointRegistry {
    states: Mutex<HashMap<(String, SocketAddr), Weak<EndpointState>>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for EndpointRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointRegistry")
            .field("endpoints", &self.len())
            .finish()
    }
}

impl EndpointRegistry {
    pub fn with_metrics(metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            states: Mutex::default(),
            metrics,
        }
    }

    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    pub fn state_for(
        &self,
        upstream: &str,
        addr: SocketAddr,
        breaker: &BreakerSettings,
    ) -> Arc<EndpointState> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let key = (upstream.to_string(), addr);
        if let Some(existing) = states.get(&key).and_then(Weak::upgrade) {
            existing.apply_breaker_settings(breaker);
            return existing;
        }
        let fresh = Arc::new(EndpointState::new(
            upstream,
            addr,
            breaker.clone(),
            self.metrics.as_deref(),
        ));
        states.insert(key, Arc::downgrade(&fresh));
        fresh
    }

    /// Forgets endpoints that no snapshot holds any more, so the map does not grow forever.
    /// Called once per snapshot build (not per endpoint: that would be quadratic).
    /// Also removes the metric series of endpoints gone long enough (see `metrics::departed`).
    pub fn prune(&self) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|_, weak| weak.strong_count() > 0);
        if let Some(m) = &self.metrics {
            m.sweep_departed_endpoints(std::time::Instant::now());
        }
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
        let settings = BreakerSettings::default();
        let a = registry.state_for("u", addr, &settings);
        let _guard = a.start_attempt();
        let b = registry.state_for("u", addr, &settings);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(b.in_flight(), 1);
        let other = registry.state_for("v", addr, &settings);
        assert!(
            !Arc::ptr_eq(&a, &other),
            "same address in another upstream is another endpoint"
        );
    }

    #[test]
    fn prune_forgets_endpoints_no_snapshot_holds() {
        let registry = EndpointRegistry::default();
        let s = BreakerSettings::default();
        let kept = registry.state_for("u", "127.0.0.1:1".parse().unwrap(), &s);
        drop(registry.state_for("u", "127.0.0.1:2".parse().unwrap(), &s));
        assert_eq!(registry.len(), 2);
        registry.prune();
        assert_eq!(registry.len(), 1);
        assert!(Arc::ptr_eq(
            &kept,
            &registry.state_for("u", "127.0.0.1:1".parse().unwrap(), &s)
        ));
    }

    #[test]
    fn guard_decrements_on_drop() {
        let state = Arc::new(EndpointState::new(
            "u",
            "127.0.0.1:1".parse().unwrap(),
            BreakerSettings::default(),
            None,
        ));
        let g1 = state.start_attempt();
        let g2 = state.start_attempt();
        assert_eq!(state.in_flight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(state.in_flight(), 0);
    }
}
