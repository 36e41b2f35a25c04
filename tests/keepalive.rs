//! `--tcp-keepalive`: both of the balancer's sockets of a connection probe an idle peer, so
//! a long quiet flow survives NAT and firewall timeouts. Checked with `ss`, which shows the
//! kernel's keepalive timer on a socket.

mod util;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;

use util::*;

/// The timers `ss` reports for established sockets matching `filter` (e.g. `sport = :80`).
fn timers(filter: &str) -> Vec<String> {
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .args(filter.split_whitespace())
        .output()
        .expect("ss (iproute2)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("timer:"))
                .unwrap_or("none")
                .to_string()
        })
        .collect()
}

/// Opens one connection through `lb` and answers the timers of the balancer's two sockets
/// of it: the one the client connected to, and the one to the backend.
fn balancer_socket_timers(lb: &Lb, backend: SocketAddr) -> (Vec<String>, Vec<String>) {
    let mut s = lb.connect();
    s.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
    let client_side = timers(&format!("sport = :{}", lb.addr.port()));
    let backend_side = timers(&format!("dport = :{}", backend.port()));
    (client_side, backend_side)
}

#[test]
fn both_sides_probe_an_idle_peer_when_asked() {
    let (echo, lb) = echo_behind_lb(&["--tcp-keepalive", "45s", "--workers", "1"]);
    let (client, backend) = balancer_socket_timers(&lb, echo.addr());
    assert_eq!(client.len(), 1, "{client:?}");
    assert_eq!(backend.len(), 1, "{backend:?}");
    for t in client.iter().chain(&backend) {
        assert!(t.starts_with("timer:(keepalive,"), "{t}");
    }
}

#[test]
fn off_by_default_and_by_off() {
    for extra in [&[][..], &["--tcp-keepalive", "off"][..]] {
        let mut args = vec!["--workers", "1"];
        args.extend_from_slice(extra);
        let (echo, lb) = echo_behind_lb(&args);
        let (client, backend) = balancer_socket_timers(&lb, echo.addr());
        assert_eq!(
            (client.len(), backend.len()),
            (1, 1),
            "{client:?} {backend:?}"
        );
        for t in client.iter().chain(&backend) {
            assert!(!t.contains("keepalive"), "{extra:?}: {t}");
        }
    }
}

#[test]
fn a_bad_value_is_refused_by_name() {
    for bad in ["0s", "soon", "100000s"] {
        let (st, _, err) = run_bin(&[
            "--tcp-keepalive",
            bad,
            "--backend",
            "127.0.0.1:9",
            "--check",
        ]);
        assert_eq!(st.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("--tcp-keepalive"), "{bad}: {err}");
    }
}
