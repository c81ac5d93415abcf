//! The access log: one line per finished call (and per tcp connection), JSON or text, written by
//! a background thread (`writer.rs`) from a bounded queue. The call path never waits for it:
//! when the queue is full the line is dropped and counted in `strait_access_log_dropped_total`.
//! Reconfigured by reload (added, changed, removed); SIGUSR1 reopens a file for logrotate.

mod record;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

pub use record::{format_ts, CallRecord};
pub use writer::QUEUE_LINES;

use crate::config::AccessLogConfig;
use writer::Writer;

#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {path}: {source}")]
pub struct AccessLogError {
    path: String,
    source: std::io::Error,
}

struct Active {
    config: AccessLogConfig,
    writer: Writer,
}

/// A log opened for a new config, not yet in use (see `AccessLog::prepare`).
pub struct Prepared(Option<Arc<Active>>);

/// The process's access log, shared by every listener; cheap to consult when it is off.
pub struct AccessLog {
    current: ArcSwapOption<Active>,
    dropped: Option<prometheus::IntCounter>,
}

impl AccessLog {
    pub fn new(dropped: Option<prometheus::IntCounter>) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            dropped,
        }
    }

    /// Opens what `config` names, without using it yet: a reload that fails later changes
    /// nothing. `None` when the running log already is exactly this.
    pub fn prepare(
        &self,
        config: Option<&AccessLogConfig>,
    ) -> Result<Option<Prepared>, AccessLogError> {
        let running = self.current.load();
        if running.as_ref().map(|a| &a.config) == config {
            return Ok(None);
        }
        let Some(config) = config else {
            return Ok(Some(Prepared(None)));
        };
        let writer =
            Writer::start(&config.sink, config.format).map_err(|source| AccessLogError {
                path: config.sink.to_string(),
                source,
            })?;
        Ok(Some(Prepared(Some(Arc::new(Active {
            config: config.clone(),
            writer,
        })))))
    }

    /// Puts a prepared log in place. The old one writes what it has queued, then stops.
    pub fn commit(&self, prepared: Prepared) {
        self.current.store(prepared.0);
    }

    /// `prepare` and `commit` at once (start-up).
    pub fn apply(&self, config: Option<&AccessLogConfig>) -> Result<(), AccessLogError> {
        if let Some(prepared) = self.prepare(config)? {
            self.commit(prepared);
        }
        Ok(())
    }

    /// Whether a call that ended OK (`ok`) or not is written: every non-OK call is, OK calls
    /// by `sample`. False when there is no log, so the caller skips building the line.
    pub fn wants(&self, ok: bool) -> bool {
        match &*self.current.load() {
            None => false,
            Some(_) if !ok => true,
            Some(active) => {
                let sample = active.config.sample;
                sample >= 1.0 || (sample > 0.0 && rand::random::<f64>() < sample)
            }
        }
    }

    pub fn write(&self, record: CallRecord) {
        let Some(active) = &*self.current.load() else {
            return;
        };
        if !active.writer.send(record) {
            if let Some(dropped) = &self.dropped {
                dropped.inc();
            }
        }
    }

    /// SIGUSR1: the file is reopened at its path before the next line is written.
    pub fn reopen(&self) {
        if let Some(active) = &*self.current.load() {
            active.writer.reopen();
        }
    }

    /// At exit: stop taking lines and write out the queued ones, waiting at most `bound`.
    pub fn close(&self, bound: Duration) {
        if let Some(active) = self.current.swap(None) {
            // The last holder closes it; a call still holding a guard keeps it open a moment.
            if let Ok(active) = Arc::try_unwrap(active) {
                active.writer.close(bound);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccessLogFormat, AccessLogSink};
    use std::os::unix::fs::OpenOptionsExt;

    fn config(sink: AccessLogSink, sample: f64) -> AccessLogConfig {
        AccessLogConfig {
            sink,
            format: AccessLogFormat::Json,
            sample,
        }
    }

    fn scratch_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("strait-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A disk that stops taking lines (a pipe nobody reads) fills the queue: the call path drops
    /// and counts instead of waiting (if it waited, this test would never end).
    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dir = scratch_dir("fifo");
        let fifo = dir.join("log");
        let _ = std::fs::remove_file(&fifo);
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Opened first (non-blocking) so the writer's open does not wait for a reader; never read.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let dropped = prometheus::IntCounter::new("dropped", "dropped").unwrap();
        let log = AccessLog::new(Some(dropped.clone()));
        log.apply(Some(&config(AccessLogSink::File(fifo.clone()), 1.0)))
            .unwrap();
        let sent = 3 * QUEUE_LINES as u64;
        for _ in 0..sent {
            log.write(record::example());
        }
        let dropped_now = dropped.get();
        assert!(
            dropped_now > 0 && dropped_now < sent,
            "{dropped_now} of {sent} dropped"
        );
        drop(reader);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lines_reach_the_file_and_close_writes_the_queue_out() {
        let dir = scratch_dir("file");
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::new(None);
        log.apply(Some(&config(AccessLogSink::File(path.clone()), 1.0)))
            .unwrap();
        for _ in 0..100 {
            log.write(record::example());
        }
        log.close(Duration::from_secs(10));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 100);
        assert!(text.lines().all(|l| l.starts_with("{\"ts\":")));
        log.write(record::example());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sampling_applies_to_ok_calls_only() {
        let log = AccessLog::new(None);
        assert!(!log.wants(false), "no log, nothing wanted");
        log.apply(Some(&config(AccessLogSink::Stderr, 0.0)))
            .unwrap();
        assert!(log.wants(false));
        assert!(!log.wants(true));
        log.apply(Some(&config(AccessLogSink::Stderr, 1.0)))
            .unwrap();
        assert!(log.wants(true));
        log.apply(Some(&config(AccessLogSink::Stderr, 0.5)))
            .unwrap();
        let wanted = (0..2000).filter(|_| log.wants(true)).count();
        assert!((700..1300).contains(&wanted), "{wanted} of 2000 at 0.5");
        log.apply(None).unwrap();
        assert!(!log.wants(false));
    }

    #[test]
    fn an_unopenable_file_is_an_error_and_keeps_the_running_log() {
        let log = AccessLog::new(None);
        log.apply(Some(&config(AccessLogSink::Stderr, 0.0)))
            .unwrap();
        let missing = AccessLogSink::File("/nonexistent-dir/access.log".into());
        let e = log.prepare(Some(&config(missing, 1.0))).err().unwrap();
        assert!(e.to_string().contains("/nonexistent-dir/access.log"), "{e}");
        assert!(!log.wants(true), "the running (sample 0) log stays");
        assert!(log
            .prepare(Some(&config(AccessLogSink::Stderr, 0.0)))
            .unwrap()
            .is_none());
    }
}
