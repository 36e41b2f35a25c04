//! Drives the connections of a run and collects what they measure.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::bulk::BulkProto;
use super::echo::EchoProto;
use super::http::HttpProto;
use super::schedule::Schedule;
use super::{Gate, LoadConfig, LoadKind, Progress, ProgressFn, Report};

/// Highest latency the histogram resolves (60 s, in microseconds); larger values saturate.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Runs a load on a private runtime on a new thread and waits for it. A new thread because
/// `block_on` panics when the caller is already inside a tokio runtime (as the demo is).
pub(super) fn run_blocking(
    kind: LoadKind,
    target: SocketAddr,
    cfg: LoadConfig,
) -> anyhow::Result<Report> {
    let thread = std::thread::Builder::new()
        .name("bench-load".into())
        .spawn(move || -> anyhow::Result<Report> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cfg.threads.max(1))
                .thread_name("bench-load-worker")
                .enable_all()
                .build()?;
            Ok(rt.block_on(run(kind, target, cfg)))
        })?;
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("load generator thread panicked"))?
}

/// Runs a load on the current runtime.
pub(super) async fn run(kind: LoadKind, target: SocketAddr, cfg: LoadConfig) -> Report {
    let start = Instant::now();
    let shared = Arc::new(Shared::new(target, cfg, start));
    let watchdog = tokio::spawn(watchdog(shared.clone()));
    let ticker = shared
        .cfg
        .progress
        .clone()
        .map(|cb| tokio::spawn(ticker(shared.clone(), cb)));
    let mut set = JoinSet::new();
    for index in 0..shared.cfg.connections {
        let cfg = &shared.cfg;
        let proto = match kind {
            LoadKind::Http => Proto::Http(HttpProto::new(&cfg.path, target, cfg.close)),
            LoadKind::Download => Proto::Http(HttpProto::new(&cfg.path, target, false)),
            LoadKind::Echo => Proto::Echo(EchoProto::new(cfg.msg_size)),
            LoadKind::Bulk => Proto::Bulk(BulkProto::new(cfg.bulk_bytes)),
        };
        set.spawn(drive(shared.clone(), proto, index));
    }
    while let Some(res) = set.join_next().await {
        if let Err(e) = res {
            tracing::error!(error = %e, "load connection task failed");
        }
    }
    let elapsed = start.elapsed();
    watchdog.abort();
    if let Some(t) = ticker {
        t.abort();
    }
    shared.report(kind, elapsed)
}

/// One request/response protocol; an enum rather than a trait keeps the futures `Send`
/// without boxing.
pub(super) enum Proto {
    Http(HttpProto),
    Echo(EchoProto),
    Bulk(BulkProto),
}

/// What one successful exchange yielded.
pub(super) struct Outcome {
    /// HTTP status, if the protocol has one.
    pub status: Option<u16>,
    /// The server will close (or has closed) the connection after this response.
    pub close: bool,
    /// Payload bytes received.
    pub bytes: u64,
    /// Bytes sent (requests, echo messages, bulk payload).
    pub sent: u64,
}

/// Received bytes differed from what was expected (echo, bulk); counted apart from other
/// errors because it means corruption, not unavailability.
#[derive(Debug)]
pub(super) struct Mismatch {
    /// Stream offset of the first wrong byte.
    pub offset: u64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received bytes differ from those sent, first at offset {}",
            self.offset
        )
    }
}

impl std::error::Error for Mismatch {}

impl From<Mismatch> for io::Error {
    fn from(m: Mismatch) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, m)
    }
}

fn is_mismatch(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Mismatch>())
}

impl Proto {
    async fn exchange(&mut self, stream: &mut TcpStream) -> io::Result<Outcome> {
        match self {
            Proto::Http(p) => p.exchange(stream).await,
            Proto::Echo(p) => p.exchange(stream).await,
            Proto::Bulk(p) => p.exchange(stream).await,
        }
    }

    fn backend(&self) -> Option<&str> {
        match self {
            Proto::Http(p) => p.backend(),
            Proto::Echo(_) | Proto::Bulk(_) => None,
        }
    }
}

/// One connection's loop: (re)connect, exchange, record, repeat; closed, or paced by the
/// schedule with `--rate` (see [`super::schedule`]). The latency runs from before the
/// connect (when there is one), or from the scheduled time, to the end of the answer.
async fn drive(shared: Arc<Shared>, mut proto: Proto, index: usize) {
    let mut stream: Option<TcpStream> = None;
    let mut failures: u32 = 0;
    let mut schedule = shared
        .cfg
        .rate
        .map(|r| Schedule::new(r, shared.cfg.connections, index));
    let mut previous_done = Duration::ZERO;
    while shared.gate.take_ticket() {
        // Back off while the target keeps failing, instead of spinning on refusals.
        let pause = (failures >= 2)
            .then(|| Duration::from_millis(10 << (failures - 2).min(6)).min(MAX_BACKOFF));
        let turn = shared
            .gate
            .next_turn(shared.start, schedule.as_mut(), pause, previous_done);
        let Some(t0) = turn.await else {
            break;
        };
        let attempt = async {
            let mut s = match stream.take() {
                Some(s) => s,
                None => connect(shared.target, shared.cfg.connect_timeout).await?,
            };
            let timeout = shared.cfg.request_timeout;
            let outcome = tokio::time::timeout(timeout, proto.exchange(&mut s))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))??;
            Ok::<_, io::Error>((s, outcome))
        };
        let result = shared.gate.until_done(attempt).await;
        previous_done = shared.start.elapsed();
        match result {
            None => break,
            Some(Err(e)) => {
                if is_mismatch(&e) {
                    tracing::error!(error = %e, "load request got corrupted data");
                    shared.mismatches.fetch_add(1, Ordering::Relaxed);
                } else {
                    tracing::debug!(error = %e, "load request failed");
                }
                shared.errors.fetch_add(1, Ordering::Relaxed);
                failures += 1;
            }
            Some(Ok((s, outcome))) => {
                shared.record(t0.elapsed(), proto.backend(), &outcome);
                failures = 0;
                if !outcome.close && !shared.cfg.close {
                    stream = Some(s);
                }
            }
        }
    }
}

const MAX_BACKOFF: Duration = Duration::from_millis(500);

async fn connect(target: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = tokio::time::timeout(timeout, TcpStream::connect(target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Ends the run at its deadline or when the caller's stop flag is raised.
async fn watchdog(shared: Arc<Shared>) {
    loop {
        let stop_requested = shared
            .cfg
            .stop
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed));
        let now = Instant::now();
        if stop_requested || now >= shared.deadline {
            shared.gate.finish();
            return;
        }
        let next = (now + Duration::from_millis(50)).min(shared.deadline);
        tokio::time::sleep_until(next.into()).await;
    }
}

async fn ticker(shared: Arc<Shared>, cb: ProgressFn) {
    let period = Duration::from_secs(1);
    let mut interval = tokio::time::interval_at((shared.start + period).into(), period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_requests = 0;
    let mut last_at = shared.start;
    loop {
        interval.tick().await;
        let now = Instant::now();
        let requests = shared.requests.load(Ordering::Relaxed);
        let per_backend = shared
            .lock()
            .per_backend
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let progress = Progress {
            elapsed: now - shared.start,
            requests,
            errors: shared.errors.load(Ordering::Relaxed),
            interval_requests: requests - last_requests,
            interval: now - last_at,
            per_backend,
        };
        cb(&progress);
        last_requests = requests;
        last_at = now;
    }
}

/// State all connections of a run share. Counters are atomics; the histogram and maps sit
/// behind one mutex taken once per response, which is cheap with 1-2 worker threads.
struct Shared {
    target: SocketAddr,
    cfg: LoadConfig,
    start: Instant,
    deadline: Instant,
    /// Ends the run; in-flight requests are abandoned, not counted.
    gate: Gate,
    requests: AtomicU64,
    errors: AtomicU64,
    mismatches: AtomicU64,
    bytes: AtomicU64,
    bytes_sent: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    histogram: Histogram<u64>,
    per_backend: HashMap<String, u64>,
    status: BTreeMap<u16, u64>,
}

impl Shared {
    fn new(target: SocketAddr, cfg: LoadConfig, start: Instant) -> Self {
        let histogram = Histogram::new_with_max(MAX_LATENCY_US, 3).expect("valid histogram bounds");
        Self {
            target,
            deadline: start + cfg.duration,
            gate: Gate::new(cfg.total_requests),
            cfg,
            start,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                histogram,
                per_backend: HashMap::new(),
                status: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, latency: Duration, backend: Option<&str>, outcome: &Outcome) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(outcome.bytes, Ordering::Relaxed);
        self.bytes_sent.fetch_add(outcome.sent, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let mut inner = self.lock();
        inner.histogram.saturating_record(us.max(1));
        if let Some(name) = backend {
            match inner.per_backend.get_mut(name) {
                Some(n) => *n += 1,
                None => {
                    inner.per_backend.insert(name.to_owned(), 1);
                }
            }
        }
        if let Some(code) = outcome.status {
            *inner.status.entry(code).or_default() += 1;
        }
    }

    fn report(&self, kind: LoadKind, elapsed: Duration) -> Report {
        let inner = self.lock();
        Report {
            kind,
            target: self.target,
            connections: self.cfg.connections,
            close: kind == LoadKind::Http && self.cfg.close,
            offered_rate: self.cfg.rate,
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            mismatches: self.mismatches.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            elapsed,
            histogram: inner.histogram.clone(),
            per_backend: inner
                .per_backend
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            status: inner.status.clone(),
        }
    }
}
