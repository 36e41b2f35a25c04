//! A backend that is the balancer itself. Every connection to it comes back as a new client,
//! which is sent to it again: one client connection would fill every slot.
//!
//! - Where it can be known, such a backend is refused: an address one of the balancer's
//!   listeners accepts on ([`own_listener`]; a wildcard listener accepts on every local
//!   address).
//! - Where it cannot (a NAT rule or a port forward that leads back), the connection that
//!   comes back is caught: the workers record their connections to local backends and
//!   their clients from local addresses in a [`LoopTable`]; a client whose address is the
//!   local end of one of the balancer's own backend connections, and which came to the
//!   address that connection went to (before NAT: `SO_ORIGINAL_DST`), is that connection
//!   coming back. Both ends of a connection identify it (no false match with another
//!   client that happens to use the same port). Whichever side is recorded second sees the
//!   other, so the check has no race; the loop is cut at its first turn.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

/// Whether `ip` is one of this host's addresses (loopback included): binding a socket to it
/// works only then. Blocking-free (no I/O but a socket and a bind).
pub fn is_local_ip(ip: IpAddr) -> bool {
    if ip.is_loopback() {
        return true;
    }
    if ip.is_unspecified() {
        return true; // connecting to 0.0.0.0 / :: reaches this host
    }
    let domain = socket2::Domain::for_address(SocketAddr::new(ip, 0));
    socket2::Socket::new(domain, socket2::Type::DGRAM, None)
        .and_then(|s| s.bind(&SocketAddr::new(ip, 0).into()))
        .is_ok()
}

/// This host's interface addresses now (loopback included); empty if they cannot be read.
pub fn local_ips() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|sa| {
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    ips.extend(ips.clone().into_iter().map(canonical));
    ips.sort();
    ips.dedup();
    ips
}

/// The listen address (of `listens`) that `backend` reaches, if it is one of ours: same
/// port, and the same address or a wildcard listener of the family (an IPv6 wildcard also
/// takes IPv4 unless it is v6-only, which the balancer never sets) on a local address.
pub fn own_listener(
    backend: SocketAddr,
    listens: &[SocketAddr],
    is_local: impl Fn(IpAddr) -> bool,
) -> Option<SocketAddr> {
    let ip = canonical(backend.ip());
    listens.iter().copied().find(|l| {
        if l.port() != backend.port() {
            return false;
        }
        let lip = canonical(l.ip());
        if lip == ip {
            return true;
        }
        let wildcard = match lip {
            IpAddr::V4(v4) => v4.is_unspecified() && ip.is_ipv4(),
            IpAddr::V6(v6) => v6.is_unspecified(),
        };
        wildcard && is_local(ip)
    })
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

const SHARDS: usize = 16;

/// One shard: the balancer's backend connections (local address -> the backend address it
/// went to) and its clients from local addresses (client address -> the address they came
/// to), each with a count (the same pair may be open twice in a row briefly).
#[derive(Default)]
struct Shard {
    outgoing: HashMap<(SocketAddr, SocketAddr), u32>,
    incoming: HashMap<(SocketAddr, SocketAddr), u32>,
}

/// Connections with both ends on this host, shared by the workers.
#[derive(Default)]
pub struct LoopTable {
    shards: [Mutex<Shard>; SHARDS],
}

impl std::fmt::Debug for LoopTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoopTable")
    }
}

impl LoopTable {
    fn shard(&self, local_end: SocketAddr) -> std::sync::MutexGuard<'_, Shard> {
        let i = (local_end.port() as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A backend connection from `local` to `backend` is open. Returns true when a client
    /// from `local` to `backend` was recorded already: the connection is a loop.
    pub fn outgoing(&self, local: SocketAddr, backend: SocketAddr) -> bool {
        let key = (local, backend);
        let mut s = self.shard(local);
        *s.outgoing.entry(key).or_default() += 1;
        s.incoming.contains_key(&key)
    }

    /// A client from `peer` to our `local` address was accepted; `original` is the address
    /// it connected to before NAT, if NAT changed it. Returns true when it is one of the
    /// balancer's own backend connections.
    pub fn incoming(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        original: Option<SocketAddr>,
    ) -> bool {
        let mut s = self.shard(peer);
        let mut own = false;
        for dst in std::iter::once(local).chain(original) {
            *s.incoming.entry((peer, dst)).or_default() += 1;
            own |= s.outgoing.contains_key(&(peer, dst));
        }
        own
    }

    /// Whether a client from `peer` to `local` (or `original` before NAT) is one of the
    /// balancer's backend connections, without recording anything.
    pub fn is_outgoing(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        original: Option<SocketAddr>,
    ) -> bool {
        let s = self.shard(peer);
        std::iter::once(local)
            .chain(original)
            .any(|dst| s.outgoing.contains_key(&(peer, dst)))
    }

    /// Forgets a backend connection recorded by [`LoopTable::outgoing`].
    pub fn outgoing_closed(&self, local: SocketAddr, backend: SocketAddr) {
        remove(&mut self.shard(local).outgoing, (local, backend));
    }

    /// Forgets a client recorded by [`LoopTable::incoming`].
    pub fn incoming_closed(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        original: Option<SocketAddr>,
    ) {
        let mut s = self.shard(peer);
        for dst in std::iter::once(local).chain(original) {
            remove(&mut s.incoming, (peer, dst));
        }
    }

    /// Entries held (tests: nothing is left behind).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.outgoing.len() + s.incoming.len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove(map: &mut HashMap<(SocketAddr, SocketAddr), u32>, key: (SocketAddr, SocketAddr)) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn own_listeners_with_wildcards() {
        let local = |ip: IpAddr| ip.is_loopback() || ip == a("10.0.0.5:0").ip();
        let listens = [a("0.0.0.0:80"), a("127.0.0.1:8080"), a("[::]:443")];
        assert_eq!(
            own_listener(a("10.0.0.5:80"), &listens, local),
            Some(listens[0])
        );
        assert_eq!(own_listener(a("10.0.0.6:80"), &listens, local), None);
        assert_eq!(
            own_listener(a("127.0.0.1:8080"), &listens, local),
            Some(listens[1])
        );
        assert_eq!(own_listener(a("127.0.0.2:8080"), &listens, local), None);
        assert_eq!(own_listener(a("127.0.0.1:81"), &listens, local), None);
        assert_eq!(
            own_listener(a("[::1]:443"), &listens, local),
            Some(listens[2])
        );
        assert_eq!(
            own_listener(a("10.0.0.5:443"), &listens, local),
            Some(listens[2])
        );
        assert_eq!(
            own_listener(a("[::ffff:127.0.0.1]:8080"), &listens, local),
            Some(listens[1])
        );
    }

    #[test]
    fn interface_addresses_include_loopback() {
        assert!(local_ips().contains(&a("127.0.0.1:0").ip()));
    }

    #[test]
    fn local_ip_by_binding() {
        assert!(is_local_ip(a("127.0.0.1:0").ip()));
        assert!(is_local_ip(a("127.8.9.10:0").ip()));
        assert!(
            !is_local_ip(a("192.0.2.1:0").ip()),
            "TEST-NET-1 is nobody's"
        );
    }

    #[test]
    fn whichever_side_comes_second_sees_the_loop() {
        let t = LoopTable::default();
        let (ours, lb) = (a("127.0.0.1:40000"), a("127.0.0.1:8080"));
        assert!(!t.outgoing(ours, lb));
        assert!(t.incoming(ours, lb, None));
        t.outgoing_closed(ours, lb);
        t.incoming_closed(ours, lb, None);
        assert!(t.is_empty());
        assert!(!t.incoming(ours, lb, None));
        assert!(t.outgoing(ours, lb));
        assert!(
            !t.incoming(a("127.0.0.1:40001"), lb, None),
            "another client"
        );
        assert!(!t.outgoing(ours, a("127.0.0.1:9000")), "another backend");
    }

    #[test]
    fn a_loop_through_nat_is_seen_by_the_address_before_nat() {
        let t = LoopTable::default();
        // We connect to 127.0.0.1:9999, which a REDIRECT rule sends to our 8080.
        let (ours, backend, lb) = (
            a("127.0.0.1:40000"),
            a("127.0.0.1:9999"),
            a("127.0.0.1:8080"),
        );
        assert!(!t.outgoing(ours, backend));
        assert!(t.incoming(ours, lb, Some(backend)));
        // The same port used by an unrelated client to us is no loop.
        let t = LoopTable::default();
        assert!(!t.outgoing(ours, backend));
        assert!(!t.incoming(ours, lb, None));
    }
}
