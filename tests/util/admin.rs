//! The admin endpoint (`--admin`) of a running balancer, through the HTTP client.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::http::{http, Resp};
use super::metrics::{parse_openmetrics, Metrics};
use super::net::free_addr;
use super::process::Lb;
use super::wait::wait_until;

/// The admin endpoint of a running balancer.
#[derive(Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Admin {
    pub fn new(addr: SocketAddr) -> Admin {
        Admin { addr, token: None }
    }

    /// A request with the bearer token (if any) and, with a body, the JSON content type.
    pub fn req(&self, method: &str, path: &str, json: Option<&str>) -> Resp {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        if json.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        http(self.addr, method, path, &headers, json.map(str::as_bytes))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, None)
    }

    /// `GET /backends`, by name.
    pub fn backends(&self) -> BTreeMap<String, Value> {
        let r = self.get("/backends");
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
            .as_array()
            .expect("an array")
            .iter()
            .map(|b| (b["name"].as_str().expect("name").to_string(), b.clone()))
            .collect()
    }

    /// The part of `GET /backends` an operator changes, not the counters:
    /// name -> (addr, weight, state).
    pub fn shape(&self) -> BTreeMap<String, (String, u64, String)> {
        self.backends()
            .into_iter()
            .map(|(n, b)| {
                (
                    n,
                    (
                        b["addr"].as_str().unwrap_or_default().to_string(),
                        b["weight"].as_u64().unwrap_or_default(),
                        b["state"].as_str().unwrap_or_default().to_string(),
                    ),
                )
            })
            .collect()
    }

    /// `GET /metrics`, checked by the strict parser.
    pub fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        parse_openmetrics(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body))
    }

    /// (the latest published snapshot version, the version each worker routes with).
    pub fn snapshot_versions(&self) -> (f64, Vec<f64>) {
        let m = self.metrics();
        let published = m.value("uringlb_snapshot_published_version", &[]);
        let workers = m
            .all("uringlb_snapshot_version")
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        (published, workers)
    }

    /// True when every worker routes with the latest published snapshot.
    pub fn settled(&self) -> bool {
        let (published, workers) = self.snapshot_versions();
        !workers.is_empty() && workers.iter().all(|&v| v >= published)
    }

    /// Waits until every worker routes with the latest published snapshot: for changes no
    /// API call answers (discovery, health checks, SIGHUP), after their log line or
    /// counter said the control thread made them.
    pub fn wait_settled(&self) {
        wait_until(
            "every worker to route with the latest snapshot",
            Duration::from_secs(10),
            || self.settled(),
        );
    }
}

/// Starts a balancer with an admin endpoint on a free loopback port.
pub fn start_with_admin(args: &[&str]) -> (Lb, Admin) {
    let admin = free_addr();
    let a = admin.to_string();
    let mut all = vec!["--admin", a.as_str()];
    all.extend_from_slice(args);
    let lb = Lb::start(&all);
    wait_admin(admin);
    (lb, Admin::new(admin))
}

/// Starts a balancer from a file of services (no `--listen`) with an admin endpoint on a
/// free loopback port; `addr` is one of the file's listen addresses.
pub fn start_services_with_admin(addr: SocketAddr, args: &[&str]) -> (Lb, Admin) {
    let admin = free_addr();
    let a = admin.to_string();
    let mut all = vec!["--admin", a.as_str()];
    all.extend_from_slice(args);
    let lb = Lb::start_services(addr, &all);
    wait_admin(admin);
    (lb, Admin::new(admin))
}

/// Waits until the admin endpoint accepts connections.
pub fn wait_admin(addr: SocketAddr) {
    wait_until("the admin endpoint", Duration::from_secs(10), || {
        TcpStream::connect(addr).is_ok()
    });
}
