//! The worker's copy of the routing: per service its snapshot and its selector (the
//! algorithm's per-worker state). A new routing replaces the snapshots of the services
//! that changed; a selector is rebuilt only for those, continuing where the old one was.
//!
//! A service that leaves the routing (removed by a reload) keeps its snapshot here while
//! a connection of this worker still belongs to it, so a connection's service always
//! resolves: its idle timeout, drain deadlines and retries go on as they were.

use std::sync::Arc;

use crate::backend::{Routing, ServiceId, SharedCounters, Snapshot};
use crate::balance::Balance;
use crate::sni::{SniRoutes, SniTable};

use super::candidates::Candidates;

pub(super) struct Services {
    version: u64,
    /// By service id. `Some` for every service in the routing, and for a removed one
    /// while it is in `retired`.
    snapshots: Vec<Option<Arc<Snapshot>>>,
    balancers: Vec<Option<Box<dyn Balance>>>,
    /// First picks made per service; a new selector continues from here.
    picks: Vec<u64>,
    /// Gone from the routing, kept while connections of theirs are open.
    retired: Vec<ServiceId>,
    /// The routing's TLS server names, by listen address.
    sni: SniRoutes,
}

impl Services {
    pub(super) fn new(routing: &Routing, worker: usize, counters: &SharedCounters) -> Services {
        let mut s = Services {
            version: 0,
            snapshots: Vec::new(),
            balancers: Vec::new(),
            picks: Vec::new(),
            retired: Vec::new(),
            sni: SniRoutes::default(),
        };
        s.adopt(routing, worker, counters);
        s
    }

    /// The version of the routing adopted last.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// Takes a new routing. A service that left it is kept (retired) while connections of
    /// it are open; see [`Services::prune`].
    pub(super) fn adopt(&mut self, routing: &Routing, worker: usize, counters: &SharedCounters) {
        let n = routing.services.len().max(self.snapshots.len());
        self.snapshots.resize(n, None);
        self.balancers.resize_with(n, || None);
        self.picks.resize(n, 0);
        for i in 0..n {
            let new = routing.services.get(i).cloned().flatten();
            let old = &self.snapshots[i];
            match (old, new) {
                (Some(o), Some(n)) if Arc::ptr_eq(o, &n) => {}
                (_, Some(n)) => {
                    let pool = Candidates::new(&n, counters, &[]);
                    self.balancers[i] = Some(n.balance.selector_at(worker, self.picks[i], &pool));
                    self.snapshots[i] = Some(n);
                    self.retired.retain(|r| r.0 as usize != i);
                }
                (Some(_), None) => {
                    if !self.retired.contains(&ServiceId(i as u32)) {
                        self.retired.push(ServiceId(i as u32));
                    }
                }
                (None, None) => {}
            }
        }
        if self.sni != routing.sni {
            self.sni = routing.sni.clone();
        }
        self.version = routing.version;
    }

    /// The TLS server names of listen address `addr`, when its services route by name.
    pub(super) fn sni_table(&self, addr: std::net::SocketAddr) -> Option<&SniTable> {
        self.sni.table(addr)
    }

    /// The service a listener on `addr` (UDP or TCP) takes clients for now: the first (by
    /// id) of the accepting services listening there. Services sharing an address (by TLS
    /// server name) share its sockets; the name picks a connection's service later, and
    /// this one only counts the address's rejections.
    pub(super) fn listening_at(&self, addr: std::net::SocketAddr, udp: bool) -> Option<ServiceId> {
        (0..self.snapshots.len())
            .map(|i| ServiceId(i as u32))
            .find(|&id| {
                self.is_live(id)
                    && self.get(id).is_some_and(|s| {
                        s.accepting && s.udp.is_some() == udp && s.listen.contains(&addr)
                    })
            })
    }

    /// Drops the retired services no connection refers to any more.
    pub(super) fn prune(&mut self, in_use: impl Fn(ServiceId) -> bool) {
        let (snapshots, balancers) = (&mut self.snapshots, &mut self.balancers);
        self.retired.retain(|&id| {
            if in_use(id) {
                return true;
            }
            snapshots[id.0 as usize] = None;
            balancers[id.0 as usize] = None;
            false
        });
    }

    pub(super) fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }

    /// Whether `id` is in the routing (accepts new clients).
    pub(super) fn is_live(&self, id: ServiceId) -> bool {
        self.snapshots
            .get(id.0 as usize)
            .is_some_and(Option::is_some)
            && !self.retired.contains(&id)
    }

    /// The snapshot of service `id`. Every id a listener or a connection holds resolves
    /// (see the module docs); `None` only for an id this worker never had.
    pub(super) fn get(&self, id: ServiceId) -> Option<&Snapshot> {
        self.snapshots.get(id.0 as usize)?.as_deref()
    }

    /// Every snapshot this worker holds (live and retired).
    pub(super) fn all(&self) -> impl Iterator<Item = &Snapshot> {
        self.snapshots.iter().filter_map(|s| s.as_deref())
    }

    /// Service `id`'s snapshot, its selector and its first-pick count, to pick with.
    pub(super) fn picker(
        &mut self,
        id: ServiceId,
    ) -> Option<(&Snapshot, &mut dyn Balance, &mut u64)> {
        let i = id.0 as usize;
        let snapshot = self.snapshots.get(i)?.as_deref()?;
        let b = self.balancers.get_mut(i)?.as_deref_mut()?;
        Some((snapshot, b, &mut self.picks[i]))
    }
}
