//! Reloading the config file (SIGHUP or POST /reload on the admin listener).
//!
//! All or nothing up to the swap: the file is parsed and validated, settings that need a restart
//! are refused, the new snapshot is built (certificates re-read) and new listener sockets are
//! bound, all before anything changes. Then the snapshot is swapped (endpoints that stay keep
//! their breaker and health state through `routing::Lasting`) and listeners are opened, drained or
//! re-keyed. Calls in flight keep the route they started with.

use std::fmt;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::ControlPlane;
use crate::background::Supervisor;
use crate::config::{Config, ConfigError};
use crate::discovery::dns::DnsPlan;
use crate::routing::SnapshotError;
use crate::server::{ListenerChanges, ListenerError};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new config is invalid; the running config stays:\n{0}")]
    Invalid(ConfigError),
    #[error(
        "changing {} needs a restart; nothing was reloaded, the running config stays",
        .0.join(", ")
    )]
    NeedsRestart(Vec<&'static str>),
    #[error("the new config could not be applied; the running config stays: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("the new config could not be applied; the running config stays: {0}")]
    Listener(#[from] ListenerError),
    #[error("the new config could not be applied; the running config stays: {0}")]
    Observe(#[from] crate::observe::ObserveError),
    #[error("routes and upstreams were reloaded, but a listener could not follow: {0}")]
    Partial(ListenerError),
}

/// What a successful reload changed.
#[derive(Debug)]
pub struct ReloadReport {
    pub listeners: usize,
    pub routes: usize,
    pub upstreams: usize,
    pub changes: ListenerChanges,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reloaded: {} listener(s), {} route(s), {} upstream(s)",
            self.listeners, self.routes, self.upstreams
        )?;
        let c = &self.changes;
        for (what, names) in [
            ("opened", &c.opened),
            ("closed", &c.closed),
            ("restarted", &c.restarted),
            ("certificates re-read", &c.tls_reloaded),
        ] {
            if !names.is_empty() {
                write!(f, "; {what}: {}", names.join(", "))?;
            }
        }
        Ok(())
    }
}

/// Sections a running process cannot change: its runtime, its etcd session, its admin port and
/// its xDS server (whose clients hold streams that a new port or certificate would cut).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.gateway != new.gateway {
        changed.push("[gateway]");
    }
    if old.etcd != new.etcd {
        changed.push("[etcd]");
    }
    // The token file's content is reloadable; where the admin listener is and what it shows
    // are not.
    let without_token = |c: &Config| {
        c.admin.clone().map(|mut a| {
            a.token_file = None;
            a
        })
    };
    if without_token(old) != without_token(new) {
        changed.push("[admin]");
    }
    if old.xds != new.xds {
        changed.push("[xds]");
    }
    changed
}

impl ControlPlane {
    /// Re-reads the config file and applies it, or keeps the running config and says why.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let result = self.try_reload().await;
        if let Some(m) = &self.metrics {
            m.config_reloaded(result.is_ok());
        }
        match &result {
            Ok(report) => info!(file = %self.path.display(), "{report}"),
            Err(e) => error!(file = %self.path.display(), "reload refused: {e}"),
        }
        result
    }

    async fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        let new = crate::config::load(&self.path).map_err(ReloadError::Invalid)?;
        let old = self.config();
        let needs_restart = restart_only_changes(&old, &new);
        if !needs_restart.is_empty() {
            return Err(ReloadError::NeedsRestart(needs_restart));
        }
        let plan = self.listeners.prepare(&new.listeners)?;
        let observers = self.observers.prepare(&new)?;
        {
            let mut current = self.lock();
            let mut snapshot =
                crate::routing::RoutingSnapshot::build(&new, current.views(), &self.lasting, None)?;
            // Connections of removed listeners keep their routes while they drain.
            let previous = self.routing.load_full();
            let removed: Vec<String> = old
                .listeners
                .iter()
                .filter(|l| !new.listeners.iter().any(|n| n.name == l.name))
                .map(|l| l.name.clone())
                .collect();
            snapshot.keep_listeners_from(&previous, &removed);
            snapshot.generation = previous.generation + 1;
            self.routing.store(snapshot);
            self.observers.commit(observers);
            current.config = Arc::new(new.clone());
            // New names are resolved at once; names no longer used are forgotten.
            self.dns_plan
                .send_if_modified(|plan| replace_if_changed(plan, DnsPlan::from_config(&new)));
        }
        let changes = self
            .listeners
            .commit(plan)
            .await
            .map_err(ReloadError::Partial)?;
        Ok(ReloadReport {
            listeners: new.listeners.len(),
            routes: new.routes.len(),
            upstreams: new.upstreams.len(),
            changes,
        })
    }
}

fn replace_if_changed(plan: &mut DnsPlan, next: DnsPlan) -> bool {
    let changed = *plan != next;
    *plan = next;
    changed
}

type Reply = oneshot::Sender<Result<String, String>>;

/// Reload requests wait here; the control task answers all that are waiting with one reload,
/// so requests arriving during a reload share the next one (at most one reload waits).
#[derive(Debug, Default)]
struct Waiting {
    replies: parking_lot::Mutex<Vec<Reply>>,
    wake: tokio::sync::Notify,
}

/// Requests beyond this many waiting are refused at once: a client looping on `POST /reload`
/// cannot queue memory without bound.
pub const MAX_WAITING_RELOADS: usize = 64;

/// The control task: reloads on SIGHUP and on request, one at a time, and reopens the access log
/// on SIGUSR1. `installed` hears once both handlers are in place (each start installs its own):
/// before that, either signal would end the process.
async fn serve(
    control: Arc<ControlPlane>,
    waiting: Arc<Waiting>,
    installed: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut hangups, mut reopens) = match (
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) {
        (Ok(hup), Ok(usr1)) => {
            let _ = installed.send(Ok(()));
            (hup, usr1)
        }
        (Err(e), _) | (_, Err(e)) => {
            let _ = installed.send(Err(e));
            return;
        }
    };
    loop {
        tokio::select! {
            Some(()) = reopens.recv() => {
                info!("SIGUSR1: reopening the access log");
                control.observers.access_log.reopen();
                continue;
            }
            Some(()) = hangups.recv() => info!("SIGHUP: reloading the config"),
            () = waiting.wake.notified() => {}
        }
        // Everyone waiting now is answered by this one reload.
        let replies = std::mem::take(&mut *waiting.replies.lock());
        let outcome = control
            .reload()
            .await
            .map(|r| r.to_string())
            .map_err(|e| e.to_string());
        for reply in replies {
            let _ = reply.send(outcome.clone());
        }
    }
}

/// Asks the control thread for a reload; cheap to clone.
#[derive(Clone, Debug)]
pub struct ReloadHandle {
    waiting: Arc<Waiting>,
}

impl ReloadHandle {
    /// Runs the control thread: reloads on SIGHUP and on request, one at a time. Returns once
    /// the SIGHUP handler is in place (before it, SIGHUP would end the process).
    pub fn spawn(supervisor: &Supervisor, control: Arc<ControlPlane>) -> std::io::Result<Self> {
        // The waiting requests outlive a failed control task: its restart serves them.
        let waiting = Arc::new(Waiting::default());
        let (installed, handler_ready) = std::sync::mpsc::channel();
        {
            let waiting = waiting.clone();
            supervisor.spawn(
                crate::background::CONTROL,
                "strait-control",
                || {},
                move || serve(control.clone(), waiting.clone(), installed.clone()),
            );
        }
        handler_ready
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("control thread ended")))?;
        Ok(Self { waiting })
    }

    /// Reloads and says what happened (`Err` holds the reason the running config stayed).
    pub async fn reload(&self) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        {
            let mut replies = self.waiting.replies.lock();
            if replies.len() >= MAX_WAITING_RELOADS {
                warn!("reload refused: {MAX_WAITING_RELOADS} requests are already waiting");
                return Err(format!(
                    "{MAX_WAITING_RELOADS} reload requests are already waiting; try again"
                ));
            }
            replies.push(reply);
        }
        self.waiting.wake.notify_one();
        answer
            .await
            .unwrap_or_else(|_| Err("the reload was interrupted".into()))
    }
}
