//! Ends the process as soon as a graceful shutdown has nothing left to wait for.
//!
//! pingora's graceful shutdown stops accepting, sends GOAWAY, then sleeps the whole grace period
//! before stopping its runtimes. Waiting 15 s with no call in flight helps nobody (rolling
//! deploys get slow), so this watches the in-flight count and exits once it is zero.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::server::ExecutionPhase;
use tokio::sync::broadcast::{self, error::RecvError};
use tracing::info;

use super::ListenerSet;
use crate::observe::Observers;
use crate::proxy::InFlightCalls;

/// How long the count must stay at zero before exiting: lets the last trailers and GOAWAY frames
/// leave the socket buffers.
const SETTLE: Duration = Duration::from_millis(300);

/// Also raises `running` once pingora runs its services (the admin's readiness needs it), and
/// stops the listeners (and raises `draining`) when a graceful shutdown starts.
pub fn exit_when_drained(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    calls: InFlightCalls,
    grace: Duration,
    running: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    listeners: Arc<ListenerSet>,
    observers: Arc<Observers>,
) {
    std::thread::Builder::new()
        .name("strait-drain".into())
        .spawn(move || loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::Running) => running.store(true, Ordering::Release),
                Ok(ExecutionPhase::ShutdownStarted) => {
                    draining.store(true, Ordering::Release);
                    // Stop accepting; HTTP/2 connections get GOAWAY, calls finish.
                    listeners.stop_all();
                }
                Ok(ExecutionPhase::ShutdownGracePeriod) => {
                    running.store(false, Ordering::Release);
                    wait_for_calls(&calls, grace);
                    info!("drained, exiting");
                    // The last calls' lines and spans leave before the process ends.
                    observers.close(Duration::from_secs(2));
                    std::process::exit(0);
                }
                Ok(ExecutionPhase::Terminated) | Err(RecvError::Closed) => return,
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
            }
        })
        .expect("spawning a thread at start-up");
}

fn wait_for_calls(calls: &InFlightCalls, grace: Duration) {
    let started = Instant::now();
    let mut idle_since: Option<Instant> = None;
    loop {
        if started.elapsed() >= grace {
            info!(in_flight = calls.current(), "grace period over");
            return;
        }
        if calls.current() == 0 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SETTLE {
                return;
            }
        } else {
            if idle_since.is_some() {
                idle_since = None;
            }
            info!(in_flight = calls.current(), "draining");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
