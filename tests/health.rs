//! Health checks and failover through the real binary (and, for draining and removal, the
//! in-process [`Controller`]), with real backends on loopback. Backend state is observed
//! through the balancer's log lines (`backend NAME: OLD -> NEW (why)`), counts through
//! `/metrics`; `--log-level debug` adds one line per failed backend connect, which is how
//! the kill test sees the last connection sent to a dead backend.

mod util;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use uringlb::backend::BackendState;
use uringlb::config::{Config, HealthCheck, ServiceSettings, Workers};
use uringlb::control::{AdminState, Controller};
use uringlb_bench::{HttpServer, NameServer};
use util::*;

// ---- helpers ------------------------------------------------------------------------------

fn start_lb(backends: &[(SocketAddr, &str)], extra: &[&str]) -> Lb {
    let mut args = named(backends);
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Lb::start(&a)
}

/// The time a log line was written (tracing's RFC 3339 UTC timestamp, its first word).
fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<u64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1])
    } else {
        (d[0], d[1])
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days as u64 * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    let frac = format!("{frac:0<9}");
    let nanos: u32 = frac[..9].parse().ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or(Duration::ZERO)
}

// ---- the tests ----------------------------------------------------------------------------

/// Three backends under a steady load of new connections; one is killed, then restarted.
/// With the default passive ejection the workers' refused connects take it out first.
#[test]
fn kill_and_restart_a_backend_under_load() {
    kill_and_restart("kill test (passive ejection on)", &[]);
}

/// The same with passive ejection off: only `--fall` failed checks take it out.
#[test]
fn kill_and_restart_with_active_checks_only() {
    kill_and_restart("kill test (active checks only)", &["--eject-after", "0"]);
}

fn kill_and_restart(label: &str, extra: &[&str]) {
    let b0 = HttpServer::start("127.0.0.1:0", "b0").unwrap();
    let b1 = on_fixed_port(|a| HttpServer::start(a, "b1"));
    let b2 = HttpServer::start("127.0.0.1:0", "b2").unwrap();
    let b1_addr = b1.addr();
    let mut args = named(&[(b0.addr(), "b0"), (b1_addr, "b1"), (b2.addr(), "b2")]);
    args.extend(
        [
            "--workers",
            "2",
            "--health",
            "tcp",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "500ms",
            "--rise",
            "2",
            "--fall",
            "3",
            "--log-level",
            "debug",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string()),
    );
    let (lb, admin) = start_with_admin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let failed_checks = || {
        admin.metrics().value(
            "uringlb_health_checks_total",
            &[("backend", "b1"), ("result", "failure")],
        )
    };
    let load = ConnLoop::start_with(lb.addr, 4, Duration::ZERO, http_name);
    let load_start = Instant::now();
    // A steady load first, b1 taking its share.
    wait_until("b1 to serve 300 requests", Duration::from_secs(20), || {
        b1.requests() > 300
    });

    // Kill: the listener and every open connection close, as when the process dies.
    let kill_wall = SystemTime::now();
    let kill_start = Instant::now();
    b1.stop();
    let killed = Instant::now();
    let down = lb.wait_log(&["backend b1: up -> down"], 1, Duration::from_secs(10));
    // Passive ejection may have taken it down first; let the active checks see it dead
    // too (`--fall 3` failures), so that it comes back through `--rise`.
    wait_until("3 failed checks of b1", Duration::from_secs(10), || {
        failed_checks() >= 3.0
    });
    let restart_wall = SystemTime::now();
    let b1 = restart_on(b1_addr, |a| HttpServer::start(a, "b1"));
    let restarted = Instant::now();
    let up = lb.wait_log(&["backend b1: down -> up"], 1, Duration::from_secs(10));
    wait_until("b1 to serve again", Duration::from_secs(10), || {
        b1.requests() > 0
    });
    let serving_again = restarted.elapsed();
    // And it takes its share of the load again.
    wait_until(
        "b1 to serve 100 requests again",
        Duration::from_secs(20),
        || b1.requests() > 100,
    );
    let attempts = load.finish();
    let elapsed = load_start.elapsed();

    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.result.is_err()).collect();
    // Requests already inside b1 when it died are sent again to another backend by the
    // balancer (b1 closed them before answering), so even those must not fail.
    let in_flight: Vec<&&Attempt> = failed
        .iter()
        .filter(|a| a.start < killed && a.end >= kill_start)
        .collect();
    let other: Vec<&&Attempt> = failed
        .iter()
        .filter(|a| !(a.start < killed && a.end >= kill_start))
        .collect();

    let log = lb.log_text();
    let refused: Vec<SystemTime> = log
        .lines()
        .filter(|l| l.contains("connect failed"))
        .filter_map(log_time)
        .collect();
    let last_refused = refused.iter().max().copied().unwrap_or(kill_wall);
    let down_at = log_time(&down).expect("timestamp");
    let up_at = log_time(&up).expect("timestamp");
    println!(
        "{label}: {} connections in {:.1}s ({:.0}/s); failed: {} ({} in flight inside the killed backend, {} others)",
        attempts.len(),
        elapsed.as_secs_f64(),
        attempts.len() as f64 / elapsed.as_secs_f64(),
        failed.len(),
        in_flight.len(),
        other.len()
    );
    println!(
        "{label}: {} connects refused by the dead backend (retried on another); kill -> last connection sent to it: {:?}; kill -> marked down: {:?} ({})",
        refused.len(),
        since(last_refused, kill_wall),
        since(down_at, kill_wall),
        down.split("b1: ").nth(1).unwrap_or("")
    );
    println!(
        "{label}: restart -> marked up: {:?}; restart -> first request served: {:?}",
        since(up_at, restart_wall),
        serving_again
    );
    println!("{label}: per backend: {:?}", per_backend(&attempts));
    for a in &in_flight {
        println!("{label}: lost in flight: {:?}", a.result);
    }
    assert!(
        other.is_empty(),
        "client-visible failures outside the kill instant: {:?}",
        other.iter().map(|a| &a.result).collect::<Vec<_>>()
    );
    assert!(
        in_flight.is_empty(),
        "requests inside the killed backend were lost: {:?}",
        in_flight.iter().map(|a| &a.result).collect::<Vec<_>>()
    );
    // No new connection went to it once it was marked down (a snapshot reaches every
    // worker within milliseconds; 300 ms of slack for a loaded machine).
    assert!(
        refused
            .iter()
            .all(|t| *t <= down_at + Duration::from_millis(300)),
        "connects to b1 after it was marked down at {down}"
    );
    let after_restart = attempts
        .iter()
        .filter(|a| a.start > restarted && a.result.as_deref() == Ok("b1"))
        .count();
    assert!(after_restart > 0, "b1 gets traffic again");
    assert!(attempts.len() > 1000, "the load ran: {}", attempts.len());
}

/// A backend whose HTTP check answers what the test says: 0 = 200, 1 = 500, 2 = nothing.
fn flip_backend() -> (SocketAddr, Arc<AtomicU8>) {
    let mode = Arc::new(AtomicU8::new(0));
    let m = mode.clone();
    let addr = serve(move |mut s| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let reply: &[u8] = match m.load(Ordering::Relaxed) {
            0 => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nflip\n",
            1 => b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\nflip\n",
            _ => {
                std::thread::sleep(Duration::from_secs(3));
                return;
            }
        };
        let _ = s.write_all(reply);
    });
    (addr, mode)
}

#[test]
fn http_check_follows_the_status_and_times_out_a_silent_backend() {
    let (flip, mode) = flip_backend();
    let ok = HttpServer::start("127.0.0.1:0", "ok").unwrap();
    let mut args = named(&[(flip, "flip"), (ok.addr(), "ok")]);
    args.extend(
        [
            "--workers",
            "1",
            "--health",
            "http:/healthz",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "400ms",
            "--rise",
            "2",
            "--fall",
            "2",
        ]
        .map(String::from),
    );
    let (lb, admin) = start_with_admin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // Healthy at first: it takes connections.
    let first: Vec<String> = (0..4).filter_map(|_| http_name(lb.addr).ok()).collect();
    assert!(first.iter().any(|n| n == "flip"), "{first:?}");

    mode.store(1, Ordering::Relaxed);
    let line = lb.wait_log(&["backend flip: up -> down"], 1, Duration::from_secs(10));
    assert!(line.contains("HTTP status 500"), "{line}");
    // The log line is the control thread's; the worker routes with it once it has the
    // snapshot.
    admin.wait_settled();
    for _ in 0..20 {
        assert_eq!(http_name(lb.addr).as_deref(), Ok("ok"));
    }

    mode.store(0, Ordering::Relaxed);
    let line = lb.wait_log(&["backend flip: down -> up"], 1, Duration::from_secs(10));
    assert!(line.contains("2 health check(s) passed"), "{line}");
    admin.wait_settled();
    let back: Vec<String> = (0..4).filter_map(|_| http_name(lb.addr).ok()).collect();
    assert!(back.iter().any(|n| n == "flip"), "{back:?}");

    // Accepts TCP, never answers: the timeout takes it down.
    mode.store(2, Ordering::Relaxed);
    let line = lb.wait_log(&["backend flip: up -> down"], 2, Duration::from_secs(10));
    assert!(line.contains("timed out after 400ms"), "{line}");
    // One line per change: the ok backend never changed.
    assert!(
        lb.lines_with(&["backend ok:"]).is_empty(),
        "{}",
        lb.log_text()
    );
}

#[test]
fn passive_ejection_without_health_checks() {
    let b0 = HttpServer::start("127.0.0.1:0", "b0").unwrap();
    let b1 = HttpServer::start("127.0.0.1:0", "b1").unwrap();
    let dead = closed_port();
    let lb = start_lb(
        &[(b0.addr(), "b0"), (dead, "dead"), (b1.addr(), "b1")],
        &[
            "--workers",
            "1",
            "--health",
            "none",
            "--eject-after",
            "3",
            "--eject-base",
            "1s",
            "--eject-max",
            "4s",
            "--log-level",
            "debug",
        ],
    );
    let t = Instant::now();
    let mut results = Vec::new();
    while t.elapsed() < Duration::from_millis(3500) {
        results.push(http_name(lb.addr));
    }
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "client-visible failures: {failures:?}");
    let first = lb.wait_log(
        &["backend dead: up -> down", "ejection 1 for 1s"],
        1,
        Duration::from_secs(5),
    );
    // At least --eject-after; more when they pile up between two polls (100 ms).
    let failures: u64 = first
        .split("ejected after ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(failures >= 3, "{first}");
    // Without active checks the back-off brings it back; it fails again and the next
    // ejection is twice as long.
    lb.wait_log(
        &["backend dead: down -> up (ejection back-off expired)"],
        1,
        Duration::from_secs(5),
    );
    lb.wait_log(
        &["backend dead: up -> down", "ejection 2 for 2s"],
        1,
        Duration::from_secs(5),
    );
    // While ejected nothing is sent there: every refused connect is within ~100 ms (one
    // poll of the failure counters) of the moment it was let back in.
    let log = lb.log_text();
    let refused = log.lines().filter(|l| l.contains("connect failed")).count();
    println!(
        "passive ejection: {} requests, {} refused connects retried, 0 client failures",
        results.len(),
        refused
    );
    assert!(
        refused < results.len() / 4,
        "{refused} of {}",
        results.len()
    );
}

#[test]
fn panic_mode_serves_clients_when_every_check_fails() {
    let b: Vec<HttpServer> = (0..3)
        .map(|i| HttpServer::start("127.0.0.1:0", &format!("b{i}")).unwrap())
        .collect();
    // The check asks for a 500; the data path (GET /) still answers 200.
    let lb = start_lb(
        &[
            (b[0].addr(), "b0"),
            (b[1].addr(), "b1"),
            (b[2].addr(), "b2"),
        ],
        &[
            "--workers",
            "2",
            "--health",
            "http:/status/500",
            "--health-interval",
            "200ms",
            "--fall",
            "1",
        ],
    );
    lb.wait_log(
        &["panic mode: no backend is up"],
        1,
        Duration::from_secs(10),
    );
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..60 {
        let name = http_name(lb.addr).expect("served in panic mode");
        *m.entry(name).or_insert(0) += 1;
    }
    assert_eq!(m.len(), 3, "balanced over all of them: {m:?}");
    assert_eq!(lb.lines_with(&["panic mode"]).len(), 1, "logged once");
}

/// A recovered backend's share of new connections rises over the slow-start window.
#[test]
fn slow_start_ramps_a_recovered_backend() {
    let b0 = HttpServer::start("127.0.0.1:0", "b0").unwrap();
    let b1 = on_fixed_port(|a| HttpServer::start(a, "b1"));
    let b1_addr = b1.addr();
    b1.stop();
    let lb = start_lb(
        &[(b0.addr(), "b0"), (b1_addr, "b1")],
        &[
            "--workers",
            "1",
            "--algorithm",
            "weighted-round-robin",
            "--slow-start",
            "4s",
            "--health",
            "tcp",
            "--health-interval",
            "100ms",
            "--rise",
            "1",
            "--fall",
            "1",
        ],
    );
    lb.wait_log(&["backend b1: up -> down"], 1, Duration::from_secs(10));
    let _b1 = restart_on(b1_addr, |a| HttpServer::start(a, "b1"));
    lb.wait_log(&["backend b1: down -> up"], 1, Duration::from_secs(10));
    let up = Instant::now();
    let load = ConnLoop::start_with(lb.addr, 2, Duration::ZERO, http_name);
    std::thread::sleep(Duration::from_millis(5500));
    let attempts = load.finish();
    let mut per_sec = vec![(0usize, 0usize); 5];
    for a in &attempts {
        let s = a.start.saturating_duration_since(up).as_secs() as usize;
        if let (Some(slot), Ok(name)) = (per_sec.get_mut(s), &a.result) {
            slot.0 += usize::from(name == "b1");
            slot.1 += 1;
        }
    }
    let share: Vec<f64> = per_sec
        .iter()
        .map(|&(b1, all)| b1 as f64 / all.max(1) as f64)
        .collect();
    println!("slow start: b1 connections per second {per_sec:?}, share {share:.2?}");
    assert!(attempts.iter().all(|a| a.result.is_ok()));
    assert!(share[0] < 0.25, "starts low: {share:?}");
    assert!(share[4] > 0.42, "ends at its full weight: {share:?}");
    for w in share.windows(2) {
        assert!(w[1] >= w[0] - 0.05, "rises: {share:?}");
    }
    assert!(share[2] > share[0] + 0.1, "gradually: {share:?}");
    lb.wait_log(&["backend b1: slow start done"], 1, Duration::from_secs(5));
}

// ---- draining and removal, in-process through the control thread's API ------------------

fn controller(backends: &[&NameServer], grace: Duration) -> Controller {
    let cfg = Config {
        service: ServiceSettings {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            backends: backends.iter().map(|b| spec(b)).collect(),
            health: HealthCheck::Tcp,
            health_interval: Duration::from_millis(200),
            ..Default::default()
        },
        workers: Workers::Count(2),
        grace,
        ..Config::default()
    };
    Controller::start(&cfg).expect("start")
}

fn state_of(c: &Controller, name: &str) -> Option<BackendState> {
    c.status()
        .unwrap()
        .into_iter()
        .find(|b| b.name == name)
        .map(|b| b.state)
}

#[test]
fn draining_backend_finishes_its_transfer_and_gets_no_new_connection() {
    let b0 = NameServer::start("127.0.0.1:0", "b0").unwrap();
    let b1 = NameServer::start("127.0.0.1:0", "b1").unwrap();
    let c = controller(&[&b0, &b1], Duration::from_secs(30));
    let addr = c.local_addrs()[0];
    let (s, name) = greet(addr);
    let other = if name == "b0" { "b1" } else { "b0" };
    c.set_state(&name, AdminState::Drain).unwrap();
    assert_eq!(state_of(&c, &name), Some(BackendState::Draining));
    long_echo_while(s, 16 << 20, || {
        for _ in 0..40 {
            let (_s, n) = greet(addr);
            assert_eq!(n, other, "no new connection to the draining backend");
        }
    });
    // Back in service.
    c.set_state(&name, AdminState::Up).unwrap();
    let seen: Vec<String> = (0..6).map(|_| greet(addr).1).collect();
    assert!(seen.contains(&name), "{seen:?}");
    c.set_state(&name, AdminState::Maint).unwrap();
    assert!((0..6).all(|_| greet(addr).1 == other));
    assert!(c.set_state("nope", AdminState::Up).is_err());
    c.stop(Duration::from_secs(1));
}

/// `Controller::set_state` returns only once every worker routes with the change: a
/// connection made right after it never reaches the old table. Alternates which of two
/// backends is in maintenance 300 times, connecting at once after each call (before the
/// fix, when the answer came before the snapshot was even published, 30 to 50 of the 300
/// reached the backend just put in maintenance).
#[test]
fn set_state_returns_once_every_worker_routes_with_the_change() {
    let b0 = NameServer::start("127.0.0.1:0", "b0").unwrap();
    let b1 = NameServer::start("127.0.0.1:0", "b1").unwrap();
    let c = controller(&[&b0, &b1], Duration::from_secs(30));
    let addr = c.local_addrs()[0];
    let mut wrong = Vec::new();
    for i in 0..300 {
        let (up, maint) = if i % 2 == 0 {
            ("b0", "b1")
        } else {
            ("b1", "b0")
        };
        c.set_state(up, AdminState::Up).unwrap();
        c.set_state(maint, AdminState::Maint).unwrap();
        let (_s, got) = greet(addr);
        if got != up {
            wrong.push(i);
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 300 connections made right after set_state reached the backend in maintenance: {wrong:?}",
        wrong.len()
    );
    c.stop(Duration::from_secs(1));
}

#[test]
fn removing_a_backend_drains_it_then_drops_it() {
    let b0 = NameServer::start("127.0.0.1:0", "b0").unwrap();
    let b1 = NameServer::start("127.0.0.1:0", "b1").unwrap();
    let c = controller(&[&b0, &b1], Duration::from_secs(30));
    let addr = c.local_addrs()[0];
    let (s, name) = greet(addr);
    let (keep, gone) = if name == "b0" { (&b1, &b0) } else { (&b0, &b1) };
    c.set_backends(vec![spec(keep)]).unwrap();
    assert_eq!(state_of(&c, gone.name()), Some(BackendState::Draining));
    long_echo_while(s, 8 << 20, || {
        for _ in 0..20 {
            assert_eq!(greet(addr).1, keep.name());
        }
    });
    // Its last connection closed: it leaves the table.
    wait_until("the removed backend to go", Duration::from_secs(5), || {
        state_of(&c, gone.name()).is_none()
    });
    assert_eq!(greet(addr).1, keep.name());
}

#[test]
fn drain_deadline_closes_what_is_left() {
    let b0 = NameServer::start("127.0.0.1:0", "b0").unwrap();
    let b1 = NameServer::start("127.0.0.1:0", "b1").unwrap();
    let c = controller(&[&b0, &b1], Duration::from_secs(1));
    let (mut s, name) = greet(c.local_addrs()[0]);
    let t = Instant::now();
    c.set_state(&name, AdminState::Drain).unwrap();
    // Idle, so only the deadline (--grace 1s) can close it.
    let mut buf = [0u8; 8];
    let n = s.read(&mut buf).unwrap_or(0);
    let took = t.elapsed();
    assert_eq!(n, 0, "closed by the balancer");
    assert!(
        took >= Duration::from_millis(900),
        "not before the deadline: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "soon after it: {took:?}");
}
