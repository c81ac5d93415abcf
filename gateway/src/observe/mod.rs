//! What operators see of each call and connection, fed by the call context once it ends: the
//! access log (one line per call or tcp connection), the call's trace (started when it arrives,
//! so the upstream can be told its parent, ended and exported when it ends). The last minute
//! of traffic per route and upstream for the status page is `metrics::traffic`. Nothing here
//! waits for a disk or a collector.

pub mod access_log;
pub mod trace;

use std::time::Duration;

use access_log::AccessLog;
use trace::Tracing;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    AccessLog(#[from] access_log::AccessLogError),
    #[error(transparent)]
    Tracing(#[from] trace::ExportStartError),
}

/// The access log and tracing, shared by every listener and replaced together by reload.
pub struct Observers {
    pub access_log: AccessLog,
    pub tracing: Tracing,
}

/// What a new config's `[access_log]` and `[tracing]` need, opened but not in use yet.
pub struct Prepared {
    access_log: Option<access_log::Prepared>,
    tracing: Option<trace::Prepared>,
}

impl Observers {
    pub fn new(metrics: Option<&crate::metrics::Metrics>) -> Self {
        Self {
            access_log: AccessLog::new(metrics.map(|m| m.access_log_dropped.clone())),
            tracing: Tracing::new(trace::SpanCounters::from_metrics(metrics)),
        }
    }

    /// Opens what `config` asks for; a reload that fails afterwards changes nothing.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, ObserveError> {
        Ok(Prepared {
            access_log: self.access_log.prepare(config.access_log.as_ref())?,
            tracing: self.tracing.prepare(config.tracing.as_ref())?,
        })
    }

    pub fn commit(&self, prepared: Prepared) {
        if let Some(log) = prepared.access_log {
            self.access_log.commit(log);
        }
        if let Some(tracing) = prepared.tracing {
            self.tracing.commit(tracing);
        }
    }

    /// `prepare` and `commit` at once (start-up).
    pub fn apply(&self, config: &Config) -> Result<(), ObserveError> {
        let prepared = self.prepare(config)?;
        self.commit(prepared);
        Ok(())
    }

    /// At exit: the last calls' lines and spans leave before the process ends (each waits at
    /// most `bound`).
    pub fn close(&self, bound: Duration) {
        self.access_log.close(bound);
        self.tracing.close(bound);
    }
}
