//! DNS SRV discovery end to end (issue #5): the real binary resolves SRV records served by a
//! real DNS server, dnsmasq, on a loopback port, and follows its changes: additions,
//! removals (drained), weight changes, priority classes (a lower class only while the first
//! one is all down), a resolver that stops answering (the last set stays, one warning), and
//! two instances fed by the same records sending 256 client addresses to the same backends.
//!
//! dnsmasq comes from Debian's `dnsmasq-base` package; `./scripts/install-test-deps.sh`
//! installs it (`./scripts/test.sh` and CI run that first). Without it these tests fail,
//! saying so, rather than skip: a skipped discovery test would hide a broken feature.
//!
//! To change records the test rewrites dnsmasq's configuration and restarts it on the same
//! port (`srv-host` and `host-record` lines are read only at start; SIGHUP re-reads hosts
//! files, not these). Each backend is a `NameServer` on its own loopback port that greets
//! with its name, so a connection tells which backend it reached.

mod util;

use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use uringlb_bench::NameServer;
use util::*;

const SRV_NAME: &str = "_web._tcp.svc.test";

// ---- dnsmasq --------------------------------------------------------------------------

/// One SRV record: target host (resolving to 127.0.0.1), port, priority, weight.
#[derive(Clone)]
struct Srv {
    target: String,
    port: u16,
    priority: u16,
    weight: u16,
}

fn srv(target: &str, server: &NameServer, priority: u16, weight: u16) -> Srv {
    Srv {
        target: target.to_string(),
        port: server.addr().port(),
        priority,
        weight,
    }
}

/// dnsmasq serving `SRV_NAME` on 127.0.0.1:port, restarted on the same port for changes.
struct Dns {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Dns {
    fn start(records: &[Srv]) -> Dns {
        let port = fixed_port();
        let dir = std::env::temp_dir().join(format!("uringlb-dns-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut dns = Dns {
            bin: find_bin("dnsmasq", "dnsmasq-base"),
            port,
            dir,
            child: None,
        };
        dns.set(records);
        dns
    }

    fn resolver(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `--discovery` for this server.
    fn discovery(&self) -> String {
        format!("dns-srv:{SRV_NAME}@{}", self.resolver())
    }

    /// Serves exactly `records` from now on (restarts dnsmasq).
    fn set(&mut self, records: &[Srv]) {
        let mut conf = String::from("local-ttl=1\n");
        let mut hosts: Vec<&str> = Vec::new();
        for r in records {
            conf += &format!(
                "srv-host={SRV_NAME},{},{},{},{}\n",
                r.target, r.port, r.priority, r.weight
            );
            if !hosts.contains(&r.target.as_str()) {
                hosts.push(&r.target);
                conf += &format!("host-record={},127.0.0.1\n", r.target);
            }
        }
        let path = self.dir.join("dnsmasq.conf");
        std::fs::write(&path, conf).expect("write dnsmasq.conf");
        self.stop();
        // The port still held by the old process's socket is retried for a while.
        let child = wait_for(
            &format!("port {} to be free for dnsmasq", self.port),
            Duration::from_secs(5),
            || match self.spawn(&path) {
                Ok(child) => Some(child),
                Err(e) if e.contains("Address already in use") => None,
                Err(e) => panic!("{e}"),
            },
        );
        self.child = Some(child);
    }

    /// Starts dnsmasq on `self.port` and waits until it answers TCP connections, or says
    /// why it exited.
    fn spawn(&self, conf: &Path) -> Result<Child, String> {
        let log_path = self.dir.join("dnsmasq.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let mut child = Command::new(&self.bin)
            .arg("--no-daemon")
            .arg(format!("--port={}", self.port))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg(format!("--conf-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        let up = poll(Duration::from_secs(10), || {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(Err(format!(
                    "dnsmasq exited ({st}): {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )));
            }
            TcpStream::connect(("127.0.0.1", self.port))
                .is_ok()
                .then_some(Ok(()))
        });
        match up {
            Some(Ok(())) => Ok(child),
            Some(Err(e)) => Err(e),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err("dnsmasq did not start within 10 s".to_string())
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- clients ----------------------------------------------------------------------------

/// Starts the binary with discovery from `dns`, an admin endpoint and the extra flags.
fn start_lb(dns: &Dns, extra: &[&str]) -> (Lb, Admin) {
    let d = dns.discovery();
    let mut args = vec!["--discovery", &d, "--discovery-interval", "300ms"];
    args.extend(extra);
    start_with_admin(&args)
}

/// Waits (at most 10 s) until the log has `needle`.
fn wait_for_log(lb: &Lb, needle: &str) {
    lb.wait_log(&[needle], 1, Duration::from_secs(10));
}

/// `uringlb_discovery_resolutions_total` and `uringlb_discovery_failures_total` now.
fn discovery_rounds(admin: &Admin) -> (f64, f64) {
    let m = admin.metrics();
    (
        m.value("uringlb_discovery_resolutions_total", &[]),
        m.value("uringlb_discovery_failures_total", &[]),
    )
}

// ---- tests ------------------------------------------------------------------------------

/// Additions and removals (removed backends drain) and weight changes, observed through
/// where connections go; weights through weighted round robin's exact ratios (one worker).
#[test]
fn follows_additions_removals_and_weight_changes() {
    let s = name_servers(&["a", "b", "c"]);
    let mut dns = Dns::start(&[
        srv("a.svc.test", &s[0], 0, 0),
        srv("b.svc.test", &s[1], 0, 0),
    ]);
    let (lb, admin) = start_lb(
        &dns,
        &[
            "--workers",
            "1",
            "--health",
            "none",
            "--algorithm",
            "weighted-round-robin",
        ],
    );
    let got = wait_for_set(&lb, &["a", "b"], 20);
    assert_eq!(
        got["a"], got["b"],
        "weight 0 maps to equal weights: {got:?}"
    );
    let names = lb.log_text();
    assert!(
        names.contains(&format!("a.svc.test:{}=", s[0].addr().port())),
        "backends are named TARGET:PORT: {names}"
    );

    dns.set(&[
        srv("a.svc.test", &s[0], 0, 0),
        srv("b.svc.test", &s[1], 0, 0),
        srv("c.svc.test", &s[2], 0, 0),
    ]);
    wait_for_set(&lb, &["a", "b", "c"], 30);

    dns.set(&[
        srv("b.svc.test", &s[1], 0, 0),
        srv("c.svc.test", &s[2], 0, 0),
    ]);
    wait_for_set(&lb, &["b", "c"], 30);
    wait_for_log(
        &lb,
        &format!("backend a.svc.test:{}: up -> draining", s[0].addr().port()),
    );

    // Weights 3:1. Once the change is published, 40 picks are exactly 30:10.
    dns.set(&[
        srv("b.svc.test", &s[1], 0, 3),
        srv("c.svc.test", &s[2], 0, 1),
    ]);
    wait_for_log(&lb, "weight=3");
    admin.wait_settled();
    let got = spread(lb.addr, 40);
    eprintln!("weights 3:1 over 40 connections: {got:?}");
    let b = got.get("b").copied().unwrap_or(0);
    assert!((28..=32).contains(&b), "expected ~30 of 40 on b: {got:?}");
    assert_eq!(
        got.values().sum::<usize>(),
        b + got.get("c").copied().unwrap_or(0)
    );
}

/// Priority 10 records are ignored while a priority-0 backend is up; when all of class 0
/// is down (health checks), class 10 takes over; when one is back, it takes over again.
#[test]
fn lower_priority_class_only_while_the_first_is_down() {
    let s = name_servers(&["primary", "backup"]);
    let primary_addr = s[0].addr();
    let dns = Dns::start(&[
        srv("primary.svc.test", &s[0], 0, 10),
        srv("backup.svc.test", &s[1], 10, 10),
    ]);
    let (lb, admin) = start_lb(
        &dns,
        &[
            "--workers",
            "1",
            "--health",
            "tcp",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "200ms",
            "--fall",
            "1",
            "--rise",
            "1",
        ],
    );
    wait_for_set(&lb, &["primary"], 20);
    // Three resolutions later, still only the priority-0 backend.
    let (resolved, _) = discovery_rounds(&admin);
    wait_until("3 more resolutions", Duration::from_secs(10), || {
        discovery_rounds(&admin).0 >= resolved + 3.0
    });
    admin.wait_settled();
    assert_eq!(keys(&spread(lb.addr, 20)), ["primary"]);

    s[0].stop();
    wait_for_set(&lb, &["backup"], 20);
    wait_for_log(
        &lb,
        &format!(
            "backend primary.svc.test:{}: up -> down",
            primary_addr.port()
        ),
    );

    let _primary = NameServer::start(primary_addr, "primary").expect("restart primary");
    wait_for_set(&lb, &["primary"], 20);
    wait_for_log(
        &lb,
        &format!(
            "backend backup.svc.test:{}: up -> draining",
            s[1].addr().port()
        ),
    );
}

/// The DNS server stops: connections are still served by the last known set, one warning
/// is logged for the whole outage, and its return is logged.
#[test]
fn resolver_failure_keeps_the_last_set() {
    let s = name_servers(&["a", "b"]);
    let mut dns = Dns::start(&[
        srv("a.svc.test", &s[0], 0, 0),
        srv("b.svc.test", &s[1], 0, 0),
    ]);
    let (lb, admin) = start_lb(&dns, &["--workers", "1", "--health", "none"]);
    wait_for_set(&lb, &["a", "b"], 20);

    dns.stop();
    wait_for_log(&lb, &format!("discovery: resolving SRV {SRV_NAME} failed"));
    // Three more failed rounds later...
    let (_, failed) = discovery_rounds(&admin);
    wait_until("3 more failed resolutions", Duration::from_secs(20), || {
        discovery_rounds(&admin).1 >= failed + 3.0
    });
    let got = spread(lb.addr, 20);
    assert_eq!(keys(&got), ["a", "b"], "the last set serves: {got:?}");
    let log = lb.log_text();
    let warnings = log
        .matches(&format!("discovery: resolving SRV {SRV_NAME} failed"))
        .count();
    assert_eq!(warnings, 1, "one warning per outage:\n{log}");
    assert!(
        log.contains("keeping the last 2 discovered backend(s)"),
        "{log}"
    );

    dns.set(&[srv("a.svc.test", &s[0], 0, 0)]);
    wait_for_log(&lb, "resolves again after");
    wait_for_set(&lb, &["a"], 20);
}

/// Consistent hashing across instances: two instances fed by the same discovery build identical Maglev
/// tables and send each of 256 client addresses to the same backend.
#[test]
fn two_instances_fed_by_the_same_dns_agree_on_256_clients() {
    let s = name_servers(&["web-1", "web-2", "web-3", "web-4"]);
    let records: Vec<Srv> = s
        .iter()
        .enumerate()
        .map(|(i, srv_)| srv(&format!("web-{}.svc.test", i + 1), srv_, 0, 0))
        .collect();
    let dns = Dns::start(&records);
    let flags = [
        "--workers",
        "2",
        "--health",
        "none",
        "--algorithm",
        "maglev",
    ];
    let (lb1, admin1) = start_lb(&dns, &flags);
    let (lb2, admin2) = start_lb(&dns, &flags);
    let all = ["web-1", "web-2", "web-3", "web-4"];
    // Maglev sends one client to one backend: wait for the published set instead.
    for (lb, admin) in [(&lb1, &admin1), (&lb2, &admin2)] {
        wait_for_log(lb, "4 backend(s) in use, 4 of them from DNS");
        admin.wait_settled();
    }
    let h = same_backend_through_both(lb1.addr, lb2.addr);
    eprintln!("maglev, two instances fed by DNS: 256 clients {h:?}, identical");
    assert_eq!(keys(&h), all, "every backend gets clients: {h:?}");
}

/// A service that discovers its backends next to one with static backends, in one process:
/// each reaches only its own, and the discovered backends carry their service's label.
#[test]
fn a_discovering_service_next_to_a_static_one() {
    let s = name_servers(&["d0", "d1", "st"]);
    let dns = Dns::start(&[
        srv("d0.svc.test", &s[0], 0, 0),
        srv("d1.svc.test", &s[1], 0, 0),
    ]);
    let [fixed, found] = free_addrs(2)[..] else {
        unreachable!()
    };
    let text = format!(
        "health = \"none\"\n\
         [[service]]\nname = \"fixed\"\nlisten = \"{fixed}\"\n\
         [[service.backend]]\nname = \"st\"\naddr = \"{}\"\n\
         [[service]]\nname = \"found\"\nlisten = \"{found}\"\n\
         discovery = \"{}\"\ndiscovery_interval = \"300ms\"\n",
        s[2].addr(),
        dns.discovery()
    );
    let path = std::env::temp_dir().join(format!(
        "uringlb-discovery-services-{}.toml",
        std::process::id()
    ));
    write_atomic(&path, &text);
    let (lb, admin) =
        start_services_with_admin(found, &["-c", path.to_str().unwrap(), "--workers", "1"]);
    wait_for_set(&lb, &["d0", "d1"], 20);
    for _ in 0..10 {
        assert_eq!(greet_from(IpAddr::from(Ipv4Addr::LOCALHOST), fixed), "st");
    }
    let m = admin.metrics();
    let found_backends: Vec<String> = m
        .all("uringlb_backend_up")
        .iter()
        .filter(|(l, _)| l.get("service").map(String::as_str) == Some("found"))
        .map(|(l, _)| l["backend"].clone())
        .collect();
    assert_eq!(found_backends.len(), 2, "{found_backends:?}");
    assert!(
        found_backends
            .iter()
            .all(|b| b.starts_with("d0.svc.test:") || b.starts_with("d1.svc.test:")),
        "{found_backends:?}"
    );
    let r = admin.get("/services/fixed/backends");
    assert_eq!(r.json().as_array().expect("array").len(), 1);
}
