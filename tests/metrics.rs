//! `GET /metrics` through the real binary: the counts match the traffic the test sent
//! (connections per backend as the backends themselves counted them, bytes each way of a
//! known transfer, accepts, connect times, rejections, health checks), and the text
//! parses with a strict OpenMetrics parser (and, when installed, the Prometheus project's
//! Python parser).

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use uringlb_bench::EchoServer;

use util::*;

#[test]
fn metrics_match_the_traffic_and_parse() {
    let e0 = EchoServer::start("127.0.0.1:0").unwrap();
    let e1 = EchoServer::start("127.0.0.1:0").unwrap();
    let dead = closed_port();
    let args = [
        "--backend".to_string(),
        format!("{},name=e0", e0.addr()),
        "--backend".to_string(),
        format!("{},name=e1", e1.addr()),
        "--backend".to_string(),
        format!("{dead},name=dead"),
        "--workers".to_string(),
        "2".to_string(),
        // No health checks: the backends count every connection they accept, and a
        // check's connection would be one the balancer did not forward.
        "--health".to_string(),
        "none".to_string(),
        "--eject-after".to_string(),
        "0".to_string(),
    ];
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (lb, admin) = start_with_admin(&a);

    let before = admin.metrics();
    assert_eq!(before.sum("uringlb_accepted_total"), 0.0);
    assert_eq!(
        before.value("uringlb_config_reloads_total", &[("result", "ok")]),
        0.0
    );
    assert_eq!(
        before.value("uringlb_config_reloads_total", &[("result", "error")]),
        0.0
    );

    // 40 connections, each 100 000 bytes up and the same back. The dead backend refuses
    // its turns; each is retried on a live one, so the client never sees it.
    let (conns, len) = (40usize, 100_000usize);
    for i in 0..conns {
        echo_exchange(lb.addr, i as u64, len);
    }
    wait_until("connections to close", Duration::from_secs(5), || {
        let m = admin.metrics();
        m.sum("uringlb_connections_active") == 0.0
    });
    let m = admin.metrics();
    let text = admin.get("/metrics").body;

    let total = |b: &str| m.value("uringlb_connections_total", &[("backend", b)]);
    println!(
        "metrics: connections e0 {} (backend counted {}), e1 {} ({}), dead {}; connect failures dead {}",
        total("e0"),
        e0.connections(),
        total("e1"),
        e1.connections(),
        total("dead"),
        m.value("uringlb_connect_failures_total", &[("backend", "dead")])
    );
    assert_eq!(total("e0"), e0.connections() as f64);
    assert_eq!(total("e1"), e1.connections() as f64);
    assert_eq!(total("e0") + total("e1"), conns as f64);
    assert_eq!(total("dead"), 0.0);
    let dead_failures = m.value("uringlb_connect_failures_total", &[("backend", "dead")]);
    assert!(
        dead_failures >= 1.0,
        "round robin sent some to the dead one"
    );
    assert_eq!(
        m.value("uringlb_connect_failures_total", &[("backend", "e0")]),
        0.0
    );
    for b in ["e0", "e1", "dead"] {
        assert_eq!(
            m.value("uringlb_connections_active", &[("backend", b)]),
            0.0
        );
    }
    assert_eq!(m.value("uringlb_backend_up", &[("backend", "e0")]), 1.0);
    assert_eq!(m.value("uringlb_backend_up", &[("backend", "e1")]), 1.0);

    let up = m.value("uringlb_bytes_total", &[("direction", "client_to_backend")]);
    let down = m.value("uringlb_bytes_total", &[("direction", "backend_to_client")]);
    println!(
        "metrics: bytes client_to_backend {up}, backend_to_client {down} (sent {} each way)",
        conns * len
    );
    assert_eq!(up, (conns * len) as f64);
    assert_eq!(down, (conns * len) as f64);

    assert_eq!(m.sum("uringlb_accepted_total"), conns as f64);
    assert!(m
        .get("uringlb_accepted_total", &[("worker", "0")])
        .is_some());
    assert!(m
        .get("uringlb_accepted_total", &[("worker", "1")])
        .is_some());
    assert_eq!(
        m.value("uringlb_rejected_total", &[("reason", "no_backend")]),
        0.0
    );
    assert_eq!(
        m.value("uringlb_rejected_total", &[("reason", "no_slot")]),
        0.0
    );
    assert_eq!(m.value("uringlb_workers_alive", &[]), 2.0);

    // Per backend: the bytes each way are what that backend echoed.
    for (name, echo) in [("e0", &e0), ("e1", &e1)] {
        for dir in ["client_to_backend", "backend_to_client"] {
            let n = m.value(
                "uringlb_backend_bytes_total",
                &[("backend", name), ("direction", dir)],
            );
            println!(
                "metrics: backend {name} bytes {dir} {n} (it echoed {})",
                echo.bytes()
            );
            assert_eq!(n, echo.bytes() as f64, "{name} {dir}");
        }
    }
    for dir in ["client_to_backend", "backend_to_client"] {
        assert_eq!(
            m.value(
                "uringlb_backend_bytes_total",
                &[("backend", "dead"), ("direction", dir)]
            ),
            0.0
        );
    }
    assert_eq!(m.value("uringlb_access_log_dropped_total", &[]), 0.0);

    // One connect time per established connection, in seconds, per backend.
    for b in ["e0", "e1"] {
        let count = m.value("uringlb_connect_duration_seconds_count", &[("backend", b)]);
        let sum = m.value("uringlb_connect_duration_seconds_sum", &[("backend", b)]);
        assert_eq!(count, total(b), "{b}");
        assert!(
            sum > 0.0 && sum / count < 0.5,
            "mean connect time {}s",
            sum / count
        );
        assert_eq!(
            m.value(
                "uringlb_connect_duration_seconds_bucket",
                &[("backend", b), ("le", "+Inf")]
            ),
            count
        );
    }
    assert_eq!(
        m.value(
            "uringlb_connect_duration_seconds_count",
            &[("backend", "dead")]
        ),
        0.0
    );
    assert_eq!(
        m.families.get("uringlb_connect_duration_seconds"),
        Some(&("histogram".to_string(), Some("seconds".to_string())))
    );

    assert_eq!(m.sum("uringlb_health_checks_total"), 0.0, "--health none");

    // Exactly the contract's families.
    let families: Vec<&str> = m.families.keys().map(String::as_str).collect();
    assert_eq!(
        families,
        [
            "uringlb_accepted",
            "uringlb_access_log_dropped",
            "uringlb_backend_bytes",
            "uringlb_backend_up",
            "uringlb_bytes",
            "uringlb_client_connections",
            "uringlb_client_connections_limit",
            "uringlb_config_reloads",
            "uringlb_connect_duration_seconds",
            "uringlb_connect_failures",
            "uringlb_connections",
            "uringlb_connections_active",
            "uringlb_cq_overflows",
            "uringlb_discovery_failures",
            "uringlb_discovery_resolutions",
            "uringlb_health_checks",
            "uringlb_queue_depth",
            "uringlb_queue_dequeued",
            "uringlb_queue_wait_seconds",
            "uringlb_rejected",
            "uringlb_replays",
            "uringlb_service_rejected",
            "uringlb_snapshot_published_version",
            "uringlb_snapshot_version",
            "uringlb_splice_bytes",
            "uringlb_worker_restarts",
            "uringlb_workers_alive",
        ]
    );
    // Per worker: the spliced bytes (none: 100 000 bytes are at most three full 32 KiB
    // reads in a row, one short of what makes `--forward auto` switch) and the snapshot
    // each routes with (the latest: nothing changed for a while).
    let published = m.value("uringlb_snapshot_published_version", &[]);
    assert!(published >= 1.0, "{published}");
    for w in ["0", "1"] {
        assert_eq!(m.value("uringlb_splice_bytes_total", &[("worker", w)]), 0.0);
        assert_eq!(
            m.value("uringlb_snapshot_version", &[("worker", w)]),
            published
        );
    }
    match python_parse(&text) {
        Ok(true) => println!("metrics: the Prometheus Python client's OpenMetrics parser accepts it"),
        Ok(false) => println!("metrics: SKIPPED the Python parser check (python3 -m pip install prometheus_client to run it)"),
        Err(e) => panic!("{e}\n{text}"),
    }
}

#[test]
fn health_checks_are_counted_by_result() {
    let e0 = EchoServer::start("127.0.0.1:0").unwrap();
    let dead = closed_port();
    let (_lb, admin) = start_with_admin(&[
        "--backend",
        &format!("{},name=e0", e0.addr()),
        "--backend",
        &format!("{dead},name=dead"),
        "--workers",
        "1",
        "--health",
        "tcp",
        "--health-interval",
        "100ms",
        "--fall",
        "2",
    ]);
    wait_until("a few rounds of checks", Duration::from_secs(10), || {
        let m = admin.metrics();
        m.value(
            "uringlb_health_checks_total",
            &[("backend", "e0"), ("result", "success")],
        ) >= 5.0
            && m.value(
                "uringlb_health_checks_total",
                &[("backend", "dead"), ("result", "failure")],
            ) >= 5.0
    });
    let m = admin.metrics();
    let ok = m.value(
        "uringlb_health_checks_total",
        &[("backend", "e0"), ("result", "success")],
    );
    println!(
        "metrics: health checks e0 success {ok} (the backend saw {} connections), dead failure {}",
        e0.connections(),
        m.value(
            "uringlb_health_checks_total",
            &[("backend", "dead"), ("result", "failure")]
        )
    );
    assert!(
        e0.connections() as f64 >= ok,
        "each passed TCP check is a connection"
    );
    assert_eq!(
        m.value(
            "uringlb_health_checks_total",
            &[("backend", "e0"), ("result", "failure")]
        ),
        0.0
    );
    assert_eq!(
        m.value(
            "uringlb_health_checks_total",
            &[("backend", "dead"), ("result", "success")]
        ),
        0.0
    );
    assert_eq!(m.value("uringlb_backend_up", &[("backend", "e0")]), 1.0);
    assert_eq!(
        m.value("uringlb_backend_up", &[("backend", "dead")]),
        0.0,
        "down after --fall 2"
    );
}

#[test]
fn rejections_are_counted_by_reason() {
    let dead = closed_port();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &format!("{dead},name=dead"),
        "--workers",
        "1",
        "--health",
        "none",
        "--eject-after",
        "0",
        "--retries",
        "1",
    ]);
    let n = 5;
    for _ in 0..n {
        let mut s = lb.connect();
        let mut buf = [0u8; 1];
        // Closed promptly, unserved.
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    }
    wait_until("rejections to be counted", Duration::from_secs(5), || {
        admin
            .metrics()
            .value("uringlb_rejected_total", &[("reason", "no_backend")])
            >= n as f64
    });
    let m = admin.metrics();
    assert_eq!(
        m.value("uringlb_rejected_total", &[("reason", "no_backend")]),
        n as f64
    );
    // At least one refused connect per client (retries may try it again).
    assert!(m.value("uringlb_connect_failures_total", &[("backend", "dead")]) >= n as f64);
    assert_eq!(
        m.value("uringlb_connections_total", &[("backend", "dead")]),
        0.0
    );
    assert_eq!(
        m.value(
            "uringlb_connect_duration_seconds_count",
            &[("backend", "dead")]
        ),
        0.0
    );
}

#[test]
fn per_service_refusals_and_the_queue_for_full_backends() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &format!("{},name=e,max-conns=1", echo.addr()),
        "--health",
        "none",
        "--connect-timeout",
        "20s",
        "--deny",
        "127.0.0.3",
    ]);
    let svc = [("service", "default")];
    let m = admin.metrics();
    assert_eq!(m.value("uringlb_queue_depth", &svc), 0.0);
    assert_eq!(m.value("uringlb_queue_dequeued_total", &svc), 0.0);

    // One client holds the backend's only place; the next waits in the queue.
    let mut first = lb.connect();
    first.write_all(b"a").unwrap();
    let mut b = [0u8; 1];
    first.read_exact(&mut b).unwrap();
    let mut second = lb.connect();
    wait_until("a client in the queue", Duration::from_secs(10), || {
        admin.metrics().value("uringlb_queue_depth", &svc) == 1.0
    });
    drop(first);
    second.write_all(b"b").unwrap();
    second
        .read_exact(&mut b)
        .expect("served once the place frees");
    let m = admin.metrics();
    let waited = m.value("uringlb_queue_wait_seconds_total", &svc);
    println!("metrics: one client queued, waited {waited}s");
    assert_eq!(m.value("uringlb_queue_depth", &svc), 0.0);
    assert_eq!(m.value("uringlb_queue_dequeued_total", &svc), 1.0);
    assert!(waited > 0.0 && waited < 20.0, "{waited}");

    if let Some(mut s) = connect_or_reset_from("127.0.0.3", lb.addr) {
        assert!(closed_within(&mut s, Duration::from_secs(10)).is_some());
    }
    wait_until("the refusal to be counted", Duration::from_secs(10), || {
        admin.metrics().value(
            "uringlb_service_rejected_total",
            &[("service", "default"), ("reason", "denied")],
        ) == 1.0
    });
    let m = admin.metrics();
    assert_eq!(
        m.value("uringlb_rejected_total", &[("reason", "denied")]),
        1.0
    );
    assert_eq!(
        m.all("uringlb_service_rejected_total")
            .iter()
            .map(|(_, v)| v)
            .sum::<f64>(),
        1.0
    );
}

#[test]
fn the_strict_parser_refuses_what_prometheus_refuses() {
    let ok = "# TYPE a counter\na_total{x=\"1\"} 1\n# EOF\n";
    parse_openmetrics(ok).expect("valid");
    for bad in [
        "# TYPE a counter\na_total 1\n",                          // no EOF
        "# TYPE a counter\na 1\n# EOF\n",                         // counter without _total
        "# TYPE a counter\na_total -1\n# EOF\n",                  // negative counter
        "# TYPE a gauge\na{x=1} 1\n# EOF\n",                      // unquoted label value
        "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n# EOF\n",          // label twice
        "# TYPE a gauge\na 1\na 2\n# EOF\n",                      // series twice
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n# EOF\n", // family twice
        "# TYPE a gauge\nb 1\n# EOF\n",                           // outside its family
        "# TYPE a gauge\na one\n# EOF\n",                         // bad value
        "# TYPE a gauge\n\na 1\n# EOF\n",                         // blank line
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n# EOF\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\nh_sum 1\n# EOF\n", // no +Inf
    ] {
        assert!(parse_openmetrics(bad).is_err(), "accepted: {bad:?}");
    }
}
