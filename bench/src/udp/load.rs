//! Drives the flows of a UDP run and collects what they measure.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::payload::{reply_id, set_id};
use super::{UdpLoadConfig, UdpReport};
use crate::load::{Gate, Schedule};

/// Highest latency the histogram resolves (60 s, in microseconds); larger values saturate.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Pause after a failure before the next attempt, so a refusing target is not spun on.
const FAILURE_PAUSE: Duration = Duration::from_millis(10);

/// Runs a load on a private runtime on a new thread and waits for it (callers need no
/// runtime, and may be inside one).
pub fn run(cfg: &UdpLoadConfig) -> anyhow::Result<UdpReport> {
    let cfg = cfg.clone();
    check(&cfg)?;
    let thread = std::thread::Builder::new().name("bench-udp".into()).spawn(
        move || -> anyhow::Result<UdpReport> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cfg.threads.max(1))
                .thread_name("bench-udp-worker")
                .enable_all()
                .build()?;
            rt.block_on(run_async(cfg))
        },
    )?;
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("UDP load thread panicked"))?
}

fn check(cfg: &UdpLoadConfig) -> anyhow::Result<()> {
    anyhow::ensure!(cfg.flows >= 1, "--flows must be at least 1");
    anyhow::ensure!(!cfg.timeout.is_zero(), "--timeout must be above 0");
    cfg.payload.build().map_err(anyhow::Error::msg)?;
    Ok(())
}

/// Runs a load on the current runtime.
pub async fn run_async(cfg: UdpLoadConfig) -> anyhow::Result<UdpReport> {
    check(&cfg)?;
    let request = cfg.payload.build().map_err(anyhow::Error::msg)?;
    let start = Instant::now();
    let deadline = start
        .checked_add(cfg.duration)
        .ok_or_else(|| anyhow::anyhow!("--duration is too long"))?;
    let shared = Arc::new(Shared::new(cfg, start, request.len()));
    let watchdog = tokio::spawn(watchdog(shared.clone(), deadline));
    let mut set = JoinSet::new();
    for index in 0..shared.cfg.flows {
        set.spawn(flow(shared.clone(), index, request.clone()));
    }
    while let Some(res) = set.join_next().await {
        if let Err(e) = res {
            tracing::error!(error = %e, "UDP flow task failed");
        }
    }
    watchdog.abort();
    Ok(shared.report(start.elapsed()))
}

/// How one request ended.
enum Answer {
    /// A reply with its id, this many bytes.
    Got(usize),
    /// A receive error: ICMP port unreachable on the connected socket, mostly.
    Refused,
    /// Nothing within the timeout.
    Lost,
}

/// One flow's loop: (re)open its socket, send, wait for the reply with the request's id,
/// record, repeat; paced by the schedule with `rate`.
async fn flow(shared: Arc<Shared>, index: usize, mut request: Vec<u8>) {
    let cfg = &shared.cfg;
    let mut sock: Option<UdpSocket> = None;
    let mut schedule = cfg.rate.map(|r| Schedule::new(r, cfg.flows, index));
    let mut previous_done = Duration::ZERO;
    // Ids differ between flows, so a reply that strays to another flow is not taken.
    let mut id = (index as u16).wrapping_mul(0x9e37);
    let mut buf = vec![0u8; 65_536];
    let mut failed = false;
    while shared.gate.take_ticket() {
        let pause = failed.then_some(FAILURE_PAUSE);
        let turn = shared
            .gate
            .next_turn(shared.start, schedule.as_mut(), pause, previous_done);
        let Some(t0) = turn.await else {
            break;
        };
        let s = match sock.take() {
            Some(s) => s,
            None => match open(shared.cfg.target).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP socket failed");
                    shared.send_errors.fetch_add(1, Ordering::Relaxed);
                    failed = true;
                    continue;
                }
            },
        };
        id = id.wrapping_add(1);
        set_id(&mut request, id);
        if let Err(e) = s.send(&request).await {
            tracing::debug!(error = %e, "UDP send failed");
            shared.send_errors.fetch_add(1, Ordering::Relaxed);
            failed = true;
            continue;
        }
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let wait = tokio::time::timeout(cfg.timeout, receive(&s, id, &mut buf, &shared));
        let answer = match shared.gate.until_done(wait).await {
            None => break,
            Some(Err(_)) => Answer::Lost,
            Some(Ok(Err(_))) => Answer::Refused,
            Some(Ok(Ok(n))) => Answer::Got(n),
        };
        previous_done = shared.start.elapsed();
        failed = false;
        match answer {
            Answer::Got(n) => {
                shared.record(t0.elapsed(), n);
                if !cfg.new_flow_per_request {
                    sock = Some(s);
                }
            }
            Answer::Lost => {
                shared.lost.fetch_add(1, Ordering::Relaxed);
                if !cfg.new_flow_per_request {
                    sock = Some(s);
                }
            }
            // The socket is replaced: a new source port, a new flow.
            Answer::Refused => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                failed = true;
            }
        }
    }
}

/// A socket of its own (an ephemeral port), connected to `target` so the kernel passes it
/// only the target's datagrams and reports the target's ICMP errors to it.
async fn open(target: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any).await?;
    s.connect(target).await?;
    Ok(s)
}

/// Receives until the reply to `id` comes; replies to earlier (lost) requests of this
/// flow are counted as late and skipped.
async fn receive(s: &UdpSocket, id: u16, buf: &mut [u8], shared: &Shared) -> io::Result<usize> {
    loop {
        let n = s.recv(buf).await?;
        if reply_id(&buf[..n]) == Some(id) {
            return Ok(n);
        }
        shared.late.fetch_add(1, Ordering::Relaxed);
    }
}

/// Ends the run at its deadline or when the caller's stop flag is raised.
async fn watchdog(shared: Arc<Shared>, deadline: Instant) {
    loop {
        let stop_requested = shared
            .cfg
            .stop
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed));
        let now = Instant::now();
        if stop_requested || now >= deadline {
            shared.gate.finish();
            return;
        }
        let next = (now + Duration::from_millis(50)).min(deadline);
        tokio::time::sleep_until(next.into()).await;
    }
}

/// State all flows of a run share: counters, and the histogram behind a mutex taken once
/// per answer (cheap with one or two threads).
struct Shared {
    cfg: UdpLoadConfig,
    start: Instant,
    request_bytes: usize,
    /// Becomes true when the run is over; requests in flight then are left unfinished.
    /// Ends the run; in-flight requests are abandoned, not counted.
    gate: Gate,
    sent: AtomicU64,
    answered: AtomicU64,
    lost: AtomicU64,
    refused: AtomicU64,
    send_errors: AtomicU64,
    late: AtomicU64,
    bytes: AtomicU64,
    histogram: Mutex<Histogram<u64>>,
}

impl Shared {
    fn new(cfg: UdpLoadConfig, start: Instant, request_bytes: usize) -> Self {
        Self {
            gate: Gate::new(cfg.requests),
            cfg,
            start,
            request_bytes,
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            late: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            histogram: Mutex::new(
                Histogram::new_with_max(MAX_LATENCY_US, 3).expect("valid histogram bounds"),
            ),
        }
    }

    fn record(&self, latency: Duration, bytes: usize) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saturating_record(us.max(1));
    }

    fn report(&self, elapsed: Duration) -> UdpReport {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UdpReport {
            target: self.cfg.target,
            flows: self.cfg.flows,
            new_flow_per_request: self.cfg.new_flow_per_request,
            offered_rate: self.cfg.rate,
            request_bytes: self.request_bytes,
            sent: load(&self.sent),
            answered: load(&self.answered),
            lost: load(&self.lost),
            refused: load(&self.refused),
            send_errors: load(&self.send_errors),
            late: load(&self.late),
            bytes_received: load(&self.bytes),
            elapsed,
            histogram: self
                .histogram
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
