//! Where connections go: round robin, weighted round robin, failover on refused connects,
//! all backends down, and a new snapshot delivered to running workers.

mod util;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use util::*;

#[test]
fn round_robin_300_over_3_is_exact() {
    let b = name_servers(&["b0", "b1", "b2"]);
    let args = backend_args(&b.iter().map(|s| s.addr()).collect::<Vec<_>>());
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend(["--workers", "1", "--health", "none"]);
    let lb = Lb::start(&a);
    let m = spread(lb.addr, 300);
    assert_eq!(m.get("b0"), Some(&100), "{m:?}");
    assert_eq!(m.get("b1"), Some(&100), "{m:?}");
    assert_eq!(m.get("b2"), Some(&100), "{m:?}");
}

#[test]
fn weighted_3_2_1_gives_150_100_50() {
    let b = name_servers(&["b0", "b1", "b2"]);
    let specs: Vec<String> = b
        .iter()
        .zip([3, 2, 1])
        .flat_map(|(s, w)| {
            [
                "--backend".to_string(),
                format!("{},weight={w},name={}", s.addr(), s.name()),
            ]
        })
        .collect();
    let mut a: Vec<&str> = specs.iter().map(String::as_str).collect();
    a.extend([
        "--workers",
        "1",
        "--algorithm",
        "weighted-round-robin",
        "--health",
        "none",
    ]);
    let lb = Lb::start(&a);
    let m = spread(lb.addr, 300);
    assert_eq!((m["b0"], m["b1"], m["b2"]), (150, 100, 50), "{m:?}");
}

#[test]
fn failover_200_connections_succeed_with_one_port_closed() {
    let b = name_servers(&["b0", "b1"]);
    let mut addrs: Vec<SocketAddr> = b.iter().map(|s| s.addr()).collect();
    addrs.insert(1, closed_port());
    let args = backend_args(&addrs);
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend(["--workers", "2", "--health", "none"]);
    let lb = Lb::start(&a);
    let m = spread(lb.addr, 200);
    assert_eq!(
        m.get("b0").copied().unwrap_or(0) + m.get("b1").copied().unwrap_or(0),
        200,
        "{m:?}"
    );
}

#[test]
fn all_backends_refusing_closes_client_at_once() {
    let args = backend_args(&[closed_port(), closed_port(), closed_port()]);
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend([
        "--workers",
        "1",
        "--health",
        "none",
        "--connect-timeout",
        "1s",
    ]);
    let lb = Lb::start(&a);
    for _ in 0..20 {
        let t = Instant::now();
        let mut s = lb.connect();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "took {:?}",
            t.elapsed()
        );
    }
}

/// A listener whose accept queue is full: further connects hang (SYNs dropped) until the
/// connect timeout fires.
fn blackhole() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue; these connects complete (or hang) in the background.
    let fillers = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    (s, fillers, addr)
}

#[test]
fn connect_timeout_closes_client_within_timeout_plus_margin() {
    let (_l, _fill, addr) = blackhole();
    let b = addr.to_string();
    let lb = Lb::start(&[
        "--backend",
        &b,
        "--workers",
        "1",
        "--health",
        "none",
        "--connect-timeout",
        "500ms",
        "--retries",
        "0",
    ]);
    let t = Instant::now();
    let mut s = lb.connect();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    let took = t.elapsed();
    assert_eq!(n, 0);
    assert!(
        took >= Duration::from_millis(400),
        "closed before the timeout: {took:?}"
    );
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

#[test]
fn new_snapshot_moves_new_connections_open_ones_continue() {
    let old = name_servers(&["b0", "b1"]);
    let new = name_servers(&["n0", "n1"]);
    let cfg = uringlb::config::Config {
        service: uringlb::config::ServiceSettings {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            backends: old.iter().map(spec).collect(),
            health: uringlb::config::HealthCheck::None,
            ..Default::default()
        },
        workers: uringlb::config::Workers::Count(2),
        ..Default::default()
    };
    let server = uringlb::server::Server::start(&cfg).expect("start");
    let addr = server.local_addrs()[0];
    // An open connection to the old set.
    let (mut open, first) = greet(addr);
    assert!(first == "b0" || first == "b1");
    for _ in 0..10 {
        greet(addr);
    }
    let before: u64 = old.iter().map(|s| s.connections()).sum();
    publish_and_wait(&server, &new.iter().map(spec).collect::<Vec<_>>());
    for _ in 0..20 {
        greet(addr);
    }
    let after: u64 = old.iter().map(|s| s.connections()).sum();
    assert_eq!(before, after, "no new connection went to the old set");
    assert_eq!(new.iter().map(|s| s.connections()).sum::<u64>(), 20);
    // The old connection still forwards.
    open.write_all(b"still here\n").unwrap();
    assert_eq!(greeting(&mut open), "still here");
    drop(open);
    server.stop(Duration::from_secs(1));
    server.join();
}
