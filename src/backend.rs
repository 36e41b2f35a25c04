//! Backends as the workers see them: an immutable [`Snapshot`] replaced whole by the control
//! thread, and the [`SharedCounters`] that must be global across workers (active connections
//! for least-conn, consecutive failures, connect-time EWMA), indexed by a [`BackendId`] that
//! stays stable across snapshots.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::balance::{Algorithm, BuildOptions, HashKey, Member, Prepared};
use crate::proxy_protocol::ProxyProtocol;

/// Index into [`SharedCounters`]; the same backend keeps its id in every snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

/// Administrative / health state of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    Up,
    Down,
    /// No new connections; open ones run to completion.
    Draining,
    Maint,
}

impl BackendState {
    /// May a new connection be sent here?
    pub fn accepts_new(self) -> bool {
        self == BackendState::Up
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Draining => "draining",
            BackendState::Maint => "maint",
        }
    }
}

/// One `--backend ADDR[,weight=N][,name=S][,max-conns=N][,proxy-protocol=v1|v2][,backup]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    /// At least 1.
    pub weight: u32,
    /// Unique; defaults to the address as text. The stable key for hashing.
    pub name: String,
    pub max_conns: Option<u32>,
    /// Send a PROXY header to this backend even when `--proxy-protocol` is off.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Used only while no primary (non-backup) backend is up ([`crate::tier`]).
    pub backup: bool,
}

/// One backend in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub id: BackendId,
    /// Unique, stable key (hashing uses it).
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub max_conns: Option<u32>,
    /// Send this backend a PROXY header even when `--proxy-protocol` is off.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Used only while no primary backend is up ([`crate::tier`]).
    pub backup: bool,
    pub state: BackendState,
    /// For a draining backend: when its remaining connections are closed (`--grace`).
    pub drain_deadline: Option<std::time::Instant>,
    /// Its address is one of this host's: its connections are watched for loops back to
    /// the balancer ([`crate::loops`]).
    pub local: bool,
}

/// A service's index in [`Routing::services`]: given to a name once and never to another
/// name in the life of the process, so a connection's service id always means the same
/// service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

/// Everything a worker routes with: one [`Snapshot`] per service, replaced whole. A new
/// routing shares the snapshots of the services that did not change.
#[derive(Debug)]
pub struct Routing {
    /// Increases with every routing the control thread publishes; what the workers report
    /// in `uringlb_snapshot_version`.
    pub version: u64,
    /// By [`ServiceId`]; `None` for a service that is gone.
    pub services: Vec<Option<Arc<Snapshot>>>,
    /// The listen addresses whose services route by TLS server name, with their names.
    pub sni: crate::sni::SniRoutes,
}

impl Routing {
    pub fn get(&self, id: ServiceId) -> Option<&Arc<Snapshot>> {
        self.services.get(id.0 as usize).and_then(Option::as_ref)
    }
}

/// A service's own `max_conns`: its clients open at once, across workers. One per service
/// for the life of the process (its snapshots share it), so the count survives reloads.
#[derive(Debug, Default)]
pub struct ServiceBudget {
    open: CachePadded<AtomicUsize>,
    max: AtomicUsize,
}

impl ServiceBudget {
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Takes a place for a new client of the service, or says there is none (the client
    /// waits, as at the balancer's own limit).
    pub fn try_take(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn give_back(&self) {
        let before = self.open.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "more clients of a service closed than opened");
    }

    /// Places not taken.
    pub fn room(&self) -> usize {
        self.max
            .load(Ordering::Relaxed)
            .saturating_sub(self.open.load(Ordering::Relaxed))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// How new connections are routed, besides the backends: the settings a snapshot carries
/// (a reload changes them the same way a health change changes the backends).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub algorithm: Algorithm,
    pub hash_key: HashKey,
    pub hash_balance_factor: Option<u32>,
    pub maglev_table_size: u64,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Other backends tried after a failed connect.
    pub retries: u32,
    /// Send a PROXY protocol header to backends.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Sources whose PROXY header is read and believed (`--accept-proxy`).
    pub accept_proxy: Vec<ipnet::IpNet>,
    /// Client networks served and refused (`--allow`, `--deny`).
    pub access: crate::access::AccessList,
    /// Per-source limits.
    pub limits: crate::limits::Limits,
    /// TCP keepalive on both sockets of new connections, probing after this idle time.
    pub tcp_keepalive: Option<Duration>,
    /// The TLS server names it takes on its listen addresses (none: every client).
    pub sni: Vec<crate::sni::Pattern>,
    /// How long a client has, from its accept, to send its ClientHello.
    pub sni_timeout: Duration,
    /// A UDP service's flow settings; `None` for TCP.
    pub udp: Option<UdpPolicy>,
}

/// How a UDP service's flows live (`udp_idle_timeout`, `udp_responses`, `max_flows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPolicy {
    pub idle_timeout: Duration,
    /// Replies after which a flow ends; 0 = unlimited.
    pub responses: u32,
    /// Flows of the service at once (shared out among the workers).
    pub max_flows: u32,
}

/// The backend table a worker routes with. Immutable: a change is a new snapshot.
#[derive(Debug)]
///
/// Everything a reload may change travels in it (backends, algorithm, timeouts), so a
/// worker picks a reload up the same way it picks up a health change.
pub struct Snapshot {
    /// Increases with every snapshot the control thread publishes.
    pub version: u64,
    /// The service's name (labels of the counts workers keep per service).
    pub name: Arc<str>,
    /// Sorted by name, so every instance given the same backends sees the same order.
    /// `weight` is the effective weight (slow start already applied).
    pub backends: Vec<Backend>,
    pub algorithm: Algorithm,
    pub hash_key: HashKey,
    pub hash_balance_factor: Option<u32>,
    pub maglev_table_size: u64,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Other backends tried after a failed connect.
    pub retries: u32,
    /// Send a PROXY protocol header to backends.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Sources whose PROXY header is read and believed (`--accept-proxy`).
    pub accept_proxy: Vec<ipnet::IpNet>,
    /// Client networks served and refused (`--allow`, `--deny`).
    pub access: crate::access::AccessList,
    /// Per-source limits.
    pub limits: crate::limits::Limits,
    /// TCP keepalive on both sockets of new connections, probing after this idle time.
    pub tcp_keepalive: Option<Duration>,
    /// The TLS server names it takes on its listen addresses (none: every client).
    pub sni: Vec<crate::sni::Pattern>,
    /// How long a client has, from its accept, to send its ClientHello.
    pub sni_timeout: Duration,
    /// A UDP service's flow settings; `None` for TCP.
    pub udp: Option<UdpPolicy>,
    /// The algorithm's shared, prebuilt part (e.g. the Maglev table), built once here on
    /// the control thread; each worker makes its own selector from it.
    pub balance: Arc<Prepared>,
    /// This host's addresses, sorted: a client from one of them may be the balancer's own
    /// backend connection coming back.
    pub local_ips: Arc<[std::net::IpAddr]>,
    /// Some backend is on this host: clients redirected by NAT are checked for loops
    /// ([`crate::loops`], which follows the connections to local backends).
    pub watch_loops: bool,
    /// Something needs the client's address (hashing, limits, allow/deny lists, PROXY
    /// headers); otherwise a multishot accept's client is not asked for it.
    pub needs_client_addr: bool,
    /// The service's listen addresses as bound: a worker closes its listeners of the
    /// service that are not among them.
    pub listen: Vec<SocketAddr>,
    /// False for a service being removed: its listeners close, its connections drain.
    pub accepting: bool,
    /// The service's own `max_conns`, when it has one.
    pub budget: Option<Arc<ServiceBudget>>,
}

impl Snapshot {
    /// Builds a snapshot; `backends` is sorted by name here.
    pub fn new(
        version: u64,
        mut backends: Vec<Backend>,
        policy: &Policy,
        local_ips: Arc<[std::net::IpAddr]>,
    ) -> Snapshot {
        backends.sort_by(|a, b| a.name.cmp(&b.name));
        let members: Vec<Member<'_>> = backends
            .iter()
            .map(|b| Member {
                key: &b.name,
                weight: b.weight,
            })
            .collect();
        let opts = BuildOptions {
            maglev_table_size: policy.maglev_table_size,
            hash_balance_factor: policy.hash_balance_factor,
            seed: process_seed(),
        };
        let balance = Arc::new(Prepared::new(policy.algorithm, &members, &opts));
        let watch_loops = backends.iter().any(|b| b.local);
        let needs_client_addr = policy.algorithm.hashes_client()
            || policy.limits.any()
            || !policy.accept_proxy.is_empty()
            || !policy.access.is_open()
            || policy.proxy_protocol.is_some()
            || backends.iter().any(|b| b.proxy_protocol.is_some());
        Snapshot {
            version,
            name: Arc::from(""),
            backends,
            algorithm: policy.algorithm,
            hash_key: policy.hash_key,
            hash_balance_factor: policy.hash_balance_factor,
            maglev_table_size: policy.maglev_table_size,
            connect_timeout: policy.connect_timeout,
            idle_timeout: policy.idle_timeout,
            retries: policy.retries,
            proxy_protocol: policy.proxy_protocol,
            accept_proxy: policy.accept_proxy.clone(),
            access: policy.access.clone(),
            limits: policy.limits,
            tcp_keepalive: policy.tcp_keepalive,
            sni: policy.sni.clone(),
            sni_timeout: policy.sni_timeout,
            udp: policy.udp,
            balance,
            local_ips,
            watch_loops,
            needs_client_addr,
            listen: Vec::new(),
            accepting: true,
            budget: None,
        }
    }

    /// Whether `ip` is one of this host's addresses.
    pub fn is_local(&self, ip: std::net::IpAddr) -> bool {
        let ip = crate::loops::canonical(ip);
        ip.is_loopback() || self.local_ips.binary_search(&ip).is_ok()
    }

    /// Whether a PROXY header from `addr` is to be read and believed.
    pub fn trusts_proxy(&self, addr: &SocketAddr) -> bool {
        let ip = match addr.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(std::net::IpAddr::V4)
                .unwrap_or(std::net::IpAddr::V6(v6)),
            v4 => v4,
        };
        self.accept_proxy.iter().any(|net| net.contains(&ip))
    }

    /// True when no backend is up: the balancer is in panic mode and balances over all.
    pub fn none_up(&self) -> bool {
        !self.backends.iter().any(|b| b.state == BackendState::Up)
    }

    /// Which backends new connections may use now: the primaries, the backups, or (in
    /// panic mode, when [`none_up`](Self::none_up)) every `down` one.
    pub fn tier(&self) -> crate::tier::Tier {
        crate::tier::Tier::of(self.backends.iter().map(|b| (b.backup, b.state)))
    }
}

/// A backend as the control thread publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendEntry {
    pub spec: BackendSpec,
    pub state: BackendState,
    /// Effective weight (slow start applied), at least 1.
    pub weight: u32,
    /// Draining: open connections are closed at this time.
    pub drain_deadline: Option<std::time::Instant>,
}

impl BackendEntry {
    /// Up, at its configured weight.
    pub fn up(spec: &BackendSpec) -> BackendEntry {
        BackendEntry {
            spec: spec.clone(),
            state: BackendState::Up,
            weight: spec.weight,
            drain_deadline: None,
        }
    }
}

/// A random seed chosen once per process, so that two balancers (or two runs) don't make
/// the same "random" choices. The hashing algorithms never use it.
fn process_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    })
}

/// Counters of one backend, written by every worker. On its own cache line.
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Connections open to this backend now (all workers).
    pub active: AtomicU64,
    /// Connections ever established.
    pub total: AtomicU64,
    /// Connect failures ever.
    pub failures: AtomicU64,
    /// Connect failures since the last success.
    pub consecutive_failures: AtomicU64,
    /// Peak-EWMA of connect time in nanoseconds (f64 bits), and when it was last updated
    /// (nanoseconds on the balancer's monotonic clock).
    pub ewma_ns_bits: AtomicU64,
    pub ewma_stamp_ns: AtomicU64,
    /// Bytes forwarded client -> backend and backend -> client on its connections. A
    /// worker adds a connection's bytes when it ends (or leaves the backend), and those of
    /// open connections once a second: one shared addition per connection, none per send.
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Raised by every [`reset`](Self::reset): what workers keep per backend elsewhere
    /// (connect-time histograms) counts only while it matches.
    pub epoch: AtomicU64,
}

impl BackendCounters {
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Back to zero, for an id given to a new backend (nothing refers to the old one).
    pub fn reset(&self) {
        for c in [
            &self.active,
            &self.total,
            &self.failures,
            &self.consecutive_failures,
            &self.ewma_ns_bits,
            &self.ewma_stamp_ns,
            &self.bytes_up,
            &self.bytes_down,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// Bytes forwarded in `dir` on its connections.
    pub fn bytes(&self, dir: crate::direction::Dir) -> &AtomicU64 {
        match dir {
            crate::direction::Dir::Up => &self.bytes_up,
            crate::direction::Dir::Down => &self.bytes_down,
        }
    }
}

/// How many backends (live, or removed but still referenced) a balancer can have at once.
pub const MAX_BACKENDS: usize = 4096;

/// Per-backend counters shared by all workers and the control thread.
#[derive(Debug)]
pub struct SharedCounters {
    slots: Box<[CachePadded<BackendCounters>]>,
}

impl SharedCounters {
    pub fn new() -> Arc<SharedCounters> {
        let slots = (0..MAX_BACKENDS)
            .map(|_| CachePadded::new(BackendCounters::default()))
            .collect();
        Arc::new(SharedCounters { slots })
    }

    pub fn get(&self, id: BackendId) -> &BackendCounters {
        &self.slots[id.0 as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote_backend() -> Backend {
        Backend {
            id: BackendId(0),
            name: "b".into(),
            addr: "192.0.2.1:80".parse().expect("addr"),
            weight: 1,
            max_conns: None,
            proxy_protocol: None,
            state: BackendState::Up,
            drain_deadline: None,
            local: false,
            backup: false,
        }
    }

    #[test]
    fn an_access_list_needs_the_client_address() {
        let mut policy = crate::config::ServiceSettings::default().policy();
        let snap = |p: &Policy| Snapshot::new(1, vec![remote_backend()], p, Arc::from([]));
        assert!(
            !snap(&policy).needs_client_addr,
            "nothing needs it by default"
        );
        policy.access.deny = vec!["192.0.2.0/24".parse().expect("net")];
        assert!(snap(&policy).needs_client_addr);
        policy.access = crate::access::AccessList {
            allow: vec!["10.0.0.0/8".parse().expect("net")],
            deny: vec![],
        };
        assert!(snap(&policy).needs_client_addr);
    }
}
