//! Routing by TLS server name on the data path: on a listen address whose services claim
//! names (`sni`), the client's ClientHello is read into the connection's client -> backend
//! buffer (no other memory), its server name picks the service, and the connection goes on
//! as any other: the hello's bytes are the first the backend gets. Nothing is decrypted.

use super::stats::Refused;
use super::Worker;
use crate::access_log::End;
use crate::direction::Dir;
use crate::sni::SniName;
use crate::tls_hello::{self, Hello};

impl Worker {
    /// The client has `sni_timeout` from now to send its whole ClientHello.
    pub(super) fn arm_hello_deadline(&mut self, slot: usize) {
        let deadline = self.now_ns + self.slot_service(slot).sni_timeout.as_nanos() as u64;
        self.slots[slot].conn.handshake_deadline(deadline);
        self.timers.arm(slot, deadline);
    }

    /// Reads the ClientHello, of which the first `have` bytes are in the buffer already
    /// (what came after a PROXY header).
    pub(super) fn read_hello(&mut self, slot: usize, have: usize) {
        self.slots[slot].conn.expect_hello(have);
        if have > 0 {
            return self.hello_bytes(slot, have);
        }
        self.slots[slot].conn.read_more_header(&mut self.actions);
        self.perform(slot);
    }

    /// A read of the ClientHello completed.
    pub(super) fn on_hello(&mut self, slot: usize, res: i32) {
        let had = self.slots[slot].conn.header_received();
        let Some(total) = self.slots[slot].conn.header_bytes(res, &mut self.actions) else {
            if had > 0 || res < 0 {
                // Cut short in the middle of its hello. (A client that closes before
                // sending anything, e.g. a port check, is not counted.)
                self.stats()
                    .refused(self.slots[slot].service, Refused::BadTls);
                self.end_as(slot, End::Rejected);
            }
            return self.perform(slot);
        };
        self.hello_bytes(slot, total);
    }

    /// The buffer holds `total` bytes of the client's: route it if they are a whole hello,
    /// read more if they are the start of one, close it otherwise.
    fn hello_bytes(&mut self, slot: usize, total: usize) {
        let parsed = match self.ring.buf(slot, Dir::Up) {
            Some(buf) => tls_hello::parse(&buf[..total]),
            None => return self.bad_tls(slot, "buffer in use"),
        };
        // `parse` gives up at MAX_HELLO, below the room the reads have (the buffer less
        // the PROXY header we may put ahead of the client's bytes).
        match parsed {
            Ok(Hello::Incomplete) => {
                self.slots[slot].conn.read_more_header(&mut self.actions);
                self.perform(slot);
            }
            Err(e) => self.bad_tls(slot, &e.to_string()),
            Ok(Hello::Complete(name)) => self.route_by_name(slot, name, total),
        }
    }

    /// The service that takes `name` on the slot's listen address, then the backend.
    fn route_by_name(&mut self, slot: usize, name: Option<SniName>, total: usize) {
        let picked = self.slots[slot]
            .sni_addr
            .and_then(|addr| self.services.sni_table(addr))
            .and_then(|t| t.route(name.as_ref().map(SniName::as_str)))
            .filter(|&id| self.services.is_live(id));
        let Some(service) = picked else {
            self.stats()
                .refused(self.slots[slot].service, Refused::NoRoute);
            self.end_as(slot, End::Rejected);
            tracing::debug!(worker = self.index, slot, sni = ?name, "no service takes this server name");
            // For the access log: the name no service takes.
            self.slots[slot].conn.sni = name;
            return self.abort(slot, true);
        };
        self.slots[slot].service = service;
        let conn = &mut self.slots[slot].conn;
        conn.sni = name;
        conn.header_done(total);
        // The lists and limits of the service the name picked.
        if self.denied_after_header(slot) {
            return;
        }
        if self.admit(slot) {
            self.connect_next(slot);
        }
    }

    /// The client sent something that is not a ClientHello (or too long a one): close it.
    fn bad_tls(&mut self, slot: usize, why: &str) {
        self.stats()
            .refused(self.slots[slot].service, Refused::BadTls);
        self.end_as(slot, End::Rejected);
        tracing::debug!(worker = self.index, slot, "bad TLS ClientHello: {why}");
        self.abort(slot, true);
    }
}
