//! Consul HTTP discovery end to end (issue #18, item 1): the real binary follows
//! `/v1/health/service/NAME?passing=true` of a Consul double (`util::consul`, the HTTP API
//! as Consul 1.x documents it) with blocking queries: backends appear, changes (additions,
//! removals that drain, weight changes) are followed within a second, the ACL token is
//! sent (from the file and from `CONSUL_HTTP_TOKEN`), Consul going down keeps the last
//! set, an index going backwards is handled, `Node.Address` stands in for an empty
//! `Service.Address`, and two instances fed by the same Consul agree on 256 clients.
//!
//! Each backend is a `NameServer` on its own loopback port that greets with its name, so
//! a connection tells which backend it reached.

mod util;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use uringlb_bench::NameServer;
use util::consul::{ConsulDouble, Instance};
use util::*;

const SERVICE: &str = "web";

/// How long a change in Consul may take to reach the workers.
const FOLLOW_WITHIN: Duration = Duration::from_secs(1);

fn inst(id: &str, s: &NameServer) -> Instance {
    Instance::new(id, s.addr().port())
}

/// Starts the binary with discovery from `consul`, an admin endpoint, `env` and `extra`.
fn start_lb(consul: &ConsulDouble, extra: &[&str], env: &[(&str, &str)]) -> (Lb, Admin) {
    let d = consul.discovery(SERVICE);
    let admin = free_addr();
    let a = admin.to_string();
    let mut args = vec![
        "--admin",
        a.as_str(),
        "--discovery",
        &d,
        "--discovery-interval",
        "300ms",
    ];
    args.extend(extra);
    let lb = Lb::start_with_env(&args, env);
    wait_admin(admin);
    (lb, Admin::new(admin))
}

/// The live backends (not draining) the admin API lists: name -> weight.
fn live_backends(admin: &Admin) -> BTreeMap<String, u64> {
    admin
        .backends()
        .into_iter()
        .filter(|(_, b)| b["state"] != "draining")
        .map(|(n, b)| (n, b["weight"].as_u64().unwrap_or(0)))
        .collect()
}

/// Applies `change` to Consul and measures how long until every worker routes with the
/// backend set `want` (name -> weight); prints it and asserts it is within
/// [`FOLLOW_WITHIN`].
fn followed(what: &str, admin: &Admin, want: &[(&str, u64)], change: impl FnOnce()) {
    let want: BTreeMap<String, u64> = want.iter().map(|(n, w)| (n.to_string(), *w)).collect();
    let t0 = Instant::now();
    change();
    let mut last = BTreeMap::new();
    let took = poll(Duration::from_secs(10), || {
        last = live_backends(admin);
        (last == want && admin.settled()).then(|| t0.elapsed())
    })
    .unwrap_or_else(|| panic!("{what}: never reached {want:?}; last {last:?}"));
    eprintln!("consul: {what} followed in {took:?}");
    assert!(
        took < FOLLOW_WITHIN,
        "{what} took {took:?} to reach the workers"
    );
}

/// Waits (at most 10 s) until the log has `needle`.
fn wait_for_log(lb: &Lb, needle: &str) {
    lb.wait_log(&[needle], 1, Duration::from_secs(10));
}

// ---- tests ------------------------------------------------------------------------------

/// Backends appear; an addition, a removal (drained) and a weight change are each followed
/// within a second; weights through weighted round robin's exact ratios (one worker).
#[test]
fn follows_additions_removals_and_weight_changes_within_a_second() {
    let s = name_servers(&["a", "b", "c"]);
    let consul = ConsulDouble::start(SERVICE, &[inst("a", &s[0]), inst("b", &s[1])]);
    let (lb, admin) = start_lb(
        &consul,
        &[
            "--workers",
            "1",
            "--health",
            "none",
            "--algorithm",
            "weighted-round-robin",
        ],
        &[],
    );
    let got = wait_for_set(&lb, &["a", "b"], 20);
    assert_eq!(got["a"], got["b"], "no Weights means weight 1: {got:?}");
    assert_eq!(
        live_backends(&admin).keys().collect::<Vec<_>>(),
        ["a@node-a", "b@node-b"],
        "backends are named SERVICE_ID@NODE"
    );
    wait_for_log(&lb, "2 backend(s) in use, 2 of them from Consul");
    // The queries after the first block: they carry the index of the answer before.
    wait_until("a blocking query", Duration::from_secs(10), || {
        consul
            .seen()
            .iter()
            .any(|q| q.path.contains("index=10") && q.path.contains("wait="))
    });
    assert!(consul
        .seen()
        .iter()
        .all(|q| q.path.contains("passing=true")));

    followed(
        "an addition",
        &admin,
        &[("a@node-a", 1), ("b@node-b", 1), ("c@node-c", 1)],
        || {
            consul.set(
                SERVICE,
                &[inst("a", &s[0]), inst("b", &s[1]), inst("c", &s[2])],
            )
        },
    );
    wait_for_set(&lb, &["a", "b", "c"], 30);

    followed(
        "a removal",
        &admin,
        &[("b@node-b", 1), ("c@node-c", 1)],
        || consul.set(SERVICE, &[inst("b", &s[1]), inst("c", &s[2])]),
    );
    wait_for_set(&lb, &["b", "c"], 30);
    wait_for_log(&lb, "backend a@node-a: up -> draining");

    followed(
        "a weight change",
        &admin,
        &[("b@node-b", 3), ("c@node-c", 1)],
        || {
            consul.set(
                SERVICE,
                &[inst("b", &s[1]).weight(3), inst("c", &s[2]).weight(1)],
            )
        },
    );
    let got = spread(lb.addr, 40);
    eprintln!("weights 3:1 over 40 connections: {got:?}");
    let b = got.get("b").copied().unwrap_or(0);
    assert!((28..=32).contains(&b), "expected ~30 of 40 on b: {got:?}");

    // An instance whose check fails is not passing: Consul leaves it out.
    followed("a failing check", &admin, &[("c@node-c", 1)], || {
        consul.set(
            SERVICE,
            &[inst("b", &s[1]).weight(3).failing(), inst("c", &s[2])],
        )
    });
}

/// `Service.Address` empty: the node's address is used.
#[test]
fn node_address_stands_in_for_an_empty_service_address() {
    let s = name_servers(&["svc", "node"]);
    let consul = ConsulDouble::start(
        SERVICE,
        &[
            inst("svc", &s[0]),
            inst("node", &s[1]).on_node_address("127.0.0.1"),
        ],
    );
    let (lb, admin) = start_lb(&consul, &["--workers", "1", "--health", "none"], &[]);
    wait_for_set(&lb, &["node", "svc"], 20);
    let b = admin.backends();
    assert_eq!(
        b["node@node-node"]["addr"].as_str(),
        Some(s[1].addr().to_string().as_str()),
        "{b:?}"
    );
}

/// With an ACL token required, the token is sent from `consul_token` in the file and from
/// `CONSUL_HTTP_TOKEN`; without it Consul answers 403, which is logged and changes nothing.
#[test]
fn the_acl_token_is_sent_from_the_file_and_from_the_environment() {
    const TOKEN: &str = "b1f9c2e0-5c1d-4c4e-9a31-3f6a2d7e8c01";
    let s = name_servers(&["a"]);
    let consul = ConsulDouble::start(SERVICE, &[inst("a", &s[0])]);
    consul.require_token(TOKEN);

    // No token: refused, logged, nothing discovered.
    let (none, _) = start_lb(&consul, &["--workers", "1", "--health", "none"], &[]);
    wait_for_log(
        &none,
        "HTTP 403 Forbidden (check consul_token or CONSUL_HTTP_TOKEN)",
    );
    assert_eq!(greet_from(IpAddr::from(Ipv4Addr::LOCALHOST), none.addr), "");
    drop(none);

    // From the file (a top-level key of a file without services).
    let path = std::env::temp_dir().join(format!("uringlb-consul-{}.toml", std::process::id()));
    write_atomic(&path, &format!("consul_token = \"{TOKEN}\"\n"));
    let (file, _) = start_lb(
        &consul,
        &[
            "-c",
            path.to_str().unwrap(),
            "--workers",
            "1",
            "--health",
            "none",
        ],
        &[],
    );
    wait_for_set(&file, &["a"], 5);
    assert!(
        !file.log_text().contains(TOKEN),
        "the token is never logged"
    );
    drop(file);
    let _ = std::fs::remove_file(&path);

    // From the environment.
    let before = consul.seen().len();
    let (env, _) = start_lb(
        &consul,
        &["--workers", "1", "--health", "none"],
        &[("CONSUL_HTTP_TOKEN", TOKEN)],
    );
    wait_for_set(&env, &["a"], 5);
    let seen = consul.seen();
    assert!(
        seen[before..]
            .iter()
            .all(|q| q.token.as_deref() == Some(TOKEN)),
        "every query carries X-Consul-Token"
    );
}

/// Consul goes down: the last set keeps serving, one warning is logged for the outage,
/// retries back off; when Consul is back, its new set is followed.
#[test]
fn consul_down_keeps_the_last_set_and_recovers() {
    let s = name_servers(&["a", "b"]);
    let mut consul = ConsulDouble::start(SERVICE, &[inst("a", &s[0]), inst("b", &s[1])]);
    let (lb, admin) = start_lb(&consul, &["--workers", "1", "--health", "none"], &[]);
    wait_for_set(&lb, &["a", "b"], 20);

    consul.down();
    let label = format!("following Consul service {SERVICE} at {}", consul.addr);
    wait_for_log(&lb, &format!("discovery: {label} failed"));
    let failures = |a: &Admin| a.metrics().value("uringlb_discovery_failures_total", &[]);
    let failed = failures(&admin);
    wait_until("3 more failed queries", Duration::from_secs(20), || {
        failures(&admin) >= failed + 3.0
    });
    let got = spread(lb.addr, 20);
    assert_eq!(keys(&got), ["a", "b"], "the last set serves: {got:?}");
    let log = lb.log_text();
    assert_eq!(
        log.matches(&format!("discovery: {label} failed:")).count(),
        1,
        "one warning per outage:\n{log}"
    );
    assert!(
        log.contains("keeping the last 2 discovered backend(s)"),
        "{log}"
    );

    consul.set(SERVICE, &[inst("a", &s[0])]);
    consul.up();
    wait_for_log(&lb, "answers again after");
    wait_for_set(&lb, &["a"], 20);
}

/// Consul's index goes backwards (a restored snapshot): the client starts again from
/// index 0, and the next change is followed within a second rather than when the old,
/// higher index is reached.
#[test]
fn an_index_going_backwards_is_reset() {
    let s = name_servers(&["a", "b", "c"]);
    let consul = ConsulDouble::start(SERVICE, &[inst("a", &s[0]), inst("b", &s[1])]);
    // Blocking queries are held at most this long (Consul caps them at 10 minutes).
    consul.set_max_wait(Duration::from_secs(3));
    consul.set_at_index(SERVICE, &[inst("a", &s[0]), inst("b", &s[1])], 1000);
    let (lb, admin) = start_lb(&consul, &["--workers", "1", "--health", "none"], &[]);
    wait_for_set(&lb, &["a", "b"], 20);
    wait_until(
        "a query blocking at index 1000",
        Duration::from_secs(10),
        || consul.seen().iter().any(|q| q.index == 1000),
    );

    let t = Instant::now();
    consul.set_at_index(SERVICE, &[inst("a", &s[0])], 5);
    wait_for_set(&lb, &["a"], 20);
    wait_until("a query from index 0", Duration::from_secs(10), || {
        consul.seen().iter().any(|q| q.at > t && q.index == 0)
    });
    wait_until(
        "a query blocking at index 5",
        Duration::from_secs(10),
        || consul.seen().iter().any(|q| q.at > t && q.index == 5),
    );
    followed(
        "a change after the reset",
        &admin,
        &[("a@node-a", 1), ("c@node-c", 1)],
        || consul.set(SERVICE, &[inst("a", &s[0]), inst("c", &s[2])]),
    );
    assert_eq!(consul.index(), 6);
}

/// Two instances fed by the same Consul service build identical Maglev tables and send
/// each of 256 client addresses to the same backend.
#[test]
fn two_instances_fed_by_the_same_consul_agree_on_256_clients() {
    let all = ["web-1", "web-2", "web-3", "web-4"];
    let s = name_servers(&all);
    let instances: Vec<Instance> = s.iter().zip(all).map(|(s, n)| inst(n, s)).collect();
    let consul = ConsulDouble::start(SERVICE, &instances);
    let flags = [
        "--workers",
        "2",
        "--health",
        "none",
        "--algorithm",
        "maglev",
    ];
    let (lb1, admin1) = start_lb(&consul, &flags, &[]);
    let (lb2, admin2) = start_lb(&consul, &flags, &[]);
    for (lb, admin) in [(&lb1, &admin1), (&lb2, &admin2)] {
        wait_for_log(lb, "4 backend(s) in use, 4 of them from Consul");
        admin.wait_settled();
    }
    let h = same_backend_through_both(lb1.addr, lb2.addr);
    eprintln!("maglev, two instances fed by Consul: 256 clients {h:?}, identical");
    assert_eq!(
        h.keys().map(String::as_str).collect::<Vec<_>>(),
        all,
        "{h:?}"
    );
}

/// A Consul-discovering service in a file of services.
#[test]
fn a_service_table_discovers_from_consul() {
    let s = name_servers(&["d0", "d1"]);
    let consul = ConsulDouble::start("db", &[inst("d0", &s[0]), inst("d1", &s[1])]);
    let listen = free_addr();
    let text = format!(
        "health = \"none\"\n\
         [[service]]\nname = \"found\"\nlisten = \"{listen}\"\n\
         discovery = \"{}\"\n",
        consul.discovery("db")
    );
    let path = std::env::temp_dir().join(format!(
        "uringlb-consul-services-{}.toml",
        std::process::id()
    ));
    write_atomic(&path, &text);
    let (lb, _admin) =
        start_services_with_admin(listen, &["-c", path.to_str().unwrap(), "--workers", "1"]);
    wait_for_set(&lb, &["d0", "d1"], 20);
    let _ = std::fs::remove_file(&path);
}

/// Bad specs and tokens: exit 2 with one line naming the problem.
#[test]
fn bad_consul_specs_are_refused_with_one_line() {
    for (args, needle) in [
        (vec!["--discovery", "consul:"], "no Consul service name"),
        (
            vec!["--discovery", "consul:x@bad"],
            "invalid Consul address 'bad'",
        ),
        (
            vec!["--discovery", "consul:a/b"],
            "invalid Consul service name",
        ),
        (
            vec!["--discovery", "consul:x", "--consul-token", "a b"],
            "Consul token",
        ),
    ] {
        let mut all = vec!["--check"];
        all.extend(&args);
        let (status, _, stderr) = run_bin(&all);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let (status, stdout, stderr) = run_bin(&["--check", "--discovery", "consul:web"]);
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
}
