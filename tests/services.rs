//! Many services in one process: each `[[service]]` of the file has its own listeners,
//! backends, algorithm, health check and counters; the admin API and the metrics name the
//! service; a reload adds, changes and removes services while connections run. Backends
//! are real NGINX servers (and the testbed's name servers where a test needs long
//! byte-checked transfers).

mod util;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use uringlb_bench::NameServer;
use util::*;

fn config_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "uringlb-services-{tag}-{}.toml",
        std::process::id()
    ))
}

/// A `[[service]]` table: `extra` is TOML for its settings, `backends` (name, address).
fn service(name: &str, listen: SocketAddr, extra: &str, backends: &[(&str, SocketAddr)]) -> String {
    let mut s = format!("[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\n{extra}\n");
    for (n, a) in backends {
        s += &format!("[[service.backend]]\nname = \"{n}\"\naddr = \"{a}\"\n");
    }
    s
}

/// `n` requests through `addr`, counted by the NGINX server that answered.
fn spread_http(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let name = http_name(addr).unwrap_or_else(|e| panic!("request to {addr}: {e}"));
        *m.entry(name).or_insert(0) += 1;
    }
    m
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn services_have_their_own_listeners_pools_algorithms_and_health_checks() {
    let ng = nginx(
        "",
        &[
            r#"location / { return 200 "n0"; } location /up { return 200 "ok"; }"#,
            r#"location / { return 200 "n1"; } location /up { return 200 "ok"; }"#,
            r#"location / { return 200 "n2"; } location /up { return 404; }"#,
        ],
    );
    let [web, api] = free_addrs(2)[..] else {
        unreachable!()
    };
    let text = format!(
        "health_interval = \"200ms\"\nrise = 1\nfall = 1\n{}{}",
        // web checks /up over HTTP: n2 answers 404 there, so it is down for web.
        service(
            "web",
            web,
            "algorithm = \"round-robin\"\nhealth = \"http:/up\"",
            &[("n0", ng.addr(0)), ("n1", ng.addr(1)), ("n2", ng.addr(2))],
        ),
        // api checks TCP only, and weighs its backends: n1 is n1 of web, another backend.
        service(
            "api",
            api,
            "algorithm = \"weighted-round-robin\"\nhealth = \"tcp\"",
            &[("n1", ng.addr(1)), ("n2", ng.addr(2))],
        )
        .replace(
            &format!("name = \"n2\"\naddr = \"{}\"\n", ng.addr(2)),
            &format!("name = \"n2\"\naddr = \"{}\"\nweight = 3\n", ng.addr(2)),
        ),
    );
    let path = config_path("own");
    write_atomic(&path, &text);
    let p = path.to_str().unwrap();

    // --check names each service with its listeners and backends.
    let (status, out, err) = run_bin(&["--check", "-c", p]);
    assert!(status.success(), "{out}{err}");
    assert!(out.starts_with("ok: 2 service(s)"), "{out}");
    assert!(
        out.contains(&format!(
            "service web: listen {web}; 3 backend(s) [n0={}, n1={}, n2={}]; algorithm round-robin, health http:/up",
            ng.addr(0),
            ng.addr(1),
            ng.addr(2)
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("service api: listen {api}; 2 backend(s)")),
        "{out}"
    );

    let (_lb, admin) = start_services_with_admin(web, &["-c", p, "--workers", "1"]);
    wait_until(
        "web's health check to take n2 down",
        Duration::from_secs(10),
        || {
            admin.metrics().value(
                "uringlb_backend_up",
                &[("service", "web"), ("backend", "n2")],
            ) == 0.0
        },
    );
    admin.wait_settled();

    // web: round robin over the two that pass its check.
    assert_eq!(spread_http(web, 8), counts(&[("n0", 4), ("n1", 4)]));
    // api: n2 is up for it (TCP), weighted 3 to 1.
    assert_eq!(spread_http(api, 8), counts(&[("n1", 2), ("n2", 6)]));

    // The same backend in two services has two states: maint in web leaves api's alone.
    let r = admin.req(
        "PATCH",
        "/services/web/backends/n1",
        Some(r#"{"state":"maint"}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["state"], "maint");
    assert_eq!(spread_http(web, 4), counts(&[("n0", 4)]));
    assert_eq!(spread_http(api, 8), counts(&[("n1", 2), ("n2", 6)]));

    // Counters are per service.
    let m = admin.metrics();
    let total = |svc: &str, b: &str| {
        m.value(
            "uringlb_connections_total",
            &[("service", svc), ("backend", b)],
        )
    };
    assert_eq!(total("web", "n1"), 4.0);
    assert_eq!(total("api", "n1"), 4.0);
    assert_eq!(total("web", "n0"), 8.0);
    assert_eq!(total("api", "n2"), 12.0);
    assert!(
        m.value(
            "uringlb_health_checks_total",
            &[("service", "web"), ("backend", "n2"), ("result", "failure")]
        ) >= 1.0
    );
    assert_eq!(
        m.value(
            "uringlb_health_checks_total",
            &[("service", "api"), ("backend", "n2"), ("result", "failure")]
        ),
        0.0
    );

    // GET /services.
    let r = admin.get("/services");
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    let list = j.as_array().expect("array");
    assert_eq!(list.len(), 2, "{j}");
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["protocol"], "tcp");
    assert_eq!(list[0]["listen"], serde_json::json!([web.to_string()]));
    assert_eq!(list[0]["algorithm"], "round-robin");
    assert_eq!(list[0]["backends_up"], 1, "{j}");
    assert_eq!(list[1]["name"], "api");
    assert_eq!(list[1]["algorithm"], "weighted-round-robin");
    assert_eq!(list[1]["backends_up"], 2, "{j}");
}

#[test]
fn admin_routes_name_the_service_and_the_old_ones_refuse_to_guess() {
    let servers = name_servers(&["a0", "a1", "b0"]);
    let [sa, sb] = free_addrs(2)[..] else {
        unreachable!()
    };
    let text = format!(
        "health = \"none\"\n{}{}",
        service(
            "alpha",
            sa,
            "",
            &[("a0", servers[0].addr()), ("a1", servers[1].addr())]
        ),
        service("beta", sb, "", &[("b0", servers[2].addr())]),
    );
    let path = config_path("admin");
    write_atomic(&path, &text);
    let (_lb, admin) =
        start_services_with_admin(sa, &["-c", path.to_str().unwrap(), "--workers", "1"]);

    // Listing, per service.
    let r = admin.get("/services/alpha/backends");
    assert_eq!(r.status, 200, "{r:?}");
    let names: Vec<String> = r
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a0", "a1"]);
    let r = admin.get("/services/beta/backends");
    assert_eq!(r.json().as_array().expect("array").len(), 1);

    // Unknown service: 404, with a JSON error; nothing changes.
    for (method, path, body) in [
        ("GET", "/services/gamma/backends", None),
        (
            "POST",
            "/services/gamma/backends",
            Some(r#"{"addr":"127.0.0.1:9"}"#),
        ),
        (
            "PATCH",
            "/services/gamma/backends/a0",
            Some(r#"{"weight":2}"#),
        ),
        ("DELETE", "/services/gamma/backends/a0", None),
    ] {
        let r = admin.req(method, path, body);
        assert_eq!(r.status, 404, "{method} {path}: {r:?}");
        assert!(r.error().contains("no service named 'gamma'"), "{r:?}");
    }
    // A backend of another service is unknown here.
    let r = admin.req(
        "PATCH",
        "/services/beta/backends/a0",
        Some(r#"{"weight":2}"#),
    );
    assert_eq!(r.status, 404, "{r:?}");

    // The old routes: 409 naming the services.
    for (method, path, body) in [
        ("GET", "/backends", None),
        ("POST", "/backends", Some(r#"{"addr":"127.0.0.1:9"}"#)),
        ("PATCH", "/backends/a0", Some(r#"{"weight":2}"#)),
        ("DELETE", "/backends/a0", None),
    ] {
        let r = admin.req(method, path, body);
        assert_eq!(r.status, 409, "{method} {path}: {r:?}");
        let e = r.error();
        assert!(e.contains("alpha") && e.contains("beta"), "{e}");
    }

    // Add, change and remove through the service's routes.
    let b1 = NameServer::start("127.0.0.1:0", "b1").unwrap();
    let r = admin.req(
        "POST",
        "/services/beta/backends",
        Some(&format!(r#"{{"addr":"{}","name":"b1"}}"#, b1.addr())),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let r = admin.req(
        "PATCH",
        "/services/beta/backends/b0",
        Some(r#"{"state":"drain"}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    for _ in 0..4 {
        assert_eq!(greet_once(sb).as_deref(), Ok("b1"));
    }
    // alpha never sees beta's backends.
    for _ in 0..4 {
        let n = greet_once(sa).expect("alpha");
        assert!(n == "a0" || n == "a1", "{n}");
    }
    let r = admin.req("DELETE", "/services/beta/backends/b1", None);
    assert_eq!(r.status, 202, "{r:?}");
    let r = admin.req("DELETE", "/services/beta/backends/b1", None);
    assert!(r.status == 404 || r.status == 409, "{r:?}");
}

#[test]
fn a_file_without_services_keeps_the_old_routes_and_labels() {
    let servers = name_servers(&["s0"]);
    let (_lb, admin) = start_with_admin(&[
        "-b",
        &format!("{},name=s0", servers[0].addr()),
        "--health",
        "none",
    ]);
    let r = admin.get("/services");
    let j = r.json();
    assert_eq!(j[0]["name"], "default", "{j}");
    assert_eq!(admin.get("/backends").status, 200);
    assert_eq!(admin.get("/services/default/backends").status, 200);
    let m = admin.metrics();
    assert!(
        m.get(
            "uringlb_backend_up",
            &[("service", "default"), ("backend", "s0")]
        )
        .is_some(),
        "{:?}",
        m.all("uringlb_backend_up")
    );
}

#[test]
fn reload_adds_changes_and_removes_services_under_load() {
    let servers = name_servers(&["k0", "k1", "g0", "n0"]);
    let [keep, gone, new] = free_addrs(3)[..] else {
        unreachable!()
    };
    let kept = |algorithm: &str| {
        service(
            "keep",
            keep,
            &format!("algorithm = \"{algorithm}\""),
            &[("k0", servers[0].addr()), ("k1", servers[1].addr())],
        )
    };
    let before = format!(
        "health = \"none\"\ngrace = \"20s\"\n{}{}",
        kept("round-robin"),
        service("gone", gone, "", &[("g0", servers[2].addr())]),
    );
    let path = config_path("reload");
    write_atomic(&path, &before);
    let (lb, admin) =
        start_services_with_admin(keep, &["-c", path.to_str().unwrap(), "--workers", "2"]);

    // Transfers on the service that goes, and connections in a loop on the one that stays.
    let long: Vec<LongEcho> = (0..4)
        .map(|i| LongEcho::start(gone, 300 + i, 16 * 1024, Duration::from_millis(20)))
        .collect();
    for l in &long {
        assert_eq!(l.backend, "g0");
    }
    let load = ConnLoop::start(keep, 2, Duration::from_millis(2));
    load.wait_more(20);

    // Remove `gone`, add `new`, change `keep`'s algorithm.
    let after = format!(
        "health = \"none\"\ngrace = \"20s\"\n{}{}",
        kept("least-conn"),
        service("new", new, "", &[("n0", servers[3].addr())]),
    );
    write_atomic(&path, &after);
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["services"], serde_json::json!(["keep", "new"]), "{j}");
    assert_eq!(j["services_added"], serde_json::json!(["new"]), "{j}");
    assert_eq!(j["services_removed"], serde_json::json!(["gone"]), "{j}");
    assert_eq!(j["added"], serde_json::json!(["new/n0"]), "{j}");
    assert_eq!(j["removed"], serde_json::json!(["gone/g0"]), "{j}");

    // The answer came once every worker routes with the change: the new service serves,
    // the removed one's port refuses, its open transfers go on.
    assert_eq!(greet_once(new).as_deref(), Ok("n0"));
    wait_until(
        "the removed service's port to refuse",
        Duration::from_secs(10),
        || std::net::TcpStream::connect(gone).is_err(),
    );
    let r = admin.get("/services");
    let names: Vec<String> = r
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["keep", "new"]);
    load.wait_more(40);

    let results: Vec<Result<EchoResult, String>> = long.into_iter().map(LongEcho::finish).collect();
    for r in &results {
        let e = r.as_ref().expect("a transfer of the removed service");
        assert!(e.exact, "byte-exact: {e:?}");
    }
    // Its backends leave once their connections are gone; then the service does.
    lb.wait_log(
        &["service gone: removed, its connections are gone"],
        1,
        Duration::from_secs(10),
    );
    let attempts = load.finish();
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(attempts.len() >= 60);
    for a in &attempts {
        let n = a.result.as_deref().unwrap_or_default();
        assert!(n == "k0" || n == "k1", "{n}");
    }

    // A listen address that cannot be bound fails the reload, and nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = format!(
        "{after}{}",
        service(
            "blocked",
            taken.local_addr().unwrap(),
            "",
            &[("n0", servers[3].addr())]
        )
    );
    write_atomic(&path, &bad);
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.error().contains("nothing changed"), "{r:?}");
    assert_eq!(greet_once(new).as_deref(), Ok("n0"));
    assert_eq!(admin.get("/services").json().as_array().unwrap().len(), 2);
}

/// One byte through the balancer and back: the connection is served.
fn echo_byte(s: &mut std::net::TcpStream, b: u8) {
    use std::io::{Read, Write};
    s.write_all(&[b]).expect("write");
    let mut one = [0u8; 1];
    s.read_exact(&mut one).expect("echo");
    assert_eq!(one[0], b);
}

#[test]
fn a_service_at_its_own_max_conns_makes_its_clients_wait_and_no_other() {
    use std::io::{Read, Write};
    let echo = uringlb_bench::EchoServer::start("127.0.0.1:0").unwrap();
    let [small, big] = free_addrs(2)[..] else {
        unreachable!()
    };
    let text = format!(
        "health = \"none\"\n{}{}",
        service("small", small, "max_conns = 3", &[("e", echo.addr())]),
        service("big", big, "", &[("e", echo.addr())]),
    );
    let path = config_path("svcmax");
    write_atomic(&path, &text);
    let p = path.to_str().unwrap();
    let (_, out, _) = run_bin(&["--check", "-c", p]);
    assert!(
        out.contains("service small: ") && out.contains("max_conns 3"),
        "{out}"
    );
    let (_lb, admin) = start_services_with_admin(small, &["-c", p, "--workers", "2"]);

    let mut held: Vec<std::net::TcpStream> = (0..3)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(small).expect("connect");
            echo_byte(&mut s, b'a');
            s
        })
        .collect();
    // The fourth waits in the kernel's backlog: connected at TCP level, not served.
    let mut fourth = std::net::TcpStream::connect(small).expect("connect");
    fourth.write_all(b"b").unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut one = [0u8; 1];
    assert!(
        fourth.read_exact(&mut one).is_err(),
        "served beyond the service's max_conns"
    );
    // Another service is not held back.
    let mut others: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(big).expect("connect"))
        .collect();
    for s in &mut others {
        echo_byte(s, b'c');
    }
    assert_eq!(
        admin.metrics().value("uringlb_client_connections", &[]),
        13.0
    );
    // One of the service's closes: the fourth is served, nothing was refused.
    drop(held.pop());
    fourth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    fourth
        .read_exact(&mut one)
        .expect("served once a place freed");
    assert_eq!(&one, b"b");
    assert_eq!(
        admin.metrics().sum("uringlb_rejected_total"),
        0.0,
        "nobody was refused"
    );
}

/// The README's figures for many services: 50 services of 10 backends each (the same ten
/// servers, ten backends of every service), started with health checks on; every service
/// serves; start-up time and memory against one service of the same ten backends.
#[test]
fn fifty_services_of_ten_backends_start_and_each_serves() {
    let names: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let servers = name_servers(&refs);
    let pool: Vec<(&str, SocketAddr)> = refs
        .iter()
        .copied()
        .zip(servers.iter().map(|s| s.addr()))
        .collect();
    let measure = |n: usize| {
        let addrs = free_addrs(n);
        let text: String = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| service(&format!("s{i}"), *a, "", &pool))
            .collect();
        let path = config_path(&format!("many-{n}"));
        write_atomic(&path, &format!("health = \"tcp\"\n{text}"));
        let t0 = std::time::Instant::now();
        let lb = Lb::start_services(addrs[0], &["-c", path.to_str().unwrap(), "--workers", "2"]);
        let started = t0.elapsed();
        for a in &addrs {
            let n = greet_once(*a).unwrap_or_else(|e| panic!("service at {a}: {e}"));
            assert!(refs.contains(&n.as_str()), "{n}");
        }
        (started, rss_kib(lb.pid()), lb)
    };
    let (t1, rss1, _one) = measure(1);
    let (t50, rss50, _many) = measure(50);
    println!(
        "services: 1 x 10 backends started in {} ms, RSS {rss1} KiB; 50 x 10 backends started in {} ms, RSS {rss50} KiB; about {} KiB per service",
        t1.as_millis(),
        t50.as_millis(),
        rss50.saturating_sub(rss1) / 49
    );
}

#[test]
fn a_service_allow_list_refuses_its_clients_and_no_one_elses() {
    use std::io::Read;
    let servers = name_servers(&["c0", "o0"]);
    let [closed, open] = free_addrs(2)[..] else {
        unreachable!()
    };
    let text = format!(
        "health = \"none\"\n{}{}",
        service(
            "closed",
            closed,
            "allow = [\"10.0.0.0/8\"]",
            &[("c0", servers[0].addr())]
        ),
        service("open", open, "", &[("o0", servers[1].addr())]),
    );
    let path = config_path("acl");
    write_atomic(&path, &text);
    let (_lb, admin) =
        start_services_with_admin(open, &["-c", path.to_str().unwrap(), "--workers", "2"]);
    for _ in 0..3 {
        // Refused: nothing from the backend, an EOF or a reset.
        let mut s = std::net::TcpStream::connect(closed).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty(), "a denied client read {buf:?}");
        assert_eq!(greet_once(open).as_deref(), Ok("o0"));
    }
    wait_until("three refusals counted", Duration::from_secs(10), || {
        admin
            .metrics()
            .value("uringlb_rejected_total", &[("reason", "denied")])
            == 3.0
    });
    assert_eq!(
        servers[0].connections(),
        0,
        "the closed service's backend saw nobody"
    );
}
