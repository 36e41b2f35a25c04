//! What workers share with each other and with the control thread: the per-backend
//! counters, the balancer-wide connection budget, the per-source limits, and each worker's
//! own counters, which only that worker writes and the control thread sums on a scrape.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crossbeam_utils::CachePadded;

use crate::backend::{BackendId, SharedCounters};
use crate::direction::{Dir, PerDir};

/// Counters of one worker, on their own cache line; only this worker writes them (no
/// shared read-modify-write on the hot path).
#[derive(Debug)]
pub struct WorkerStats {
    pub accepted: AtomicU64,
    /// Bytes forwarded per direction, as they are sent.
    pub bytes: PerDir<AtomicU64>,
    /// Bytes forwarded by splice per direction (part of `bytes`).
    pub spliced: PerDir<AtomicU64>,
    pub connect_failures: AtomicU64,
    /// Client connections closed because no backend could be reached.
    pub no_backend: AtomicU64,
    /// Client connections closed because no slot was free (never expected: the budget is
    /// checked before a client is served).
    pub no_slot: AtomicU64,
    /// Client connections closed because a local resource ran out (no socket for the
    /// backend connection: file descriptors, memory).
    pub local_error: AtomicU64,
    /// Client connections that were the balancer's own connections coming back (a backend
    /// that is, through some address, the balancer itself).
    pub loops: AtomicU64,
    /// Requests sent again to another backend because theirs closed before answering.
    pub replays: AtomicU64,
    /// Client connections refused by `--max-conns-per-source`.
    pub rejected_source_conns: AtomicU64,
    /// Client connections refused by `--max-conn-rate-per-source`.
    pub rejected_source_rate: AtomicU64,
    /// Client connections refused by `--allow`/`--deny`.
    pub rejected_denied: AtomicU64,
    /// Trusted clients closed for a missing, malformed or truncated PROXY header.
    pub rejected_proxy_header: AtomicU64,
    /// Clients that waited the whole connect timeout for a backend below its max-conns.
    pub rejected_backends_full: AtomicU64,
    /// Clients of an address routed by TLS server name whose name no service there takes
    /// (and the address has no `*` default).
    pub rejected_no_route: AtomicU64,
    /// Clients of an address routed by TLS server name that sent no valid ClientHello
    /// within `sni_timeout` (not TLS, malformed, too long, cut short or too slow).
    pub rejected_bad_tls: AtomicU64,
    /// Times the completion queue was full and the kernel held completions back.
    pub cq_backlogged: AtomicU64,
    /// The snapshot version this worker routes with.
    pub snapshot_version: AtomicU64,
    /// Access log records dropped because this worker's queue was full.
    pub access_log_dropped: AtomicU64,
    /// Connect times per backend. The lock is taken once per established connection by
    /// this worker and once per scrape by the control thread: uncontended.
    pub connect_us: Mutex<ConnectTimes>,
    /// Per service (by [`ServiceId`] index): refusals and the queue for full backends.
    /// Taken only on a refusal or a queue change, and by a scrape.
    pub services: Mutex<Vec<ServiceCounts>>,
}

/// Why a client was closed unserved (`uringlb_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NoBackend,
    NoSlot,
    MaxConnsPerSource,
    MaxConnRatePerSource,
    Denied,
    BadProxyHeader,
    BackendsFull,
    LocalError,
    Loop,
    NoRoute,
    BadTls,
}

impl Refused {
    pub const ALL: [Refused; 11] = [
        Refused::NoBackend,
        Refused::NoSlot,
        Refused::MaxConnsPerSource,
        Refused::MaxConnRatePerSource,
        Refused::Denied,
        Refused::BadProxyHeader,
        Refused::BackendsFull,
        Refused::LocalError,
        Refused::Loop,
        Refused::NoRoute,
        Refused::BadTls,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::NoBackend => "no_backend",
            Refused::NoSlot => "no_slot",
            Refused::MaxConnsPerSource => "max_conns_per_source",
            Refused::MaxConnRatePerSource => "max_conn_rate_per_source",
            Refused::Denied => "denied",
            Refused::BadProxyHeader => "bad_proxy_header",
            Refused::BackendsFull => "backends_full",
            Refused::LocalError => "local_error",
            Refused::Loop => "loop",
            Refused::NoRoute => "no_route",
            Refused::BadTls => "bad_tls",
        }
    }

    /// The worker's own counter of this reason.
    pub fn counter(self, s: &WorkerStats) -> &AtomicU64 {
        match self {
            Refused::NoBackend => &s.no_backend,
            Refused::NoSlot => &s.no_slot,
            Refused::MaxConnsPerSource => &s.rejected_source_conns,
            Refused::MaxConnRatePerSource => &s.rejected_source_rate,
            Refused::Denied => &s.rejected_denied,
            Refused::BadProxyHeader => &s.rejected_proxy_header,
            Refused::BackendsFull => &s.rejected_backends_full,
            Refused::LocalError => &s.local_error,
            Refused::Loop => &s.loops,
            Refused::NoRoute => &s.rejected_no_route,
            Refused::BadTls => &s.rejected_bad_tls,
        }
    }
}

/// One worker's counts for one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceCounts {
    /// By [`Refused::ALL`] order.
    pub refused: [u64; Refused::ALL.len()],
    /// Clients waiting now for a backend below its max-conns.
    pub queued_now: u64,
    /// Clients that left that queue (connected, or out of time), and how long they
    /// waited in all, in nanoseconds.
    pub dequeued: u64,
    pub queue_wait_ns: u64,
}

impl WorkerStats {
    /// Counts a refusal of a client of service `service` (the worker's counter and the
    /// service's).
    pub fn refused(&self, service: crate::backend::ServiceId, why: Refused) {
        WorkerStats::add(why.counter(self), 1);
        let i = Refused::ALL.iter().position(|&r| r == why).unwrap_or(0);
        self.with_service(service, |c| c.refused[i] += 1);
    }

    /// Changes this worker's counts of `service`.
    pub fn with_service(
        &self,
        service: crate::backend::ServiceId,
        f: impl FnOnce(&mut ServiceCounts),
    ) {
        let mut v = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let i = service.0 as usize;
        if v.len() <= i {
            v.resize(i + 1, ServiceCounts::default());
        }
        f(&mut v[i]);
    }

    /// This worker's counts of `service`.
    pub fn service_counts(&self, service: crate::backend::ServiceId) -> ServiceCounts {
        let v = self.services.lock().unwrap_or_else(|p| p.into_inner());
        v.get(service.0 as usize).copied().unwrap_or_default()
    }
}

/// One worker's connect times per backend, in microseconds.
#[derive(Debug, Default)]
pub struct ConnectTimes {
    /// By backend: the backend counters' epoch the histogram belongs to, and the histogram.
    /// Made at a backend's first connect (about 10 KiB each: 1 us to 60 s at 2 significant
    /// digits, enough for the 17 buckets of the metric).
    by_backend: HashMap<BackendId, (u64, hdrhistogram::Histogram<u32>)>,
}

impl ConnectTimes {
    /// Records a connect of `us` microseconds to backend `id`, whose counters are at
    /// `epoch` (a histogram of an earlier backend with the same id starts over).
    pub fn record(&mut self, id: BackendId, epoch: u64, us: u64) {
        let entry = self
            .by_backend
            .entry(id)
            .or_insert_with(|| (epoch, histogram()));
        if entry.0 != epoch {
            *entry = (epoch, histogram());
        }
        entry.1.saturating_record(us.max(1));
    }

    /// The histogram of backend `id` at `epoch`, if it has connected since.
    pub fn get(&self, id: BackendId, epoch: u64) -> Option<&hdrhistogram::Histogram<u32>> {
        self.by_backend
            .get(&id)
            .filter(|(e, _)| *e == epoch)
            .map(|(_, h)| h)
    }

    /// Forgets the histograms of backends whose id was given to a new one.
    pub fn retain(&mut self, current: impl Fn(BackendId, u64) -> bool) {
        self.by_backend
            .retain(|&id, (epoch, _)| current(id, *epoch));
    }
}

fn histogram() -> hdrhistogram::Histogram<u32> {
    // new_with_bounds only fails on bad bounds.
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2)
        .unwrap_or_else(|_| hdrhistogram::Histogram::new(2).expect("2 sigfigs is valid"))
}

impl Default for WorkerStats {
    fn default() -> Self {
        let zero = || AtomicU64::new(0);
        WorkerStats {
            accepted: zero(),
            bytes: PerDir::new(zero(), zero()),
            spliced: PerDir::new(zero(), zero()),
            connect_failures: zero(),
            no_backend: zero(),
            no_slot: zero(),
            local_error: zero(),
            loops: zero(),
            replays: zero(),
            rejected_source_conns: zero(),
            rejected_source_rate: zero(),
            rejected_denied: zero(),
            rejected_proxy_header: zero(),
            rejected_backends_full: zero(),
            rejected_no_route: zero(),
            rejected_bad_tls: zero(),
            cq_backlogged: zero(),
            snapshot_version: zero(),
            access_log_dropped: zero(),
            connect_us: Mutex::new(ConnectTimes::default()),
            services: Mutex::new(Vec::new()),
        }
    }
}

impl WorkerStats {
    /// Adds to a counter only this worker writes: a load and a store, no locked
    /// read-modify-write.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// Bytes forwarded in `dir`, summed over workers by the caller.
    pub fn bytes(&self, dir: Dir) -> u64 {
        self.bytes[dir].load(Ordering::Relaxed)
    }
}

/// State shared by all workers and the control thread.
#[derive(Debug)]
pub struct Shared {
    pub counters: Arc<SharedCounters>,
    /// The clock all workers measure `now_ns` from, so shared time stamps agree.
    pub epoch: Instant,
    /// The wall-clock time of `epoch` (access log time stamps).
    pub wall_epoch: SystemTime,
    /// Where workers hand finished connections to the access log, when it is on.
    pub access_log: Option<Arc<crate::access_log::Queues>>,
    /// Client connections open in the whole balancer: a client is served only after this
    /// is raised below `max_conns` (see [`Shared::try_open`]).
    pub open_clients: AtomicUsize,
    pub max_conns: usize,
    /// Open connections and connection rates per client IP (`--max-conns-per-source`).
    pub sources: crate::limits::SourceTable,
    /// The balancer's own connections to local backends, to catch a backend that leads
    /// back to the balancer.
    pub loops: crate::loops::LoopTable,
    pub stats: Box<[CachePadded<WorkerStats>]>,
    /// Per worker: running (false once its loop has ended, until it is restarted).
    pub alive: Box<[AtomicBool]>,
    /// Workers started again after their loop failed.
    pub worker_restarts: AtomicU64,
    /// Per worker: its UDP services' counts, as it last published them (every tick).
    pub udp: Box<[Mutex<Vec<UdpCounts>>]>,
}

/// One worker's counts for one UDP service. Counted in the worker's own memory and
/// copied here on its tick: a datagram costs no shared write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpCounts {
    pub flows_active: u64,
    pub flows_total: u64,
    /// Datagrams and bytes forwarded, by direction (client to backend first).
    pub datagrams: [u64; 2],
    pub bytes: [u64; 2],
    /// Flows ended to make room for a new one (`max_flows`).
    pub evictions: u64,
    /// Datagrams dropped, by [`UdpDrop`].
    pub drops: [u64; UdpDrop::ALL.len()],
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpDrop {
    /// Larger than the receive buffer (`MSG_TRUNC`): never forwarded cut.
    Truncated,
    /// No backend could take a new flow.
    NoBackend,
    /// A new client while the service or the balancer stops.
    Stopping,
    /// The client is refused by `--allow`/`--deny`.
    Denied,
    /// The send failed (socket buffer full, backend unreachable) or no socket could be
    /// opened.
    SendFailed,
    /// A new flow from a source at `max_conns_per_source` open flows.
    MaxConnsPerSource,
    /// A new flow from a source that opened `max_conn_rate_per_source` in this second.
    MaxConnRatePerSource,
}

impl UdpDrop {
    pub const ALL: [UdpDrop; 7] = [
        UdpDrop::Truncated,
        UdpDrop::NoBackend,
        UdpDrop::Stopping,
        UdpDrop::Denied,
        UdpDrop::SendFailed,
        UdpDrop::MaxConnsPerSource,
        UdpDrop::MaxConnRatePerSource,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            UdpDrop::Truncated => "truncated",
            UdpDrop::NoBackend => "no_backend",
            UdpDrop::Stopping => "stopping",
            UdpDrop::Denied => "denied",
            UdpDrop::SendFailed => "send_failed",
            UdpDrop::MaxConnsPerSource => "max_conns_per_source",
            UdpDrop::MaxConnRatePerSource => "max_conn_rate_per_source",
        }
    }
}

impl Shared {
    pub fn new(workers: usize, max_conns: usize, counters: Arc<SharedCounters>) -> Shared {
        Shared {
            counters,
            epoch: Instant::now(),
            wall_epoch: SystemTime::now(),
            access_log: None,
            open_clients: AtomicUsize::new(0),
            max_conns,
            sources: crate::limits::SourceTable::default(),
            loops: crate::loops::LoopTable::default(),
            stats: (0..workers)
                .map(|_| CachePadded::new(WorkerStats::default()))
                .collect(),
            alive: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            worker_restarts: AtomicU64::new(0),
            udp: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// Takes one place of the balancer-wide `--max-conns` for a new client, or says there
    /// is none left (the client then waits, accepted but not served, until one frees).
    pub fn try_open(&self) -> bool {
        self.open_clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_conns).then_some(n + 1)
            })
            .is_ok()
    }

    /// Bytes the process forwarded in `dir`: TCP streams' bytes and UDP payload bytes
    /// (as the workers last published them).
    pub fn bytes_forwarded(&self, dir: Dir) -> u64 {
        let tcp: u64 = self.stats.iter().map(|s| s.bytes(dir)).sum();
        let udp: u64 = self
            .udp
            .iter()
            .filter_map(|w| w.lock().ok())
            .map(|counts| counts.iter().map(|c| c.bytes[dir.index()]).sum::<u64>())
            .sum();
        tcp + udp
    }

    /// Places of the budget not taken.
    pub fn room(&self) -> usize {
        self.max_conns
            .saturating_sub(self.open_clients.load(Ordering::Relaxed))
    }

    /// Gives back the place of a client connection that closed.
    pub fn close_one(&self) {
        let before = self.open_clients.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "more clients closed than opened");
    }

    /// Workers whose loop is running.
    pub fn workers_alive(&self) -> usize {
        self.alive
            .iter()
            .filter(|a| a.load(Ordering::Relaxed))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_never_runs_past_max_conns() {
        let s = Arc::new(Shared::new(2, 100, SharedCounters::new()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || (0..1000).filter(|_| s.try_open()).count())
            })
            .collect();
        let opened: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(opened, 100);
        s.close_one();
        assert!(s.try_open());
        assert!(!s.try_open());
    }
}
