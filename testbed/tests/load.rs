//! Load generators against in-process backends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uringlb_testbed::{load, EchoServer, HttpServer, LoadConfig, LoadKind};

const LOCAL: &str = "127.0.0.1:0";

/// Waits until `cond` holds, at most 10 s: server counters move on the server's threads.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn http_keepalive_counts_per_backend() {
    let server = HttpServer::start(LOCAL, "alpha").unwrap();
    let report = load::http_keepalive(server.addr(), 4, Duration::from_millis(500)).unwrap();
    assert_eq!(report.kind, LoadKind::Http);
    assert!(report.requests > 100, "{report:?}");
    assert_eq!(report.errors, 0);
    assert_eq!(report.per_backend.get("alpha"), Some(&report.requests));
    assert_eq!(report.status.get(&200), Some(&report.requests));
    assert_eq!(server.connections(), 4, "keep-alive reuses connections");
    assert!(server.requests() >= report.requests);
    assert!(report.latency(50.0) <= report.latency(99.9));
    assert!(report.elapsed >= Duration::from_millis(500));
    assert!(report.elapsed < Duration::from_secs(2));
    let table = report.table();
    assert!(
        table.contains("req/s") && table.contains("alpha"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["per_backend"]["alpha"], report.requests);
    assert!(json["latency_us"]["p99"].as_u64().unwrap() > 0);
}

#[test]
fn http_request_budget_is_exact() {
    let server = HttpServer::start(LOCAL, "a").unwrap();
    let cfg = LoadConfig {
        total_requests: Some(250),
        ..LoadConfig::new(8, Duration::from_secs(30))
    };
    let t0 = Instant::now();
    let report = load::http_keepalive_with(server.addr(), &cfg).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(report.requests, 250);
    assert_eq!(server.requests(), 250);
}

#[test]
fn http_big_bodies_are_counted_as_bytes() {
    let server = HttpServer::start(LOCAL, "a").unwrap();
    let cfg = LoadConfig {
        total_requests: Some(20),
        path: "/big?bytes=1MiB".into(),
        ..LoadConfig::new(2, Duration::from_secs(30))
    };
    let report = load::http_keepalive_with(server.addr(), &cfg).unwrap();
    assert_eq!(report.requests, 20);
    assert_eq!(report.bytes, 20 << 20);
    assert!(report.per_backend.is_empty());
}

#[test]
fn echo_load_round_trips() {
    let server = EchoServer::start(LOCAL).unwrap();
    let report = load::echo(server.addr(), 4, Duration::from_millis(500), 1000).unwrap();
    assert_eq!(report.kind, LoadKind::Echo);
    assert!(report.requests > 100, "{report:?}");
    assert_eq!(report.errors, 0);
    assert_eq!(report.bytes, report.requests * 1000);
    // Messages bigger than socket buffers must not deadlock.
    let big = LoadConfig {
        msg_size: 4 << 20,
        total_requests: Some(4),
        ..LoadConfig::new(2, Duration::from_secs(30))
    };
    let report = load::echo_with(server.addr(), &big).unwrap();
    assert_eq!((report.requests, report.errors), (4, 0));
}

#[test]
fn progress_is_reported_each_second() {
    let server = HttpServer::start(LOCAL, "p").unwrap();
    let ticks = Arc::new(AtomicUsize::new(0));
    let seen = ticks.clone();
    let cfg = LoadConfig::new(2, Duration::from_millis(2300)).with_progress(move |p| {
        assert!(p.requests > 0);
        assert!(p.line().contains("req/s"));
        assert!(p.per_backend.contains_key("p"));
        seen.fetch_add(1, Ordering::Relaxed);
    });
    load::http_keepalive_with(server.addr(), &cfg).unwrap();
    let n = ticks.load(Ordering::Relaxed);
    assert!((1..=3).contains(&n), "{n} ticks in 2.3 s");
}

#[test]
fn stop_flag_ends_run_early() {
    let server = Arc::new(HttpServer::start(LOCAL, "s").unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = LoadConfig {
        stop: Some(stop.clone()),
        ..LoadConfig::new(2, Duration::from_secs(60))
    };
    let flag = stop.clone();
    let watched = server.clone();
    // Stopped once the run is under way.
    std::thread::spawn(move || {
        wait_until("the load to reach the server", || watched.requests() >= 10);
        flag.store(true, Ordering::Relaxed);
    });
    let t0 = Instant::now();
    let report = load::http_keepalive_with(server.addr(), &cfg).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(report.requests > 0);
}

#[test]
fn dead_target_counts_errors_and_returns_on_time() {
    let server = HttpServer::start(LOCAL, "gone").unwrap();
    let addr = server.addr();
    server.stop();
    let t0 = Instant::now();
    let report = load::http_keepalive(addr, 4, Duration::from_millis(500)).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(report.requests, 0);
    assert!(report.errors > 0);
    // Backoff keeps a dead target from being hammered.
    assert!(report.errors < 500, "{} errors", report.errors);
    assert!(report.table().contains("errors"));
}

#[test]
fn survives_backend_restart() {
    let server = HttpServer::start(LOCAL, "first").unwrap();
    let addr = server.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = LoadConfig {
        stop: Some(stop.clone()),
        ..LoadConfig::new(4, Duration::from_secs(60))
    };
    // The backend serves, stops (closing its connections under the load), comes back on
    // the same address and serves again; then the run ends.
    let restarter = std::thread::spawn(move || {
        wait_until("the first server to serve", || server.requests() >= 50);
        server.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        let again = loop {
            match HttpServer::start(addr, "second") {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "restart on {addr}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        wait_until("the second server to serve", || again.requests() >= 50);
        stop.store(true, Ordering::Relaxed);
        again
    });
    let report = load::http_keepalive_with(addr, &cfg).unwrap();
    let _second = restarter.join().unwrap();
    assert!(report.per_backend.get("first").is_some_and(|&n| n > 0));
    assert!(report.per_backend.get("second").is_some_and(|&n| n > 0));
    assert!(report.errors > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_from_inside_a_runtime() {
    let server = HttpServer::start(LOCAL, "rt").unwrap();
    let addr = server.addr();
    let cfg = LoadConfig {
        total_requests: Some(50),
        ..LoadConfig::new(2, Duration::from_secs(10))
    };
    let report = load::http_keepalive_async(addr, cfg.clone()).await;
    assert_eq!(report.requests, 50);
    // The blocking API must not panic inside a runtime either.
    let report = tokio::task::block_in_place(|| load::http_keepalive_with(addr, &cfg)).unwrap();
    assert_eq!(report.requests, 50);
}
