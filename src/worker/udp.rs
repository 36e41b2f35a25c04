//! UDP services in the worker's ring.
//!
//! Each UDP listen address has one `SO_REUSEPORT` socket per worker (the kernel hashes a
//! client's datagrams to one of them, so a flow lives on one worker). A multishot
//! `recvmsg` receives on it into the ring's provided buffers. A datagram from a client
//! address with no flow opens one ([`crate::udp_flows`]): the service's algorithm picks a
//! backend (the hashing ones from the client address, so every worker and every instance
//! agree), and the flow gets its own socket connected to that backend, with its own
//! multishot receive. Replies go back through the listener, from the address the client
//! sent to. Sends are direct calls ([`crate::udp_net`]).
//!
//! A flow ends when it has been idle for `udp_idle_timeout`, after `udp_responses`
//! replies, when the backend refuses (ICMP port unreachable: `ECONNREFUSED`, a passive
//! health failure), when the service is at its share of `max_flows` and it is the one
//! idle longest, when its backend goes down while another is up, or when its backend's
//! drain deadline passes (a removed or drained backend); the client's next datagram then
//! opens a flow to a backend that is up. A flow that sent and never got a reply counts
//! as a failure of its backend when it ends, so a silent backend is ejected like a
//! refusing one.
//!
//! Stopping or a reload that removes the address: the listener takes no new flows, keeps
//! forwarding for the flows it has, and closes when the last one ends (at the latest when
//! the grace period does).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::candidates::Candidates;
use super::stats::{UdpCounts, UdpDrop};
use super::token::{OpKind, Token};
use super::Worker;
use crate::access_log::Record;
use crate::backend::{BackendId, BackendState, ServiceId};
use crate::balance::{self, Request};
use crate::direction::{Dir, PerDir};
use crate::udp_flows::{worker_share, FlowKey, Flows};
use crate::udp_net;
use crate::uring::Completion;

/// A UDP listening socket of this worker.
pub(super) struct UdpListener {
    /// `None` once closed.
    fd: Option<OwnedFd>,
    /// The address it is bound to.
    pub(super) addr: SocketAddr,
    pub(super) service: ServiceId,
    /// Its multishot receive is in flight.
    armed: bool,
    /// Takes no new flows; closes once `flows` is 0.
    draining: bool,
    /// Another process reads it now (an upgrade): no more receives, only the replies of
    /// the open flows leave through it.
    handed_over: bool,
    /// Flows whose replies leave through it.
    flows: usize,
}

/// One flow: a client address, the backend it sticks to, and the socket to it.
pub(super) struct Flow {
    service: ServiceId,
    listener: usize,
    backend: BackendId,
    backend_addr: SocketAddr,
    sock: OwnedFd,
    /// The address the client sent to, when the listener is a wildcard one.
    reply_from: Option<IpAddr>,
    sent: u64,
    replies: u32,
    /// Counted in the per-source limits' table (released when it ends).
    counted_source: bool,
    /// When it opened (for the access log).
    opened_ns: u64,
    /// Payload bytes forwarded, client -> backend and backend -> client.
    bytes: PerDir<u64>,
    /// Of those, the bytes already added to the backend's counts.
    flushed: PerDir<u64>,
}

impl Flow {
    /// Adds the bytes forwarded since the last time to the backend's counts
    /// (`uringlb_backend_bytes_total`): once a second, as for open connections, and at
    /// the end, so a datagram costs no shared atomic.
    fn flush_bytes(&mut self, counters: &crate::backend::BackendCounters) {
        for dir in Dir::BOTH {
            let n = self.bytes[dir] - self.flushed[dir];
            if n > 0 {
                counters.bytes(dir).fetch_add(n, Ordering::Relaxed);
            }
        }
        self.flushed = self.bytes;
    }
}

/// Why a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Idle,
    Responses,
    Evicted,
    Refused,
    /// Cut at the end of the grace period, or at its backend's drain deadline.
    Drained,
    /// Its backend went down while others are up.
    BackendDown,
}

impl End {
    /// The access log's `result` for it: a backend's ICMP refusal is a datagram's reset,
    /// a cut drains as a connection's does.
    fn result(self) -> crate::access_log::End {
        use crate::access_log::End as Log;
        match self {
            End::Idle => Log::IdleTimeout,
            End::Responses => Log::Closed,
            End::Evicted => Log::Evicted,
            End::Refused => Log::Reset,
            End::Drained => Log::Drained,
            End::BackendDown => Log::Reset,
        }
    }
}

/// The UDP side of a worker.
#[derive(Default)]
pub(super) struct Udp {
    listeners: Vec<UdpListener>,
    flows: Flows<Flow>,
    /// By service id.
    counts: Vec<UdpCounts>,
}

impl Udp {
    /// The UDP side of a worker taking the place of one that failed: its counts go on
    /// from what the failed one published last (its flows are gone), so counters never
    /// go back.
    pub(super) fn carried_on(published: &std::sync::Mutex<Vec<UdpCounts>>) -> Udp {
        let mut counts = published.lock().map(|c| c.clone()).unwrap_or_default();
        for c in &mut counts {
            c.flows_active = 0;
        }
        Udp {
            counts,
            ..Udp::default()
        }
    }

    /// No flow open: nothing of UDP holds a stop back.
    pub(super) fn idle(&self) -> bool {
        self.flows.is_empty()
    }

    /// Whether a flow of service `id` is open (a removed service's snapshot is kept
    /// while one is).
    pub(super) fn uses(&self, id: ServiceId) -> bool {
        self.flows.len(id.0 as usize) > 0
    }

    fn count(&mut self, id: ServiceId) -> &mut UdpCounts {
        let i = id.0 as usize;
        if self.counts.len() <= i {
            self.counts.resize_with(i + 1, UdpCounts::default);
        }
        &mut self.counts[i]
    }
}

impl Worker {
    /// Takes a UDP listening socket (at start, or one a reload added).
    pub(super) fn add_udp_listener(&mut self, fd: OwnedFd, addr: SocketAddr, service: ServiceId) {
        if let Err(e) = self.ring.enable_datagrams() {
            tracing::error!(worker = self.index, %addr, "cannot receive UDP datagrams: {e}");
            return;
        }
        self.udp.listeners.push(UdpListener {
            fd: Some(fd),
            addr,
            service,
            armed: false,
            draining: false,
            handed_over: false,
            flows: 0,
        });
        self.arm_udp();
    }

    /// Arms the receive of every open UDP listener that has none.
    pub(super) fn arm_udp(&mut self) {
        for i in 0..self.udp.listeners.len() {
            let l = &self.udp.listeners[i];
            let Some(fd) = l.fd.as_ref().map(AsRawFd::as_raw_fd) else {
                continue;
            };
            // A listener a reload just added waits for the routing that has its service.
            if l.armed || l.handed_over || (!l.draining && !self.services.is_live(l.service)) {
                continue;
            }
            let ud = Token::new(i, 0, OpKind::UdpListen).encode();
            if self.ring.recv_datagrams(fd, ud) {
                self.udp.listeners[i].armed = true;
            }
        }
    }

    /// A new routing: each listener takes new flows for the service listening on its
    /// address now; those of addresses no service listens on any more take no new flows
    /// and close once their flows are done.
    pub(super) fn udp_routing_changed(&mut self) {
        for i in 0..self.udp.listeners.len() {
            let l = &mut self.udp.listeners[i];
            if l.fd.is_none() || l.draining {
                continue;
            }
            // New flows go to the service listening on the address now.
            match self.services.listening_at(l.addr, true) {
                Some(id) => l.service = id,
                None => {
                    l.draining = true;
                    self.close_udp_listener_if_done(i);
                }
            }
        }
        self.end_flows_on_down_backends();
        self.arm_udp();
    }

    /// Flows whose backend is down in the new routing end, so their clients' next
    /// datagrams go to backends that are up (as IPVS's `expire_nodest_conn`): a TCP
    /// connection breaks by itself when its backend dies, but a flow would go on sending
    /// to a backend that stopped answering for as long as its client sends. Not while no
    /// backend of the service is up: panic mode would pick a down one again.
    fn end_flows_on_down_backends(&mut self) {
        let mut down = Vec::new();
        for class in 0..self.udp.flows.classes() {
            let Some(snapshot) = self.services.get(ServiceId(class as u32)) else {
                continue;
            };
            if snapshot.backends.iter().any(|b| b.state.accepts_new()) {
                let ids = snapshot
                    .backends
                    .iter()
                    .filter(|b| b.state == BackendState::Down);
                down.extend(ids.map(|b| b.id));
            }
        }
        self.end_flows_to(&down, End::BackendDown);
    }

    /// Stopping: no new flows anywhere; open flows go on until they end or the grace
    /// period does.
    pub(super) fn udp_begin_stop(&mut self) {
        for i in 0..self.udp.listeners.len() {
            self.udp.listeners[i].draining = true;
            self.close_udp_listener_if_done(i);
        }
    }

    /// The listeners were handed over to another process: stop receiving on them (a
    /// receive in flight is cancelled), so every datagram goes to the new process.
    pub(super) fn udp_stop_reading(&mut self) {
        let ignore = Token::new(0, 0, OpKind::Ignore).encode();
        for l in &mut self.udp.listeners {
            l.handed_over = true;
            if let (true, Some(fd)) = (l.armed, l.fd.as_ref()) {
                self.ring.cancel_fd(fd.as_raw_fd(), ignore);
            }
        }
    }

    /// The flows of backends past their drain deadline end, as their connections are cut:
    /// a client that keeps sending would otherwise keep a removed backend forever. Its
    /// next datagram opens a flow to a backend that stays.
    pub(super) fn end_udp_flows_of(&mut self, expired: &[BackendId]) {
        self.end_flows_to(expired, End::Drained);
    }

    /// Ends, for `why`, every flow whose backend is one of `backends`.
    fn end_flows_to(&mut self, backends: &[BackendId], why: End) {
        if backends.is_empty() {
            return;
        }
        let mut cut = Vec::new();
        for class in 0..self.udp.flows.classes() {
            for id in self.udp.flows.ids(class) {
                let backend = self.udp.flows.get(id, None).map(|f| f.backend);
                if backend.is_some_and(|b| backends.contains(&b)) {
                    cut.push(id);
                }
            }
        }
        for id in cut {
            self.end_flow(id, why);
        }
    }

    /// The grace period is over (or the worker gives up): every flow ends now.
    pub(super) fn udp_end_all(&mut self) {
        for class in 0..self.udp.flows.classes() {
            for id in self.udp.flows.ids(class) {
                self.end_flow(id, End::Drained);
            }
        }
    }

    fn close_udp_listener_if_done(&mut self, i: usize) {
        let l = &mut self.udp.listeners[i];
        if !l.draining || l.flows > 0 {
            return;
        }
        if let Some(fd) = l.fd.take() {
            tracing::debug!(worker = self.index, addr = %l.addr, "closing a UDP listener");
            let ignore = Token::new(0, 0, OpKind::Ignore).encode();
            self.ring.cancel_fd(fd.as_raw_fd(), ignore);
            self.ring.close(fd, ignore);
        }
    }

    /// A completion of a listener's receive: a client's datagram (or the receive ended).
    pub(super) fn on_udp_listen(&mut self, i: usize, c: Completion) {
        if let Some(bid) = c.buffer {
            if c.result > 0 && i < self.udp.listeners.len() {
                self.client_datagram(i, bid, c.result as usize);
            }
            self.ring.recycle(bid);
        }
        if !c.more {
            if let Some(l) = self.udp.listeners.get_mut(i) {
                l.armed = false;
                if c.result < 0 && c.result != -libc::ENOBUFS && c.result != -libc::ECANCELED {
                    let e = std::io::Error::from_raw_os_error(-c.result);
                    self.warn_rate_limited(&format!("UDP receive failed: {e}"));
                }
            }
            self.arm_udp();
        }
    }

    /// A datagram from a client, in buffer `bid`.
    fn client_datagram(&mut self, i: usize, bid: u16, len: usize) {
        let listener_addr = self.udp.listeners[i].addr;
        let service = self.udp.listeners[i].service;
        let Some((client, reply_from, truncated, size)) = self.ring.datagram(bid, len).map(|d| {
            let dst = listener_addr
                .ip()
                .is_unspecified()
                .then(|| udp_net::pktinfo_dst(d.control))
                .flatten();
            (
                udp_net::sockaddr_from_bytes(d.name),
                dst,
                d.truncated,
                d.payload.len(),
            )
        }) else {
            return;
        };
        let Some(client) = client else { return };
        if truncated {
            self.drop_datagram(service, UdpDrop::Truncated);
            return;
        }
        let local = SocketAddr::new(
            reply_from.unwrap_or(listener_addr.ip()),
            listener_addr.port(),
        );
        let key = FlowKey { client, local };
        let id = match self.udp.flows.find(&key) {
            Some(id) => id,
            None => match self.open_flow(i, key, reply_from) {
                Ok(id) => id,
                Err(why) => return self.drop_datagram(service, why),
            },
        };
        self.udp.flows.touch(id, self.now_ns);
        let flow = self.udp.flows.get(id, None).expect("found or opened above");
        let result = match self.ring.datagram(bid, len) {
            Some(d) => udp_net::send(&flow.sock, d.payload),
            None => return,
        };
        let flow_service = flow.service;
        match result {
            Ok(()) => {
                if let Some(f) = self.udp.flows.get_mut(id, None) {
                    f.sent += 1;
                    f.bytes[Dir::Up] += size as u64;
                }
                let c = self.udp.count(flow_service);
                c.datagrams[0] += 1;
                c.bytes[0] += size as u64;
            }
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                // An ICMP error from an earlier datagram of the flow.
                self.drop_datagram(flow_service, UdpDrop::SendFailed);
                self.end_flow(id, End::Refused);
            }
            Err(_) => self.drop_datagram(flow_service, UdpDrop::SendFailed),
        }
    }

    /// Opens the flow of `key` on listener `i`: the allow/deny lists and the per-source
    /// limits first, then room (the oldest idle flow of the service goes when it is at its
    /// share of `max_flows`), then a backend, then a socket connected to it with its
    /// receive armed.
    fn open_flow(
        &mut self,
        i: usize,
        key: FlowKey,
        reply_from: Option<IpAddr>,
    ) -> Result<u32, UdpDrop> {
        let service = self.udp.listeners[i].service;
        if self.udp.listeners[i].draining || self.stopping.is_some() {
            return Err(UdpDrop::Stopping);
        }
        let snapshot = self.services.get(service).ok_or(UdpDrop::Stopping)?;
        if !snapshot.access.is_open() && !snapshot.access.permits(key.client.ip()) {
            return Err(UdpDrop::Denied);
        }
        // Before any flow is evicted for it: a refused source takes no one's place.
        let limits = snapshot.limits;
        let counted_source = limits.any();
        if counted_source {
            if let Err(r) = self
                .shared
                .sources
                .admit(key.client.ip(), self.now_ns, limits)
            {
                return Err(match r {
                    crate::limits::Refusal::TooManyConns => UdpDrop::MaxConnsPerSource,
                    crate::limits::Refusal::TooFast => UdpDrop::MaxConnRatePerSource,
                });
            }
        }
        let opened = self.open_flow_admitted(i, key, reply_from, counted_source);
        if opened.is_err() && counted_source {
            self.shared.sources.release(key.client.ip(), self.now_ns);
        }
        opened
    }

    /// The rest of [`Self::open_flow`], once the client is admitted.
    fn open_flow_admitted(
        &mut self,
        i: usize,
        key: FlowKey,
        reply_from: Option<IpAddr>,
        counted_source: bool,
    ) -> Result<u32, UdpDrop> {
        let service = self.udp.listeners[i].service;
        let snapshot = self.services.get(service).ok_or(UdpDrop::Stopping)?;
        let udp = snapshot.udp.ok_or(UdpDrop::Stopping)?;
        let class = service.0 as usize;
        let share = worker_share(udp.max_flows, self.shared.stats.len());
        while self.udp.flows.len(class) >= share {
            let Some((oldest, _)) = self.udp.flows.oldest(class) else {
                break;
            };
            self.udp.count(service).evictions += 1;
            self.end_flow(oldest, End::Evicted);
        }
        let (backend, addr) = self
            .pick_udp(service, &key.client)
            .ok_or(UdpDrop::NoBackend)?;
        let sock = match udp_net::backend_socket(addr) {
            Ok(s) => s,
            Err(e) => {
                self.warn_rate_limited(&format!("cannot open a UDP socket to {addr}: {e}"));
                return Err(UdpDrop::SendFailed);
            }
        };
        let counters = self.shared.counters.get(backend);
        counters.active.fetch_add(1, Ordering::Relaxed);
        counters.total.fetch_add(1, Ordering::Relaxed);
        let fd = sock.as_raw_fd();
        let flow = Flow {
            service,
            listener: i,
            backend,
            backend_addr: addr,
            sock,
            reply_from,
            sent: 0,
            replies: 0,
            counted_source,
            opened_ns: self.now_ns,
            bytes: PerDir::new(0, 0),
            flushed: PerDir::new(0, 0),
        };
        let id = self.udp.flows.insert(key, class, flow, self.now_ns);
        self.udp.listeners[i].flows += 1;
        let c = self.udp.count(service);
        c.flows_total += 1;
        let ud = Token::new(id as usize, self.udp.flows.gen(id), OpKind::UdpBackend).encode();
        self.ring.recv_datagrams(fd, ud);
        Ok(id)
    }

    /// The service's choice of backend for a new flow from `client`.
    fn pick_udp(
        &mut self,
        service: ServiceId,
        client: &SocketAddr,
    ) -> Option<(BackendId, SocketAddr)> {
        let now_ns = self.now_ns;
        let (snapshot, balancer, picks) = self.services.picker(service)?;
        let pool = Candidates::new(snapshot, &self.shared.counters, &[]);
        let req = Request {
            key: balance::hash_client(client, snapshot.hash_key),
            now_ns,
            retry: false,
        };
        *picks += 1;
        let i = balancer.pick(&pool, &req)?;
        let b = &snapshot.backends[i];
        Some((b.id, b.addr))
    }

    /// A completion of a flow's receive from its backend: a reply (or an error).
    pub(super) fn on_udp_backend(&mut self, tok: Token, c: Completion) {
        let id = tok.slot;
        let live = self.udp.flows.get(id, None).is_some()
            && Token::new(0, self.udp.flows.gen(id), OpKind::Ignore).gen == tok.gen;
        if let Some(bid) = c.buffer {
            if live && c.result > 0 {
                self.backend_datagram(id, bid, c.result as usize);
            }
            self.ring.recycle(bid);
        }
        if !live || self.udp.flows.get(id, None).is_none() {
            return; // a flow that ended (its cancelled receive), or ended by this reply
        }
        if c.result < 0 {
            match -c.result {
                libc::ECONNREFUSED => return self.end_flow(id, End::Refused),
                libc::ENOBUFS => {}
                _ => return self.end_flow(id, End::Refused),
            }
        }
        if !c.more {
            let fd = self.udp.flows.get(id, None).map(|f| f.sock.as_raw_fd());
            if let Some(fd) = fd {
                let ud = Token::new(id as usize, self.udp.flows.gen(id), OpKind::UdpBackend);
                self.ring.recv_datagrams(fd, ud.encode());
            }
        }
    }

    /// A reply from flow `id`'s backend, in buffer `bid`: back to the client.
    fn backend_datagram(&mut self, id: u32, bid: u16, len: usize) {
        let Some(key) = self.udp.flows.key(id) else {
            return;
        };
        let flow = self.udp.flows.get(id, None).expect("key found");
        let (service, backend, listener, from) =
            (flow.service, flow.backend, flow.listener, flow.reply_from);
        let Some(d) = self.ring.datagram(bid, len) else {
            return;
        };
        if d.truncated {
            return self.drop_datagram(service, UdpDrop::Truncated);
        }
        let size = d.payload.len();
        let sent = match self.udp.listeners.get(listener).and_then(|l| l.fd.as_ref()) {
            Some(fd) => udp_net::send_to(fd, d.payload, key.client, from),
            None => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
        };
        // The backend answered: it is alive, whatever happens to the reply.
        self.shared
            .counters
            .get(backend)
            .consecutive_failures
            .store(0, Ordering::Relaxed);
        if sent.is_err() {
            self.drop_datagram(service, UdpDrop::SendFailed);
        } else {
            let c = self.udp.count(service);
            c.datagrams[1] += 1;
            c.bytes[1] += size as u64;
        }
        self.udp.flows.touch(id, self.now_ns);
        let limit = self
            .services
            .get(service)
            .and_then(|s| s.udp)
            .map_or(0, |u| u.responses);
        let flow = self.udp.flows.get_mut(id, None).expect("key found");
        flow.replies = flow.replies.saturating_add(1);
        if sent.is_ok() {
            flow.bytes[Dir::Down] += size as u64;
        }
        if limit > 0 && flow.replies >= limit {
            self.end_flow(id, End::Responses);
        }
    }

    fn drop_datagram(&mut self, service: ServiceId, why: UdpDrop) {
        let i = UdpDrop::ALL.iter().position(|d| *d == why).unwrap_or(0);
        self.udp.count(service).drops[i] += 1;
    }

    /// Ends flow `id`: its receive is cancelled and its socket closed, its backend's count
    /// given back, and a flow that never got a reply counted against the backend.
    fn end_flow(&mut self, id: u32, why: End) {
        let Some((key, mut flow)) = self.udp.flows.remove(id) else {
            return;
        };
        flow.flush_bytes(self.shared.counters.get(flow.backend));
        if flow.counted_source {
            self.shared.sources.release(key.client.ip(), self.now_ns);
        }
        self.log_flow(&key, &flow, why);
        tracing::trace!(worker = self.index, flow = id, ?why, "UDP flow ends");
        let ignore = Token::new(0, 0, OpKind::Ignore).encode();
        self.ring.cancel_fd(flow.sock.as_raw_fd(), ignore);
        self.ring.close(flow.sock, ignore);
        let counters = self.shared.counters.get(flow.backend);
        counters.active.fetch_sub(1, Ordering::Relaxed);
        let unanswered = flow.sent > 0 && flow.replies == 0 && why == End::Idle;
        if why == End::Refused || unanswered {
            counters.failures.fetch_add(1, Ordering::Relaxed);
            counters
                .consecutive_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Some(l) = self.udp.listeners.get_mut(flow.listener) {
            l.flows -= 1;
        }
        self.close_udp_listener_if_done(flow.listener);
    }

    /// Open flows' bytes reach their backends' counts (called once a second).
    pub(super) fn flush_udp_bytes(&mut self) {
        let counters = &self.shared.counters;
        for flow in self.udp.flows.values_mut() {
            flow.flush_bytes(counters.get(flow.backend));
        }
    }

    /// Hands the access log one record for the flow that ended: its client and the address
    /// it sent to, its backend, how long it lasted and the payload bytes each way.
    fn log_flow(&mut self, key: &FlowKey, flow: &Flow, why: End) {
        if self.shared.access_log.is_none() {
            return;
        }
        let Some(listen) = self.udp.listeners.get(flow.listener).map(|l| l.addr) else {
            return;
        };
        let record = Record {
            service: flow.service,
            client: Some(key.client),
            listen,
            backend: Some((flow.backend, flow.backend_addr)),
            start_ns: flow.opened_ns,
            end_ns: self.now_ns,
            connect_ns: None,
            bytes: flow.bytes,
            retries: 0,
            end: why.result(),
            sni: None,
        };
        self.log_record(record);
    }

    /// On the tick: ends the flows idle for their service's `udp_idle_timeout`, and
    /// publishes this worker's counts.
    pub(super) fn udp_tick(&mut self) {
        for class in 0..self.udp.flows.classes() {
            let idle = self
                .services
                .get(ServiceId(class as u32))
                .and_then(|s| s.udp)
                .map_or(0, |u| u.idle_timeout.as_nanos() as u64);
            while let Some((id, last)) = self.udp.flows.oldest(class) {
                if last.saturating_add(idle) > self.now_ns {
                    break;
                }
                self.end_flow(id, End::Idle);
            }
        }
        self.publish_udp_counts();
    }

    fn publish_udp_counts(&mut self) {
        if self.udp.listeners.is_empty() && self.udp.counts.is_empty() {
            return;
        }
        for class in 0..self.udp.counts.len() {
            self.udp.counts[class].flows_active = self.udp.flows.len(class) as u64;
        }
        self.store_udp_counts();
    }

    /// Publishes the counts by service id (for the metrics, and for a worker taking this
    /// one's place to go on from them).
    fn store_udp_counts(&self) {
        if let Ok(mut shared) = self.shared.udp[self.index].lock() {
            shared.clone_from(&self.udp.counts);
        }
    }

    /// The ring failed: give back the backends' counts of every flow (the sockets close
    /// when the worker is dropped) and publish the datagram counts one last time.
    pub(super) fn udp_abandon(&mut self) {
        for class in 0..self.udp.flows.classes() {
            for id in self.udp.flows.ids(class) {
                if let Some((key, flow)) = self.udp.flows.remove(id) {
                    let c = self.shared.counters.get(flow.backend);
                    c.active.fetch_sub(1, Ordering::Relaxed);
                    if flow.counted_source {
                        self.shared.sources.release(key.client.ip(), self.now_ns);
                    }
                }
            }
        }
        for c in &mut self.udp.counts {
            c.flows_active = 0;
        }
        // Counted since the last tick: kept for the worker that takes this one's place.
        self.store_udp_counts();
    }
}
