//! A Consul double: a small HTTP/1.1 server on a loopback port that answers
//! `GET /v1/health/service/NAME` as Consul 1.x documents it ("Health - Service" and
//! "Blocking Queries"): a JSON array of `{Node, Service, Checks}`, the `X-Consul-Index`
//! header, `passing` keeping only instances whose checks all pass, and a query with
//! `index=N` blocking until the index moves past N or `wait` passes (capped by the
//! double's `max_wait`, as Consul caps it at 10 minutes). The index can be set backwards
//! (a restored snapshot), an ACL token can be required (403 without it), and the double
//! can go down (every connection closed, nothing listening) and come back on its port.
//!
//! Consul itself cannot be installed from the registries this project uses, hence the
//! double; it keeps connections alive as Consul does, so a client's reuse is exercised.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::net::fixed_port;

/// One registered instance of a service.
#[derive(Clone, Debug)]
pub struct Instance {
    pub node: String,
    pub node_addr: String,
    pub id: String,
    /// `Service.Address`; "" for none (clients use the node's address).
    pub addr: String,
    pub port: u16,
    /// `Service.Weights.Passing`; `None` leaves `Weights` out.
    pub weight: Option<u32>,
    /// Whether its service check passes.
    pub passing: bool,
}

impl Instance {
    /// An instance with id `id` on node `node-ID`, at 127.0.0.1:`port`, passing, no weight.
    pub fn new(id: &str, port: u16) -> Instance {
        Instance {
            node: format!("node-{id}"),
            node_addr: "127.0.0.1".into(),
            id: id.into(),
            addr: "127.0.0.1".into(),
            port,
            weight: None,
            passing: true,
        }
    }

    pub fn weight(mut self, w: u32) -> Instance {
        self.weight = Some(w);
        self
    }

    /// No `Service.Address`: the node's address (`node_addr`) is the instance's.
    pub fn on_node_address(mut self, node_addr: &str) -> Instance {
        self.addr = String::new();
        self.node_addr = node_addr.into();
        self
    }

    pub fn failing(mut self) -> Instance {
        self.passing = false;
        self
    }

    fn entry(&self, service: &str, index: u64) -> Value {
        let mut svc = json!({
            "ID": self.id, "Service": service, "Tags": ["test"], "Address": self.addr,
            "Meta": null, "Port": self.port, "EnableTagOverride": false,
            "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
            "Connect": {}, "CreateIndex": index, "ModifyIndex": index,
        });
        if let Some(w) = self.weight {
            svc["Weights"] = json!({"Passing": w, "Warning": 1});
        }
        let status = if self.passing { "passing" } else { "critical" };
        json!({
            "Node": {
                "ID": format!("00000000-0000-4000-8000-{:012}", index), "Node": self.node,
                "Address": self.node_addr, "Datacenter": "dc1",
                "TaggedAddresses": {"lan": self.node_addr, "wan": self.node_addr},
                "Meta": {"consul-network-segment": ""}, "CreateIndex": 5, "ModifyIndex": index,
            },
            "Service": svc,
            "Checks": [
                {"Node": self.node, "CheckID": "serfHealth", "Name": "Serf Health Status",
                 "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
                 "ServiceID": "", "ServiceName": "", "ServiceTags": []},
                {"Node": self.node, "CheckID": format!("service:{}", self.id),
                 "Name": "Service check", "Status": status, "Notes": "", "Output": "",
                 "ServiceID": self.id, "ServiceName": service, "ServiceTags": ["test"]},
            ],
        })
    }
}

/// One request the double answered (or refused).
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub token: Option<String>,
    pub index: u64,
    pub at: Instant,
}

struct State {
    index: u64,
    services: HashMap<String, Vec<Instance>>,
    token: Option<String>,
    max_wait: Duration,
    seen: Vec<Seen>,
    /// Bumped when the double goes down: connections of an older generation close.
    generation: u64,
    conns: Vec<TcpStream>,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// See the module docs.
pub struct ConsulDouble {
    pub addr: SocketAddr,
    shared: Shared,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl ConsulDouble {
    /// Serves `service` with `instances` at index 10, on a fixed loopback port.
    pub fn start(service: &str, instances: &[Instance]) -> ConsulDouble {
        let addr = SocketAddr::from(([127, 0, 0, 1], fixed_port()));
        let shared: Shared = Arc::new((
            Mutex::new(State {
                index: 10,
                services: HashMap::from([(service.to_string(), instances.to_vec())]),
                token: None,
                max_wait: Duration::from_secs(300),
                seen: Vec::new(),
                generation: 0,
                conns: Vec::new(),
            }),
            Condvar::new(),
        ));
        let mut d = ConsulDouble {
            addr,
            shared,
            stop: Arc::new(AtomicBool::new(false)),
            acceptor: None,
        };
        d.up();
        d
    }

    /// `--discovery` for `service` here.
    pub fn discovery(&self, service: &str) -> String {
        format!("consul:{service}@{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers exactly `instances` for `service` and moves the index forward.
    pub fn set(&self, service: &str, instances: &[Instance]) {
        let mut s = self.lock();
        let next = s.index + 1;
        self.set_locked(&mut s, service, instances, next);
    }

    /// Registers exactly `instances` with the index set to `index` (lower than now: the
    /// index went backwards, as after a snapshot restore).
    pub fn set_at_index(&self, service: &str, instances: &[Instance], index: u64) {
        let mut s = self.lock();
        self.set_locked(&mut s, service, instances, index);
    }

    fn set_locked(&self, s: &mut State, service: &str, instances: &[Instance], index: u64) {
        s.services.insert(service.to_string(), instances.to_vec());
        s.index = index;
        self.shared.1.notify_all();
    }

    pub fn index(&self) -> u64 {
        self.lock().index
    }

    /// Requires `X-Consul-Token: token` from now on (403 otherwise).
    pub fn require_token(&self, token: &str) {
        self.lock().token = Some(token.to_string());
    }

    /// The longest a blocking query is held.
    pub fn set_max_wait(&self, d: Duration) {
        self.lock().max_wait = d;
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Goes down: nothing listens, every open connection is closed.
    pub fn down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let mut s = self.lock();
        s.generation += 1;
        for c in s.conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.shared.1.notify_all();
    }

    /// Listens again on the same port.
    pub fn up(&mut self) {
        let listener = super::wait::wait_for(
            &format!("port {} to be free for the Consul double", self.addr),
            Duration::from_secs(10),
            || TcpListener::bind(self.addr).ok(),
        );
        self.stop = Arc::new(AtomicBool::new(false));
        let (shared, stop) = (self.shared.clone(), self.stop.clone());
        self.acceptor = Some(std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let generation = {
                    let mut s = shared.0.lock().unwrap_or_else(|p| p.into_inner());
                    if let Ok(c) = stream.try_clone() {
                        s.conns.push(c);
                    }
                    s.generation
                };
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared, generation));
            }
        }));
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        self.down();
    }
}

/// One connection: requests until the client closes it or the double goes down.
fn serve(stream: TcpStream, shared: &Shared, generation: u64) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut token = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.trim().eq_ignore_ascii_case("x-consul-token") {
                    token = Some(v.trim().to_string());
                }
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let Some((status, index, body)) = answer(&target, token, shared, generation) else {
            return;
        };
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nVary: Accept-Encoding\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        if let Some(i) = index {
            head += &format!(
                "X-Consul-Index: {i}\r\nX-Consul-Knownleader: true\r\nX-Consul-Lastcontact: 0\r\n"
            );
        }
        head += "\r\n";
        if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
            return;
        }
    }
}

/// Status line, index header and body for one request; `None`: the double went down.
fn answer(
    target: &str,
    token: Option<String>,
    shared: &Shared,
    generation: u64,
) -> Option<(&'static str, Option<u64>, String)> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: HashMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .collect();
    let wanted_index: u64 = params
        .get("index")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let passing = params.contains_key("passing") && params.get("passing") != Some(&"false");
    let (lock, cv) = &**shared;
    let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
    s.seen.push(Seen {
        path: target.to_string(),
        token: token.clone(),
        index: wanted_index,
        at: Instant::now(),
    });
    let Some(service) = path.strip_prefix("/v1/health/service/") else {
        return Some(("404 Not Found", None, "Invalid URL path".into()));
    };
    if s.token.is_some() && s.token != token {
        return Some(("403 Forbidden", None, "ACL not found".into()));
    }
    if wanted_index > 0 {
        let wait = params
            .get("wait")
            .and_then(|w| parse_wait(w))
            .unwrap_or(Duration::from_secs(300))
            .min(s.max_wait);
        let deadline = Instant::now() + wait;
        while s.index <= wanted_index && s.generation == generation {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = cv
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
    if s.generation != generation {
        return None;
    }
    let list: Vec<Value> = s
        .services
        .get(service)
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|i| !passing || i.passing)
        .map(|i| i.entry(service, s.index))
        .collect();
    Some(("200 OK", Some(s.index), Value::Array(list).to_string()))
}

/// Consul's `wait`: a number with a unit (ms, s, m).
fn parse_wait(w: &str) -> Option<Duration> {
    if let Some(n) = w.strip_suffix("ms") {
        return n.parse().ok().map(Duration::from_millis);
    }
    if let Some(n) = w.strip_suffix('s') {
        return n.parse().ok().map(Duration::from_secs);
    }
    if let Some(n) = w.strip_suffix('m') {
        return n.parse::<u64>().ok().map(|m| Duration::from_secs(m * 60));
    }
    None
}
