//! The access log's writer thread: drains the workers' queues, formats, writes. It is its
//! own thread, so a slow destination (a full disk, a pipe nobody reads) holds up only
//! itself: the workers' queues fill and further records are dropped and counted, and the
//! control thread never waits either (names are read under a lock held only to format).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::{format, Format, Names, Queues, Record, Target};

/// How long the writer sleeps when the queues were empty.
const IDLE: Duration = Duration::from_millis(20);
/// Records formatted per batch (one lock of the names, one write).
const BATCH: usize = 4096;
/// How long a stop waits for the last records to be written.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Where lines go.
enum Dest {
    Stderr,
    File { path: PathBuf, file: File },
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn cannot_open(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(
        e.kind(),
        format!("cannot open the access log {}: {e}", path.display()),
    )
}

/// Whether [`AccessLog::start`] could open `target`, creating and changing nothing (for
/// `--check`): an existing file must open for appending; a missing one needs a directory
/// this process may create it in.
pub fn check(target: &Target) -> std::io::Result<()> {
    let Target::File(path) = target else {
        return Ok(());
    };
    let opens = if path.exists() {
        OpenOptions::new().append(true).open(path).map(drop)
    } else {
        crate::paths::can_create(path)
    };
    opens.map_err(|e| cannot_open(path, e))
}

impl Dest {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Dest::Stderr => std::io::stderr().lock().write_all(buf),
            Dest::File { file, .. } => file.write_all(buf),
        }
    }

    /// Opens the file again by its path (after logrotate moved it away).
    fn reopen(&mut self) {
        if let Dest::File { path, file } = self {
            match open(path) {
                Ok(f) => {
                    *file = f;
                    tracing::info!("access log reopened: {}", path.display());
                }
                Err(e) => tracing::error!(
                    "cannot reopen the access log {}: {e}; still writing to the old file",
                    path.display()
                ),
            }
        }
    }
}

/// What the writer thread shares with whoever controls it.
struct Flags {
    reopen: AtomicBool,
    stop: AtomicBool,
}

/// A running access log: the queues the workers push to, and its writer thread.
pub struct AccessLog {
    queues: Arc<Queues>,
    flags: Arc<Flags>,
    thread: Option<JoinHandle<()>>,
    done: crossbeam_channel::Receiver<()>,
}

impl AccessLog {
    /// Opens the destination (a file is created if missing and appended to) and starts the
    /// writer. `None` for [`Target::Off`].
    pub fn start(
        target: &Target,
        format: Format,
        workers: usize,
        names: Arc<Names>,
        epoch: SystemTime,
    ) -> std::io::Result<Option<AccessLog>> {
        let dest = match target {
            Target::Off => return Ok(None),
            Target::Stderr => Dest::Stderr,
            Target::File(path) => Dest::File {
                path: path.clone(),
                file: open(path).map_err(|e| cannot_open(path, e))?,
            },
        };
        let queues = Arc::new(Queues::new(workers, super::QUEUE_CAPACITY));
        let flags = Arc::new(Flags {
            reopen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let writer = Writer {
            queues: queues.clone(),
            flags: flags.clone(),
            names,
            epoch,
            format,
            dest,
        };
        let thread = std::thread::Builder::new()
            .name("uringlb-log".to_string())
            .spawn(move || {
                writer.run();
                let _ = done_tx.send(());
            })?;
        Ok(Some(AccessLog {
            queues,
            flags,
            thread: Some(thread),
            done,
        }))
    }

    /// The queues the workers push records to.
    pub fn queues(&self) -> &Arc<Queues> {
        &self.queues
    }

    /// Reopens the file by its path before the next write (SIGUSR1).
    pub fn reopen(&self) {
        self.flags.reopen.store(true, Ordering::Release);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// Writes what is queued and stops the writer; gives up after a few seconds if the
    /// destination does not take it (the records are lost, the process is not held).
    pub fn stop(&mut self) {
        self.flags.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            if self.done.recv_timeout(STOP_WAIT).is_ok() {
                let _ = t.join();
            } else {
                tracing::warn!(
                    "the access log destination is not taking lines; stopping without it"
                );
            }
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Writer {
    queues: Arc<Queues>,
    flags: Arc<Flags>,
    names: Arc<Names>,
    epoch: SystemTime,
    format: Format,
    dest: Dest,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Record> = Vec::with_capacity(BATCH);
        let mut buf: Vec<u8> = Vec::with_capacity(BATCH * 320);
        let mut failing = false;
        loop {
            if self.flags.reopen.swap(false, Ordering::AcqRel) {
                self.dest.reopen();
            }
            // Read before draining: records queued before the stop are all written.
            let stopping = self.flags.stop.load(Ordering::Acquire);
            self.queues.drain_into(&mut batch);
            if batch.is_empty() {
                if stopping {
                    return;
                }
                std::thread::park_timeout(IDLE);
                continue;
            }
            for chunk in batch.chunks(BATCH) {
                {
                    let names = self.names.read();
                    for r in chunk {
                        let (service, backend) = names.resolve(r.service, r.backend.map(|b| b.0));
                        format::write_line(self.format, r, self.epoch, service, backend, &mut buf);
                    }
                }
                match self.dest.write_all(&buf) {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::error!("cannot write the access log: {e}");
                    }
                    Err(_) => {}
                }
                buf.clear();
            }
            batch.clear();
        }
    }
}
