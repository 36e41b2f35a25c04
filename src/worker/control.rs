//! What drives a worker besides its connections: commands from the control thread (a new
//! snapshot, stop), woken by an eventfd read in the ring, and a repeating tick that drives
//! the idle deadlines, drain deadlines, the queue for full backends and clients waiting for
//! a place under `--max-conns`.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::conn::{Phase, Timeout};
use super::stats::Refused;
use super::token::{OpKind, Token};
use super::{Command, Worker, TICK};
use crate::backend::{BackendId, BackendState};

impl Worker {
    /// The eventfd read completed: take every command waiting, then read again.
    pub(super) fn on_wake(&mut self, result: i32) {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Routing(r) => {
                    tracing::debug!(worker = self.index, version = r.version, "new routing");
                    self.services.adopt(&r, self.index, &self.shared.counters);
                    self.label_listeners();
                    self.arm_accepts();
                    self.udp_routing_changed();
                    self.stats()
                        .snapshot_version
                        .store(r.version, Ordering::Release);
                }
                Command::Listen(new) => {
                    for (_, addr, _) in &new {
                        tracing::debug!(worker = self.index, %addr, "new listener");
                    }
                    self.take_listeners(new);
                    self.arm_accepts();
                }
                Command::Stop { grace } => self.begin_stop(grace),
                Command::HandOver { grace } => {
                    self.begin_stop(grace);
                    self.udp_stop_reading();
                }
            }
        }
        if result != -libc::ECANCELED {
            let ud = Token::new(0, 0, OpKind::Wake).encode();
            self.ring.read_eventfd(self.wake.as_raw_fd(), ud);
        }
    }

    /// Stops accepting and gives open connections until `grace` from now; a second stop
    /// can only bring that deadline closer.
    fn begin_stop(&mut self, grace: Duration) {
        let deadline = self.now_ns + grace.as_nanos() as u64;
        if let Some(current) = self.stopping {
            if deadline < current {
                tracing::info!(worker = self.index, open = self.open, "stopping sooner");
                self.stopping = Some(deadline);
            }
            return;
        }
        self.stopping = Some(deadline);
        self.close_listeners(|_| true);
        self.udp_begin_stop();
        tracing::info!(worker = self.index, open = self.open, "stopping");
    }

    /// Labels each TCP listener with the service that listens on its address in the
    /// routing now, and closes those of addresses no service listens on any more (a reload
    /// that made the service UDP closes its TCP listeners too).
    pub(super) fn label_listeners(&mut self) {
        let mut close = Vec::with_capacity(self.listeners.len());
        for l in &mut self.listeners {
            match self.services.listening_at(l.addr, false) {
                Some(id) => {
                    l.service = id;
                    close.push(false);
                }
                None => close.push(true),
            }
        }
        self.close_listeners(|i| close[i]);
    }

    /// Closes the listeners `which` selects (by index), so the kernel stops queueing
    /// connections for this worker (another process on the same SO_REUSEPORT address
    /// takes them); their clients still waiting for a place are reset, unless stopping.
    fn close_listeners(&mut self, which: impl Fn(usize) -> bool) {
        let ignore = Token::new(0, 0, OpKind::Ignore).encode();
        for i in 0..self.listeners.len() {
            if !which(i) || !self.listeners[i].is_open() {
                continue;
            }
            tracing::debug!(worker = self.index, addr = %self.listeners[i].addr, "closing a listener");
            self.ring.cancel_accept(i, ignore);
            if let Some(fd) = self.listeners[i].take_fd() {
                // The close runs after the cancel queued above.
                self.ring.close(fd, ignore);
            }
        }
        if self.stopping.is_none() {
            self.reset_parked_of_closed();
        }
    }

    /// The tick fired (every [`TICK`]).
    pub(super) fn on_tick(&mut self, more: bool, result: i32) {
        if !more {
            if result == -libc::EINVAL && self.tick_multishot {
                self.tick_multishot = false; // kernel without multishot timeouts
            }
            let ud = Token::new(0, 0, OpKind::Tick).encode();
            if self.tick_multishot {
                self.ring.tick(TICK, ud);
            } else {
                self.ring.tick_once(TICK, ud);
            }
        }
        self.expire_idle();
        self.udp_tick();
        self.close_drained();
        self.retry_queue();
        if self.index == 0 && self.services.all().any(|s| s.limits.max_rate.is_some()) {
            // Rate windows of sources that closed everything end without a close to
            // forget them: sweep once a second.
            if self.now_ns >= self.next_prune_ns {
                self.shared.sources.prune(self.now_ns);
                self.next_prune_ns = self.now_ns + crate::limits::RATE_WINDOW_NS;
            }
        }
        // Places another worker freed.
        self.serve_parked();
        self.arm_accepts();
        if self.services.has_retired() {
            let (slots, udp) = (&self.slots, &self.udp);
            self.services
                .prune(|id| udp.uses(id) || slots.iter().any(|s| s.in_use && s.service == id));
        }
    }

    /// Looks at the connections whose idle deadline may have come.
    fn expire_idle(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        self.timers.expire(self.now_ns, &mut due);
        for slot in due.drain(..) {
            if !self.slots[slot].in_use {
                continue; // armed by a connection that is gone; the next one arms again
            }
            let idle = self.slot_service(slot).idle_timeout.as_nanos() as u64;
            let now = self.now_ns;
            let conn = &mut self.slots[slot].conn;
            match conn.on_timeout(now, idle, &mut self.actions) {
                Timeout::Later(at) => self.timers.arm(slot, at),
                Timeout::Idle => {
                    tracing::debug!(worker = self.index, slot, "idle timeout");
                    self.end_as(slot, crate::access_log::End::IdleTimeout);
                    self.perform(slot);
                    self.release_if_done(slot);
                }
                Timeout::Hello => {
                    self.stats()
                        .refused(self.slots[slot].service, Refused::BadTls);
                    tracing::debug!(worker = self.index, slot, "no TLS ClientHello in time");
                    self.end_as(slot, crate::access_log::End::Rejected);
                    self.perform(slot);
                    self.release_if_done(slot);
                }
                Timeout::Header => {
                    // A trusted peer that never finished its PROXY header: a bad header too.
                    self.stats()
                        .refused(self.slots[slot].service, Refused::BadProxyHeader);
                    tracing::debug!(worker = self.index, slot, "no PROXY header in time");
                    self.end_as(slot, crate::access_log::End::IdleTimeout);
                    self.perform(slot);
                    self.release_if_done(slot);
                }
            }
        }
        self.due = due;
    }

    /// Resets connections to draining backends whose drain deadline has passed.
    fn close_drained(&mut self) {
        let now = Instant::now();
        let expired: Vec<BackendId> = self
            .services
            .all()
            .flat_map(|s| s.backends.iter())
            .filter(|b| {
                b.state == BackendState::Draining && b.drain_deadline.is_some_and(|d| d <= now)
            })
            .map(|b| b.id)
            .collect();
        if expired.is_empty() {
            return;
        }
        for slot in 0..self.slots.len() {
            let s = &self.slots[slot];
            if s.in_use
                && s.conn.phase() == Phase::Forwarding
                && s.conn.backend().is_some_and(|id| expired.contains(&id))
            {
                tracing::debug!(worker = self.index, slot, "drain deadline: resetting");
                self.end_as(slot, crate::access_log::End::Drained);
                self.abort(slot, true);
            }
        }
        self.end_udp_flows_of(&expired);
    }
}
