//! `max_in_flight`: calls at most at once on an upstream; the next one is shed at once with
//! UNAVAILABLE instead of queueing behind a backend that is already saturated.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// An upstream's count of calls in flight. Outlives snapshots (see `PolicyState`), so a
/// discovery change or a reload never forgets the calls still running.
#[derive(Debug, Default)]
pub struct InFlightCount {
    current: AtomicU32,
}

impl InFlightCount {
    pub fn current(&self) -> u32 {
        self.current.load(Ordering::Relaxed)
    }
}

/// Held by a call from admission to its end; dropping it frees the slot.
#[derive(Debug)]
pub struct InFlightPermit {
    count: Arc<InFlightCount>,
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        self.count.current.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a slot when fewer than `max` are taken (always without a `max`).
pub fn try_enter(count: &Arc<InFlightCount>, max: Option<u32>) -> Option<InFlightPermit> {
    let max = max.unwrap_or(u32::MAX);
    count
        .current
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then(|| n + 1)
        })
        .ok()?;
    Some(InFlightPermit {
        count: count.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_after_max_is_refused_until_one_is_freed() {
        let count = Arc::new(InFlightCount::default());
        let permits: Vec<_> = (0..3)
            .map(|_| try_enter(&count, Some(3)).unwrap())
            .collect();
        assert!(try_enter(&count, Some(3)).is_none());
        assert_eq!(count.current(), 3);
        drop(permits);
        assert_eq!(count.current(), 0);
        assert!(try_enter(&count, Some(3)).is_some());
    }

    #[test]
    fn without_a_max_every_call_is_counted_and_admitted() {
        let count = Arc::new(InFlightCount::default());
        let permits: Vec<_> = (0..100).map(|_| try_enter(&count, None).unwrap()).collect();
        assert_eq!(count.current(), 100);
        drop(permits);
        assert_eq!(count.current(), 0);
    }

    #[test]
    fn concurrent_callers_never_exceed_the_max() {
        let count = Arc::new(InFlightCount::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let count = count.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(permit) = try_enter(&count, Some(2)) {
                            assert!(count.current() <= 2);
                            drop(permit);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(count.current(), 0);
    }
}
