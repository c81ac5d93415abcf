//! Background work that lives as long as the process, under one supervisor.
//!
//! Each task gets its own thread and a single-threaded tokio runtime, so it never competes with
//! pingora's call-serving runtimes. The task itself runs as a tokio task on that runtime, so a
//! panic is caught at its `JoinHandle`: a panic or an unexpected return is logged at error level,
//! counted in `strait_background_restarts_total{task}`, reported through the task's `on_down`
//! (so readiness and discovery figures say the truth while it is down), and the task is started
//! again after a jittered back-off.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{error, info};

use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// The supervised tasks, by the name used in logs, metrics and the test hook.
pub const ETCD_WATCH: &str = "etcd_watch";
pub const HEALTH_PROBES: &str = "health_probes";
pub const CONTROL: &str = "control";
/// Fetches the JWKS of `[[auth]]` providers with a `jwks_url`.
pub const JWKS: &str = "jwks";
pub const DNS_DISCOVERY: &str = "dns_discovery";
/// This gateway's registration and the count of the fleet's (cluster-wide rate limits).
pub const GATEWAY_MEMBERS: &str = "gateway_members";
/// One endpoint's probe, restarted by the health task itself (it owns the probe tasks).
pub const HEALTH_PROBE: &str = "health_probe";
const TASKS: [&str; 6] = [
    ETCD_WATCH,
    HEALTH_PROBES,
    CONTROL,
    DNS_DISCOVERY,
    GATEWAY_MEMBERS,
    JWKS,
];

/// First restart after 0.5-1 s, doubling up to 30 s while a task keeps failing.
const RESTART_BASE: Duration = Duration::from_secs(1);
const RESTART_CAP: Duration = Duration::from_secs(30);
/// A task that ran this long before failing starts its back-off again from the base.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Starts and restarts background tasks. Cheap to clone.
#[derive(Clone, Default)]
pub struct Supervisor {
    metrics: Option<Arc<Metrics>>,
    hooks: Arc<FaultHooks>,
    /// Per entry of `TASKS`: failed and waiting for its restart.
    down: Arc<[AtomicBool; TASKS.len()]>,
}

impl Supervisor {
    pub fn new(metrics: Option<Arc<Metrics>>, hooks: Arc<FaultHooks>) -> Self {
        Self {
            metrics,
            hooks,
            down: Default::default(),
        }
    }

    pub fn hooks(&self) -> &FaultHooks {
        &self.hooks
    }

    /// The supervised tasks that failed and have not been restarted yet.
    pub fn down_tasks(&self) -> Vec<&'static str> {
        TASKS
            .iter()
            .zip(self.down.iter())
            .filter(|(_, down)| down.load(Ordering::Acquire))
            .map(|(task, _)| *task)
            .collect()
    }

    fn set_down(&self, task: &str, down: bool) {
        if let Some(i) = TASKS.iter().position(|t| *t == task) {
            self.down[i].store(down, Ordering::Release);
        }
    }

    /// Counts one restart of `task` (for tasks restarted by their owner, such as probes).
    pub fn count_restart(&self, task: &'static str) {
        if let Some(m) = &self.metrics {
            m.background_restarted(task);
        }
    }

    /// Runs `start()` on a new thread named `thread`, for the life of the process: whenever the
    /// future it returns panics or returns, `on_down` runs and a new one is started after a
    /// jittered back-off.
    pub fn spawn<S, F>(
        &self,
        task: &'static str,
        thread: &str,
        on_down: impl Fn() + Send + 'static,
        mut start: S,
    ) where
        S: FnMut() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let supervisor = self.clone();
        let thread_name = thread.to_string();
        std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| {
                        panic!("building the {thread_name} runtime at start-up: {e}")
                    });
                runtime.block_on(async move {
                    let mut backoff = Backoff::new(RESTART_BASE, RESTART_CAP);
                    loop {
                        let started = Instant::now();
                        let job = supervisor.hooks.armed(task, start());
                        let outcome = match tokio::spawn(job).await {
                            Ok(()) => "returned".to_string(),
                            Err(e) if e.is_panic() => {
                                format!("panicked: {}", panic_message(e.into_panic()))
                            }
                            Err(e) => format!("was cancelled: {e}"),
                        };
                        supervisor.set_down(task, true);
                        on_down();
                        supervisor.count_restart(task);
                        if started.elapsed() >= HEALTHY_RUN {
                            backoff.reset();
                        }
                        let delay = backoff.next_delay();
                        error!(
                            task,
                            restart_in_ms = delay.as_millis() as u64,
                            "background task {outcome}; restarting"
                        );
                        tokio::time::sleep(delay).await;
                        supervisor.set_down(task, false);
                        info!(task, "background task restarted");
                    }
                });
            })
            .unwrap_or_else(|e| panic!("spawning the {thread} thread at start-up: {e}"));
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A test-only way to make a supervised task panic, so the restart path is tested on the real
/// binary. Off unless the process starts with `STRAIT_TEST_HOOKS=1`; then `POST
/// /test/panic?task=NAME` on the admin listener fires it.
#[derive(Default)]
pub struct FaultHooks {
    triggers: HashMap<&'static str, Arc<Notify>>,
}

impl FaultHooks {
    pub fn from_env() -> Self {
        if std::env::var("STRAIT_TEST_HOOKS").as_deref() == Ok("1") {
            Self::enabled()
        } else {
            Self::default()
        }
    }

    pub fn enabled() -> Self {
        Self {
            triggers: TASKS
                .iter()
                .map(|t| (*t, Arc::new(Notify::new())))
                .collect(),
        }
    }

    /// Makes `task` panic once; false when hooks are off or the task is unknown.
    pub fn fire(&self, task: &str) -> bool {
        match self.triggers.get(task) {
            Some(trigger) => {
                trigger.notify_one();
                true
            }
            None => false,
        }
    }

    /// `job`, made to panic when the hook for `task` fires.
    fn armed<F>(&self, task: &'static str, job: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let trigger = self.triggers.get(task).cloned();
        async move {
            match trigger {
                None => job.await,
                Some(trigger) => tokio::select! {
                    () = job => {}
                    () = trigger.notified() => panic!("test hook: {task} told to panic"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A task that panics on its first run and returns on its second is started a third time,
    /// with `on_down` called once per failure.
    #[test]
    fn restarts_after_panic_and_after_return() {
        let starts = Arc::new(AtomicUsize::new(0));
        let downs = Arc::new(AtomicUsize::new(0));
        let (third_start, started_thrice) = std::sync::mpsc::channel();
        let s = starts.clone();
        let d = downs.clone();
        let supervisor = Supervisor::default();
        supervisor.spawn(
            CONTROL,
            "test-supervised",
            move || {
                d.fetch_add(1, Ordering::SeqCst);
            },
            move || {
                let run = s.fetch_add(1, Ordering::SeqCst);
                let third_start = third_start.clone();
                async move {
                    match run {
                        0 => panic!("first run fails"),
                        1 => {}
                        _ => {
                            let _ = third_start.send(());
                            std::future::pending::<()>().await
                        }
                    }
                }
            },
        );
        started_thrice
            .recv_timeout(Duration::from_secs(10))
            .expect("the task was started a third time");
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(downs.load(Ordering::SeqCst), 2);
        assert!(supervisor.down_tasks().is_empty(), "restarted, so not down");
    }

    #[tokio::test]
    async fn hooks_fire_only_when_enabled() {
        assert!(!FaultHooks::default().fire(ETCD_WATCH));
        let hooks = FaultHooks::enabled();
        assert!(!hooks.fire("no_such_task"));
        assert!(hooks.fire(ETCD_WATCH));
        let job = tokio::spawn(hooks.armed(ETCD_WATCH, std::future::pending()));
        let err = job.await.expect_err("the armed job panicked");
        assert!(err.is_panic());
        assert_eq!(
            panic_message(err.into_panic()),
            "test hook: etcd_watch told to panic"
        );
    }
}
