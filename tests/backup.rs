//! Backup backends (`--backend ADDR,backup`, `backup = true`) through the real binary:
//! while a primary is up every new connection goes to the primaries; with no primary up
//! (health checks took them down, or an operator set them to maint) only to the backups;
//! one primary back and new connections go to it again; nothing up at all and panic mode
//! spreads them over primaries and backups alike. Also the admin API's `backup` field and
//! a reload that turns the flag on.

mod util;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use uringlb_bench::{HttpServer, NameServer};

use util::*;

/// `--backend` flags: the primaries by name, then the backups with `,backup`.
fn backend_flags(primaries: &[&NameServer], backups: &[&NameServer]) -> Vec<String> {
    let mut args = named_servers(primaries);
    for b in backups {
        args.push("--backend".into());
        args.push(format!("{},name={},backup", b.addr(), b.name()));
    }
    args
}

/// A balancer with an admin endpoint: 2 workers, tcp checks every 200 ms, rise 1, fall 1.
fn start(backends: Vec<String>, extra: &[&str]) -> (Lb, Admin) {
    let mut args = backends;
    args.extend(
        [
            "--workers",
            "2",
            "--health",
            "tcp",
            "--health-interval",
            "200ms",
            "--rise",
            "1",
            "--fall",
            "1",
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    start_with_admin(&a)
}

/// Waits until `GET /backends` shows `name` in `state`, then until every worker routes
/// with the table that says so (the control thread publishes it before it answers the
/// next request).
fn wait_state(admin: &Admin, name: &str, state: &str) {
    wait_until(
        &format!("backend {name} to be {state}"),
        Duration::from_secs(10),
        || admin.backends()[name]["state"] == state,
    );
    admin.wait_settled();
}

fn names(m: &BTreeMap<String, usize>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

#[test]
fn the_backup_serves_only_while_no_primary_is_up() {
    let p1 = on_fixed_port(|a| NameServer::start(a, "p1"));
    let p2 = on_fixed_port(|a| NameServer::start(a, "p2"));
    let bk = NameServer::start("127.0.0.1:0", "bk").unwrap();
    let p1_addr = p1.addr();
    let (lb, admin) = start(backend_flags(&[&p1, &p2], &[&bk]), &[]);

    let list = admin.backends();
    assert_eq!(list["bk"]["backup"], true);
    assert_eq!(list["p1"]["backup"], false);

    // Both primaries up: every connection goes to them, none to the backup.
    let seen = spread(lb.addr, 40);
    assert_eq!(names(&seen), ["p1", "p2"], "primaries only: {seen:?}");

    // Both primaries stopped: the checks take them down and the backup takes over.
    p1.stop();
    p2.stop();
    wait_state(&admin, "p1", "down");
    wait_state(&admin, "p2", "down");
    let seen = spread(lb.addr, 20);
    assert_eq!(names(&seen), ["bk"], "the backup only: {seen:?}");
    assert_eq!(
        lb.lines_with(&["no primary backend is up; using 1 backup backend(s)"])
            .len(),
        1,
        "the switch is logged once"
    );
    assert!(!lb.log_text().contains("panic mode"), "the backup is up");
    // A connection open on the backup when a primary comes back.
    let (mut held, name) = greet(lb.addr);
    assert_eq!(name, "bk");

    // One primary back: new connections go to it, not to the backup.
    let _p1 = restart_on(p1_addr, |a| NameServer::start(a, "p1"));
    wait_state(&admin, "p1", "up");
    let seen = spread(lb.addr, 20);
    assert_eq!(names(&seen), ["p1"], "the recovered primary only: {seen:?}");
    lb.wait_log(&["primary backend(s) up again"], 1, Duration::from_secs(10));
    // The connection already on the backup was left alone: it still echoes.
    assert_eq!(bk.active(), 1, "the open connection to the backup");
    held.write_all(b"still here\n").unwrap();
    assert_eq!(read_line(&mut held), "still here");
}

#[test]
fn maint_primaries_hand_over_to_the_backups_through_the_admin_api() {
    let [p1, p2, b1, b2] =
        ["p1", "p2", "b1", "b2"].map(|n| NameServer::start("127.0.0.1:0", n).unwrap());
    let (lb, admin) = start(backend_flags(&[&p1, &p2], &[&b1]), &[]);

    // POST /backends with "backup": true adds a second backup; it gets nothing yet.
    let r = admin.req(
        "POST",
        "/backends",
        Some(&format!(
            r#"{{"addr": "{}", "name": "b2", "backup": true}}"#,
            b2.addr()
        )),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["backup"], true, "{r:?}");
    let list = admin.backends();
    let backup: Vec<(&str, bool)> = list
        .iter()
        .map(|(n, b)| (n.as_str(), b["backup"].as_bool().expect("backup is a bool")))
        .collect();
    assert_eq!(
        backup,
        [("b1", true), ("b2", true), ("p1", false), ("p2", false)]
    );
    let seen = spread(lb.addr, 30);
    assert_eq!(names(&seen), ["p1", "p2"], "primaries only: {seen:?}");

    // Both primaries in maintenance: both backups share the connections.
    for p in ["p1", "p2"] {
        let r = admin.req(
            "PATCH",
            &format!("/backends/{p}"),
            Some(r#"{"state": "maint"}"#),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    let seen = spread(lb.addr, 30);
    assert_eq!(names(&seen), ["b1", "b2"], "the backups only: {seen:?}");

    // One primary back in service: it gets every new connection.
    let r = admin.req("PATCH", "/backends/p2", Some(r#"{"state": "up"}"#));
    assert_eq!(r.status, 200, "{r:?}");
    let seen = spread(lb.addr, 20);
    assert_eq!(names(&seen), ["p2"], "the primary in service: {seen:?}");

    // A bad "backup" value is refused and adds nothing.
    let r = admin.req(
        "POST",
        "/backends",
        Some(r#"{"addr": "127.0.0.1:9", "name": "x", "backup": "yes"}"#),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("invalid JSON body"), "{r:?}");
    assert!(!admin.backends().contains_key("x"));
}

#[test]
fn with_nothing_up_panic_mode_spreads_over_primaries_and_backups() {
    let b: Vec<HttpServer> = ["p1", "p2", "bk"]
        .iter()
        .map(|n| HttpServer::start("127.0.0.1:0", n).unwrap())
        .collect();
    // The check asks for a 500; the data path (GET /) still answers 200.
    let mut args = named(&[(b[0].addr(), "p1"), (b[1].addr(), "p2")]);
    args.push("--backend".into());
    args.push(format!("{},name=bk,backup", b[2].addr()));
    args.extend(
        [
            "--workers",
            "2",
            "--health",
            "http:/status/500",
            "--health-interval",
            "200ms",
            "--fall",
            "1",
        ]
        .map(String::from),
    );
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (lb, admin) = start_with_admin(&a);
    lb.wait_log(
        &["panic mode: no backend is up; balancing over all 3 down backend(s)"],
        1,
        Duration::from_secs(10),
    );
    admin.wait_settled();
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..60 {
        let name = http_name(lb.addr).expect("served in panic mode");
        *m.entry(name).or_insert(0) += 1;
    }
    assert_eq!(names(&m), ["bk", "p1", "p2"], "all of them: {m:?}");
}

/// A fresh directory for this test's files.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("uringlb-backup-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn backup_in_the_config_file_and_a_reload_that_changes_it() {
    let [p, b] = ["p", "b"].map(|n| NameServer::start("127.0.0.1:0", n).unwrap());
    let dir = temp_dir("reload");
    let path = dir.join("lb.toml");
    let file = |b_is_backup: bool| {
        format!(
            "workers = 2\nhealth = \"tcp\"\nhealth_interval = \"200ms\"\n\
             [[backend]]\naddr = \"{}\"\nname = \"p\"\n\
             [[backend]]\naddr = \"{}\"\nname = \"b\"\nbackup = {b_is_backup}\n",
            p.addr(),
            b.addr()
        )
    };
    write_atomic(&path, &file(false));
    let (lb, admin) = start_with_admin(&["--config", path.to_str().unwrap()]);
    let seen = spread(lb.addr, 20);
    assert_eq!(names(&seen), ["b", "p"], "two primaries: {seen:?}");

    // The file makes b a backup: a change, like a new weight.
    write_atomic(&path, &file(true));
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["changed"], serde_json::json!(["b"]), "{r:?}");
    admin.wait_settled();
    assert_eq!(admin.backends()["b"]["backup"], true);
    let seen = spread(lb.addr, 20);
    assert_eq!(names(&seen), ["p"], "b is a backup now: {seen:?}");

    // And back.
    write_atomic(&path, &file(false));
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.json()["changed"], serde_json::json!(["b"]), "{r:?}");
    admin.wait_settled();
    let seen = spread(lb.addr, 20);
    assert_eq!(names(&seen), ["b", "p"], "b is a primary again: {seen:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
