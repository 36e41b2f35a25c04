//! Health checks of a backend that expects the PROXY protocol send the header too (HAProxy's
//! `check-send-proxy`): against a real NGINX with `listen ... proxy_protocol` the backend
//! stays up and serves, with `http:` and `tcp` checks, the header set per backend or for all;
//! and a recording backend shows what a check sends: a valid header with the check
//! connection's own addresses.
//!
//! NGINX comes from Debian's package (`./scripts/install-test-deps.sh`) and runs as a child
//! of the test (tests/peers).

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use util::*;

/// `uringlb_health_checks_total{backend, result}`.
fn checks(admin: &Admin, backend: &str, result: &str) -> f64 {
    admin
        .metrics()
        .get(
            "uringlb_health_checks_total",
            &[("backend", backend), ("result", result)],
        )
        .unwrap_or(0.0)
}

/// An NGINX that requires the PROXY header, a balancer checking it with `health` and
/// sending the header as `proxy_args` say; after ten checks the backend must be up, no
/// check failed, and a client is served with its own address passed on.
fn nginx_stays_up(health: &str, proxy_args: &[&str], backend_opts: &str) {
    let nginx = nginx(
        "proxy_protocol",
        &[
            r#"location = /healthz { return 200 "ok\n"; } location / { return 200 "hello $proxy_protocol_addr\n"; }"#,
        ],
    );
    let backend = format!("{},name=web{backend_opts}", nginx.addr(0));
    let mut args = vec![
        "--backend",
        backend.as_str(),
        "--workers",
        "1",
        "--health",
        health,
        "--health-interval",
        "100ms",
        "--fall",
        "1",
    ];
    args.extend_from_slice(proxy_args);
    let (lb, admin) = start_with_admin(&args);
    wait_until("ten health checks", Duration::from_secs(20), || {
        checks(&admin, "web", "success") + checks(&admin, "web", "failure") >= 10.0
    });
    let failed = checks(&admin, "web", "failure");
    assert_eq!(
        failed,
        0.0,
        "{health} {proxy_args:?} {backend_opts}: checks failed against NGINX\n{}\n{}",
        lb.log_text(),
        nginx.logs()
    );
    let b = &admin.backends()["web"];
    assert_eq!(
        (b["state"].as_str(), b["healthy"].as_bool()),
        (Some("up"), Some(true)),
        "{b}"
    );
    assert!(!lb.log_text().contains("panic mode"), "{}", lb.log_text());
    let s = connect_from("127.0.0.9", lb.addr);
    let (status, body) = http_get(s);
    assert_eq!(
        (status, body.as_str()),
        (200, "hello 127.0.0.9\n"),
        "{}",
        nginx.logs()
    );
    // NGINX never saw a connection without a valid header.
    let logs = nginx.logs();
    assert!(!logs.contains("broken header"), "{logs}");
}

#[test]
fn http_checks_send_the_backends_proxy_header_to_nginx() {
    nginx_stays_up("http:/healthz", &[], ",proxy-protocol=v2");
}

#[test]
fn http_checks_send_the_global_proxy_header_to_nginx() {
    nginx_stays_up("http:/healthz", &["--proxy-protocol", "v1"], "");
}

#[test]
fn tcp_checks_send_the_proxy_header_to_nginx() {
    nginx_stays_up("tcp", &[], ",proxy-protocol=v1");
    nginx_stays_up("tcp", &["--proxy-protocol", "v2"], "");
}

/// What the first `n` check connections to a recording backend carried.
fn recorded_checks(
    health: &str,
    backend_opts: &str,
    extra: &[&str],
    n: usize,
) -> (SocketAddr, Vec<Vec<u8>>) {
    let (addr, rx) = recorder();
    let backend = format!("{addr},name=rec{backend_opts}");
    let mut args = vec![
        "--backend",
        backend.as_str(),
        "--workers",
        "1",
        "--health",
        health,
        "--health-interval",
        "100ms",
        "--health-timeout",
        "200ms",
    ];
    args.extend_from_slice(extra);
    let lb = Lb::start(&args);
    let got = (0..n)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no health check connection: {}", lb.log_text()))
        })
        .collect();
    (addr, got)
}

#[test]
fn a_tcp_check_sends_a_header_with_its_own_addresses() {
    let (addr, got) = recorded_checks("tcp", ",proxy-protocol=v2", &[], 3);
    for data in &got {
        let (src, dst, rest) = parse_v2(data);
        assert_eq!(dst, addr, "to the backend's address");
        assert_eq!(src.ip().to_string(), "127.0.0.1");
        assert_ne!(src.port(), 0);
        assert!(
            rest.is_empty(),
            "a tcp check sends the header only: {rest:?}"
        );
    }
    // The global flag applies to a backend without its own setting (v1 here).
    let (addr, got) = recorded_checks("tcp", "", &["--proxy-protocol", "v1"], 3);
    for data in &got {
        let line = String::from_utf8_lossy(data);
        let want = format!(" 127.0.0.1 {} ", addr.ip());
        assert!(
            line.starts_with("PROXY TCP4")
                && line.contains(&want)
                && line.ends_with(&format!(" {}\r\n", addr.port())),
            "{line:?}"
        );
    }
    // Without either, a check sends nothing.
    let (_, got) = recorded_checks("tcp", "", &[], 2);
    assert!(got.iter().all(Vec::is_empty), "{got:?}");
}

#[test]
fn an_http_check_sends_the_header_then_its_request() {
    let (addr, got) = recorded_checks("http:/healthz", ",proxy-protocol=v2", &[], 2);
    for data in &got {
        let (src, dst, rest) = parse_v2(data);
        assert_eq!(dst, addr);
        assert_eq!(src.ip().to_string(), "127.0.0.1");
        let request = String::from_utf8_lossy(rest);
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request:?}"
        );
    }
}
