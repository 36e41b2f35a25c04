//! The PROXY protocol on the data path: the header a trusted client (`--accept-proxy`) sends
//! ahead of its bytes, read before any backend is chosen, and the header we send backends
//! (`--proxy-protocol`), written ahead of the client's first bytes.

use super::Worker;
use crate::direction::Dir;
use crate::net;
use crate::proxy_protocol::{self, Decoded, MAX_HEADER};

impl Worker {
    /// A read of a trusted client's PROXY header completed.
    pub(super) fn on_header(&mut self, slot: usize, res: i32) {
        let had = self.slots[slot].conn.header_received();
        let Some(total) = self.slots[slot].conn.header_bytes(res, &mut self.actions) else {
            if had > 0 || res < 0 {
                // Truncated: the client went away in the middle of its header.
                self.stats().refused(
                    self.slots[slot].service,
                    super::stats::Refused::BadProxyHeader,
                );
                self.end_as(slot, crate::access_log::End::Rejected);
            }
            return self.perform(slot);
        };
        // Room kept for the header we may send ourselves ahead of the client's bytes.
        let limit = self.ring.buf_size() - MAX_HEADER;
        let decoded = match self.ring.buf(slot, Dir::Up) {
            Some(buf) => proxy_protocol::decode(&buf[..total]),
            None => return self.bad_header(slot, "buffer in use"),
        };
        match decoded {
            Ok(Decoded::Incomplete) if total < limit => {
                self.slots[slot].conn.read_more_header(&mut self.actions);
                self.perform(slot);
            }
            Ok(Decoded::Incomplete) => self.bad_header(slot, "header too long"),
            Err(e) => self.bad_header(slot, &e.to_string()),
            Ok(Decoded::Header { len, addrs }) => {
                if let Some(buf) = self.ring.buf_mut(slot, Dir::Up) {
                    buf.copy_within(len..total, 0);
                }
                let conn = &mut self.slots[slot].conn;
                if let Some((src, dst)) = addrs {
                    conn.client_addr = Some(src);
                    conn.orig_dst = Some(dst);
                }
                if self.slots[slot].sni_addr.is_some() {
                    // The TLS ClientHello follows; what came with the header is its start.
                    return self.read_hello(slot, total - len);
                }
                let conn = &mut self.slots[slot].conn;
                conn.header_done(total - len);
                if self.denied_after_header(slot) {
                    return;
                }
                if self.admit(slot) {
                    self.connect_next(slot);
                }
            }
        }
    }

    /// A trusted client sent something that is not a valid PROXY header: close it (only it).
    pub(super) fn bad_header(&mut self, slot: usize, why: &str) {
        self.stats().refused(
            self.slots[slot].service,
            super::stats::Refused::BadProxyHeader,
        );
        tracing::debug!(worker = self.index, slot, "bad PROXY header: {why}");
        self.end_as(slot, crate::access_log::End::Rejected);
        self.abort(slot, true);
    }

    /// Writes the PROXY protocol header (if the backend gets one) into the slot's client ->
    /// backend buffer; returns its length (0 = none).
    pub(super) fn proxy_header(&mut self, slot: usize) -> usize {
        let conn = &self.slots[slot].conn;
        let Some(version) = conn.send_proxy() else {
            return 0;
        };
        let dst = conn
            .orig_dst
            .or_else(|| conn.client().and_then(net::local_addr));
        let (Some(src), Some(dst)) = (conn.client_addr, dst) else {
            return 0;
        };
        let early = conn.early();
        let mut header = [0u8; MAX_HEADER];
        let n = proxy_protocol::encode(version, src, dst, &mut header);
        let Some(buf) = self.ring.buf_mut(slot, Dir::Up) else {
            return 0;
        };
        // The client's early bytes (after its own PROXY header) move behind ours; the
        // handshake left room for that.
        buf.copy_within(..early, n);
        buf[..n].copy_from_slice(&header[..n]);
        n
    }
}
