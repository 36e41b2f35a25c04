//! Sending a client to a backend: pick one with the balancer, connect with a timeout, try
//! the next on failure (up to `--retries`), wait in line when every candidate is at its
//! max-conns, and replay the client's first bytes when a backend goes away before
//! answering.

use std::sync::atomic::Ordering;

use super::candidates::Candidates;
use super::conn::{LeftBackend, Phase, Target};
use super::stats::Refused;
use super::{Worker, WorkerStats};
use crate::access_log::End;
use crate::backend::BackendCounters;
use crate::balance::{self, PeakEwma, Request};
use crate::direction::PerDir;
use crate::net;

impl Worker {
    /// Connects the slot's client to the next backend it has not tried, or closes the
    /// client when none is left.
    pub(super) fn connect_next(&mut self, slot: usize) {
        let attempts = self.slots[slot].conn.tried().len() as u32;
        let (retries, backends) = {
            let s = self.slot_service(slot);
            (s.retries, s.backends.len())
        };
        let mut pick = None;
        if attempts <= retries {
            // A place below a backend's max-conns is taken, not just seen: another worker
            // may take the last one between the pick and the connect; then pick again.
            for _ in 0..=backends {
                pick = self.pick(slot);
                match pick {
                    Some(i) if !self.take_place(slot, i) => pick = None,
                    _ => break,
                }
            }
        }
        let Some(i) = pick else {
            if attempts <= retries && self.all_eligible_full(slot) {
                // Every backend it could go to is at its max-conns: wait in line (HAProxy's
                // server queue) for at most the connect timeout.
                if self.slots[slot].conn.waited(self.now_ns).is_none() {
                    let service = self.slots[slot].service;
                    self.stats().with_service(service, |c| c.queued_now += 1);
                }
                self.slots[slot].conn.queue(self.now_ns);
                let gen = self.slots[slot].gen;
                self.queue.push((slot as u32, gen));
                return;
            }
            self.stats()
                .refused(self.slots[slot].service, Refused::NoBackend);
            let end = if attempts == 0 {
                End::NoBackend
            } else {
                End::ConnectFailed
            };
            self.end_as(slot, end);
            return self.abort(slot, true);
        };
        self.leave_queue(slot);
        let service = self.slot_service(slot);
        let backend = &service.backends[i];
        let target = Target {
            id: backend.id,
            addr: backend.addr,
            send_proxy: backend.proxy_protocol.or(service.proxy_protocol),
            local: backend.local,
        };
        let keepalive = service.tcp_keepalive;
        let sock = match net::tcp_socket(&target.addr) {
            Ok(sock) => sock,
            Err(e) => {
                // Out of descriptors or memory: a local failure, not the backend's.
                self.stats()
                    .refused(self.slots[slot].service, Refused::LocalError);
                self.warn_rate_limited(&format!("cannot open a backend socket: {e}"));
                self.let_go(Some(LeftBackend {
                    id: target.id,
                    counted: true,
                }));
                self.end_as(slot, End::ConnectFailed);
                return self.abort(slot, true);
            }
        };
        net::set_nodelay(&sock);
        if let Some(idle) = keepalive {
            net::set_keepalive(&sock, idle);
        }
        if target.local && self.shared.loops.watching() {
            // Before the connect is submitted: a client it may turn into waits for it.
            let ticket = self.shared.loops.connect_started(target.addr);
            if let Some(old) = self.slots[slot].ticket.replace(ticket) {
                self.shared.loops.connect_done(old);
            }
        }
        let now = self.now_ns;
        self.slots[slot].log.target = Some((target.id, target.addr));
        self.slots[slot]
            .conn
            .connect(target, sock, now, &mut self.actions);
        self.perform(slot);
    }

    /// Counts a connection to backend `i` of the slot's service in its active connections,
    /// unless it is at its max-conns (across all workers): returns whether it was counted.
    fn take_place(&self, slot: usize, i: usize) -> bool {
        let b = &self.slot_service(slot).backends[i];
        let active = &self.shared.counters.get(b.id).active;
        match b.max_conns {
            None => {
                active.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(max) => active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < u64::from(max)).then_some(n + 1)
                })
                .is_ok(),
        }
    }

    /// No backend was eligible for the slot, and some were left out only for being at
    /// their max-conns.
    fn all_eligible_full(&self, slot: usize) -> bool {
        let pool = Candidates::new(
            self.slot_service(slot),
            &self.shared.counters,
            self.slots[slot].conn.tried(),
        );
        (0..pool.backends()).any(|i| pool.eligible_ignoring_limit(i) && pool.full(i))
    }

    /// Connections waiting for a backend below its max-conns try again; those that waited
    /// the whole connect timeout are closed.
    pub(super) fn retry_queue(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.queue);
        for &(slot, gen) in &waiting {
            let slot = slot as usize;
            let s = &self.slots[slot];
            if !s.in_use || s.gen != gen || s.conn.phase() != Phase::Connecting {
                continue;
            }
            let timeout = self.slot_service(slot).connect_timeout.as_nanos() as u64;
            let Some(waited) = s.conn.waited(self.now_ns) else {
                continue;
            };
            if waited >= timeout {
                self.stats()
                    .refused(self.slots[slot].service, Refused::BackendsFull);
                self.end_as(slot, End::NoBackend);
                self.abort(slot, true);
            } else {
                self.connect_next(slot);
            }
        }
    }

    /// The connection in `slot` stops waiting for a backend below its max-conns, if it
    /// was: counted in its service's queue figures.
    pub(super) fn leave_queue(&mut self, slot: usize) {
        let now = self.now_ns;
        if let Some(waited) = self.slots[slot].conn.dequeue(now) {
            let service = self.slots[slot].service;
            self.stats().with_service(service, |c| {
                c.queued_now = c.queued_now.saturating_sub(1);
                c.dequeued += 1;
                c.queue_wait_ns += waited;
            });
        }
    }

    /// The balancer's choice for the slot. A retry (some backend tried already) walks the
    /// algorithm's fallback order without moving its cursor: the next client starts where
    /// the last first pick left off, not behind a backend that just failed.
    fn pick(&mut self, slot: usize) -> Option<usize> {
        let s = &self.slots[slot];
        let (conn, id) = (&s.conn, s.service);
        let (snapshot, balancer, picks) = self.services.picker(id)?;
        let key = conn
            .client_addr
            .map(|a| balance::hash_client(&a, snapshot.hash_key))
            .unwrap_or(0);
        let pool = Candidates::new(snapshot, &self.shared.counters, conn.tried());
        let retry = !conn.tried().is_empty();
        let req = Request {
            key,
            now_ns: self.now_ns,
            retry,
        };
        if !retry {
            *picks += 1;
        }
        balancer.pick(&pool, &req)
    }

    /// The connect of the slot completed (or timed out).
    pub(super) fn on_connected(&mut self, slot: usize, res: i32) {
        let now = self.now_ns;
        let conn = &self.slots[slot].conn;
        if conn.phase() != Phase::Connecting {
            return;
        }
        let Some(id) = conn.backend() else { return };
        let counters = self.shared.counters.get(id);
        if res == 0 {
            counters.total.fetch_add(1, Ordering::Relaxed);
            counters.consecutive_failures.store(0, Ordering::Relaxed);
            let took = now.saturating_sub(conn.connect_started_ns());
            record_connect_time(counters, took, now);
            let epoch = counters.epoch.load(Ordering::Acquire);
            if let Ok(mut h) = self.stats().connect_us.lock() {
                h.record(id, epoch, took / 1000);
            }
            self.slots[slot].log.connect_ns = Some(took);
            let looped = self.is_loop(slot);
            self.connect_done(slot);
            if looped {
                self.stats()
                    .refused(self.slots[slot].service, Refused::Loop);
                tracing::warn!(
                    worker = self.index,
                    backend = id.0,
                    "a backend leads back to this balancer: its connection is cut"
                );
                self.end_as(slot, End::Rejected);
                return self.abort(slot, true);
            }
            let header = self.proxy_header(slot);
            let conn = &mut self.slots[slot].conn;
            conn.connected(now, header, &mut self.actions);
            self.arm_idle_timer(slot);
            self.perform(slot);
        } else {
            counters.failures.fetch_add(1, Ordering::Relaxed);
            counters
                .consecutive_failures
                .fetch_add(1, Ordering::Relaxed);
            WorkerStats::add(&self.stats().connect_failures, 1);
            tracing::debug!(
                worker = self.index,
                backend = id.0,
                "connect failed: {}",
                std::io::Error::from_raw_os_error(-res)
            );
            self.connect_done(slot);
            let left = self.slots[slot].conn.connect_failed(&mut self.actions);
            self.let_go(left);
            self.perform(slot);
            self.connect_next(slot);
        }
    }

    /// A connection to a backend on this host: record it, and say whether it came back to
    /// this balancer as a client (see [`crate::loops`]).
    fn is_loop(&mut self, slot: usize) -> bool {
        if self.slots[slot].ticket.is_none() {
            return false; // not watched (see `LoopTable::watching`)
        }
        let Some(target) = self.slots[slot].conn.target() else {
            return false;
        };
        let backend = target.addr;
        let Some(local) = self.slots[slot]
            .conn
            .backend_sock()
            .and_then(net::local_addr)
        else {
            return false;
        };
        self.slots[slot].outgoing = Some((local, backend));
        self.shared.loops.outgoing(local, backend)
    }

    /// Gives back the slot's connect ticket (after its address is recorded, if it
    /// connected): clients waiting for it can be judged.
    fn connect_done(&mut self, slot: usize) {
        if let Some(ticket) = self.slots[slot].ticket.take() {
            self.shared.loops.connect_done(ticket);
        }
    }

    /// Gives back the active-connection count of a backend the connection let go of.
    fn let_go(&mut self, left: Option<LeftBackend>) {
        if let Some(LeftBackend { id, counted: true }) = left {
            self.shared
                .counters
                .get(id)
                .active
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The backend went away before answering: count it as a failure of that backend,
    /// close its socket, and send the client's first bytes to the next backend.
    pub(super) fn replay(&mut self, slot: usize) {
        // The bytes sent to the backend that went away are its; the next one starts at 0.
        self.flush_backend_bytes(slot);
        self.slots[slot].log.flushed = PerDir::new(0, 0);
        self.slots[slot].log.connect_ns = None;
        let conn = &mut self.slots[slot].conn;
        for pipe in conn.take_pipes().into_iter().flatten() {
            self.pipes.discard(pipe);
        }
        let left = conn.start_replay(&mut self.actions);
        if let Some(l) = left {
            let c = self.shared.counters.get(l.id);
            c.failures.fetch_add(1, Ordering::Relaxed);
            c.consecutive_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                worker = self.index,
                backend = l.id.0,
                "backend closed before answering: replaying"
            );
        }
        self.let_go(left);
        if let Some((local, backend)) = self.slots[slot].outgoing.take() {
            self.shared.loops.outgoing_closed(local, backend);
        }
        WorkerStats::add(&self.stats().replays, 1);
        self.perform(slot);
        self.connect_next(slot);
    }

    /// Makes sure the slot's idle deadline is looked at in time (its entry may be one a
    /// previous connection of the slot armed, firing earlier).
    pub(super) fn arm_idle_timer(&mut self, slot: usize) {
        let deadline = self.now_ns + self.slot_service(slot).idle_timeout.as_nanos() as u64;
        self.timers.arm(slot, deadline);
    }

    /// A warning that could repeat for every connection (a local resource is out) is
    /// logged at most once a second.
    pub(super) fn warn_rate_limited(&mut self, what: &str) {
        if self.now_ns >= self.next_warn_ns {
            tracing::warn!(worker = self.index, "{what} (logged at most once a second)");
            self.next_warn_ns = self.now_ns + 1_000_000_000;
        }
    }
}

/// Folds one connect time into the backend's shared peak-EWMA (for `least-time`). Two
/// workers updating at once may lose one sample; the estimate stays sound.
fn record_connect_time(c: &BackendCounters, sample_ns: u64, now_ns: u64) {
    let old = PeakEwma::from_bits(
        c.ewma_ns_bits.load(Ordering::Relaxed),
        c.ewma_stamp_ns.load(Ordering::Relaxed),
    );
    let (bits, stamp) = old
        .observe(sample_ns as f64, now_ns, balance::ewma::DEFAULT_DECAY_NS)
        .to_bits();
    c.ewma_ns_bits.store(bits, Ordering::Relaxed);
    c.ewma_stamp_ns.store(stamp, Ordering::Relaxed);
}
