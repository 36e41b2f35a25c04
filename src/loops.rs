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
//! - NAT needs connection tracking. A client that conntrack does not know (`SO_ORIGINAL_DST`
//!   fails) was not redirected, so it is not one of the balancer's own connections: it is
//!   cleared with that one system call, and while clients show that nothing is tracked in
//!   this network namespace, backend connections are not recorded either ([`LoopTable::watching`]).
//!   Where NAT rules exist every connection is tracked, so this changes nothing there; a rule
//!   made while the balancer runs untracked lets a loop go round once more before the
//!   recording resumes: it is cut at its second turn.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The two ends of a client from this host, as the loop table knows it: its address, our
/// address it came to, and the address it connected to before NAT changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientEnds {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub original: Option<SocketAddr>,
}

impl ClientEnds {
    fn dsts(&self) -> impl Iterator<Item = SocketAddr> {
        std::iter::once(self.local).chain(self.original)
    }
}

/// A connect to a backend on this host, in progress: its socket's local address is known
/// only once it completes, so a client that may be that connection waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    backend: SocketAddr,
    n: u64,
}

/// The connects a client waits for: those to the addresses it came to that were in
/// progress when it arrived (numbers below the mark, per address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Barrier([Option<(SocketAddr, u64)>; 2]);

/// What a client from this host is, as far as the table can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// One of the balancer's own backend connections: a loop.
    Loop,
    /// Not known yet: ask again ([`LoopTable::recheck`]) once these connects are done.
    Wait(Barrier),
    /// An ordinary client.
    Clear,
}

/// Connects in progress to one backend address: the next number, and those not done.
#[derive(Default)]
struct Pending {
    next: u64,
    open: BTreeSet<u64>,
}

/// A recorded client, and whether a backend connection of ours found it was itself.
#[derive(Default)]
struct Client {
    count: u32,
    looped: bool,
}

/// One shard: the balancer's backend connections (local address -> the backend address it
/// went to) with a count (the same pair may be open twice in a row briefly), its clients
/// from local addresses (client address -> the address they came to), and connects in
/// progress to local backends (by backend address).
#[derive(Default)]
struct Shard {
    outgoing: HashMap<(SocketAddr, SocketAddr), u32>,
    incoming: HashMap<(SocketAddr, SocketAddr), Client>,
    pending: HashMap<SocketAddr, Pending>,
}

/// Connections with both ends on this host, shared by the workers.
///
/// The check has no race: a backend connection takes a [`Ticket`] before its connect is
/// submitted and gives it back only after recording its local address. A client that
/// arrives while connects to its destination are in progress waits until those are done
/// ([`Verdict::Wait`]), so the connection it may be is recorded by the time it is judged.
/// The loop is cut at its first turn.
#[derive(Default)]
pub struct LoopTable {
    shards: [Mutex<Shard>; SHARDS],
    /// The last client from this host was one conntrack did not know.
    untracked: AtomicBool,
}

impl std::fmt::Debug for LoopTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoopTable")
    }
}

impl LoopTable {
    /// The shard of an address: the local end of a connection, or a backend's address.
    fn shard(&self, addr: SocketAddr) -> std::sync::MutexGuard<'_, Shard> {
        let i = (addr.port() as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether connects to local backends are recorded: unless the last client judged showed
    /// that connection tracking (hence NAT) is off in this network namespace.
    pub fn watching(&self) -> bool {
        !self.untracked.load(Ordering::Relaxed)
    }

    /// A client showed whether conntrack tracks connections (`SO_ORIGINAL_DST` answered).
    pub fn saw_client(&self, tracked: bool) {
        if self.untracked.load(Ordering::Relaxed) == tracked {
            self.untracked.store(!tracked, Ordering::Relaxed);
        }
    }

    /// A connect to `backend` (on this host) is about to be submitted.
    pub fn connect_started(&self, backend: SocketAddr) -> Ticket {
        let mut s = self.shard(backend);
        let p = s.pending.entry(backend).or_default();
        let n = p.next;
        p.next += 1;
        p.open.insert(n);
        Ticket { backend, n }
    }

    /// The connect of `ticket` is done: failed, or its local address recorded
    /// ([`LoopTable::outgoing`]) first.
    pub fn connect_done(&self, ticket: Ticket) {
        let mut s = self.shard(ticket.backend);
        if let Some(p) = s.pending.get_mut(&ticket.backend) {
            p.open.remove(&ticket.n);
            if p.open.is_empty() {
                s.pending.remove(&ticket.backend);
            }
        }
    }

    /// A backend connection from `local` to `backend` is open. Returns true when a client
    /// from `local` to `backend` was recorded already: the connection is a loop (and that
    /// client is marked as one).
    pub fn outgoing(&self, local: SocketAddr, backend: SocketAddr) -> bool {
        let key = (local, backend);
        let mut s = self.shard(local);
        *s.outgoing.entry(key).or_default() += 1;
        match s.incoming.get_mut(&key) {
            Some(c) => {
                c.looped = true;
                true
            }
            None => false,
        }
    }

    /// A client from this host was accepted: record it, and judge it.
    pub fn incoming(&self, ends: ClientEnds) -> Verdict {
        // In-progress connects first: one done by now has recorded its address already.
        let barrier = self.barrier(ends);
        let mut s = self.shard(ends.peer);
        let mut own = false;
        for dst in ends.dsts() {
            s.incoming.entry((ends.peer, dst)).or_default().count += 1;
            own |= s.outgoing.contains_key(&(ends.peer, dst));
        }
        drop(s);
        match barrier {
            _ if own => Verdict::Loop,
            Some(b) => Verdict::Wait(b),
            None => Verdict::Clear,
        }
    }

    /// Judges again a client that was told to wait.
    pub fn recheck(&self, ends: ClientEnds, barrier: Barrier) -> Verdict {
        let waiting = barrier.0.iter().flatten().any(|&(dst, mark)| {
            self.shard(dst)
                .pending
                .get(&dst)
                .and_then(|p| p.open.first())
                .is_some_and(|&n| n < mark)
        });
        let s = self.shard(ends.peer);
        let own = ends.dsts().any(|dst| {
            let key = (ends.peer, dst);
            s.outgoing.contains_key(&key) || s.incoming.get(&key).is_some_and(|c| c.looped)
        });
        match () {
            _ if own => Verdict::Loop,
            _ if waiting => Verdict::Wait(barrier),
            _ => Verdict::Clear,
        }
    }

    /// The connects in progress to the client's destinations, if any.
    fn barrier(&self, ends: ClientEnds) -> Option<Barrier> {
        let mut b = Barrier::default();
        let mut any = false;
        for (i, dst) in ends.dsts().enumerate() {
            if let Some(p) = self.shard(dst).pending.get(&dst) {
                b.0[i] = Some((dst, p.next));
                any = true;
            }
        }
        any.then_some(b)
    }

    /// Forgets a backend connection recorded by [`LoopTable::outgoing`].
    pub fn outgoing_closed(&self, local: SocketAddr, backend: SocketAddr) {
        remove(&mut self.shard(local).outgoing, (local, backend));
    }

    /// Forgets a client recorded by [`LoopTable::incoming`].
    pub fn incoming_closed(&self, ends: ClientEnds) {
        let mut s = self.shard(ends.peer);
        for dst in ends.dsts() {
            let key = (ends.peer, dst);
            if let Some(c) = s.incoming.get_mut(&key) {
                c.count -= 1;
                if c.count == 0 {
                    s.incoming.remove(&key);
                }
            }
        }
    }

    /// Entries held (tests: nothing is left behind).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.outgoing.len() + s.incoming.len() + s.pending.len()
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
    fn recording_stops_while_clients_are_untracked_and_resumes_with_a_tracked_one() {
        let t = LoopTable::default();
        assert!(t.watching(), "watches until a client shows tracking is off");
        t.saw_client(true);
        assert!(t.watching());
        t.saw_client(false);
        assert!(!t.watching());
        t.saw_client(false);
        assert!(!t.watching());
        t.saw_client(true);
        assert!(t.watching());
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

    fn client(peer: &str, local: &str, original: Option<&str>) -> ClientEnds {
        ClientEnds {
            peer: a(peer),
            local: a(local),
            original: original.map(a),
        }
    }

    #[test]
    fn whichever_side_comes_second_sees_the_loop() {
        let t = LoopTable::default();
        let (ours, lb) = (a("127.0.0.1:40000"), a("127.0.0.1:8080"));
        let c = client("127.0.0.1:40000", "127.0.0.1:8080", None);
        assert!(!t.outgoing(ours, lb));
        assert_eq!(t.incoming(c), Verdict::Loop);
        t.outgoing_closed(ours, lb);
        t.incoming_closed(c);
        assert!(t.is_empty());
        assert_eq!(t.incoming(c), Verdict::Clear);
        assert!(t.outgoing(ours, lb));
        let other = client("127.0.0.1:40001", "127.0.0.1:8080", None);
        assert_eq!(t.incoming(other), Verdict::Clear, "another client");
        assert!(!t.outgoing(ours, a("127.0.0.1:9000")), "another backend");
    }

    #[test]
    fn a_loop_through_nat_is_seen_by_the_address_before_nat() {
        let t = LoopTable::default();
        // We connect to 127.0.0.1:9999, which a REDIRECT rule sends to our 8080.
        let (ours, backend) = (a("127.0.0.1:40000"), a("127.0.0.1:9999"));
        assert!(!t.outgoing(ours, backend));
        let nat = client("127.0.0.1:40000", "127.0.0.1:8080", Some("127.0.0.1:9999"));
        assert_eq!(t.incoming(nat), Verdict::Loop);
        // The same port used by an unrelated client to us is no loop.
        let t = LoopTable::default();
        assert!(!t.outgoing(ours, backend));
        let direct = client("127.0.0.1:40000", "127.0.0.1:8080", None);
        assert_eq!(t.incoming(direct), Verdict::Clear);
    }

    #[test]
    fn a_client_that_arrives_before_its_connect_is_recorded_waits_for_it() {
        let t = LoopTable::default();
        let backend = a("127.0.0.1:9999");
        let ticket = t.connect_started(backend);
        // NAT delivered our connection as a client before its completion was handled.
        let nat = client("127.0.0.1:40000", "127.0.0.1:8080", Some("127.0.0.1:9999"));
        let Verdict::Wait(barrier) = t.incoming(nat) else {
            panic!("must wait for the connect in progress");
        };
        // A connect begun after the client arrived is not waited for.
        let later = t.connect_started(backend);
        assert_eq!(t.recheck(nat, barrier), Verdict::Wait(barrier));
        // Its completion records it, and finds the client it became.
        assert!(t.outgoing(a("127.0.0.1:40000"), backend));
        t.connect_done(ticket);
        assert_eq!(t.recheck(nat, barrier), Verdict::Loop);
        t.connect_done(later);
        t.outgoing_closed(a("127.0.0.1:40000"), backend);
        // The loop was marked on the client: cutting our side does not clear it.
        assert_eq!(t.recheck(nat, barrier), Verdict::Loop);
        t.incoming_closed(nat);
        assert!(t.is_empty());
    }

    #[test]
    fn a_client_waits_only_for_connects_to_where_it_came() {
        let t = LoopTable::default();
        let ticket = t.connect_started(a("127.0.0.1:7000"));
        let c = client("127.0.0.1:40000", "127.0.0.1:8080", Some("127.0.0.1:9999"));
        assert_eq!(t.incoming(c), Verdict::Clear);
        let d = client("127.0.0.1:40001", "127.0.0.1:8080", None);
        assert_eq!(t.incoming(d), Verdict::Clear);
        t.connect_done(ticket);
        // A connect that failed leaves no verdict behind.
        let ticket = t.connect_started(a("127.0.0.1:9999"));
        let e = client("127.0.0.1:40002", "127.0.0.1:8080", Some("127.0.0.1:9999"));
        let Verdict::Wait(b) = t.incoming(e) else {
            panic!("must wait")
        };
        t.connect_done(ticket);
        assert_eq!(t.recheck(e, b), Verdict::Clear);
        for x in [c, d, e] {
            t.incoming_closed(x);
        }
        assert!(t.is_empty());
    }
}
