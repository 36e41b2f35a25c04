//! Configuration reload (SIGHUP and `POST /reload`) through the real binary: under a load
//! of new connections and 16 long byte-checked transfers, 20 reloads alternating between
//! two backend sets fail no connection and cut no transfer; an invalid file changes
//! nothing; reloaded settings (health-check interval, idle timeout) take effect; settings
//! that need a restart are named in a warning.

mod util;

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use uringlb_bench::NameServer;

use util::*;

fn toml_backends(backends: &[&NameServer]) -> String {
    backends
        .iter()
        .map(|b| {
            format!(
                "[[backend]]\naddr = \"{}\"\nname = \"{}\"\n",
                b.addr(),
                b.name()
            )
        })
        .collect()
}

fn config_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("uringlb-reload-{tag}-{}.toml", std::process::id()))
}

fn reloads(admin: &Admin, result: &str) -> f64 {
    admin
        .metrics()
        .value("uringlb_config_reloads_total", &[("result", result)])
}

#[test]
fn twenty_reloads_under_load_fail_nothing() {
    let n0 = NameServer::start("127.0.0.1:0", "n0").unwrap();
    let n1 = NameServer::start("127.0.0.1:0", "n1").unwrap();
    let n2 = NameServer::start("127.0.0.1:0", "n2").unwrap();
    let set_a = format!(
        "algorithm = \"round-robin\"\nconnect_timeout = \"2s\"\nhealth = \"tcp\"\nhealth_interval = \"200ms\"\n{}",
        toml_backends(&[&n0, &n1])
    );
    let set_b = format!(
        "algorithm = \"least-conn\"\nconnect_timeout = \"1s\"\nhealth = \"tcp\"\nhealth_interval = \"300ms\"\n{}",
        toml_backends(&[&n1, &n2])
    );
    let path = config_path("load");
    write_atomic(&path, &set_a);
    let p = path.to_str().unwrap();
    let (lb, admin) = start_with_admin(&["-c", p, "--workers", "2"]);

    // 16 long transfers, spread over n0 and n1, then the loop of new connections.
    let long: Vec<LongEcho> = (0..16)
        .map(|i| LongEcho::start(lb.addr, 100 + i, 16 * 1024, Duration::from_millis(25)))
        .collect();
    let on: BTreeMap<String, usize> = long.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l.backend.clone()).or_insert(0) += 1;
        m
    });
    let load = ConnLoop::start(lb.addr, 2, Duration::from_millis(2));
    let t0 = Instant::now();

    for i in 0..20 {
        let (text, names) = if i % 2 == 0 {
            (&set_b, ["n1", "n2"])
        } else {
            (&set_a, ["n0", "n1"])
        };
        write_atomic(&path, text);
        if i % 2 == 0 {
            lb.signal(libc::SIGHUP);
            wait_until("the SIGHUP reload", Duration::from_secs(10), || {
                reloads(&admin, "ok") >= (i + 1) as f64
            });
        } else {
            let r = admin.req("POST", "/reload", None);
            assert_eq!(r.status, 200, "{r:?}");
            let j = r.json();
            assert_eq!(j["result"], "ok");
            assert_eq!(j["backends"], 2);
            assert_eq!(j["added"], serde_json::json!(["n0"]), "{j}");
            assert_eq!(j["removed"], serde_json::json!(["n2"]), "{j}");
            assert_eq!(j["restart_needed"], serde_json::json!([]), "{j}");
        }
        let now = admin.backends();
        for n in names {
            assert_eq!(now[n]["state"], "up", "reload {i}: {now:?}");
        }
        // The new table serves some of the load before the next reload (POST /reload
        // answered once every worker had it; SIGHUP has no answer to wait for).
        admin.wait_settled();
        load.wait_more(40);
    }
    assert_eq!(reloads(&admin, "ok"), 20.0);
    let reloading = t0.elapsed();

    // An invalid file changes nothing, through either path; its error has file:line:column.
    // The last reload removed n2; it stays listed as draining until its last connection
    // closes, so the shape to compare against is taken once it is gone.
    wait_until("n2 drained away", Duration::from_secs(10), || {
        !admin.backends().contains_key("n2")
    });
    let before = admin.shape();
    write_atomic(
        &path,
        &format!(
            "retries = 2\nalgorithm = \"p2c\"\nworkers = = 3\n{}",
            toml_backends(&[&n2])
        ),
    );
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.status, 422, "{r:?}");
    let err = r.error();
    assert!(err.contains(&format!("{p}:3:11:")), "{err}");
    assert!(err.contains("nothing changed"), "{err}");
    lb.signal(libc::SIGHUP);
    wait_until("the failed SIGHUP reload", Duration::from_secs(10), || {
        reloads(&admin, "error") >= 2.0
    });
    let logged: Vec<String> = lb
        .log_text()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains(&format!("{p}:3:11:")))
        .map(str::to_string)
        .collect();
    assert_eq!(logged.len(), 2, "{}", lb.log_text());
    assert!(
        logged[0].contains("POST /reload") && logged[1].contains("SIGHUP"),
        "{logged:?}"
    );
    assert_eq!(admin.shape(), before, "an invalid file changed nothing");
    for _ in 0..20 {
        let n = greet_once(lb.addr).expect("new connections still work");
        assert!(n == "n0" || n == "n1", "{n}");
    }

    let attempts = load.finish();
    let results: Vec<Result<EchoResult, String>> = long.into_iter().map(LongEcho::finish).collect();
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.result.is_err()).collect();
    let exact = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|e| e.exact))
        .count();
    let bytes: usize = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|e| e.received)
        .sum();
    println!(
        "reload under load: 20 reloads (10 SIGHUP, 10 POST /reload) in {:.1}s + 2 invalid ones; \
         connections attempted {}, failed {}; per backend {:?}",
        reloading.as_secs_f64(),
        attempts.len(),
        failed.len(),
        per_backend(&attempts)
    );
    println!(
        "reload under load: long transfers checked {}, byte-exact {exact}, {:.1} MiB echoed; started on {on:?}",
        results.len(),
        bytes as f64 / (1 << 20) as f64
    );
    for r in &results {
        if !r.as_ref().is_ok_and(|e| e.exact) {
            println!("reload under load: bad transfer: {r:?}");
        }
    }
    assert!(
        failed.is_empty(),
        "failed: {:?}",
        failed.iter().map(|a| &a.result).collect::<Vec<_>>()
    );
    assert_eq!(exact, 16, "every long transfer byte-exact");
    assert!(attempts.len() > 500, "the load ran: {}", attempts.len());
    assert!(on.contains_key("n0") && on.contains_key("n1"), "{on:?}");
    let m = admin.metrics();
    assert_eq!(
        m.value("uringlb_config_reloads_total", &[("result", "ok")]),
        20.0
    );
    assert_eq!(
        m.value("uringlb_config_reloads_total", &[("result", "error")]),
        2.0
    );
    assert!(
        !lb.log_text().contains("cannot publish"),
        "{}",
        lb.log_text()
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn reloaded_settings_take_effect_and_restart_only_ones_are_named() {
    let n0 = NameServer::start("127.0.0.1:0", "n0").unwrap();
    let path = config_path("settings");
    write_atomic(
        &path,
        &format!(
            "workers = 1\nhealth = \"tcp\"\nhealth_interval = \"1h\"\nidle_timeout = \"1h\"\n{}",
            toml_backends(&[&n0])
        ),
    );
    let (lb, admin) = start_with_admin(&["-c", path.to_str().unwrap()]);
    let checks = |admin: &Admin| {
        admin.metrics().value(
            "uringlb_health_checks_total",
            &[("backend", "n0"), ("result", "success")],
        )
    };
    wait_until("the first check", Duration::from_secs(5), || {
        checks(&admin) >= 1.0
    });
    // An observation window, not a wait for a change: checks every 100 ms (what the
    // reload sets below) would be seen about five times in it.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(checks(&admin), 1.0, "one check an hour");

    write_atomic(
        &path,
        &format!(
            "workers = 2\nhealth = \"tcp\"\nhealth_interval = \"100ms\"\nidle_timeout = \"1s\"\nalgorithm = \"p2c\"\n{}",
            toml_backends(&[&n0])
        ),
    );
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["restart_needed"], serde_json::json!(["--workers"]));
    let warn = lb
        .log_text()
        .lines()
        .find(|l| l.contains("WARN") && l.contains("--workers changed"))
        .map(str::to_string);
    assert!(
        warn.is_some_and(|w| w.contains("restart")),
        "{}",
        lb.log_text()
    );
    assert!(lb.log_text().contains("algorithm p2c"), "{}", lb.log_text());

    // The checker picked up the new interval.
    let t = Instant::now();
    wait_until("checks every 100 ms", Duration::from_secs(5), || {
        checks(&admin) >= 6.0
    });
    println!(
        "reload settings: 5 more checks {:?} after the reload (interval 1h -> 100ms)",
        t.elapsed()
    );

    // New connections get the new idle timeout.
    let mut s = lb.connect();
    assert_eq!(read_line(&mut s), "n0");
    let t = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    let idle = t.elapsed();
    println!(
        "reload settings: an idle connection was closed after {idle:?} (idle_timeout 1h -> 1s)"
    );
    assert_eq!(n, 0, "closed by the balancer");
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "{idle:?}"
    );

    // A second reload with the same difference warns again: the running value is kept.
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.json()["restart_needed"], serde_json::json!(["--workers"]));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn reload_without_a_config_file_is_an_error() {
    let n0 = NameServer::start("127.0.0.1:0", "n0").unwrap();
    let b = format!("{},name=n0", n0.addr());
    let (lb, admin) = start_with_admin(&["--backend", &b, "--health", "none"]);
    lb.signal(libc::SIGHUP);
    wait_until("the failed reload", Duration::from_secs(5), || {
        reloads(&admin, "error") == 1.0
    });
    assert!(
        lb.log_text().lines().any(|l| l.contains("ERROR")
            && l.contains("SIGHUP")
            && l.contains("nothing to reload")),
        "{}",
        lb.log_text()
    );
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.status, 409);
    assert_eq!(reloads(&admin, "error"), 2.0);
    assert_eq!(reloads(&admin, "ok"), 0.0);
    assert_eq!(greet_once(lb.addr).as_deref(), Ok("n0"));
}

/// A reload that renames a service, or gives its address to another service, keeps the
/// address's listening sockets: no client waiting in their queues is reset. (Before, the
/// sockets were the service's: the renamed service bound new ones and the old closed.)
#[test]
fn renaming_a_service_keeps_its_listening_sockets() {
    let n0 = NameServer::start("127.0.0.1:0", "n0").unwrap();
    let addr = free_addr();
    let config = |name: &str| {
        format!(
            "workers = 2\n[[service]]\nname = \"{name}\"\nlisten = \"{addr}\"\nhealth = \"none\"\n\
             backend = [{{ addr = \"{}\", name = \"n0\" }}]\n",
            n0.addr()
        )
    };
    let path = config_path("rename");
    write_atomic(&path, &config("a"));
    let (_lb, admin) = start_services_with_admin(addr, &["-c", path.to_str().unwrap()]);
    let load = ConnLoop::start(addr, 4, Duration::ZERO);
    load.wait_more(100);
    let cycles = 20;
    for i in 0..cycles {
        write_atomic(&path, &config(if i % 2 == 0 { "b" } else { "a" }));
        let r = admin.req("POST", "/reload", None);
        assert_eq!(r.status, 200, "{r:?}");
        admin.wait_settled();
        load.wait_more(100);
    }
    let attempts = load.finish();
    let by_backend = per_backend(&attempts);
    println!("{cycles} renames under load: {by_backend:?}");
    assert_eq!(
        by_backend.keys().collect::<Vec<_>>(),
        ["n0"],
        "every client served by n0: {by_backend:?}"
    );
    let _ = std::fs::remove_file(&path);
}
