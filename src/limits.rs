//! Per-source abuse limits shared by all workers: open connections per client IP
//! (`--max-conns-per-source`) and new connections per second per client IP
//! (`--max-conn-rate-per-source`), like HAProxy's `sc_conn_cur` / `sc_conn_rate` rules.
//!
//! One table for the whole balancer, so a client cannot multiply its share by landing on
//! several workers. It is sharded by address: a worker takes one shard lock at accept and
//! one at close, and only when a limit is configured. The table holds only sources with an
//! open connection or a rate window still running, so its size is bounded by the
//! connection limit plus the sources seen in the last second.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crossbeam_utils::CachePadded;

/// The length of one rate window.
pub const RATE_WINDOW_NS: u64 = 1_000_000_000;
const SHARDS: usize = 64;

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source already has `--max-conns-per-source` connections open.
    TooManyConns,
    /// The source opened `--max-conn-rate-per-source` connections in this second.
    TooFast,
}

/// The limits in force (they travel in the snapshot, so a reload changes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub max_open: Option<u32>,
    pub max_rate: Option<u32>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.max_open.is_some() || self.max_rate.is_some()
    }
}

/// One source's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceEntry {
    pub open: u32,
    pub window_start_ns: u64,
    pub window_count: u32,
}

impl SourceEntry {
    /// Counts a new connection at `now_ns`, or refuses it (and then counts nothing).
    pub fn admit(&mut self, now_ns: u64, limits: Limits) -> Result<(), Refusal> {
        if now_ns.saturating_sub(self.window_start_ns) >= RATE_WINDOW_NS {
            self.window_start_ns = now_ns;
            self.window_count = 0;
        }
        if limits.max_open.is_some_and(|m| self.open >= m) {
            return Err(Refusal::TooManyConns);
        }
        if limits.max_rate.is_some_and(|m| self.window_count >= m) {
            return Err(Refusal::TooFast);
        }
        self.open += 1;
        self.window_count += 1;
        Ok(())
    }

    /// Nothing left to remember: no connection open and the rate window is over.
    pub fn forgettable(&self, now_ns: u64) -> bool {
        self.open == 0 && now_ns.saturating_sub(self.window_start_ns) >= RATE_WINDOW_NS
    }
}

type Shard = CachePadded<Mutex<HashMap<IpAddr, SourceEntry>>>;

/// The shared table.
#[derive(Debug)]
pub struct SourceTable {
    shards: Box<[Shard]>,
}

impl Default for SourceTable {
    fn default() -> Self {
        SourceTable {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::new(HashMap::new())))
                .collect(),
        }
    }
}

impl SourceTable {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, SourceEntry>> {
        let h = crate::balance::hash_client(
            &std::net::SocketAddr::new(*ip, 0),
            crate::balance::HashKey::SourceIp,
        );
        &self.shards[(h % SHARDS as u64) as usize]
    }

    /// Counts a new connection from `ip`, or refuses it.
    pub fn admit(&self, ip: IpAddr, now_ns: u64, limits: Limits) -> Result<(), Refusal> {
        let ip = canonical(ip);
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(ip).or_default();
        let verdict = entry.admit(now_ns, limits);
        if verdict.is_err() && entry.forgettable(now_ns) {
            map.remove(&ip);
        }
        verdict
    }

    /// A connection `admit` counted has closed.
    pub fn release(&self, ip: IpAddr, now_ns: u64) {
        let ip = canonical(ip);
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(&ip) {
            e.open = e.open.saturating_sub(1);
            if e.forgettable(now_ns) {
                map.remove(&ip);
            }
        }
    }

    /// Drops the entries of sources with nothing open whose window is over.
    pub fn prune(&self, now_ns: u64) {
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, e| !e.forgettable(now_ns));
        }
    }

    /// Sources remembered (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An IPv4 client on a dual-stack listener arrives as `::ffff:a.b.c.d`: count it as the
/// IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = RATE_WINDOW_NS;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn open_limit_refuses_then_admits_after_a_close() {
        let t = SourceTable::default();
        let l = Limits {
            max_open: Some(2),
            max_rate: None,
        };
        let a = ip("10.0.0.1");
        assert_eq!(t.admit(a, 0, l), Ok(()));
        assert_eq!(t.admit(a, 1, l), Ok(()));
        assert_eq!(t.admit(a, 2, l), Err(Refusal::TooManyConns));
        // Another source is not affected.
        assert_eq!(t.admit(ip("10.0.0.2"), 3, l), Ok(()));
        t.release(a, 4);
        assert_eq!(t.admit(a, 5, l), Ok(()));
    }

    #[test]
    fn rate_limit_counts_per_window() {
        let t = SourceTable::default();
        let l = Limits {
            max_open: None,
            max_rate: Some(3),
        };
        let a = ip("192.0.2.7");
        for i in 0..3 {
            assert_eq!(t.admit(a, i, l), Ok(()));
            t.release(a, i);
        }
        assert_eq!(t.admit(a, 10, l), Err(Refusal::TooFast));
        // The next window admits again.
        assert_eq!(t.admit(a, SEC, l), Ok(()));
    }

    #[test]
    fn table_forgets_idle_sources() {
        let t = SourceTable::default();
        let l = Limits {
            max_open: Some(5),
            max_rate: Some(100),
        };
        for i in 0..100u8 {
            let a = IpAddr::from([10, 0, 0, i]);
            t.admit(a, 0, l).unwrap();
            t.release(a, 1);
        }
        assert_eq!(t.len(), 100, "rate windows still running");
        t.prune(SEC);
        assert!(t.is_empty());
        // With an open connection an entry stays whatever the time.
        t.admit(ip("10.1.1.1"), 0, l).unwrap();
        t.prune(10 * SEC);
        assert_eq!(t.len(), 1);
        t.release(ip("10.1.1.1"), 10 * SEC);
        assert!(t.is_empty());
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let t = SourceTable::default();
        let l = Limits {
            max_open: Some(1),
            max_rate: None,
        };
        t.admit(ip("127.0.0.1"), 0, l).unwrap();
        assert_eq!(
            t.admit(ip("::ffff:127.0.0.1"), 0, l),
            Err(Refusal::TooManyConns)
        );
    }

    #[test]
    fn refused_attempts_do_not_count() {
        let mut e = SourceEntry::default();
        let l = Limits {
            max_open: Some(1),
            max_rate: Some(2),
        };
        assert_eq!(e.admit(0, l), Ok(()));
        for _ in 0..10 {
            assert_eq!(e.admit(1, l), Err(Refusal::TooManyConns));
        }
        e.open = 0;
        assert_eq!(e.admit(2, l), Ok(()), "second of two allowed this second");
    }
}
