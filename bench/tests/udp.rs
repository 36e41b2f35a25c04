//! `uringlb-bench udp` and `serve-udp-echo` against each other and against test doubles
//! that drop or record datagrams: every request sent is accounted for (answered, lost,
//! refused or unfinished), flows are the source ports asked for, and bad arguments are
//! one-line errors. The run through a real uringlb UDP service is in the balancer's
//! tests (`tests/bench_udp.rs`), where its binary is at hand.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uringlb_bench::udp::{self, Payload, UdpEchoServer, UdpLoadConfig};

const BIN: &str = env!("CARGO_BIN_EXE_uringlb-bench");
const LOCAL: &str = "127.0.0.1:0";

#[test]
fn closed_loop_against_the_echo_answers_every_request() {
    let echo = UdpEchoServer::start(LOCAL).unwrap();
    let cfg = UdpLoadConfig {
        requests: Some(2000),
        ..UdpLoadConfig::new(echo.addr(), 8, Duration::from_secs(60))
    };
    let r = udp::run(&cfg).unwrap();
    assert_eq!((r.sent, r.answered, r.lost, r.refused), (2000, 2000, 0, 0));
    assert_eq!((r.unfinished(), r.send_errors, r.late), (0, 0, 0));
    assert_eq!(echo.echoed(), 2000);
    assert_eq!(r.request_bytes, 36, "a DNS query for the default name");
    assert_eq!(r.bytes_received, 2000 * 36);
    assert_eq!(r.histogram.len(), 2000);
    let s = r.summary();
    assert_eq!(s.mode, "udp");
    assert!(s.latency_us.max >= s.latency_us.p99 && s.latency_us.p99 >= s.latency_us.p50);
}

/// An echo on loopback that records each sender's address, and drops every `drop_every`-th
/// datagram (0: none).
fn recording_echo(drop_every: u64) -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let sock = UdpSocket::bind(LOCAL).unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n_got = 0u64;
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            n_got += 1;
            s.lock().unwrap().push(from);
            if drop_every == 0 || !n_got.is_multiple_of(drop_every) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    (addr, seen)
}

fn ports(seen: &Mutex<Vec<SocketAddr>>) -> HashSet<u16> {
    seen.lock().unwrap().iter().map(|a| a.port()).collect()
}

#[test]
fn a_flow_is_one_source_port_unless_each_request_gets_a_new_one() {
    let (addr, seen) = recording_echo(0);
    let cfg = UdpLoadConfig {
        requests: Some(300),
        payload: Payload::Fixed(100),
        ..UdpLoadConfig::new(addr, 4, Duration::from_secs(60))
    };
    let r = udp::run(&cfg).unwrap();
    assert_eq!((r.sent, r.answered, r.request_bytes), (300, 300, 100));
    assert_eq!(ports(&seen).len(), 4, "4 flows, 4 source ports");

    let (addr, seen) = recording_echo(0);
    let cfg = UdpLoadConfig {
        new_flow_per_request: true,
        ..UdpLoadConfig {
            target: addr,
            ..cfg
        }
    };
    let r = udp::run(&cfg).unwrap();
    assert_eq!((r.sent, r.answered), (300, 300));
    assert_eq!(r.summary().mode, "udp-new-flow");
    // Ports of closed sockets may come back, but not to the 4 of a steady run.
    assert!(
        ports(&seen).len() > 50,
        "{} source ports for 300 requests",
        ports(&seen).len()
    );
}

#[test]
fn dropped_datagrams_count_as_lost_and_the_counts_add_up() {
    let (addr, seen) = recording_echo(5);
    let cfg = UdpLoadConfig {
        requests: Some(500),
        timeout: Duration::from_millis(100),
        ..UdpLoadConfig::new(addr, 10, Duration::from_secs(60))
    };
    let r = udp::run(&cfg).unwrap();
    assert_eq!(r.sent, 500);
    assert_eq!(seen.lock().unwrap().len(), 500);
    assert_eq!(r.lost, 100, "every fifth dropped");
    assert_eq!(r.answered, 400);
    assert_eq!(r.sent, r.answered + r.lost + r.refused + r.unfinished());
    let wrk = r.wrk_json();
    let v: serde_json::Value = serde_json::from_str(wrk.strip_prefix("WRKJSON ").unwrap()).unwrap();
    assert_eq!(v["requests"], 400);
    assert_eq!(v["errors"]["timeout"], 100);
}

#[test]
fn a_closed_port_is_refused_not_lost() {
    // Bound then dropped: nothing listens there, the kernel answers port unreachable.
    let addr = UdpSocket::bind(LOCAL).unwrap().local_addr().unwrap();
    let cfg = UdpLoadConfig {
        requests: Some(20),
        timeout: Duration::from_secs(5),
        ..UdpLoadConfig::new(addr, 2, Duration::from_secs(60))
    };
    let r = udp::run(&cfg).unwrap();
    assert_eq!((r.answered, r.lost), (0, 0));
    assert_eq!(r.refused, r.sent);
    assert!(r.refused > 0);
}

/// Kills the child even when an assertion fails.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_cli_runs_open_loop_against_serve_udp_echo() {
    let mut child = Command::new(BIN)
        .args(["serve-udp-echo", "--listen", LOCAL])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _echo = Proc(child);
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();

    let out = Command::new(BIN)
        .args([
            "udp", "-t", &addr, "--rate", "2000", "--flows", "8", "-d", "2s",
        ])
        .args(["--json", "--size", "48"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rate = v["requests_per_sec"].as_f64().unwrap();
    assert!((1800.0..=2200.0).contains(&rate), "achieved {rate} req/s");
    assert_eq!(v["offered_rate"].as_f64(), Some(2000.0));
    assert_eq!(v["request_bytes"], 48);
    let n = |k: &str| v[k].as_u64().unwrap();
    assert_eq!(
        n("sent"),
        n("answered") + n("lost") + n("refused") + n("unfinished")
    );

    let out = Command::new(BIN)
        .args(["udp", "-t", &addr, "--new-flow-per-request", "-d", "1s"])
        .args(["--wrk-json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let json = text.strip_prefix("WRKJSON ").expect("a WRKJSON line");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert!(v["requests"].as_u64().unwrap() > 0);
    assert_eq!(v["errors"]["timeout"], 0);
}

#[test]
fn bad_arguments_are_one_line_errors_with_status_2() {
    for (args, says) in [
        (&["--flows", "0"][..], "--flows must be at least 1"),
        (&["--size", "1"][..], "--size must be 2 to 65507 bytes"),
        (&["--size", "70000"][..], "--size must be 2 to 65507 bytes"),
        (&["--name", "a..b"][..], "is not a DNS name"),
        (&["--timeout", "0s"][..], "--timeout must be above 0"),
        (&["--rate", "0"][..], "expected requests per second"),
        (&["--flows", "many"][..], "invalid value 'many'"),
    ] {
        let out = Command::new(BIN)
            .args(["udp", "-t", "127.0.0.1:9", "-d", "1s"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
