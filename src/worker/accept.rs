//! Accepting clients within `--max-conns`.
//!
//! Each listener has at most one accept in flight, renewed when it completes. A client the
//! kernel hands over is served only once it has a place in the balancer-wide budget
//! ([`Shared::try_open`](super::Shared::try_open)); when none is left it waits, accepted but
//! untouched, and its listener's accept is not renewed: clients behind it wait in the
//! kernel's backlog, nobody is refused or reset, and nothing past the limit is served. So
//! at most one client per listener waits here, and it is served first when a place frees
//! (this worker's own close, or the tick for another worker's).
//!
//! One accept at a time is what keeps the waiting to one client per listener: a multishot
//! accept hands over the whole backlog in one batch, before it can be cancelled. But it
//! costs a trip through the ring per client, so while the budget has [`MULTISHOT_ROOM`]
//! places or more, a listener accepts multishot (every queued client in one go, the way
//! the kernel batches them), and it goes back to one at a time as the budget runs low.
//! Either way no client is served past the limit: each takes its place first.
//!
//! A client that `--allow`/`--deny` refuse is reset as soon as it is handed over, before
//! it takes a place.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use super::access_log::SlotLog;
use super::conn::Conn;
use super::stats::Refused;
use super::token::{OpKind, Token};
use super::{Slot, Worker, WorkerStats};
use crate::access_log::End;
use crate::backend::ServiceId;
use crate::loops::{ClientEnds, Verdict};
use crate::net;
use crate::uring::Completion;

/// Places left in the `--max-conns` budget from which listeners accept multishot. A
/// multishot accept can hand over a whole backlog at once; below this the clients past the
/// limit would wait accepted (holding a descriptor each) rather than in the kernel.
pub(super) const MULTISHOT_ROOM: usize = 1024;

/// Wait after EMFILE/ENFILE before accepting again.
const ACCEPT_BACKOFF_NS: u64 = 100_000_000;

/// A listening socket of this worker.
pub(super) struct Listener {
    /// `None` once stopping (closed).
    fd: Option<OwnedFd>,
    /// The address it is bound to.
    pub(super) addr: SocketAddr,
    /// The service its clients belong to.
    pub(super) service: ServiceId,
    /// A client of it waits in [`Worker::parked`]: no new accept until it is served.
    parked: bool,
}

impl Listener {
    pub(super) fn new(fd: OwnedFd, addr: SocketAddr, service: ServiceId) -> Listener {
        Listener {
            fd: Some(fd),
            addr,
            service,
            parked: false,
        }
    }

    /// Closes the socket (stopping): the kernel stops queueing clients for it.
    pub(super) fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }

    pub(super) fn is_open(&self) -> bool {
        self.fd.is_some()
    }
}

/// What taking places for a new client found.
#[derive(Debug, PartialEq, Eq)]
enum Places {
    Taken,
    /// The service is at its own `max_conns`.
    ServiceFull,
    /// The balancer is at `--max-conns`.
    BalancerFull,
}

/// A client accepted while the balancer (or its service) was at its limit.
pub(super) struct Parked {
    listener: usize,
    fd: OwnedFd,
    peer: Option<SocketAddr>,
}

impl Worker {
    /// Arms an accept on every listener that has none, unless accepting is paused.
    pub(super) fn arm_accepts(&mut self) {
        if self.stopping.is_some() || self.now_ns < self.accept_paused_until {
            return;
        }
        for i in 0..self.listeners.len() {
            let l = &self.listeners[i];
            let Some(fd) = l.fd.as_ref().map(AsRawFd::as_raw_fd) else {
                continue;
            };
            // A listener a reload just added waits for the routing that has its service.
            if l.parked || self.ring.accepting(i) || !self.services.is_live(l.service) {
                continue;
            }
            let token = Token::new(i, 0, OpKind::Accept).encode();
            if self.room(l.service) >= MULTISHOT_ROOM {
                self.ring.accept_multi(i, fd, token);
            } else {
                self.ring.accept(i, fd, token);
            }
        }
    }

    pub(super) fn on_accept(&mut self, listener: usize, c: Completion) {
        match c.accepted {
            Some(a) => self.accepted(listener, a.fd, a.peer),
            None => match -c.result {
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                    tracing::warn!(
                        worker = self.index,
                        "accept: {}; backing off",
                        std::io::Error::from_raw_os_error(-c.result)
                    );
                    self.accept_paused_until = self.now_ns + ACCEPT_BACKOFF_NS;
                }
                libc::ECANCELED => {}
                e => tracing::debug!(
                    worker = self.index,
                    "accept: {}",
                    std::io::Error::from_raw_os_error(e)
                ),
            },
        }
        self.arm_accepts();
    }

    /// The kernel handed over a client: serve it if the balancer has room, else let it
    /// wait (also while stopping: a client the kernel handed over before the accept was
    /// cancelled is already waiting; it is served within the grace period).
    fn accepted(&mut self, listener: usize, fd: OwnedFd, peer: Option<SocketAddr>) {
        WorkerStats::add(&self.stats().accepted, 1);
        // A multishot accept writes no address: ask the socket, if anything needs it. On
        // an address routed by TLS server name the service is not known yet: ask anyway.
        let service = self.listeners[listener].service;
        let by_name = self
            .services
            .sni_table(self.listeners[listener].addr)
            .is_some();
        let wanted =
            by_name || self.service(service).needs_client_addr || self.shared.access_log.is_some();
        let peer = peer.or_else(|| wanted.then(|| net::peer_addr(&fd)).flatten());
        // By name, the lists of the service the name picks apply, once it is read.
        if !by_name && !self.passes_access_lists(service, peer) {
            return self.deny(listener, fd, peer);
        }
        let open = self.take_places(service) == Places::Taken;
        if self.ring.accepting_multi(listener) && self.room(service) < MULTISHOT_ROOM {
            // The budget runs low: one client at a time from now (re-armed on its end).
            self.ring
                .cancel_accept(listener, Token::new(0, 0, OpKind::Ignore).encode());
        }
        if open {
            self.serve(listener, fd, peer);
        } else {
            self.listeners[listener].parked = true;
            self.parked.push_back(Parked { listener, fd, peer });
        }
    }

    /// `--allow`/`--deny` at accept, before the client takes a place, a slot or a
    /// per-source count. A trusted proxy (`--accept-proxy`) passes here: the real client's
    /// address, in its PROXY header, is checked once read ([`Worker::denied_after_header`]).
    fn passes_access_lists(&self, service: ServiceId, peer: Option<SocketAddr>) -> bool {
        let snapshot = self.service(service);
        let access = &snapshot.access;
        if access.is_open() {
            return true;
        }
        match peer {
            Some(p) if snapshot.trusts_proxy(&p) => true,
            Some(p) => access.permits(p.ip()),
            // No address to check (the client went away before it could be read).
            None => false,
        }
    }

    /// Refuses a client the lists do not serve: reset at once and counted.
    fn deny(&mut self, listener: usize, fd: OwnedFd, peer: Option<SocketAddr>) {
        let service = self.listeners[listener].service;
        self.stats().refused(service, Refused::Denied);
        self.log_refused(listener, peer);
        tracing::debug!(worker = self.index, client = ?peer, "refused: denied by --allow/--deny");
        net::set_linger_zero(&fd);
        drop(fd); // closed with linger 0: the client sees a reset
    }

    /// `--allow`/`--deny` for a trusted proxy's client, once its PROXY header has set the
    /// connection's client address: a refused one is reset and counted. Returns whether it
    /// was refused.
    pub(super) fn denied_after_header(&mut self, slot: usize) -> bool {
        let access = &self.slot_service(slot).access;
        let addr = self.slots[slot].conn.client_addr;
        if access.is_open() || addr.is_some_and(|a| access.permits(a.ip())) {
            return false;
        }
        self.stats()
            .refused(self.slots[slot].service, Refused::Denied);
        tracing::debug!(worker = self.index, client = ?addr, "refused: denied by --allow/--deny");
        self.end_as(slot, End::Rejected);
        self.abort(slot, true);
        true
    }

    /// Resets the clients that waited for a place on a listener now closed (its service
    /// was removed), and gives their places back.
    pub(super) fn reset_parked_of_closed(&mut self) {
        let listeners = &mut self.listeners;
        self.parked.retain(|p| {
            let l = &mut listeners[p.listener];
            if l.fd.is_some() {
                return true;
            }
            l.parked = false;
            net::set_linger_zero(&p.fd);
            false
        });
    }

    /// Takes a place for a new client of `service`: one of its own `max_conns`, if it
    /// has one, and one of the balancer's.
    fn take_places(&self, service: ServiceId) -> Places {
        let budget = self.service(service).budget.as_deref();
        if budget.is_some_and(|b| !b.try_take()) {
            return Places::ServiceFull;
        }
        if self.shared.try_open() {
            return Places::Taken;
        }
        if let Some(b) = budget {
            b.give_back();
        }
        Places::BalancerFull
    }

    /// Places left for new clients of `service` (its own and the balancer's).
    pub(super) fn room(&self, service: ServiceId) -> usize {
        let own = self
            .services
            .get(service)
            .and_then(|s| s.budget.as_ref())
            .map_or(usize::MAX, |b| b.room());
        own.min(self.shared.room())
    }

    /// Serves the clients that waited for a place, in the order they came, while places
    /// are free: one whose service is full lets the next (of another service) go first.
    pub(super) fn serve_parked(&mut self) {
        let mut i = 0;
        while i < self.parked.len() {
            let service = self.listeners[self.parked[i].listener].service;
            match self.take_places(service) {
                Places::BalancerFull => break,
                Places::ServiceFull => i += 1,
                Places::Taken => {
                    let Some(p) = self.parked.remove(i) else {
                        break;
                    };
                    self.listeners[p.listener].parked = false;
                    self.serve(p.listener, p.fd, p.peer);
                }
            }
        }
    }

    /// A client with its place in the budget: give it a slot and connect it to a backend.
    fn serve(&mut self, listener: usize, fd: OwnedFd, peer: Option<SocketAddr>) {
        let Some(slot) = self.alloc_slot() else {
            // Never expected: the ring has a slot for every place of the budget.
            let service = self.listeners[listener].service;
            self.stats().refused(service, Refused::NoSlot);
            tracing::error!(
                worker = self.index,
                "no free connection slot; resetting a client"
            );
            net::set_linger_zero(&fd);
            self.shared.close_one();
            let service = self.listeners[listener].service;
            if let Some(b) = &self.service(service).budget {
                b.give_back();
            }
            return;
        };
        self.open += 1;
        let service = self.listeners[listener].service;
        self.slots[slot].service = service;
        let addr = self.listeners[listener].addr;
        self.slots[slot].sni_addr = self.services.sni_table(addr).map(|_| addr);
        self.slots[slot].service_place = self.service(service).budget.clone();
        self.slots[slot].log = SlotLog::new(self.listeners[listener].addr, self.now_ns);
        if let Some(idle) = self.service(service).tcp_keepalive {
            net::set_keepalive(&fd, idle);
        }
        let (fwd, now) = (self.fwd, self.now_ns);
        self.slots[slot].conn.open(fd, peer, fwd, now);
        match self.judge_local_client(slot, listener) {
            Verdict::Loop => self.cut_loop(slot),
            Verdict::Wait(barrier) => {
                // It may be one of our own connects in progress: judged once they are done.
                self.slots[slot].waiting = Some(barrier);
                let gen = self.slots[slot].gen;
                self.loop_waits.push((slot as u32, gen));
            }
            Verdict::Clear => self.start(slot),
        }
    }

    /// A client judged no loop: read the upstream balancer's PROXY header, or apply the
    /// limits and connect it to a backend.
    fn start(&mut self, slot: usize) {
        let peer = self.slots[slot].conn.client_addr;
        let by_name = self.slots[slot].sni_addr.is_some();
        if peer.is_some_and(|a| self.slot_service(slot).trusts_proxy(&a)) {
            // The upstream balancer's header comes first; it may change the client address
            // that limits and hashing see, so both wait for it.
            if by_name {
                self.arm_hello_deadline(slot);
            } else {
                self.arm_idle_timer(slot);
            }
            self.slots[slot].conn.open_handshake(&mut self.actions);
            return self.perform(slot);
        }
        if by_name {
            self.arm_hello_deadline(slot);
            return self.read_hello(slot, 0);
        }
        if self.admit(slot) {
            self.connect_next(slot);
        }
    }

    fn cut_loop(&mut self, slot: usize) {
        self.stats()
            .refused(self.slots[slot].service, Refused::Loop);
        tracing::warn!(
            worker = self.index,
            client = ?self.slots[slot].conn.client_addr,
            "a backend leads back to this balancer: its connection is refused"
        );
        self.end_as(slot, End::Rejected);
        self.abort(slot, true);
    }

    /// Judges again the clients that waited for connects in progress (see
    /// [`crate::loops`]); called after each batch of completions.
    pub(super) fn recheck_loop_waits(&mut self) {
        if self.loop_waits.is_empty() {
            return;
        }
        for (slot, gen) in std::mem::take(&mut self.loop_waits) {
            let slot = slot as usize;
            let s = &self.slots[slot];
            let (Some(barrier), Some(ends)) = (s.waiting, s.incoming) else {
                continue;
            };
            if !s.in_use || s.gen != gen {
                continue;
            }
            match self.shared.loops.recheck(ends, barrier) {
                Verdict::Wait(_) => self.loop_waits.push((slot as u32, gen)),
                Verdict::Loop => {
                    self.slots[slot].waiting = None;
                    self.cut_loop(slot);
                }
                Verdict::Clear => {
                    self.slots[slot].waiting = None;
                    self.start(slot);
                }
            }
        }
    }

    /// A client NAT redirected from one of this host's addresses may be one of the
    /// balancer's own backend connections coming back: record it, and judge it (see
    /// [`crate::loops`]).
    fn judge_local_client(&mut self, slot: usize, listener: usize) -> Verdict {
        if !self.slot_service(slot).watch_loops {
            return Verdict::Clear;
        }
        let bound = self.listeners[listener].addr;
        let Some(client) = self.slots[slot].conn.client() else {
            return Verdict::Clear;
        };
        let tracked = net::original_dst(client, bound.is_ipv6());
        self.shared.loops.saw_client(tracked.is_some());
        let Some(original) = tracked else {
            return Verdict::Clear; // unknown to conntrack: not redirected
        };
        let local = if bound.ip().is_unspecified() {
            match net::local_addr(client) {
                Some(a) => a,
                None => return Verdict::Clear,
            }
        } else {
            bound
        };
        if original == local {
            // Not redirected: the balancer's own connections never go to its own addresses.
            return Verdict::Clear;
        }
        let Some(peer) = self.slots[slot]
            .conn
            .client_addr
            .or_else(|| net::peer_addr(client))
        else {
            return Verdict::Clear;
        };
        if !self.slot_service(slot).is_local(peer.ip()) {
            return Verdict::Clear;
        }
        let ends = ClientEnds {
            peer,
            local,
            original: Some(original),
        };
        self.slots[slot].incoming = Some(ends);
        self.shared.loops.incoming(ends)
    }

    /// Applies the per-source limits to the connection's client address; a refused client
    /// is reset at once and counted. Returns whether it may go on.
    pub(super) fn admit(&mut self, slot: usize) -> bool {
        let limits = self.slot_service(slot).limits;
        let Some(addr) = self.slots[slot].conn.client_addr else {
            return true;
        };
        if !limits.any() {
            return true;
        }
        match self.shared.sources.admit(addr.ip(), self.now_ns, limits) {
            Ok(()) => {
                self.slots[slot].conn.count_source(addr.ip());
                true
            }
            Err(refusal) => {
                let why = match refusal {
                    crate::limits::Refusal::TooManyConns => Refused::MaxConnsPerSource,
                    crate::limits::Refusal::TooFast => Refused::MaxConnRatePerSource,
                };
                self.stats().refused(self.slots[slot].service, why);
                tracing::debug!(worker = self.index, client = %addr, "refused: {refusal:?}");
                self.end_as(slot, End::Rejected);
                self.abort(slot, true);
                false
            }
        }
    }

    fn alloc_slot(&mut self) -> Option<usize> {
        let slot = if let Some(s) = self.free.pop() {
            s as usize
        } else if self.slots.len() < self.ring.slot_count() {
            self.slots.push(Slot {
                gen: 0,
                in_use: false,
                dirty: false,
                freed_ns: 0,
                service: ServiceId(0),
                service_place: None,
                sni_addr: None,
                conn: Conn::new(),
                incoming: None,
                outgoing: None,
                ticket: None,
                waiting: None,
                log: SlotLog::new(SocketAddr::from(([0, 0, 0, 0], 0)), 0),
            });
            self.slots.len() - 1
        } else {
            return None;
        };
        self.slots[slot].in_use = true;
        Some(slot)
    }
}
