//! Ports and clients: free loopback ports, connections from a chosen source address,
//! reading the greeting of a name backend, and where new connections go.
//!
//! Client addresses: all of 127.0.0.0/8 is loopback on Linux, so a client socket bound to
//! 127.0.0.x before connecting is a distinct client IP to the balancer.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::process::Lb;

/// A free loopback address for the balancer or a backend to bind: a [`fixed_port`], so no
/// client connection of a test running alongside takes it as its ephemeral source port
/// before the bind (CI saw a reload fail with "Address already in use" that way).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], fixed_port()))
}

/// `n` distinct free loopback addresses (see [`free_addr`]).
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    (0..n).map(|_| free_addr()).collect()
}

/// A loopback address with nothing listening (connects are refused).
pub fn closed_port() -> SocketAddr {
    free_addr()
}

/// A loopback port free now for both TCP and UDP, outside the kernel's ephemeral range and
/// never handed out twice in this process: none of the thousands of client connections the
/// tests make takes it meanwhile, so a peer started later (NGINX, dnsmasq) can bind it,
/// and a backend stopped there can be started again on it.
pub fn fixed_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = range
        .split_whitespace()
        .filter_map(|v| v.parse::<u32>().ok());
    let (lo, hi) = (it.next().unwrap_or(32768), it.next().unwrap_or(60999));
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for i in 0..5000u32 {
        let port = 10_000 + seed.wrapping_add(i.wrapping_mul(7919)) % 50_000;
        if (lo..=hi).contains(&port) || given.contains(&(port as u16)) {
            continue;
        }
        let port = port as u16;
        if UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port outside the ephemeral range");
}

/// A TCP connection to `dst` from the client address `src` (any port).
pub fn try_connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&dst.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A connection from `src` that the balancer may refuse at once, with a reset that can
/// arrive before the connect completes: `None` when it did.
pub fn connect_or_reset_from(src: &str, dst: SocketAddr) -> Option<TcpStream> {
    let ip: IpAddr = src.parse().expect("source IP");
    match try_connect_from(ip, dst) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("connect {src} -> {dst}: {e}"),
    }
}

/// Like [`try_connect_from`] with the source written as text; panics on failure.
pub fn connect_from(src: &str, dst: SocketAddr) -> TcpStream {
    let ip: IpAddr = src.parse().expect("source IP");
    try_connect_from(ip, dst).unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"))
}

/// Closes with a reset (SO_LINGER 0) rather than a FIN: the balancer passes the reset on,
/// so neither end keeps a TIME_WAIT socket. Tests that open tens of thousands of
/// connections use it: TIME_WAIT sockets are a machine-wide resource
/// (`net.ipv4.tcp_max_tw_buckets`) shared with everything else that runs here.
pub fn close_reset(s: TcpStream) {
    let _ = Socket::from(s).set_linger(Some(Duration::ZERO));
}

/// Reads one line (up to '\n', without it) from a stream; what came before a close or an
/// error otherwise.
pub fn read_line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).map(|n| n == 1).unwrap_or(false) {
        if b[0] == b'\n' {
            break;
        }
        out.push(b[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a name backend's greeting; panics if the connection closed without one.
pub fn greeting(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let name = read_line(s);
    assert!(!name.is_empty(), "connection closed without a greeting");
    name
}

/// A new connection through `addr` and the greeting of the backend it reached, kept open.
pub fn greet(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let name = greeting(&mut s);
    (s, name)
}

/// One new connection: the greeting, or why there was none. Closed with a reset.
pub fn greet_once(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let name = read_line(&mut s);
    close_reset(s);
    if name.is_empty() {
        Err("closed without a greeting".into())
    } else {
        Ok(name)
    }
}

/// The backend one connection from `src` reaches; "" if there was no greeting (no
/// backend, or a dead one). Closed with a reset.
pub fn greet_from(src: IpAddr, dst: SocketAddr) -> String {
    let Ok(mut s) = try_connect_from(src, dst) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = read_line(&mut s);
    close_reset(s);
    name
}

/// Where `n` new connections from 127.0.0.1 went, one after the other: backend -> count.
/// Panics if one got no greeting.
pub fn spread(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in 0..n {
        let name = greet_once(addr).unwrap_or_else(|e| panic!("connection {i} of {n}: {e}"));
        *m.entry(name).or_insert(0) += 1;
    }
    m
}

/// Opens connections until one reaches backend `name`; returns it open (greeting read).
pub fn open_to(lb: &Lb, name: &str) -> TcpStream {
    for _ in 0..50 {
        let mut s = lb.connect();
        if read_line(&mut s) == name {
            return s;
        }
        close_reset(s);
    }
    panic!("no connection reached {name}");
}

/// Connects to two balancers from the same 256 client addresses (127.0.0.1-255 and
/// 127.0.1.1) and asserts each client reaches the same backend through both; returns how
/// many clients each backend got.
pub fn same_backend_through_both(a: SocketAddr, b: SocketAddr) -> BTreeMap<String, usize> {
    let ips: Vec<std::net::Ipv4Addr> = (1..=255u8)
        .map(|x| std::net::Ipv4Addr::new(127, 0, 0, x))
        .chain([std::net::Ipv4Addr::new(127, 0, 1, 1)])
        .collect();
    let through = |lb: SocketAddr| -> Vec<String> {
        ips.iter().map(|&ip| greet_from(ip.into(), lb)).collect()
    };
    let (one, two) = (through(a), through(b));
    let differ: Vec<_> = ips
        .iter()
        .zip(one.iter().zip(&two))
        .filter(|(_, (x, y))| x != y)
        .collect();
    assert!(differ.is_empty(), "instances disagree: {differ:?}");
    let mut h = BTreeMap::new();
    for n in one {
        *h.entry(n).or_insert(0) += 1;
    }
    h
}

/// The backend names of a spread, in order.
pub fn keys(m: &BTreeMap<String, usize>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

/// Waits (at most 10 s) until `n` connections in a row reach exactly the backends `want`
/// ("" counting a connection that got no greeting: no backend yet, or a dead one).
pub fn wait_for_set(lb: &Lb, want: &[&str], n: usize) -> BTreeMap<String, usize> {
    let mut last = BTreeMap::new();
    let got = super::wait::poll(Duration::from_secs(10), || {
        last = BTreeMap::new();
        for _ in 0..n {
            *last
                .entry(greet_from(
                    IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
                    lb.addr,
                ))
                .or_insert(0) += 1;
        }
        (keys(&last) == want).then(|| last.clone())
    });
    got.unwrap_or_else(|| {
        panic!(
            "connections never reached exactly {want:?}; last: {last:?}\nlog:\n{}",
            lb.log_text()
        )
    })
}
