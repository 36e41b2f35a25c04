//! The admin endpoint under churn, through the real binary: thousands of add/remove
//! cycles (no spurious 404, backend ids recycled, a recycled id starts from zero).

mod control_util;
mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use uringlb_bench::NameServer;

use control_util::*;

/// A keep-alive HTTP/1.1 connection to the admin endpoint (thousands of requests without
/// thousands of TIME_WAIT sockets).
struct KeepAlive {
    s: TcpStream,
    addr: SocketAddr,
}

impl KeepAlive {
    fn new(addr: SocketAddr) -> KeepAlive {
        let s = TcpStream::connect(addr).expect("connect to admin");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        KeepAlive { s, addr }
    }

    /// One request; (status, JSON body).
    fn req(&mut self, method: &str, path: &str, json: Option<&str>) -> (u16, Value) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(b) = json {
            req += &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            );
        }
        req += "\r\n";
        req += json.unwrap_or_default();
        self.s.write_all(req.as_bytes()).expect("write request");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.s.read_exact(&mut b).expect("read response head");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head:?}"));
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no Content-Length: {head:?}"));
        let mut body = vec![0u8; len];
        self.s.read_exact(&mut body).expect("read body");
        let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, v)
    }
}

#[test]
fn thousands_of_add_and_remove_cycles_neither_404_nor_run_out_of_ids() {
    let a = NameServer::start("127.0.0.1:0", "a").unwrap();
    let t = NameServer::start("127.0.0.1:0", "t").unwrap();
    let backend = format!("{},name=a", a.addr());
    let (lb, admin) =
        start_with_admin(&["--backend", &backend, "--workers", "2", "--health", "none"]);
    let mut api = KeepAlive::new(admin.addr);

    // A backend with history: five connections, then removed. Its id is reused below, and
    // whoever gets it must not start with its counts.
    let add_t = format!(r#"{{"addr": "{}", "name": "t0"}}"#, t.addr());
    assert_eq!(api.req("POST", "/backends", Some(&add_t)).0, 201);
    assert_eq!(
        api.req("PATCH", "/backends/a", Some(r#"{"state": "maint"}"#))
            .0,
        200
    );
    for _ in 0..5 {
        assert_eq!(greet_once(lb.addr).as_deref(), Ok("t"));
    }
    assert_eq!(
        api.req("PATCH", "/backends/a", Some(r#"{"state": "up"}"#))
            .0,
        200
    );
    let (st, t0) = api.req("DELETE", "/backends/t0", None);
    assert_eq!(st, 202, "{t0}");
    assert_eq!(t0["total_conns"], 5, "{t0}");

    // More cycles than there are ids: each name is new.
    const CYCLES: usize = 5000;
    let started = Instant::now();
    for i in 0..CYCLES {
        let name = format!("n{i}");
        let body = format!(r#"{{"addr": "{}", "name": "{name}"}}"#, a.addr());
        let (st, added) = api.req("POST", "/backends", Some(&body));
        assert_eq!(st, 201, "cycle {i}: POST answered {st}: {added}");
        assert_eq!(added["name"], name.as_str());
        assert_eq!(
            (
                &added["total_conns"],
                &added["active_conns"],
                &added["connect_failures"]
            ),
            (&Value::from(0), &Value::from(0), &Value::from(0)),
            "cycle {i}: a new backend starts from zero: {added}"
        );
        let (st, removed) = api.req("DELETE", &format!("/backends/{name}"), None);
        assert_eq!(st, 202, "cycle {i}: DELETE answered {st}: {removed}");
        assert_eq!(removed["name"], name.as_str());
        assert_eq!(removed["state"], "draining", "{removed}");
    }
    let took = started.elapsed();
    println!("{CYCLES} POST/DELETE cycles in {took:?}");
    // The data path followed along: the one configured backend serves.
    assert_eq!(greet_once(lb.addr).as_deref(), Ok("a"));
    wait_until(
        "the removed backends to leave",
        Duration::from_secs(10),
        || admin.backends().keys().eq(["a"]),
    );
}
