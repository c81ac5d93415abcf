use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Calls currently being served by this process, across all listeners. Graceful shutdown waits
/// for this to reach zero (or for the grace period to end).
#[derive(Debug, Default, Clone)]
pub struct InFlightCalls(Arc<AtomicUsize>);

impl InFlightCalls {
    pub fn enter(&self) -> CallGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.0.clone())
    }

    pub fn current(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Held by a call's context; dropping it ends the call's count.
#[derive(Debug)]
pub struct CallGuard(Arc<AtomicUsize>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
