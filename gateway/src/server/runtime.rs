//! The runtime the data listeners run on.
//!
//! With one thread it is tokio's current-thread scheduler, driven by a thread of its own. Its
//! run queue is first in, first out: when a read from a backend wakes the tasks of many calls,
//! each of them queues its response frames before the HTTP/2 connection task runs and writes
//! them all in one go. tokio's multi-thread scheduler runs the task woken last first (its LIFO
//! slot), so the connection task ran after every single call's step and wrote each call's frames
//! on their own: more system calls per call (docs/benchmarks.md has the figures).

use std::future::Future;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct ListenerRuntime {
    handle: Handle,
    /// Held for its drop: the multi-thread runtime, which shuts down when dropped.
    _runtime: Option<Runtime>,
    /// Held for its drop: the current-thread runtime's driving thread ends when it is dropped.
    _stop: Option<oneshot::Sender<()>>,
}

impl ListenerRuntime {
    pub fn new(threads: usize) -> std::io::Result<Self> {
        if threads > 1 {
            let runtime = Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("strait-listener")
                .enable_all()
                .build()?;
            return Ok(Self {
                handle: runtime.handle().clone(),
                _runtime: Some(runtime),
                _stop: None,
            });
        }
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("strait-listener".into())
            .spawn(move || {
                // Either a stop or the sender dropped ends it.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Self {
            handle,
            _runtime: None,
            _stop: Some(stop),
        })
    }

    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }
}
