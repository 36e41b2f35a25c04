//! The flow table of a worker's UDP services, pure (no sockets, no clock): datagrams from
//! one client address to one of our addresses form a flow, which sticks to one backend.
//!
//! Flows live in one slab per worker; each service (a *class* here) keeps its flows in
//! least-recently-active order, so the one idle longest is at the front: the first to
//! expire, and the one evicted when the service is at its bound. Nothing grows with the
//! number of clients seen: a removed flow's entry is reused, and the table never holds
//! more flows than the bounds the caller enforces with [`Flows::len`] and
//! [`Flows::oldest`].

use std::collections::HashMap;
use std::net::SocketAddr;

/// What identifies a flow: the client, and the address it sent to (the one replies leave
/// from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub local: SocketAddr,
}

const NIL: u32 = u32::MAX;

struct Entry<T> {
    key: FlowKey,
    class: usize,
    last_ns: u64,
    prev: u32,
    next: u32,
    /// Bumped when the entry is freed: a stale reference (an old completion) no longer
    /// matches.
    gen: u32,
    value: Option<T>,
}

/// One class's flows, least recently active first.
#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
}

impl Default for List {
    fn default() -> Self {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

/// The flows of one worker.
pub struct Flows<T> {
    map: HashMap<FlowKey, u32>,
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    lists: Vec<List>,
}

impl<T> Default for Flows<T> {
    fn default() -> Self {
        Flows {
            map: HashMap::new(),
            entries: Vec::new(),
            free: Vec::new(),
            lists: Vec::new(),
        }
    }
}

impl<T> Flows<T> {
    /// The flow of `key`, if one is open.
    pub fn find(&self, key: &FlowKey) -> Option<u32> {
        self.map.get(key).copied()
    }

    /// Flow `id`'s value, if `id` is open (and, with `gen`, still the same flow).
    pub fn get(&self, id: u32, gen: Option<u32>) -> Option<&T> {
        let e = self.entries.get(id as usize)?;
        if gen.is_some_and(|g| g != e.gen) {
            return None;
        }
        e.value.as_ref()
    }

    pub fn get_mut(&mut self, id: u32, gen: Option<u32>) -> Option<&mut T> {
        let e = self.entries.get_mut(id as usize)?;
        if gen.is_some_and(|g| g != e.gen) {
            return None;
        }
        e.value.as_mut()
    }

    /// The generation of entry `id` (what completions of its flow carry).
    pub fn gen(&self, id: u32) -> u32 {
        self.entries.get(id as usize).map_or(0, |e| e.gen)
    }

    pub fn key(&self, id: u32) -> Option<FlowKey> {
        let e = self.entries.get(id as usize)?;
        e.value.as_ref().map(|_| e.key)
    }

    /// Flows open in `class`.
    pub fn len(&self, class: usize) -> usize {
        self.lists.get(class).map_or(0, |l| l.len)
    }

    /// Flows open in every class.
    pub fn total(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries ever made: the most flows open at once (memory is bounded by it).
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// The flow of `class` idle longest, with the time it was last active.
    pub fn oldest(&self, class: usize) -> Option<(u32, u64)> {
        let head = self.lists.get(class)?.head;
        (head != NIL).then(|| (head, self.entries[head as usize].last_ns))
    }

    /// Opens a flow (the caller has made room); returns its id. `key` must not be open.
    pub fn insert(&mut self, key: FlowKey, class: usize, value: T, now_ns: u64) -> u32 {
        debug_assert!(!self.map.contains_key(&key), "flow opened twice");
        let id = match self.free.pop() {
            Some(id) => {
                let e = &mut self.entries[id as usize];
                e.key = key;
                e.class = class;
                e.value = Some(value);
                id
            }
            None => {
                self.entries.push(Entry {
                    key,
                    class,
                    last_ns: now_ns,
                    prev: NIL,
                    next: NIL,
                    gen: 0,
                    value: Some(value),
                });
                (self.entries.len() - 1) as u32
            }
        };
        if self.lists.len() <= class {
            self.lists.resize(class + 1, List::default());
        }
        self.entries[id as usize].last_ns = now_ns;
        self.push_back(id);
        self.map.insert(key, id);
        id
    }

    /// Flow `id` was active now: it moves to the back of its class.
    pub fn touch(&mut self, id: u32, now_ns: u64) {
        if self.get(id, None).is_none() {
            return;
        }
        self.unlink(id);
        self.entries[id as usize].last_ns = now_ns;
        self.push_back(id);
    }

    /// Ends flow `id`: its value is handed back and its entry reused later.
    pub fn remove(&mut self, id: u32) -> Option<(FlowKey, T)> {
        let e = self.entries.get_mut(id as usize)?;
        let value = e.value.take()?;
        let key = e.key;
        e.gen = e.gen.wrapping_add(1);
        self.unlink(id);
        self.map.remove(&key);
        self.free.push(id);
        Some((key, value))
    }

    /// Every open flow's value, in no particular order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().filter_map(|e| e.value.as_mut())
    }

    /// The ids of every open flow of `class`, oldest first.
    pub fn ids(&self, class: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = self.lists.get(class).map_or(NIL, |l| l.head);
        while at != NIL {
            out.push(at);
            at = self.entries[at as usize].next;
        }
        out
    }

    /// Classes that have (or had) flows.
    pub fn classes(&self) -> usize {
        self.lists.len()
    }

    fn push_back(&mut self, id: u32) {
        let class = self.entries[id as usize].class;
        let list = &mut self.lists[class];
        let tail = list.tail;
        {
            let e = &mut self.entries[id as usize];
            e.prev = tail;
            e.next = NIL;
        }
        if tail == NIL {
            list.head = id;
        } else {
            self.entries[tail as usize].next = id;
        }
        list.tail = id;
        list.len += 1;
    }

    fn unlink(&mut self, id: u32) {
        let (class, prev, next) = {
            let e = &self.entries[id as usize];
            (e.class, e.prev, e.next)
        };
        let list = &mut self.lists[class];
        if prev == NIL {
            list.head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            list.tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        list.len -= 1;
        let e = &mut self.entries[id as usize];
        e.prev = NIL;
        e.next = NIL;
    }
}

/// A worker's share of a service's `max_flows`: the bound split evenly, so all workers
/// together never hold more than the service's bound (and each at least one).
pub fn worker_share(max_flows: u32, workers: usize) -> usize {
    (max_flows as usize / workers.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            client: SocketAddr::from(([127, 0, 0, 1], port)),
            local: SocketAddr::from(([127, 0, 0, 1], 53)),
        }
    }

    #[test]
    fn least_recently_active_first() {
        let mut f = Flows::default();
        let a = f.insert(key(1), 0, "a", 10);
        let b = f.insert(key(2), 0, "b", 20);
        let c = f.insert(key(3), 1, "c", 30);
        assert_eq!((f.len(0), f.len(1), f.total()), (2, 1, 3));
        assert_eq!(f.oldest(0), Some((a, 10)));
        f.touch(a, 40);
        assert_eq!(f.oldest(0), Some((b, 20)));
        assert_eq!(f.ids(0), vec![b, a]);
        assert_eq!(f.oldest(1), Some((c, 30)));
        assert_eq!(f.find(&key(2)), Some(b));
        assert_eq!(f.remove(b), Some((key(2), "b")));
        assert_eq!(f.find(&key(2)), None);
        assert_eq!(f.oldest(0), Some((a, 40)));
        assert_eq!(f.remove(b), None, "removed once");
    }

    #[test]
    fn a_stale_reference_does_not_reach_a_new_flow() {
        let mut f = Flows::default();
        let a = f.insert(key(1), 0, 1, 0);
        let gen = f.gen(a);
        f.remove(a);
        let b = f.insert(key(2), 0, 2, 0);
        assert_eq!(a, b, "the entry is reused");
        assert_eq!(f.get(b, Some(gen)), None);
        assert_eq!(f.get(b, Some(f.gen(b))), Some(&2));
    }

    #[test]
    fn memory_is_bounded_by_the_flows_open_at_once() {
        // 25 000 clients, at most 100 open: evict the oldest for each new one.
        let mut f = Flows::default();
        for port in 0..25_000u16 {
            if f.len(0) >= 100 {
                let (old, _) = f.oldest(0).expect("full");
                f.remove(old);
            }
            f.insert(key(port), 0, port, u64::from(port));
        }
        assert_eq!(f.total(), 100);
        assert!(f.capacity() <= 101, "{}", f.capacity());
        // The 100 newest are the ones left.
        assert_eq!(f.oldest(0).map(|(_, t)| t), Some(24_900));
    }

    #[test]
    fn shares() {
        assert_eq!(worker_share(1000, 2), 500);
        assert_eq!(worker_share(1000, 3), 333);
        assert_eq!(worker_share(1, 4), 1);
    }
}
