//! Background work that lives as long as the process: each job gets its own thread and a
//! single-threaded tokio runtime, so it never competes with pingora's call-serving runtimes.

use std::future::Future;

/// Runs `job` on a new thread named `name` until it completes or the process exits.
pub fn spawn<F>(name: &str, job: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let thread_name = name.to_string();
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("building the {thread_name} runtime at start-up: {e}"));
            runtime.block_on(job);
        })
        .unwrap_or_else(|e| panic!("spawning the {name} thread at start-up: {e}"));
}
