//! Bytes of responses queued towards xDS clients: bounded per connection and for the whole
//! server, whatever the number of streams and the size of the view. A response takes its size
//! from both budgets before it is queued and gives it back when the transport takes it from the
//! queue (HTTP/2's own send buffer and window bound what is past that point). A client that
//! does not read holds at most its connection's budget; clients together hold at most the
//! server's.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Queued bytes one connection's streams may hold together.
pub const PER_CONNECTION: usize = 8 << 20;
/// Queued bytes all connections may hold together.
pub const TOTAL: usize = 128 << 20;

/// The size a queued response holds, in both budgets; dropped when the response leaves the
/// queue.
#[derive(Debug)]
pub struct QueuedBytes {
    _connection: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

/// The budgets a stream's responses are charged to.
#[derive(Debug, Clone)]
pub struct Budgets {
    pub connection: Arc<Semaphore>,
    pub total: Arc<Semaphore>,
}

impl Budgets {
    /// A new connection's budget, charged also to the server's `total`.
    pub fn for_connection(total: &Arc<Semaphore>) -> Self {
        Budgets {
            connection: Arc::new(Semaphore::new(PER_CONNECTION)),
            total: total.clone(),
        }
    }

    /// Takes `bytes` from both budgets, waiting at most `wait` for room; `None` when there was
    /// none in time (the client, or clients together, are not reading). A response larger than
    /// a budget takes all of it: it is sent alone.
    pub async fn take(&self, bytes: usize, wait: Duration) -> Option<QueuedBytes> {
        let charge = |budget: usize| u32::try_from(bytes.clamp(1, budget)).unwrap_or(u32::MAX);
        let taken = tokio::time::timeout(wait, async {
            let connection = self
                .connection
                .clone()
                .acquire_many_owned(charge(PER_CONNECTION))
                .await
                .ok()?;
            let total = self
                .total
                .clone()
                .acquire_many_owned(charge(TOTAL))
                .await
                .ok()?;
            Some(QueuedBytes {
                _connection: connection,
                _total: total,
            })
        })
        .await;
        taken.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn queued_bytes_are_bounded_and_given_back() {
        let total = Arc::new(Semaphore::new(TOTAL));
        let a = Budgets::for_connection(&total);
        let wait = Duration::from_secs(1);
        let first = a.take(PER_CONNECTION / 2, wait).await.expect("room");
        let second = a.take(PER_CONNECTION / 2, wait).await.expect("room");
        assert!(
            a.take(1, wait).await.is_none(),
            "the connection's budget is spent"
        );
        // Another connection is not held up by this one's.
        let b = Budgets::for_connection(&total);
        assert!(b.take(1024, wait).await.is_some());
        drop(first);
        assert!(a.take(1024, wait).await.is_some(), "given back when taken");
        drop(second);
        // A response larger than the budget goes alone.
        let huge = a.take(PER_CONNECTION * 4, wait).await.expect("alone");
        assert!(a.take(1, wait).await.is_none());
        drop(huge);
        assert_eq!(total.available_permits(), TOTAL);
    }

    #[tokio::test(start_paused = true)]
    async fn the_servers_budget_bounds_all_connections() {
        let total = Arc::new(Semaphore::new(TOTAL));
        let mut held = Vec::new();
        for _ in 0..TOTAL / PER_CONNECTION {
            let c = Budgets::for_connection(&total);
            held.push(
                c.take(PER_CONNECTION, Duration::from_secs(1))
                    .await
                    .expect("room"),
            );
        }
        let late = Budgets::for_connection(&total);
        assert!(late.take(1, Duration::from_secs(1)).await.is_none());
        held.pop();
        assert!(late.take(1, Duration::from_secs(1)).await.is_some());
    }
}
