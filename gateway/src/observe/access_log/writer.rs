//! The background writer: one thread per configured log, fed by a bounded queue. The call path
//! only ever `try_send`s; a full queue drops the line (counted), it never waits.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::warn;

use super::record::CallRecord;
use crate::config::{AccessLogFormat, AccessLogSink};

/// Lines waiting for the disk at most; beyond, lines are dropped and counted.
pub const QUEUE_LINES: usize = 16_384;
/// How often the writer wakes to write what is queued. It never blocks on the queue: a
/// receiver parked on it would be woken by every call's line, a context switch per call on the
/// call path's core (measured: +38% CPU per unary call); polling every tick costs nothing per
/// call, and a line reaches the disk at most this late.
const TICK: Duration = Duration::from_millis(50);

/// Where lines go.
enum Output {
    Stderr,
    Stdout,
    File {
        path: PathBuf,
        file: BufWriter<File>,
    },
}

fn open_append(path: &PathBuf) -> io::Result<BufWriter<File>> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(BufWriter::with_capacity(64 * 1024, file))
}

impl Output {
    fn open(sink: &AccessLogSink) -> io::Result<Output> {
        Ok(match sink {
            AccessLogSink::Stderr => Output::Stderr,
            AccessLogSink::Stdout => Output::Stdout,
            AccessLogSink::File(path) => Output::File {
                path: path.clone(),
                file: open_append(path)?,
            },
        })
    }

    /// `line` ends with its newline and goes in one `write_all`: the buffer never splits a
    /// line, so two writers appending to one file (old and new log, for a moment after a
    /// reload) never interleave inside a line, and stderr's lock keeps the process's own logs
    /// out of it.
    fn write_line(&mut self, line: &str) -> io::Result<()> {
        match self {
            Output::Stderr => io::stderr().lock().write_all(line.as_bytes()),
            Output::Stdout => io::stdout().lock().write_all(line.as_bytes()),
            Output::File { file, .. } => file.write_all(line.as_bytes()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stderr => io::stderr().flush(),
            Output::Stdout => io::stdout().flush(),
            Output::File { file, .. } => file.flush(),
        }
    }

    /// After logrotate moved the file away: flush what is buffered into the old file, then go
    /// on in a new one at the configured path. If it cannot be opened, keep the old one.
    fn reopen(&mut self) {
        if let Output::File { path, file } = self {
            let _ = file.flush();
            match open_append(path) {
                Ok(new) => *file = new,
                Err(e) => warn!(path = %path.display(), error = %e,
                                "cannot reopen the access log; writing on to the old file"),
            }
        }
    }
}

/// The sending half, held by the call path.
pub struct Writer {
    lines: SyncSender<CallRecord>,
    reopen: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Opens the sink (so a bad path is an error now, not a silent loss later) and starts the
    /// writer thread.
    pub fn start(sink: &AccessLogSink, format: AccessLogFormat) -> io::Result<Writer> {
        let output = Output::open(sink)?;
        let (lines, queue) = sync_channel(QUEUE_LINES);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        let thread = std::thread::Builder::new()
            .name("strait-access-log".into())
            .spawn(move || write_lines(queue, output, format, &flag))?;
        Ok(Writer {
            lines,
            reopen,
            thread: Some(thread),
        })
    }

    /// Queues a line; false when it was dropped (queue full).
    pub fn send(&self, record: CallRecord) -> bool {
        match self.lines.try_send(record) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Stops taking lines and waits (up to `bound`) for the queued ones to be written.
    pub fn close(mut self, bound: Duration) {
        let thread = self.thread.take();
        drop(self);
        if let Some(thread) = thread {
            let deadline = std::time::Instant::now() + bound;
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn write_lines(
    queue: Receiver<CallRecord>,
    mut output: Output,
    format: AccessLogFormat,
    reopen: &AtomicBool,
) {
    let render = |r: &CallRecord| {
        let mut line = match format {
            AccessLogFormat::Json => r.to_json(),
            AccessLogFormat::Text => r.to_text(),
        };
        line.push('\n');
        line
    };
    let mut failing = false;
    loop {
        // Lines queued before SIGUSR1 still go to the file that was open (after logrotate's
        // rename, the rotated one); the new file starts with the next batch.
        let reopen_after = reopen.swap(false, Ordering::AcqRel);
        // Write what is waiting as one batch, then flush once.
        let mut wrote = false;
        let ended = loop {
            match queue.try_recv() {
                Ok(record) => {
                    let result = output.write_line(&render(&record));
                    report(&mut failing, result);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break false,
                // Every sender is gone and the queue is empty: the log was reconfigured or
                // the process is ending.
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if wrote {
            let result = output.flush();
            report(&mut failing, result);
        }
        if reopen_after {
            output.reopen();
        }
        if ended {
            break;
        }
        std::thread::sleep(TICK);
    }
    let _ = output.flush();
}

/// A disk that fails is said once, and once more when it works again.
fn report(failing: &mut bool, result: io::Result<()>) {
    match result {
        Err(e) if !*failing => {
            *failing = true;
            warn!(error = %e, "cannot write the access log; lines are lost until it works again");
        }
        Ok(()) if *failing => {
            *failing = false;
            warn!("the access log is being written again");
        }
        _ => {}
    }
}
