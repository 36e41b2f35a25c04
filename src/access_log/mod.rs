//! The access log (`--access-log`): one line per finished connection, JSON or logfmt.
//!
//! Workers never format or write: at the end of a connection a worker fills a fixed-size
//! [`Record`] (plain `Copy` data: ids, addresses, counts; no `String`) and pushes it into
//! its own bounded queue ([`Queues`]). A writer thread ([`writer`]) off the data path and
//! off the control thread drains the queues, resolves service and backend ids to names
//! ([`Names`]), formats ([`format`]) and writes. When a worker's queue is full (the
//! destination is slower than the connections end) the record is dropped and counted in
//! `uringlb_access_log_dropped_total`: the data path never waits for the log.

pub mod format;
pub mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::RwLock;

use crossbeam_channel::{Receiver, Sender};

use crate::backend::{BackendId, ServiceId};
use crate::direction::PerDir;

/// Records each worker's queue holds before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 8192;

/// Where the log goes (`--access-log off|stderr|PATH`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Target {
    #[default]
    Off,
    Stderr,
    File(PathBuf),
}

/// `--access-log`: `off`, `stderr` or a file path (appended to, created if missing).
pub fn parse_target(s: &str) -> Result<Target, String> {
    match s.trim() {
        "" => Err("expected off, stderr or a file path".to_string()),
        "off" => Ok(Target::Off),
        "stderr" => Ok(Target::Stderr),
        path => Ok(Target::File(PathBuf::from(path))),
    }
}

/// How a line is written (`--access-log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
    Logfmt,
}

/// `--access-log-format json|logfmt`.
pub fn parse_format(s: &str) -> Result<Format, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "json" => Ok(Format::Json),
        "logfmt" => Ok(Format::Logfmt),
        other => Err(format!(
            "unknown access log format '{other}'; expected json or logfmt"
        )),
    }
}

/// How a connection ended (the `result` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions finished normally.
    Closed,
    /// A peer reset or an error ended it.
    Reset,
    /// No traffic either way for `--idle-timeout` (or a trusted client's PROXY header
    /// never finished).
    IdleTimeout,
    /// No backend could be picked (none up, or every one at its max-conns for the whole
    /// connect timeout).
    NoBackend,
    /// Every backend tried failed to connect (or no socket could be made for one).
    ConnectFailed,
    /// Refused: the allow/deny lists, a per-source limit, a bad PROXY header, a loop.
    Rejected,
    /// Cut at the drain deadline of its backend, or at the end of the grace period.
    Drained,
    /// A UDP flow ended to make room for a new one: its service was at `max_flows`, and
    /// it was the one idle longest.
    Evicted,
}

impl End {
    pub fn name(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Reset => "reset",
            End::IdleTimeout => "idle_timeout",
            End::NoBackend => "no_backend",
            End::ConnectFailed => "connect_failed",
            End::Rejected => "rejected",
            End::Drained => "drained",
            End::Evicted => "evicted",
        }
    }
}

/// One finished connection, as a worker hands it over: fixed size, no allocation. Times
/// are nanoseconds since [`crate::worker::Shared::epoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub service: ServiceId,
    pub client: Option<SocketAddr>,
    /// The balancer's listen address the client connected to.
    pub listen: SocketAddr,
    /// The last backend connected to (or tried).
    pub backend: Option<(BackendId, SocketAddr)>,
    pub start_ns: u64,
    pub end_ns: u64,
    /// How long the connect to the backend took, once one succeeded.
    pub connect_ns: Option<u64>,
    /// Bytes client -> backend (`Up`) and backend -> client (`Down`).
    pub bytes: PerDir<u64>,
    /// Connect attempts after the first (failed connects and replays).
    pub retries: u32,
    pub end: End,
    /// The TLS server name it was routed by (on an address shared by name).
    pub sni: Option<crate::sni::SniName>,
}

/// The workers' queues, one per worker index (a restarted worker takes over its queue):
/// bounded channels, whose `try_send` neither blocks nor allocates.
#[derive(Debug)]
pub struct Queues {
    senders: Box<[Sender<Record>]>,
    receivers: Box<[Receiver<Record>]>,
}

impl Queues {
    pub fn new(workers: usize, capacity: usize) -> Queues {
        let (senders, receivers) = (0..workers)
            .map(|_| crossbeam_channel::bounded(capacity))
            .unzip::<_, _, Vec<_>, Vec<_>>();
        Queues {
            senders: senders.into(),
            receivers: receivers.into(),
        }
    }

    /// Hands a record to the writer; `false` when the worker's queue is full (the record
    /// is dropped; the caller counts it).
    pub fn push(&self, worker: usize, r: Record) -> bool {
        self.senders
            .get(worker)
            .is_some_and(|s| s.try_send(r).is_ok())
    }

    /// Takes every record waiting, worker by worker, into `out`.
    pub fn drain_into(&self, out: &mut Vec<Record>) {
        for q in self.receivers.iter() {
            out.extend(q.try_iter());
        }
    }
}

/// Service and backend names by id, for the writer. The control thread records them as it
/// publishes snapshots; a name stays after its backend leaves (its last connections are
/// logged after that), until the id is given to a new backend.
#[derive(Debug, Default)]
pub struct Names {
    inner: RwLock<NameTable>,
}

#[derive(Debug, Default)]
pub struct NameTable {
    services: Vec<String>,
    backends: Vec<Option<String>>,
}

impl Names {
    pub fn set_service(&self, id: ServiceId, name: &str) {
        let mut t = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let i = id.0 as usize;
        if t.services.len() <= i {
            t.services.resize(i + 1, String::new());
        }
        if t.services[i] != name {
            t.services[i] = name.to_string();
        }
    }

    pub fn set_backend(&self, id: BackendId, name: &str) {
        let mut t = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let i = id.0 as usize;
        if t.backends.len() <= i {
            t.backends.resize(i + 1, None);
        }
        if t.backends[i].as_deref() != Some(name) {
            t.backends[i] = Some(name.to_string());
        }
    }

    /// A view to resolve a batch of records with; holds the lock until dropped.
    pub fn read(&self) -> NamesView<'_> {
        NamesView(self.inner.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// [`Names`] locked for reading.
pub struct NamesView<'a>(std::sync::RwLockReadGuard<'a, NameTable>);

impl NamesView<'_> {
    /// The names of service `s` and backend `b` (empty or `None` when unknown).
    pub fn resolve(&self, s: ServiceId, b: Option<BackendId>) -> (&str, Option<&str>) {
        let t = &self.0;
        let service = t.services.get(s.0 as usize).map_or("", String::as_str);
        let backend = b.and_then(|b| t.backends.get(b.0 as usize)?.as_deref());
        (service, backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets_and_formats() {
        assert_eq!(parse_target("off"), Ok(Target::Off));
        assert_eq!(parse_target("stderr"), Ok(Target::Stderr));
        assert_eq!(
            parse_target("/var/log/lb.log"),
            Ok(Target::File("/var/log/lb.log".into()))
        );
        assert!(parse_target(" ").is_err());
        assert_eq!(parse_format("JSON"), Ok(Format::Json));
        assert_eq!(parse_format("logfmt"), Ok(Format::Logfmt));
        assert!(parse_format("xml").is_err());
    }

    #[test]
    fn a_full_queue_refuses() {
        let q = Queues::new(2, 2);
        let r = Record {
            service: ServiceId(0),
            client: None,
            listen: "127.0.0.1:1".parse().expect("addr"),
            backend: None,
            start_ns: 0,
            end_ns: 0,
            connect_ns: None,
            bytes: PerDir::new(0, 0),
            retries: 0,
            end: End::Closed,
            sni: None,
        };
        assert!(q.push(1, r) && q.push(1, r));
        assert!(!q.push(1, r));
        assert!(q.push(0, r));
        let mut out = Vec::new();
        q.drain_into(&mut out);
        assert_eq!(out.len(), 3);
    }
}
