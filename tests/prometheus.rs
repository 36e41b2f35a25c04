//! The monitoring files in configs/ against the real tools and a real balancer:
//! configs/prometheus/alerts.yml checked and unit-tested by `promtool`; a real Prometheus
//! server (Debian's `prometheus`, installed by scripts/install-test-deps.sh) scraping the
//! admin endpoint with its token, evaluating those rules and answering queries, the
//! Grafana dashboard's among them; every metric name the dashboard and the rules use
//! exists in a live `/metrics`.

mod util;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use util::*;

const TOKEN: &str = "prometheus-scrape-token";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("uringlb-prom-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new(find_bin("promtool", "prometheus"))
        .args(args)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = repo("configs/prometheus/alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(ok && out.contains("SUCCESS"), "{out}");
    // Each alert fires on the series it is meant for, and only those.
    let tests = repo("configs/prometheus/alerts_test.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(ok && out.contains("SUCCESS"), "{out}");

    // The check can fail: the same file with one expression broken does.
    let dir = temp_dir("promtool");
    let text = std::fs::read_to_string(&rules).unwrap();
    let broken = text.replacen("expr: max by (instance, job, service)", "expr: max by (", 1);
    assert_ne!(broken, text);
    let bad = dir.join("alerts.yml");
    std::fs::write(&bad, broken).unwrap();
    let (ok, out) = promtool(&["check", "rules", bad.to_str().unwrap()]);
    assert!(!ok, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every `uringlb_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("uringlb_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The sample names of an exposition (`uringlb_connect_duration_seconds_bucket`, ...).
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every panel of the dashboard, those inside rows included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo("configs/grafana/uringlb.json")).expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

/// Each query of the dashboard: (panel title, expression).
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    panels(dash)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("panel {title} has no targets"))
                .iter()
                .map(move |t| {
                    let expr = t["expr"].as_str().expect("expr").to_string();
                    (title.clone(), expr)
                })
        })
        .collect()
}

/// A balancer with a token, two backends (`a` a name server, `b` where nothing listens,
/// so its health checks fail) and one client connection through it.
fn balancer() -> (uringlb_bench::NameServer, Lb, Admin) {
    let a = name_servers(&["a"]).pop().unwrap();
    let b = closed_port();
    let specs = named(&[(a.addr(), "a"), (b, "b")]);
    let mut args: Vec<&str> = specs.iter().map(String::as_str).collect();
    args.extend([
        "--health-interval",
        "200ms",
        "--health-timeout",
        "1s",
        "--rise",
        "1",
        "--fall",
        "1",
        "--workers",
        "2",
        "--admin-token",
        TOKEN,
    ]);
    let (lb, mut admin) = start_with_admin(&args);
    admin.token = Some(TOKEN.to_string());
    wait_until("b down", Duration::from_secs(20), || {
        admin.backends()["b"]["state"] == "down"
    });
    let (_s, name) = greet(lb.addr);
    assert_eq!(name, "a");
    (a, lb, admin)
}

#[test]
fn dashboard_and_rules_use_metrics_the_balancer_exposes() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "uringlb");
    let vars: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .expect("template variables")
        .iter()
        .map(|v| v["name"].as_str().expect("name"))
        .collect();
    for v in ["datasource", "instance", "service", "backend"] {
        assert!(vars.contains(v), "no ${v} variable: {vars:?}");
    }
    let mut ids = BTreeSet::new();
    for p in panels(&dash) {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id: {p}"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "no gridPos: {p}");
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{p}");
        }
    }
    // The per-backend panels follow the $service and $backend selections.
    let queries = dashboard_queries(&dash);
    let per_backend: Vec<_> = queries
        .iter()
        .filter(|(_, e)| e.contains("by (service, backend") || e.contains("le, service, backend"))
        .collect();
    assert!(per_backend.len() >= 6, "{per_backend:?}");
    for (title, e) in per_backend {
        assert!(
            e.contains("service=~\"$service\"") && e.contains("backend=~\"$backend\""),
            "{title}: {e}"
        );
    }

    let (_a, _lb, admin) = balancer();
    let exposed = exposed_names(&admin.get("/metrics").body);
    let known = |n: &String| exposed.contains(n);
    let used: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    assert!(used.len() >= 15, "{used:?}");
    let unknown: Vec<_> = used.iter().filter(|n| !known(n)).collect();
    assert!(
        unknown.is_empty(),
        "dashboard: not in /metrics: {unknown:?}"
    );

    let rules = std::fs::read_to_string(repo("configs/prometheus/alerts.yml")).unwrap();
    let used = metric_names(&rules);
    let unknown: Vec<_> = used.iter().filter(|n| !known(n)).collect();
    assert!(
        unknown.is_empty(),
        "alerts.yml: not in /metrics: {unknown:?}"
    );
}

/// A Prometheus server in its own directory (config, storage, log); stopped on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, admin: SocketAddr) -> Prometheus {
        let addr = free_addr();
        let rules = repo("configs/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: uringlb\n    authorization:\n      credentials: {TOKEN}\n\
             \x20   static_configs:\n      - targets: [\"{admin}\"]\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(find_bin("prometheus", "prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus {
            child,
            addr,
            dir: dir.to_path_buf(),
        };
        wait_until("prometheus to be ready", Duration::from_secs(60), || {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("prometheus exited ({st}): {}", p.log());
            }
            p.get("/-/ready").is_some_and(|(status, _)| status == 200)
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An HTTP/1.0 GET (so the answer is never chunked): (status, body), or None if the
    /// server does not answer yet.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).as_bytes())
            .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        let r = Resp::parse(&raw).ok()?;
        Some((r.status, r.body))
    }

    /// An API call's `data`, failing on an error status.
    fn api(&self, path: &str) -> Value {
        let (status, body) = self
            .get(path)
            .unwrap_or_else(|| panic!("no answer to {path}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(
            (status, &v["status"]),
            (200, &Value::from("success")),
            "{path}: {body}"
        );
        v["data"].clone()
    }

    /// An instant query's result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)));
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let exited = poll(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)).then_some(())
        });
        if exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Percent-encoding of a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The single sample value of a query answering one series.
fn value(series: &[Value]) -> Option<f64> {
    match series {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

#[test]
fn prometheus_scrapes_the_admin_endpoint_and_evaluates_the_rules() {
    let dir = temp_dir("server");
    let (_a, lb, admin) = balancer();
    let prom = Prometheus::start(&dir, admin.addr);

    // The scrape works with the token.
    wait_until(
        "the uringlb target to be up",
        Duration::from_secs(60),
        || {
            let t = prom.api("/api/v1/targets");
            t["activeTargets"]
                .as_array()
                .is_some_and(|a| a.iter().any(|t| t["health"] == "up"))
        },
    );

    // A counter read back through Prometheus equals the balancer's own.
    for _ in 0..4 {
        let (_s, name) = greet(lb.addr);
        assert_eq!(name, "a");
    }
    let want = admin.metrics().value(
        "uringlb_connections_total",
        &[("service", "default"), ("backend", "a")],
    );
    assert_eq!(want, 5.0);
    wait_until(
        "Prometheus to have scraped 5 connections to a",
        Duration::from_secs(60),
        || {
            value(&prom.query("uringlb_connections_total{service=\"default\",backend=\"a\"}"))
                == Some(want)
        },
    );
    assert_eq!(
        value(&prom.query("uringlb_backend_up{backend=\"b\"}")),
        Some(0.0)
    );

    // The rules load and evaluate without error, and the backend whose checks fail is
    // pending for UringlbBackendDown (its `for` is a minute), nothing else.
    wait_until(
        "UringlbBackendDown pending for b",
        Duration::from_secs(60),
        || {
            let alerts = prom.api("/api/v1/alerts");
            let alerts = alerts["alerts"].as_array().cloned().unwrap_or_default();
            alerts.iter().any(|a| {
                a["labels"]["alertname"] == "UringlbBackendDown" && a["labels"]["backend"] == "b"
            })
        },
    );
    let groups = prom.api("/api/v1/rules");
    let rules: Vec<Value> = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(rules.len() >= 5, "{groups}");
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r}");
    }
    let firing: BTreeSet<String> = prom.api("/api/v1/alerts")["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["labels"]["alertname"], a["labels"]["backend"]))
        .collect();
    assert_eq!(
        firing,
        BTreeSet::from(["\"UringlbBackendDown\"/\"b\"".to_string()]),
        "only b's alert"
    );

    // Every query of the dashboard is valid PromQL that Prometheus runs, and the basic
    // ones find the balancer's series (with the variables as "All").
    let dash = dashboard();
    for (title, expr) in dashboard_queries(&dash) {
        let e = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$service", ".*")
            .replace("$backend", ".*");
        let (status, body) = prom
            .get(&format!("/api/v1/query?query={}", encode(&e)))
            .expect("an answer");
        assert_eq!(status, 200, "panel {title}: {e}: {body}");
    }
    let (_, active) = dashboard_queries(&dash)
        .into_iter()
        .find(|(t, _)| t == "Active connections")
        .expect("Active connections panel");
    let active = active
        .replace("$instance", ".*")
        .replace("$service", ".*")
        .replace("$backend", ".*");
    let series = prom.query(&active);
    assert_eq!(series.len(), 2, "a and b: {series:?}");

    drop(prom);
    let _ = std::fs::remove_dir_all(&dir);
}
