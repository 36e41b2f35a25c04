//! `uringlb-bench udp` (the benchmark's UDP load) through a real uringlb UDP service in
//! front of its UDP echo backends: what the load generator counts agrees with what the
//! balancer counts, for steady flows and for a new flow per request.

mod util;

use std::time::Duration;

use uringlb_bench::udp::{self, UdpEchoServer, UdpLoadConfig};
use util::*;

fn start(backends: &[UdpEchoServer], extra: &[&str]) -> (Lb, Admin) {
    let flags: Vec<String> = backends
        .iter()
        .flat_map(|b| ["--backend".to_string(), b.addr().to_string()])
        .collect();
    let mut args: Vec<&str> = vec!["--protocol", "udp", "--health", "none", "--workers", "1"];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(extra);
    start_with_admin(&args)
}

/// Waits (at most 10 s) until the metric has the value; workers publish on their tick.
fn wait_metric(admin: &Admin, name: &str, labels: &[(&str, &str)], want: f64) {
    let mut last = None;
    poll(Duration::from_secs(10), || {
        last = admin.metrics().get(name, labels);
        (last == Some(want)).then_some(())
    })
    .unwrap_or_else(|| panic!("{name}{labels:?} is {last:?}, expected {want}"));
}

fn datagrams(admin: &Admin, want: f64) {
    for dir in ["client_to_backend", "backend_to_client"] {
        let labels = [("service", "default"), ("direction", dir)];
        wait_metric(admin, "uringlb_udp_datagrams_total", &labels, want);
    }
}

#[test]
fn steady_flows_through_the_balancer_are_counted_alike_on_both_sides() {
    let backends: Vec<UdpEchoServer> = (0..3)
        .map(|_| UdpEchoServer::start("127.0.0.1:0").unwrap())
        .collect();
    let (lb, admin) = start(&backends, &[]);
    let cfg = UdpLoadConfig {
        requests: Some(3000),
        timeout: Duration::from_secs(5),
        ..UdpLoadConfig::new(lb.addr, 16, Duration::from_secs(120))
    };
    let r = udp::run(&cfg).unwrap();
    assert_eq!((r.sent, r.answered, r.lost, r.refused), (3000, 3000, 0, 0));
    let echoed: u64 = backends.iter().map(UdpEchoServer::echoed).sum();
    assert_eq!(echoed, 3000);
    // 16 flows, each kept for the whole run (no response limit): 16 flows in the balancer.
    let svc = [("service", "default")];
    wait_metric(&admin, "uringlb_udp_flows_total", &svc, 16.0);
    datagrams(&admin, 3000.0);
    assert!(
        backends.iter().filter(|b| b.echoed() > 0).count() >= 2,
        "16 flows all on one backend"
    );
}

#[test]
fn a_new_flow_per_request_is_a_flow_per_request_in_the_balancer() {
    let backends: Vec<UdpEchoServer> = (0..3)
        .map(|_| UdpEchoServer::start("127.0.0.1:0").unwrap())
        .collect();
    let (lb, admin) = start(&backends, &["--udp-responses", "1"]);
    let cfg = UdpLoadConfig {
        requests: Some(600),
        timeout: Duration::from_secs(5),
        new_flow_per_request: true,
        ..UdpLoadConfig::new(lb.addr, 8, Duration::from_secs(120))
    };
    let r = udp::run(&cfg).unwrap();
    assert_eq!((r.sent, r.answered, r.lost, r.refused), (600, 600, 0, 0));
    let svc = [("service", "default")];
    wait_metric(&admin, "uringlb_udp_flows_total", &svc, 600.0);
    wait_metric(&admin, "uringlb_udp_flows_active", &svc, 0.0);
    datagrams(&admin, 600.0);
}
