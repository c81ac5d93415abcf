//! One upstream dial in flight per endpoint.
//!
//! pingora puts a new HTTP/2 connection into its pool only once the handshake is done, so
//! every call that arrives at a cold endpoint meanwhile dials a connection of its own: a burst
//! of 200 calls opens up to 200 connections, which then linger in the pool. The gate lets the
//! first call dial and makes the others wait (bounded by their budget) until that connection
//! is up, after which they open streams on it.
//!
//! `Connected` is a belief, not a fact: when the pooled connection goes away, the next calls
//! see pingora dial again (the first to fail to connect turns the gate cold again).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

const COLD: u8 = 0;
const DIALING: u8 = 1;
const CONNECTED: u8 = 2;

#[derive(Debug, Default)]
pub struct DialGate {
    state: AtomicU8,
    settled: Notify,
}

/// What a call about to connect should do.
#[derive(Debug)]
pub enum DialTurn {
    /// A connection is believed to be pooled: go ahead.
    Go,
    /// This call dials; the ticket settles the gate when it is told the outcome or dropped.
    Dial(DialTicket),
    /// Another call is dialing: wait for it (`DialGate::wait_settled`), then go ahead.
    Wait,
}

impl DialGate {
    pub fn turn(self: &Arc<Self>) -> DialTurn {
        match self
            .state
            .compare_exchange(COLD, DIALING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => DialTurn::Dial(DialTicket {
                gate: self.clone(),
                settled: false,
            }),
            Err(CONNECTED) => DialTurn::Go,
            Err(_) => DialTurn::Wait,
        }
    }

    /// Waits until the dial in flight settles or `bound` passes, whichever is first.
    pub async fn wait_settled(&self, bound: Duration) {
        let settled = self.settled.notified();
        tokio::pin!(settled);
        // Registered before the check, so a dial settling in between still wakes this call.
        settled.as_mut().enable();
        if self.state.load(Ordering::Acquire) != DIALING {
            return;
        }
        let _ = tokio::time::timeout(bound, settled).await;
    }

    /// A dial to this endpoint failed: the next call dials again.
    pub fn connect_failed(&self) {
        self.state.store(COLD, Ordering::Release);
        self.settled.notify_waiters();
    }

    fn settle(&self, to: u8) {
        self.state.store(to, Ordering::Release);
        self.settled.notify_waiters();
    }

    #[cfg(test)]
    fn is(&self, state: u8) -> bool {
        self.state.load(Ordering::Acquire) == state
    }
}

/// The right to dial, held by one call. Dropped without `connected`, the dial counts as
/// failed (the call failed to connect, or was cancelled before it knew).
#[derive(Debug)]
pub struct DialTicket {
    gate: Arc<DialGate>,
    settled: bool,
}

impl DialTicket {
    pub fn connected(mut self) {
        self.settled = true;
        self.gate.settle(CONNECTED);
    }
}

impl Drop for DialTicket {
    fn drop(&mut self) {
        if !self.settled {
            self.gate.settle(COLD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Arc<DialGate> {
        Arc::new(DialGate::default())
    }

    #[test]
    fn the_first_call_dials_and_the_others_wait() {
        let g = gate();
        let ticket = match g.turn() {
            DialTurn::Dial(t) => t,
            other => panic!("{other:?}"),
        };
        assert!(matches!(g.turn(), DialTurn::Wait));
        assert!(matches!(g.turn(), DialTurn::Wait));
        ticket.connected();
        assert!(matches!(g.turn(), DialTurn::Go));
        assert!(g.is(CONNECTED));
    }

    #[test]
    fn a_dropped_ticket_lets_the_next_call_dial() {
        let g = gate();
        drop(g.turn());
        assert!(g.is(COLD));
        assert!(matches!(g.turn(), DialTurn::Dial(_)));
    }

    #[test]
    fn a_failed_connect_turns_a_connected_gate_cold() {
        let g = gate();
        if let DialTurn::Dial(t) = g.turn() {
            t.connected();
        }
        g.connect_failed();
        assert!(matches!(g.turn(), DialTurn::Dial(_)));
    }

    #[tokio::test]
    async fn waiters_wake_when_the_dial_settles() {
        let g = gate();
        let DialTurn::Dial(ticket) = g.turn() else {
            panic!("cold gate");
        };
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.wait_settled(Duration::from_secs(3600)).await })
        };
        // The waiter is parked (or about to check the state); settling wakes it either way.
        tokio::task::yield_now().await;
        ticket.connected();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken long before the hour")
            .unwrap();
    }

    #[tokio::test]
    async fn waiting_is_bounded() {
        let g = gate();
        let _ticket = g.turn();
        g.wait_settled(Duration::from_millis(50)).await;
        assert!(
            g.is(DIALING),
            "still dialing; the waiter gave up on its own"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Turn,
        Connected,
        DropTicket,
    }

    proptest::proptest! {
        /// Whatever calls arrive and however their dials end, at most one call holds the
        /// right to dial at a time, and once a dial succeeded nobody waits or dials.
        #[test]
        fn one_dial_at_a_time(ops in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(Op::Turn),
                proptest::strategy::Just(Op::Connected),
                proptest::strategy::Just(Op::DropTicket),
            ],
            0..64,
        )) {
            let g = gate();
            let mut ticket: Option<DialTicket> = None;
            let mut connected = false;
            for op in ops {
                match op {
                    Op::Turn => match g.turn() {
                        DialTurn::Dial(t) => {
                            proptest::prop_assert!(ticket.is_none(), "a second dial");
                            proptest::prop_assert!(!connected);
                            ticket = Some(t);
                        }
                        DialTurn::Wait => proptest::prop_assert!(ticket.is_some()),
                        DialTurn::Go => proptest::prop_assert!(connected),
                    },
                    Op::Connected => {
                        if let Some(t) = ticket.take() {
                            t.connected();
                            connected = true;
                        }
                    }
                    Op::DropTicket => drop(ticket.take()),
                }
            }
        }
    }

    #[tokio::test]
    async fn no_wait_when_nothing_is_dialing() {
        let g = gate();
        g.wait_settled(Duration::from_secs(3600)).await;
    }
}
