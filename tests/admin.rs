//! The admin endpoint (`--admin`) through the real binary: every route with good and bad
//! input, changes reaching the workers (an added backend gets connections, a drained or
//! removed one gets none while its open connection completes byte-exact), the bearer
//! token, and `/health` during a graceful stop.

mod util;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use uringlb_bench::NameServer;

use util::*;

/// A balancer over `backends` with an admin endpoint; 2 workers, fast health checks.
fn start(backends: &[&NameServer], extra: &[&str]) -> (Lb, Admin) {
    let mut args = named_servers(backends);
    args.extend(
        [
            "--workers",
            "2",
            "--health",
            "tcp",
            "--health-interval",
            "200ms",
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    start_with_admin(&a)
}

#[test]
fn every_route_with_good_input() {
    let b0 = NameServer::start("127.0.0.1:0", "b0").unwrap();
    let b1 = NameServer::start("127.0.0.1:0", "b1").unwrap();
    let b2 = NameServer::start("127.0.0.1:0", "b2").unwrap();
    let (lb, admin) = start(&[&b0, &b1], &[]);

    // GET /health, GET /backends with every field.
    let h = admin.get("/health");
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));
    let list = admin.backends();
    assert_eq!(list.keys().collect::<Vec<_>>(), ["b0", "b1"]);
    let b = &list["b0"];
    assert_eq!(b["addr"], Value::from(b0.addr().to_string()));
    assert_eq!(b["weight"], 1);
    assert_eq!(b["state"], "up");
    assert_eq!(b["healthy"], true);
    assert_eq!(b["backup"], false);
    for k in ["active_conns", "total_conns", "connect_failures"] {
        assert!(b[k].is_u64(), "{k}: {b}");
    }
    assert_eq!(b.as_object().map(|o| o.len()), Some(9), "{b}");

    // POST /backends: b2 gets connections at once.
    let r = admin.req(
        "POST",
        "/backends",
        Some(&format!(
            r#"{{"addr": "{}", "name": "b2", "weight": 2}}"#,
            b2.addr()
        )),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        (r.json()["name"].as_str(), r.json()["weight"].as_u64()),
        (Some("b2"), Some(2))
    );
    assert!(
        admin.settled(),
        "answered before every worker ran the change"
    );
    let seen = spread(lb.addr, 12);
    assert!(seen.contains_key("b2"), "{seen:?}");
    assert_eq!(admin.backends()["b2"]["state"], "up");

    // PATCH weight and state.
    let r = admin.req("PATCH", "/backends/b2", Some(r#"{"weight": 5}"#));
    assert_eq!(
        (r.status, r.json()["weight"].as_u64()),
        (200, Some(5)),
        "{r:?}"
    );
    let r = admin.req("PATCH", "/backends/b1", Some(r#"{"state": "maint"}"#));
    assert_eq!(
        (r.status, r.json()["state"].as_str()),
        (200, Some("maint")),
        "{r:?}"
    );
    assert!(
        admin.settled(),
        "answered before every worker ran the change"
    );
    let seen = spread(lb.addr, 12);
    assert!(!seen.contains_key("b1"), "{seen:?}");
    let r = admin.req(
        "PATCH",
        "/backends/b1",
        Some(r#"{"state": "up", "weight": 3}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (r.json()["state"].as_str(), r.json()["weight"].as_u64()),
        (Some("up"), Some(3))
    );
    let seen = spread(lb.addr, 12);
    assert!(seen.contains_key("b1"), "{seen:?}");

    // DELETE: drains (no open connection: it goes at the next poll).
    let r = admin.req("DELETE", "/backends/b2", None);
    assert_eq!(
        (r.status, r.json()["state"].as_str()),
        (202, Some("draining")),
        "{r:?}"
    );
    wait_until("b2 to leave the table", Duration::from_secs(5), || {
        !admin.backends().contains_key("b2")
    });
    let seen = spread(lb.addr, 12);
    assert!(!seen.contains_key("b2"), "{seen:?}");

    // GET /metrics answers (its content is tests/metrics.rs's subject).
    assert!(admin
        .metrics()
        .get("uringlb_backend_up", &[("backend", "b0")])
        .is_some());
    // POST /reload without --config: nothing to reload.
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.error().contains("without --config"), "{r:?}");
    println!("admin routes: backends now {:?}", admin.shape());
}

/// The API answers a change only once every worker routes with it: a connection made
/// right after the answer never reaches the old table. Alternates which of two backends is
/// in maintenance, 100 times, connecting at once after each answer (before the fix about
/// one answer in ten came before the workers had the change).
#[test]
fn changes_reach_every_worker_before_the_api_answers() {
    let b0 = NameServer::start("127.0.0.1:0", "b0").unwrap();
    let b1 = NameServer::start("127.0.0.1:0", "b1").unwrap();
    let (lb, admin) = start(&[&b0, &b1], &[]);
    let mut wrong = Vec::new();
    for i in 0..100 {
        let (up, maint) = if i % 2 == 0 {
            ("b0", "b1")
        } else {
            ("b1", "b0")
        };
        let r = admin.req(
            "PATCH",
            &format!("/backends/{up}"),
            Some(r#"{"state": "up"}"#),
        );
        assert_eq!(r.status, 200, "{r:?}");
        let r = admin.req(
            "PATCH",
            &format!("/backends/{maint}"),
            Some(r#"{"state": "maint"}"#),
        );
        assert_eq!(r.status, 200, "{r:?}");
        let got = greet_once(lb.addr).expect("served");
        if got != up {
            wrong.push((i, got));
        }
    }
    assert!(
        wrong.is_empty(),
        "connections made right after the answer reached the backend in maintenance: {wrong:?}"
    );
    let (published, workers) = admin.snapshot_versions();
    assert_eq!(workers.len(), 2);
    assert!(
        workers.iter().all(|&v| v == published),
        "{published} {workers:?}"
    );
}

#[test]
fn bad_input_is_a_json_4xx_and_changes_nothing() {
    let b0 = NameServer::start("127.0.0.1:0", "b0").unwrap();
    let b1 = NameServer::start("127.0.0.1:0", "b1").unwrap();
    let (lb, admin) = start(&[&b0, &b1], &[]);
    let before = admin.shape();
    let a0 = b0.addr().to_string();
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        (
            "POST",
            "/backends".into(),
            Some(r#"{"addr": "#.into()),
            400,
            "invalid JSON",
        ),
        (
            "POST",
            "/backends".into(),
            Some("[1, 2]".into()),
            400,
            "invalid JSON",
        ),
        (
            "POST",
            "/backends".into(),
            Some(format!(
                r#"{{"addr": "{a0}", "name": "x", "colour": "red"}}"#
            )),
            400,
            "unknown field `colour`",
        ),
        (
            "POST",
            "/backends".into(),
            Some(r#"{"name": "x"}"#.into()),
            400,
            "missing field `addr`",
        ),
        (
            "POST",
            "/backends".into(),
            Some(r#"{"addr": "nope", "name": "x"}"#.into()),
            400,
            "missing port",
        ),
        (
            "POST",
            "/backends".into(),
            Some(r#"{"addr": "1.2.3:80", "name": "x"}"#.into()),
            400,
            "invalid IPv4 address",
        ),
        (
            "POST",
            "/backends".into(),
            Some(r#"{"addr": "127.0.0.1:0", "name": "x"}"#.into()),
            400,
            "port 0",
        ),
        (
            "POST",
            "/backends".into(),
            Some(format!(r#"{{"addr": "{a0}", "name": "x", "weight": 0}}"#)),
            400,
            "weight must be an integer from 1",
        ),
        (
            "POST",
            "/backends".into(),
            Some(format!(r#"{{"addr": "{a0}", "name": "x", "weight": -3}}"#)),
            400,
            "invalid JSON",
        ),
        (
            "POST",
            "/backends".into(),
            Some(format!(
                r#"{{"addr": "{a0}", "name": "x", "weight": 10001}}"#
            )),
            400,
            "weight",
        ),
        (
            "POST",
            "/backends".into(),
            Some(format!(r#"{{"addr": "{a0}", "name": "a/b"}}"#)),
            400,
            "'/'",
        ),
        (
            "POST",
            "/backends".into(),
            Some(format!(
                r#"{{"addr": "{a0}", "name": "x", "max_conns": 0}}"#
            )),
            400,
            "max_conns",
        ),
        (
            "POST",
            "/backends".into(),
            Some(format!(r#"{{"addr": "{a0}", "name": "b1"}}"#)),
            409,
            "exists already",
        ),
        (
            "PATCH",
            "/backends/nope".into(),
            Some(r#"{"weight": 2}"#.into()),
            404,
            "no backend named 'nope'",
        ),
        (
            "PATCH",
            "/backends/b0".into(),
            Some(r#"{"weight": 0}"#.into()),
            400,
            "weight",
        ),
        (
            "PATCH",
            "/backends/b0".into(),
            Some(r#"{"state": "down"}"#.into()),
            400,
            "unknown state 'down'",
        ),
        (
            "PATCH",
            "/backends/b0".into(),
            Some(r#"{"state": "maint", "weight": 0}"#.into()),
            400,
            "weight",
        ),
        (
            "PATCH",
            "/backends/b0".into(),
            Some(r#"{}"#.into()),
            400,
            "nothing to change",
        ),
        (
            "PATCH",
            "/backends/b0".into(),
            Some(r#"{"weight": 2, "name": "y"}"#.into()),
            400,
            "unknown field `name`",
        ),
        (
            "DELETE",
            "/backends/nope".into(),
            None,
            404,
            "no backend named 'nope'",
        ),
        ("GET", "/nope".into(), None, 404, "no such endpoint"),
        (
            "GET",
            "/backends/b0".into(),
            None,
            405,
            "method not allowed",
        ),
        ("PUT", "/backends".into(), None, 405, "method not allowed"),
        (
            "DELETE",
            "/backends".into(),
            None,
            405,
            "method not allowed",
        ),
        ("GET", "/reload".into(), None, 405, "method not allowed"),
        ("POST", "/health".into(), None, 405, "method not allowed"),
    ];
    for (method, path, body, status, needle) in &cases {
        let r = admin.req(method, path, body.as_deref());
        assert_eq!(r.status, *status, "{method} {path} {body:?}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
        let e = r.error();
        assert!(
            e.contains(needle),
            "{method} {path} {body:?}: {e:?} lacks {needle:?}"
        );
    }
    // No JSON content type, and a body over the limit.
    let r = http(
        admin.addr,
        "POST",
        "/backends",
        &[],
        Some(format!(r#"{{"addr": "{a0}"}}"#).as_bytes()),
    );
    assert_eq!(r.status, 415, "{r:?}");
    assert!(r.error().contains("Content-Type: application/json"));
    let big = format!(r#"{{"addr": "{a0}", "name": "{}"}}"#, "x".repeat(70_000));
    let r = admin.req("POST", "/backends", Some(&big));
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.error().contains("65536"), "{r:?}");

    assert_eq!(admin.shape(), before, "nothing changed");
    let seen = spread(lb.addr, 10);
    assert!(seen.keys().all(|n| n == "b0" || n == "b1"), "{seen:?}");
    assert!(
        lb.log_text().lines().all(|l| !l.contains("admin API:")),
        "{}",
        lb.log_text()
    );
    println!(
        "admin bad input: {} refused requests, 2 more (415, 413); nothing changed",
        cases.len()
    );
}

#[test]
fn drained_and_deleted_backends_finish_their_connections_and_get_no_new_ones() {
    let b0 = NameServer::start("127.0.0.1:0", "b0").unwrap();
    let b1 = NameServer::start("127.0.0.1:0", "b1").unwrap();
    let (lb, admin) = start(&[&b0, &b1], &[]);

    // Drain b1 with a connection open to it.
    let s = open_to(&lb, "b1");
    let r = admin.req("PATCH", "/backends/b1", Some(r#"{"state": "drain"}"#));
    assert_eq!(
        (r.status, r.json()["state"].as_str()),
        (200, Some("draining")),
        "{r:?}"
    );
    assert_eq!(r.json()["active_conns"], 1, "{r:?}");
    long_echo_while(s, 8 << 20, || {
        let seen = spread(lb.addr, 40);
        assert!(seen.keys().all(|n| n == "b0"), "{seen:?}");
    });
    let r = admin.req("PATCH", "/backends/b1", Some(r#"{"state": "up"}"#));
    assert_eq!(r.status, 200);
    assert!(spread(lb.addr, 10).contains_key("b1"));

    // Delete b0 with a connection open to it: draining until it closes, then gone.
    let s = open_to(&lb, "b0");
    let r = admin.req("DELETE", "/backends/b0", None);
    assert_eq!(
        (r.status, r.json()["state"].as_str()),
        (202, Some("draining")),
        "{r:?}"
    );
    long_echo_while(s, 8 << 20, || {
        let seen = spread(lb.addr, 40);
        assert!(seen.keys().all(|n| n == "b1"), "{seen:?}");
        assert_eq!(admin.backends()["b0"]["state"], "draining");
        // Being removed: it can't be changed any more.
        let r = admin.req("PATCH", "/backends/b0", Some(r#"{"state": "up"}"#));
        assert_eq!(r.status, 409, "{r:?}");
        let r = admin.req("DELETE", "/backends/b0", None);
        assert_eq!(r.status, 409, "{r:?}");
    });
    wait_until("b0 to leave the table", Duration::from_secs(5), || {
        !admin.backends().contains_key("b0")
    });
    println!("admin drain/delete: 2 x 8 MiB echoed byte-exact through a draining backend; 80 new connections all elsewhere");
}

#[test]
fn the_token_is_required_except_for_health() {
    let b0 = NameServer::start("127.0.0.1:0", "b0").unwrap();
    let (_lb, admin) = start(&[&b0], &["--admin-token", "s3cret-Token_1"]);
    let unauthorized = |r: Resp| {
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(r.error().contains("bearer token"));
    };
    for (method, path, body) in [
        ("GET", "/metrics", None),
        ("GET", "/backends", None),
        (
            "POST",
            "/backends",
            Some(r#"{"addr": "127.0.0.1:9", "name": "x"}"#),
        ),
        ("PATCH", "/backends/b0", Some(r#"{"state": "maint"}"#)),
        ("DELETE", "/backends/b0", None),
        ("POST", "/reload", None),
        ("GET", "/nope", None),
    ] {
        let ct = [("Content-Type", "application/json")];
        let h: &[(&str, &str)] = if body.is_some() { &ct } else { &[] };
        unauthorized(http(admin.addr, method, path, h, body.map(str::as_bytes)));
        let mut with_wrong: Vec<(&str, &str)> = h.to_vec();
        with_wrong.push(("Authorization", "Bearer s3cret-Token_2"));
        unauthorized(http(
            admin.addr,
            method,
            path,
            &with_wrong,
            body.map(str::as_bytes),
        ));
        let mut other_scheme: Vec<(&str, &str)> = h.to_vec();
        other_scheme.push(("Authorization", "Basic s3cret-Token_1"));
        unauthorized(http(
            admin.addr,
            method,
            path,
            &other_scheme,
            body.map(str::as_bytes),
        ));
    }
    // /health needs none.
    let r = http(admin.addr, "GET", "/health", &[], None);
    assert_eq!(r.status, 200, "{r:?}");
    // With the token everything works, and nothing changed before.
    let admin = Admin {
        token: Some("s3cret-Token_1".into()),
        ..admin
    };
    let list = admin.backends();
    assert_eq!(list.len(), 1);
    assert_eq!(list["b0"]["state"], "up");
    assert_eq!(admin.get("/metrics").status, 200);
    assert_eq!(admin.get("/nope").status, 404);
}

#[test]
fn the_token_can_come_from_the_config_file() {
    let b0 = NameServer::start("127.0.0.1:0", "b0").unwrap();
    let path =
        std::env::temp_dir().join(format!("uringlb-admin-token-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "admin_token = \"from-file\"\n[[backend]]\naddr = \"{}\"\nname = \"b0\"\n",
            b0.addr()
        ),
    )
    .unwrap();
    let (_lb, admin) = start_with_admin(&["-c", path.to_str().unwrap(), "--health", "none"]);
    assert_eq!(admin.get("/backends").status, 401);
    let admin = Admin {
        token: Some("from-file".into()),
        ..admin
    };
    assert_eq!(admin.get("/backends").status, 200);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn health_is_503_while_stopping() {
    let b0 = NameServer::start("127.0.0.1:0", "b0").unwrap();
    let (mut lb, admin) = start(&[&b0], &["--grace", "20s"]);
    let s = open_to(&lb, "b0");
    assert_eq!(admin.get("/health").status, 200);
    lb.signal(libc::SIGTERM);
    wait_until("/health to say stopping", Duration::from_secs(5), || {
        admin.get("/health").status == 503
    });
    let r = admin.get("/health");
    assert_eq!(r.json()["status"], "stopping");
    // The rest of the API still answers while connections drain.
    assert_eq!(admin.backends()["b0"]["active_conns"], 1);
    let t = Instant::now();
    drop(s);
    let st = lb
        .wait_exit(Duration::from_secs(10))
        .expect("exits after its last connection");
    assert!(st.success(), "{st}");
    println!(
        "health: 503 while draining; exited {:?} after the last connection closed",
        t.elapsed()
    );
}

/// The in-process [`Controller`] serves the same API when `admin` is set.
#[test]
fn the_in_process_controller_serves_the_api_too() {
    use uringlb::config::{BackendSpec, Config, HealthCheck, ServiceSettings, Workers};
    let b0 = NameServer::start("127.0.0.1:0", "b0").unwrap();
    let cfg = Config {
        service: ServiceSettings {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            backends: vec![BackendSpec {
                addr: b0.addr(),
                weight: 1,
                name: "b0".into(),
                max_conns: None,
                proxy_protocol: None,
                backup: false,
            }],
            health: HealthCheck::None,
            ..Default::default()
        },
        workers: Workers::Count(1),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    };
    let c = uringlb::control::Controller::start(&cfg).expect("start");
    let admin = Admin::new(c.admin_addr().expect("admin address"));
    let r = admin.req("PATCH", "/backends/b0", Some(r#"{"weight": 4}"#));
    assert_eq!(r.status, 200, "{r:?}");
    let st = c.status().unwrap();
    assert_eq!(st[0].weight, 4, "the same table behind both");
    c.stop(Duration::from_secs(1));
}

#[test]
fn admin_address_errors_and_warnings() {
    // Busy: start-up fails with one line, exit 2, nothing left running.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = busy.local_addr().unwrap().to_string();
    let listen = free_addr().to_string();
    let (st, _out, err) = run_bin(&["--listen", &listen, "-b", "127.0.0.1:9", "--admin", &b]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&b) && err.contains("admin endpoint"), "{err}");
    // Not loopback: allowed (the operator's explicit choice), with a warning.
    let port = free_addr().port();
    let any = format!("0.0.0.0:{port}");
    let lb = Lb::start(&["-b", "127.0.0.1:9", "--health", "none", "--admin", &any]);
    wait_admin(format!("127.0.0.1:{port}").parse().unwrap());
    // Logged when the API starts serving, just after the workers run: wait for it.
    wait_until("the warning", Duration::from_secs(10), || {
        lb.log_text().lines().any(|l| {
            l.contains("WARN")
                && l.contains("not a loopback address")
                && l.contains("--admin-token")
        })
    });
}

#[test]
fn silent_admin_connections_are_bounded_and_closed_when_idle() {
    let a = NameServer::start("127.0.0.1:0", "a").unwrap();
    let (lb, admin) = start(&[&a], &[]);
    let fds_before = lb.fd_count();
    // A slowloris: 100 connections that never send a byte.
    let mut silent: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(admin.addr).expect("connect"))
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let grown = lb.fd_count().saturating_sub(fds_before);
    assert!(
        grown <= 32 + 2,
        "100 silent admin connections took {grown} descriptors (bound 32)"
    );
    // The data path is untouched meanwhile, and the API answers at once: a new
    // connection takes the place of the oldest silent one.
    assert_eq!(spread(lb.addr, 5).get("a"), Some(&5));
    assert_eq!(admin.get("/health").status, 200);
    // A silent connection that no newcomer displaced is closed once its request head is
    // overdue (5 s).
    let mut last = silent.pop().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut last, &mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "a silent connection gets nothing but a close");
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(12),
        "closed after {waited:?}, expected about 5 s"
    );
    assert_eq!(admin.get("/health").status, 200);
}
