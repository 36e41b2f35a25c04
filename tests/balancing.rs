//! Where each balancing algorithm sends connections, end to end (issue #3): least-conn and
//! p2c keep new connections off a loaded backend; the hashing algorithms send one client to
//! one backend on every worker and on every instance; weighted-random follows the weights;
//! removing a backend moves (almost) only its own clients under maglev and ring-hash, and
//! most clients under source-hash; bounded loads spill a hot client over; least-time avoids
//! a backend that was slow to accept.
//!
//! Through the real binary with `--workers 2` (connections from different source ports land
//! on both workers via SO_REUSEPORT's 4-tuple hash), except the snapshot-change tests, which
//! run the server in process so that they can publish a new backend set, wait until every
//! worker routes with it, and read the per-worker accept counters.
//!
//! Client addresses: a client socket bound to 127.0.0.x before connecting is a distinct
//! client IP to the balancer.

mod util;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use uringlb::config::{Algorithm, BackendSpec, Config, HealthCheck, ServiceSettings, Workers};
use uringlb::server::Server;
use uringlb_bench::NameServer;
use util::*;

// ---- helpers ----------------------------------------------------------------------------

/// `--backend ADDR,name=NAME[,weight=W]` for each server, in the order given.
fn backend_flags(servers: &[&NameServer], weights: Option<&[u32]>) -> Vec<String> {
    servers
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            let mut spec = format!("{},name={}", s.addr(), s.name());
            if let Some(w) = weights {
                spec += &format!(",weight={}", w[i]);
            }
            ["--backend".to_string(), spec]
        })
        .collect()
}

/// The flags of [`start_lb`].
fn lb_args(servers: &[&NameServer], weights: Option<&[u32]>, extra: &[&str]) -> Vec<String> {
    let mut args = backend_flags(servers, weights);
    args.extend(["--workers", "2", "--health", "none"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts the binary over `servers` (in that order) with `--workers 2 --health none` and
/// the extra flags.
fn start_lb(servers: &[&NameServer], weights: Option<&[u32]>, extra: &[&str]) -> Lb {
    let args = lb_args(servers, weights, extra);
    Lb::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The same with an admin endpoint, to read the balancer's own counters.
fn start_lb_with_admin(servers: &[&NameServer], extra: &[&str]) -> (Lb, Admin) {
    let args = lb_args(servers, None, extra);
    start_with_admin(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The backend `src` reaches through `dst` with one short connection, closed with a reset.
fn backend_for(src: Ipv4Addr, dst: SocketAddr) -> String {
    let name = greet_from(src.into(), dst);
    assert!(
        !name.is_empty(),
        "{src}: connection closed without a greeting"
    );
    name
}

/// 256 distinct client IPs: 127.0.0.1 ..= 127.0.0.255 and 127.0.1.1.
fn client_ips() -> Vec<Ipv4Addr> {
    (1..=255u8)
        .map(|x| Ipv4Addr::new(127, 0, 0, x))
        .chain([Ipv4Addr::new(127, 0, 1, 1)])
        .collect()
}

/// The backend each client IP reaches (one short connection each).
fn map_clients(dst: SocketAddr, ips: &[Ipv4Addr]) -> Vec<String> {
    ips.iter().map(|&ip| backend_for(ip, dst)).collect()
}

fn histogram(names: &[String]) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.as_str()).or_insert(0) += 1;
    }
    m
}

/// An in-process balancer with two workers over `backends`.
fn start_in_process(algorithm: Algorithm, backends: Vec<BackendSpec>) -> Server {
    let cfg = Config {
        service: ServiceSettings {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            backends,
            algorithm,
            health: HealthCheck::None,
            ..Default::default()
        },
        workers: Workers::Count(2),
        ..Default::default()
    };
    Server::start(&cfg).expect("start in-process balancer")
}

// ---- least-conn and p2c: a loaded backend gets no new connections ------------------------

/// Opens connections (each greeted before the next) until at least `min_total` are open and
/// at least `min_on_a` of them are on backend "a"; keeps those on "a" open and closes the
/// rest, then waits until the balancer counts none open to the other backends. Returns the
/// held ones and the counts of the initial spread.
fn load_backend_a(
    lb: &Lb,
    admin: &Admin,
    others: &[&NameServer],
    min_total: usize,
    min_on_a: usize,
) -> (Vec<TcpStream>, BTreeMap<String, usize>) {
    let mut spread = BTreeMap::new();
    let mut open = Vec::new();
    while open.len() < min_total || spread.get("a").copied().unwrap_or(0) < min_on_a {
        assert!(
            open.len() < 100,
            "backend a got too few connections: {spread:?}"
        );
        let mut s = lb.connect();
        let name = greeting(&mut s);
        *spread.entry(name.clone()).or_insert(0) += 1;
        open.push((name, s));
    }
    let held: Vec<TcpStream> = open
        .into_iter()
        .filter_map(|(name, s)| (name == "a").then_some(s))
        .collect();
    // The balancer's own count (what least-conn and p2c read) drops when it releases the
    // connections, just after the backends see the close.
    wait_until(
        "the balancer to count no connection open to the other backends",
        Duration::from_secs(15),
        || {
            let m = admin.metrics();
            others
                .iter()
                .all(|s| m.value("uringlb_connections_active", &[("backend", s.name())]) == 0.0)
        },
    );
    (held, spread)
}

/// least-conn reads the shared counters, so the count is global across both workers: with
/// backend "a" holding 6 or 7 connections and the others none, every new connection goes
/// to "b" or "c". A short connection can linger for a moment after the client closes it,
/// but "a" could only be chosen if "b" and "c" each had as many open as "a" (ties rotate),
/// and sequential short connections never leave more than one or two open. So the bound is
/// exactly 0.
#[test]
fn least_conn_sends_nothing_to_a_loaded_backend() {
    let s = name_servers(&["a", "b", "c"]);
    let (lb, admin) = start_lb_with_admin(&[&s[0], &s[1], &s[2]], &["--algorithm", "least-conn"]);
    let (mut held, initial) = load_backend_a(&lb, &admin, &[&s[1], &s[2]], 20, 1);
    // Held open and greeted one by one, 20 connections spread 7/7/6 exactly: each pick saw
    // every earlier connection, whichever worker accepted it.
    let (min, max) = (
        initial.values().min().copied().unwrap_or(0),
        initial.values().max().copied().unwrap_or(0),
    );
    assert!(
        initial.len() == 3 && max - min <= 1,
        "least-conn spread {initial:?}"
    );
    let on_a = held.len();
    let a_before = s[0].connections();
    let got = spread(lb.addr, 30);
    eprintln!("least-conn: a holds {on_a}; 30 new connections went {got:?}");
    assert_eq!(
        s[0].connections(),
        a_before,
        "new connections on a: {got:?}"
    );
    assert_eq!(got.get("a"), None, "{got:?}");
    assert_eq!(got.values().sum::<usize>(), 30);
    // The held connections still forward.
    for c in &mut held {
        c.write_all(b"ping\n").unwrap();
        assert_eq!(greeting(c), "ping");
    }
    assert_eq!(s[0].active(), on_a as u64);
}

/// p2c samples two *distinct* backends (`balance::rng::sample_two`) and takes the one with
/// the strictly lower (active + 1) / weight, else the first sampled. With three backends
/// every pair that contains "a" also contains "b" or "c", so "a" can win only against a
/// backend with at least as many open connections as "a" holds (at least 5 here), which
/// sequential short connections never have: exactly 0 new connections on "a".
#[test]
fn p2c_sends_nothing_to_a_loaded_backend() {
    let s = name_servers(&["a", "b", "c"]);
    let (lb, admin) = start_lb_with_admin(&[&s[0], &s[1], &s[2]], &["--algorithm", "p2c"]);
    let (held, initial) = load_backend_a(&lb, &admin, &[&s[1], &s[2]], 20, 5);
    let a_before = s[0].connections();
    let got = spread(lb.addr, 30);
    eprintln!(
        "p2c: initial spread {initial:?}, a holds {}; 30 new connections went {got:?}",
        held.len()
    );
    assert_eq!(got.get("a"), None, "{got:?}");
    assert_eq!(s[0].connections(), a_before);
    assert_eq!(got.values().sum::<usize>(), 30);
    drop(held);
}

// ---- hashing: one client, one backend ------------------------------------------------------

/// One client IP, 100 connections with different source ports (so both workers accept
/// some): all on one backend.
fn same_client_same_backend(algorithm: &str) {
    let s = name_servers(&["a", "b", "c"]);
    let lb = start_lb(
        &[&s[0], &s[1], &s[2]],
        None,
        &["--algorithm", algorithm, "--hash-key", "source-ip"],
    );
    let got = spread(lb.addr, 100);
    eprintln!("{algorithm}: 100 connections from 127.0.0.1 went {got:?}");
    assert_eq!(
        got.len(),
        1,
        "{algorithm}: one client on several backends: {got:?}"
    );
    // And another client IP is just as stable.
    let other = Ipv4Addr::new(127, 0, 0, 77);
    let names: Vec<String> = (0..50).map(|_| backend_for(other, lb.addr)).collect();
    let h = histogram(&names);
    assert_eq!(
        h.len(),
        1,
        "{algorithm}: {other} on several backends: {h:?}"
    );
}

#[test]
fn maglev_sends_one_client_to_one_backend() {
    same_client_same_backend("maglev");
}

#[test]
fn source_hash_sends_one_client_to_one_backend() {
    same_client_same_backend("source-hash");
}

#[test]
fn ring_hash_sends_one_client_to_one_backend() {
    same_client_same_backend("ring-hash");
}

/// The binary can't say which worker accepted a connection, so this runs the same check in
/// process, where the per-worker accept counters show that both workers took part.
#[test]
fn maglev_same_client_same_backend_on_both_workers() {
    let s = name_servers(&["a", "b", "c"]);
    let server = start_in_process(Algorithm::Maglev, s.iter().map(spec).collect());
    let addr = server.local_addrs()[0];
    let got = spread(addr, 100);
    let per_worker = accepted_per_worker(&server);
    eprintln!("maglev in process: {got:?}, accepted per worker {per_worker:?}");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(per_worker.iter().sum::<u64>(), 100);
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "one worker took every connection: {per_worker:?}"
    );
    server.stop(Duration::from_secs(1));
    server.join();
}

/// Source-hash keeps each of 256 client IPs on its backend across repeated connections, and
/// spreads the clients over all backends.
#[test]
fn source_hash_mapping_is_stable_for_256_clients() {
    let s = name_servers(&["a", "b", "c"]);
    let lb = start_lb(
        &[&s[0], &s[1], &s[2]],
        None,
        &["--algorithm", "source-hash"],
    );
    let ips = client_ips();
    let first = map_clients(lb.addr, &ips);
    let second = map_clients(lb.addr, &ips);
    assert_eq!(first, second);
    let h = histogram(&first);
    eprintln!("source-hash: 256 clients over 3 backends {h:?}");
    assert_eq!(h.len(), 3, "{h:?}");
}

/// Consistent hashing across instances: two instances with the same backends, listed in different orders,
/// send each of 256 client IPs to the same backend without sharing anything.
#[test]
fn maglev_two_instances_agree_on_256_clients() {
    let s = name_servers(&["web-1", "web-2", "web-3", "web-4"]);
    let lb1 = start_lb(
        &[&s[0], &s[1], &s[2], &s[3]],
        None,
        &["--algorithm", "maglev"],
    );
    let lb2 = start_lb(
        &[&s[2], &s[0], &s[3], &s[1]],
        None,
        &["--algorithm", "maglev"],
    );
    let ips = client_ips();
    let one = map_clients(lb1.addr, &ips);
    let two = map_clients(lb2.addr, &ips);
    let differ: Vec<_> = ips
        .iter()
        .zip(one.iter().zip(&two))
        .filter(|(_, (a, b))| a != b)
        .collect();
    assert!(differ.is_empty(), "instances disagree: {differ:?}");
    let h = histogram(&one);
    eprintln!("maglev, two instances: 256 clients over 4 backends {h:?}, identical");
    assert_eq!(h.len(), 4, "degenerate mapping: {h:?}");
}

// ---- weighted-random ----------------------------------------------------------------------

/// Weights 1, 2, 3: shares p = 1/6, 1/3, 1/2. Over n connections a backend's count is
/// binomial, sd = sqrt(n p (1 - p)). For 5% relative to be at least 4 sd for every backend,
/// 0.05 n p >= 4 sqrt(n p (1-p)), i.e. n >= 6400 (1 - p) / p, which the smallest share
/// needs most: n >= 32000. With 3000 connections 5% is only 1.2 sd for it (25 of 500, sd
/// 20.4): such a test would fail about one run in four. So: 36000 connections, where 5% is
/// 4.2 sd for p = 1/6 (300 of 6000, sd 70.7), 6.9 sd for 1/3 and 9.5 sd for 1/2.
/// Sent from 8 client threads, each with its own client IPs so that no address runs out of
/// ports.
#[test]
fn weighted_random_follows_the_weights() {
    const N: usize = 36_000;
    const THREADS: usize = 8;
    let s = name_servers(&["w1", "w2", "w3"]);
    let weights = [1u32, 2, 3];
    let lb = start_lb(
        &[&s[0], &s[1], &s[2]],
        Some(&weights),
        &["--algorithm", "weighted-random"],
    );
    let t0 = Instant::now();
    let addr = lb.addr;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut m: HashMap<String, usize> = HashMap::new();
                for i in 0..N / THREADS {
                    let ip = Ipv4Addr::new(127, 10 + t as u8, (i / 250) as u8, 1 + (i % 250) as u8);
                    *m.entry(backend_for(ip, addr)).or_insert(0) += 1;
                }
                m
            })
        })
        .collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for h in handles {
        for (k, v) in h.join().expect("client thread") {
            *counts.entry(k).or_insert(0) += v;
        }
    }
    let total_w: u32 = weights.iter().sum();
    let mut report = Vec::new();
    for (srv, &w) in s.iter().zip(&weights) {
        let p = f64::from(w) / f64::from(total_w);
        let expect = N as f64 * p;
        let sd = (N as f64 * p * (1.0 - p)).sqrt();
        let got = counts.get(srv.name()).copied().unwrap_or(0) as f64;
        report.push(format!(
            "{} weight {w}: {got} (expected {expect:.0}, {:+.2}%, {:+.2} sd)",
            srv.name(),
            100.0 * (got - expect) / expect,
            (got - expect) / sd
        ));
        assert!(
            (got - expect).abs() <= 0.05 * expect,
            "{}: {got} vs {expect}: {counts:?}",
            srv.name()
        );
    }
    eprintln!(
        "weighted-random over {N} connections in {:.1?}: {}",
        t0.elapsed(),
        report.join("; ")
    );
    assert_eq!(counts.values().sum::<usize>(), N);
}

// ---- snapshot changes: which clients move --------------------------------------------------

/// What removing one backend did to 256 clients.
#[derive(Debug)]
struct Moved {
    removed: String,
    on_removed: usize,
    moved: usize,
    /// Clients that were on a remaining backend and moved anyway.
    extra: usize,
}

/// Runs an in-process balancer over `n` backends ("b0".."b{n-1}"), maps 256 client IPs,
/// then for each backend in turn: publishes the set without it, maps again, and publishes
/// the full set back (which must restore every client's backend).
fn removal_figures(algorithm: Algorithm, n: usize) -> Vec<Moved> {
    let names: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = name_servers(&name_refs);
    let all: Vec<BackendSpec> = s.iter().map(spec).collect();
    let server = start_in_process(algorithm, all.clone());
    let addr = server.local_addrs()[0];
    let ips = client_ips();
    let before = map_clients(addr, &ips);
    assert!(
        histogram(&before).len() == n,
        "{algorithm:?}: not every backend has clients: {:?}",
        histogram(&before)
    );
    let mut out = Vec::new();
    for gone in &names {
        let rest: Vec<BackendSpec> = all.iter().filter(|b| &b.name != gone).cloned().collect();
        publish_and_wait(&server, &rest);
        let after = map_clients(addr, &ips);
        assert!(
            !after.contains(gone),
            "{algorithm:?}: clients still reach {gone} after every worker dropped it"
        );
        let on_removed = before.iter().filter(|b| *b == gone).count();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        out.push(Moved {
            removed: gone.clone(),
            on_removed,
            moved,
            extra: moved - on_removed,
        });
        publish_and_wait(&server, &all);
        assert_eq!(
            map_clients(addr, &ips),
            before,
            "{algorithm:?}: adding {gone} back did not restore the mapping"
        );
    }
    let per_worker = accepted_per_worker(&server);
    assert!(per_worker.iter().all(|&c| c > 0), "{per_worker:?}");
    server.stop(Duration::from_secs(1));
    server.join();
    out
}

fn report(algorithm: &str, n: usize, figures: &[Moved]) {
    for m in figures {
        eprintln!(
            "{algorithm} N={n} remove {}: of 256 clients {} were on it, {} moved, {} extra ({:.1}% of all)",
            m.removed,
            m.on_removed,
            m.moved,
            m.extra,
            100.0 * m.extra as f64 / 256.0
        );
    }
}

/// Maglev: removing a backend moves its own clients plus at most 2% of all clients (the
/// table's disruption bound, property-tested in src/balance/maglev.rs): <= 5 of 256.
#[test]
fn maglev_removal_moves_only_the_removed_backends_clients_and_at_most_2_percent() {
    for n in [3, 10] {
        let figures = removal_figures(Algorithm::Maglev, n);
        report("maglev", n, &figures);
        for m in &figures {
            assert!(m.extra <= 5, "maglev N={n}: {m:?}");
        }
    }
}

/// Ring hash: only the removed backend's points leave the ring, so only its clients move.
#[test]
fn ring_hash_removal_moves_only_the_removed_backends_clients() {
    for n in [3, 10] {
        let figures = removal_figures(Algorithm::RingHash, n);
        report("ring-hash", n, &figures);
        for m in &figures {
            assert_eq!(m.extra, 0, "ring-hash N={n}: {m:?}");
        }
    }
}

/// Source-hash (key modulo count) is disruptive: removing one backend moves more clients
/// that were on the others than it had itself.
#[test]
fn source_hash_removal_moves_most_clients() {
    for n in [3, 10] {
        let figures = removal_figures(Algorithm::SourceHash, n);
        report("source-hash", n, &figures);
        let extra: usize = figures.iter().map(|m| m.extra).sum();
        let own: usize = figures.iter().map(|m| m.on_removed).sum();
        assert!(extra > own, "source-hash N={n}: {figures:?}");
    }
}

// ---- bounded loads ------------------------------------------------------------------------

/// 30 connections from one client IP, all held open, greeted one by one.
fn hold_30(lb: &Lb) -> (Vec<TcpStream>, BTreeMap<String, usize>) {
    let mut m = BTreeMap::new();
    let mut held = Vec::new();
    for _ in 0..30 {
        let mut s = lb.connect();
        *m.entry(greeting(&mut s)).or_insert(0) += 1;
        held.push(s);
    }
    (held, m)
}

/// With `--hash-balance-factor 125` a backend is skipped while it holds
/// active >= 1.25 * (total + 1) / 3 (the bound counts the connection being placed). The
/// caps sum to more than the total, so some backend always fits, and a backend only grows
/// while it fits: after 30 connections none holds more than ceil(1.25 * 30 / 3) = 13
/// (= ceil(1.25 * mean); the exact bound, one tighter than ceil(1.25 * mean) + 1). Without
/// the factor all 30 go to the client's backend.
#[test]
fn maglev_hash_balance_factor_spills_a_hot_client_over() {
    let s = name_servers(&["a", "b", "c"]);
    let plain = start_lb(&[&s[0], &s[1], &s[2]], None, &["--algorithm", "maglev"]);
    let (held, m) = hold_30(&plain);
    eprintln!("maglev, one client, 30 held, no factor: {m:?}");
    assert_eq!(m.len(), 1, "{m:?}");
    drop(held);
    drop(plain);

    let bounded = start_lb(
        &[&s[0], &s[1], &s[2]],
        None,
        &["--algorithm", "maglev", "--hash-balance-factor", "125"],
    );
    let (held, m) = hold_30(&bounded);
    eprintln!("maglev, one client, 30 held, --hash-balance-factor 125: {m:?}");
    assert!(m.len() >= 2, "no spill-over: {m:?}");
    assert!(m.values().all(|&c| c <= 13), "{m:?}");
    assert_eq!(m.values().sum::<usize>(), 30);
    drop(held);
}

// ---- least-time -----------------------------------------------------------------------------

/// A backend that is slow to accept: its accept queue holds one connection (backlog 0) and
/// a filler connection the test made keeps it full, so the kernel drops further SYNs and a
/// connect to it completes only on a SYN retransmission (1 s, Linux's initial RTO) after
/// `open()` has let it accept. Once open it greets ("slow\n") and echoes like a NameServer.
struct SlowAccept {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    _filler: TcpStream,
}

impl SlowAccept {
    fn start() -> SlowAccept {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        sock.listen(0).unwrap();
        let listener: TcpListener = sock.into();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let filler = TcpStream::connect(addr).expect("filler connect");
        // The queue is full now: a further connect must hang.
        let probe = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert!(
            probe.is_err(),
            "the kernel did not drop a SYN to a full accept queue; the premise of this test fails"
        );
        let (open, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (o, st) = (open.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if !o.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                match listener.accept() {
                    Ok((mut c, _)) => {
                        std::thread::spawn(move || {
                            c.set_nonblocking(false).unwrap();
                            if c.write_all(b"slow\n").is_ok() {
                                let mut r = c.try_clone().unwrap();
                                let _ = std::io::copy(&mut r, &mut c);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        SlowAccept {
            addr,
            open,
            stop,
            _filler: filler,
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::Relaxed);
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Some socket on this machine is in SYN_SENT towards this backend (its SYN was dropped).
    fn syn_pending(&self) -> bool {
        let port = format!(":{:04X}", self.addr.port());
        std::fs::read_to_string("/proc/net/tcp")
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[2] == format!("0100007F{port}") && f[3] == "02"
            })
    }
}

impl Drop for SlowAccept {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// least-time compares two distinct random backends on peak-EWMA connect time x (active +
/// 1). The slow backend's first connect through the balancer waits for a SYN
/// retransmission (>= 1 s) while the NameServers connect in microseconds; from then on the
/// slow backend costs ~10^4 times more and, every pair containing a fast backend, gets
/// nothing for the next 30 connections (its estimate decays with tau = 10 s, so it would
/// take over a minute to come back into play). The slowness is real: the handshake to an
/// overloaded backend whose accept queue overflows does take a retransmission; the backend
/// is just as fast as the others once it accepts again, so only the estimate keeps new
/// connections off it.
#[test]
fn least_time_avoids_a_backend_that_was_slow_to_accept() {
    let slow = SlowAccept::start();
    let s = name_servers(&["b", "c"]);
    let flags = [
        "--backend".to_string(),
        format!("{},name=slow", slow.addr),
        "--backend".to_string(),
        format!("{},name=b", s[0].addr()),
        "--backend".to_string(),
        format!("{},name=c", s[1].addr()),
    ];
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend([
        "--workers",
        "2",
        "--health",
        "none",
        "--algorithm",
        "least-time",
        "--connect-timeout",
        "10s",
    ]);
    let lb = Lb::start(&args);

    // Warm up until every backend has a connect-time sample, the slow one a slow sample.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut slow_took = None;
    for _ in 0..60 {
        if slow_took.is_some() && seen.contains_key("b") && seen.contains_key("c") {
            break;
        }
        let t0 = Instant::now();
        let c = lb.connect();
        let (tx, rx) = mpsc::channel();
        let mut reader = c.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = tx.send(greeting(&mut reader));
        });
        let name = loop {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(name) => break name,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !slow.is_open() && slow.syn_pending() {
                        // The balancer is connecting to the slow backend and its SYN was
                        // dropped: let the backend accept, so the retransmission gets in.
                        slow.open();
                    }
                    assert!(t0.elapsed() < Duration::from_secs(20), "no greeting");
                }
                Err(e) => panic!("greeting: {e}"),
            }
        };
        if name == "slow" && slow_took.is_none() {
            slow_took = Some(t0.elapsed());
        }
        *seen.entry(name).or_insert(0) += 1;
        drop(c);
    }
    let slow_took = slow_took.expect("the balancer never picked the slow backend");
    eprintln!(
        "least-time warm-up: {seen:?}; the slow backend's first connection took {slow_took:?}"
    );
    assert!(
        slow_took >= Duration::from_millis(900),
        "the slow backend answered in {slow_took:?}, without a retransmission"
    );
    assert!(seen.contains_key("b") && seen.contains_key("c"), "{seen:?}");

    let got = spread(lb.addr, 30);
    eprintln!("least-time: 30 new connections went {got:?}");
    assert_eq!(got.get("slow"), None, "{got:?}");
    assert_eq!(got.values().sum::<usize>(), 30);
}

// ---- selectors continue across snapshots ---------------------------------------------------

/// Every snapshot gives each worker a new selector; it must continue where the old one
/// stopped (`Prepared::selector_at`) rather than restart its PRNG stream or cursor, or
/// frequent snapshots (slow start publishes one every 500 ms or more during a ramp) would
/// give every connection the same first pick. Here: one worker, two equal backends, and a
/// snapshot (the same backends) before each of 40 connections; each algorithm should split
/// them about 20/20 (binomial: fewer than 8 on one side has probability ~1e-5).
#[test]
fn random_choices_do_not_restart_with_each_snapshot() {
    let s = name_servers(&["a", "b"]);
    let mut results = Vec::new();
    for algorithm in [
        Algorithm::WeightedRandom,
        Algorithm::Random,
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
    ] {
        let cfg = Config {
            service: ServiceSettings {
                listen: vec!["127.0.0.1:0".parse().unwrap()],
                backends: s.iter().map(spec).collect(),
                algorithm,
                health: HealthCheck::None,
                ..Default::default()
            },
            workers: Workers::Count(1),
            ..Default::default()
        };
        let server = Server::start(&cfg).expect("start");
        let addr = server.local_addrs()[0];
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..40 {
            publish_and_wait(&server, &cfg.service.backends);
            let (_c, name) = greet(addr);
            *got.entry(name).or_insert(0) += 1;
        }
        eprintln!("{algorithm:?}, a snapshot before each of 40 connections: {got:?}");
        server.stop(Duration::from_secs(1));
        server.join();
        results.push((algorithm, got));
    }
    for (algorithm, got) in &results {
        assert!(
            got.len() == 2 && got.values().all(|&n| n >= 8),
            "{algorithm:?}: {got:?}"
        );
    }
}
