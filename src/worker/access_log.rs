//! What a worker records of each connection for the access log and the per-backend byte
//! counts: why it ended (the first cause wins), when it started, which listener and backend
//! it had. At release the worker hands one fixed-size record to its queue (no allocation,
//! no wait: a full queue drops it and counts the drop).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::{Worker, WorkerStats};
use crate::access_log::{End, Record};
use crate::backend::BackendId;
use crate::direction::{Dir, PerDir};

/// Per slot, reset when a client is served.
#[derive(Debug, Clone, Copy)]
pub(super) struct SlotLog {
    /// The listen address the client came in on.
    pub listen: SocketAddr,
    pub opened_ns: u64,
    /// How long the successful connect took.
    pub connect_ns: Option<u64>,
    /// The last backend a connect was started to.
    pub target: Option<(BackendId, SocketAddr)>,
    /// Why the balancer ended it, when it did.
    pub end: Option<End>,
    /// Bytes of the current backend already added to its shared counts.
    pub flushed: PerDir<u64>,
}

impl SlotLog {
    pub(super) fn new(listen: SocketAddr, now_ns: u64) -> SlotLog {
        SlotLog {
            listen,
            opened_ns: now_ns,
            connect_ns: None,
            target: None,
            end: None,
            flushed: PerDir::new(0, 0),
        }
    }
}

impl Worker {
    /// Records why the balancer ends the connection in `slot` (unless an earlier cause is
    /// recorded already).
    pub(super) fn end_as(&mut self, slot: usize, end: End) {
        self.slots[slot].log.end.get_or_insert(end);
    }

    /// Adds the bytes the connection forwarded since the last time to its backend's
    /// shared counts.
    pub(super) fn flush_backend_bytes(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        let Some(id) = s.conn.backend() else { return };
        let now = s.conn.bytes();
        let c = self.shared.counters.get(id);
        for dir in Dir::BOTH {
            let n = now[dir].saturating_sub(s.log.flushed[dir]);
            if n > 0 {
                c.bytes(dir).fetch_add(n, Ordering::Relaxed);
            }
        }
        s.log.flushed = now;
    }

    /// The connection in `slot` is finished: hand its record to the access log.
    pub(super) fn log_end(&mut self, slot: usize) {
        if self.shared.access_log.is_none() {
            return;
        }
        let s = &self.slots[slot];
        let conn = &s.conn;
        let end = s.log.end.unwrap_or(if conn.reset() {
            End::Reset
        } else {
            End::Closed
        });
        let record = Record {
            service: s.service,
            client: conn.client_addr,
            listen: s.log.listen,
            backend: s.log.target,
            start_ns: s.log.opened_ns,
            end_ns: self.now_ns,
            connect_ns: s.log.connect_ns,
            bytes: conn.bytes(),
            retries: conn.tried().len().saturating_sub(1) as u32,
            end,
            sni: conn.sni,
        };
        self.log_record(record);
    }

    /// A client refused before it had a slot (the allow/deny lists at accept).
    pub(super) fn log_refused(&mut self, listener: usize, client: Option<SocketAddr>) {
        if self.shared.access_log.is_none() {
            return;
        }
        let l = &self.listeners[listener];
        let record = Record {
            service: l.service,
            client,
            listen: l.addr,
            backend: None,
            start_ns: self.now_ns,
            end_ns: self.now_ns,
            connect_ns: None,
            bytes: PerDir::new(0, 0),
            retries: 0,
            end: End::Rejected,
            sni: None,
        };
        self.log_record(record);
    }

    /// Hands `record` to the access log, if there is one (a full queue drops it and
    /// counts the drop).
    pub(super) fn log_record(&mut self, record: Record) {
        let Some(queues) = &self.shared.access_log else {
            return;
        };
        if !queues.push(self.index, record) {
            WorkerStats::add(&self.stats().access_log_dropped, 1);
        }
    }
}
