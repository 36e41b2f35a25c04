//! The status page (`GET /` on the admin endpoint) in a real browser: headless Chromium
//! (Debian's `chromium`, installed by scripts/install-test-deps.sh), driven over the
//! DevTools protocol, loads the page from a running balancer; the test reads the DOM the
//! page's script built from `GET /status` and watches it refresh itself: a backend drained
//! through the API, connections opened, their rate. It saves a screenshot in its temp dir
//! and, with `UPDATE_DOCS=1` in the environment, as docs/status-page.png (the README
//! shows it).

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use util::*;

const TOKEN: &str = "status-page-token";
/// The browser and the balancer share two loaded cores with other tests.
const WAIT: Duration = Duration::from_secs(30);

/// Headless Chromium with one page, spoken to over `--remote-debugging-pipe`: JSON
/// messages ending in a NUL byte, read from the browser's descriptor 4 and written to its
/// descriptor 3.
struct Browser {
    child: Child,
    to: ChildStdin,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    dir: PathBuf,
}

impl Browser {
    fn start(dir: &Path) -> Browser {
        let bin = find_bin("chromium", "chromium");
        let stderr = std::fs::File::create(dir.join("chromium.stderr")).expect("stderr file");
        let mut cmd = Command::new("sh");
        // The shell hands its stdin and stdout to the browser as descriptors 3 and 4 (what
        // --remote-debugging-pipe reads and writes), then execs it.
        cmd.arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg(bin)
            .args([
                "--headless",
                "--remote-debugging-pipe",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
                "--mute-audio",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Chromium refuses to run as root with its sandbox on.
            cmd.arg("--no-sandbox");
        }
        let mut child = cmd
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn chromium");
        let to = child.stdin.take().expect("pipe to chromium");
        let out = child.stdout.take().expect("pipe from chromium");
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            while matches!(r.read_until(0, &mut buf), Ok(n) if n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                buf.clear();
            }
        });
        let mut b = Browser {
            child,
            to,
            from,
            next_id: 0,
            session: String::new(),
            dir: dir.to_path_buf(),
        };
        let target = b.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b.call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1100, "height": 640, "deviceScaleFactor": 1, "mobile": false }),
        );
        b
    }

    /// One DevTools command (on the page once attached); its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        loop {
            let m = self.from.recv_timeout(WAIT).unwrap_or_else(|e| {
                panic!("no answer from chromium to {method} ({e}): {}", self.logs())
            });
            if m["id"] == json!(id) {
                if let Some(err) = m.get("error") {
                    panic!("chromium: {method}: {err}");
                }
                return m["result"].clone();
            }
            // An event or another session's message: not ours.
        }
    }

    /// Loads `url` afresh (by way of a blank page: from one fragment to another alone
    /// would not reload it).
    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": "about:blank" }));
        let r = self.call("Page.navigate", json!({ "url": url }));
        assert!(r.get("errorText").is_none(), "navigate {url}: {r}");
    }

    /// The value of a JavaScript expression in the page, or the exception it threw.
    fn try_eval(&mut self, expr: &str) -> Result<Value, Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    fn eval(&mut self, expr: &str) -> Value {
        self.try_eval(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    /// Waits until `expr` evaluates to something `ok` accepts; that value. An exception
    /// (the page still loading, an element not there yet) is a "not yet".
    fn wait_eval(&mut self, what: &str, expr: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let got = poll(WAIT, || {
            last = self.try_eval(expr).unwrap_or_else(|e| e);
            ok(&last).then(|| last.clone())
        });
        got.unwrap_or_else(|| panic!("timed out waiting for {what}; last: {last}"))
    }

    /// The backend rows the page shows: (service, backend, state).
    fn rows(&mut self) -> Vec<(String, String, String)> {
        let v = self.eval(
            "[...document.querySelectorAll('tr[data-backend]')]\
             .map(r => [r.dataset.service, r.dataset.backend, r.dataset.state])",
        );
        v.as_array()
            .expect("an array")
            .iter()
            .map(|r| {
                let f = |i: usize| r[i].as_str().unwrap_or_default().to_string();
                (f(0), f(1), f(2))
            })
            .collect()
    }

    fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64_decode(r["data"].as_str().expect("screenshot data"))
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromium.stderr")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Browser.close ends its helper processes too; kill only if it does not.
        self.session.clear();
        let mut bytes =
            serde_json::to_vec(&json!({ "id": 0, "method": "Browser.close" })).unwrap_or_default();
        bytes.push(0);
        let _ = self.to.write_all(&bytes);
        let exited = poll(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)).then_some(())
        });
        if exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Standard base64 (what the DevTools protocol sends binary data as).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.trim_end_matches('=').as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("uringlb-status-page-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Two services: `web` with three name backends, `api` with one and one where nothing
/// listens (so the health checks take it down). Token required.
fn start_two_services(
    dir: &Path,
    servers: &[uringlb_bench::NameServer],
) -> (Lb, Admin, SocketAddr) {
    let [web, api] = free_addrs(2)[..] else {
        unreachable!()
    };
    let mut text =
        String::from("health_interval = \"200ms\"\nhealth_timeout = \"1s\"\nrise = 1\nfall = 1\n");
    let service = |name: &str, listen: SocketAddr, backends: &[(&str, SocketAddr)]| {
        let mut s = format!("[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\n");
        for (n, a) in backends {
            s += &format!("[[service.backend]]\nname = \"{n}\"\naddr = \"{a}\"\n");
        }
        s
    };
    text += &service(
        "web",
        web,
        &[
            ("web-1", servers[0].addr()),
            ("web-2", servers[1].addr()),
            ("web-3", servers[2].addr()),
        ],
    );
    text += &service(
        "api",
        api,
        &[("api-1", servers[3].addr()), ("api-2", closed_port())],
    );
    let path = dir.join("uringlb.toml");
    write_atomic(&path, &text);
    let (lb, mut admin) = start_services_with_admin(
        web,
        &[
            "-c",
            path.to_str().expect("path"),
            "--workers",
            "2",
            "--admin-token",
            TOKEN,
        ],
    );
    admin.token = Some(TOKEN.to_string());
    (lb, admin, web)
}

#[test]
fn page_and_status_json_with_a_token() {
    let dir = temp_dir("http");
    let servers = name_servers(&["web-1", "web-2", "web-3", "api-1"]);
    let (_lb, admin, _web) = start_two_services(&dir, &servers);

    // The page itself is static text, served without the token, self-contained.
    let page = Admin::new(admin.addr).get("/");
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
    ] {
        assert!(!page.body.contains(external), "page loads {external}");
    }

    // The data is not.
    let anon = Admin::new(admin.addr).get("/status");
    assert_eq!(anon.status, 401, "{anon:?}");
    let mut wrong = Admin::new(admin.addr);
    wrong.token = Some("nope".into());
    assert_eq!(wrong.get("/status").status, 401);

    let st = admin.get("/status");
    assert_eq!(st.status, 200, "{st:?}");
    let v = st.json();
    assert_eq!(v["totals"]["workers"], 2, "{v}");
    let services: Vec<&str> = v["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(services, ["web", "api"], "{v}");
    // Each service's backends as GET /services/{svc}/backends shows them.
    for svc in ["web", "api"] {
        let listed = admin.get(&format!("/services/{svc}/backends")).json();
        let ours = v["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == svc)
            .unwrap();
        let names = |a: &Value| -> Vec<String> {
            a.as_array()
                .unwrap()
                .iter()
                .map(|b| b["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names(&ours["backends"]), names(&listed), "{v}");
        for key in [
            "addr",
            "weight",
            "state",
            "healthy",
            "backup",
            "active_conns",
        ] {
            assert!(ours["backends"][0].get(key).is_some(), "no {key}: {v}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn page_in_chromium_shows_backends_and_follows_changes() {
    let dir = temp_dir("browser");
    let servers = name_servers(&["web-1", "web-2", "web-3", "api-1"]);
    let (lb, admin, web) = start_two_services(&dir, &servers);
    let base = format!("http://{}/", admin.addr);
    let mut b = Browser::start(&dir);

    // Without a token the page asks for one; once given, it shows the services.
    b.navigate(&base);
    b.wait_eval(
        "the token form",
        "getComputedStyle(document.getElementById('login')).display",
        |v| v == "block",
    );
    assert!(b.rows().is_empty());
    b.eval(&format!(
        "document.getElementById('token').value = '{TOKEN}';\
         document.getElementById('login').requestSubmit(); true"
    ));
    b.wait_eval(
        "rows after the token was typed in",
        "document.querySelectorAll('tr[data-backend]').length",
        |v| v == 5,
    );

    // A wrong token in the address: the page says so.
    b.navigate(&format!("{base}#token=wrong"));
    b.wait_eval(
        "the page to report the refused token",
        "document.body.dataset.error || ''",
        |v| v == "The token was refused.",
    );

    // The token in the fragment (never sent to the server), refreshing every 300 ms.
    b.navigate(&format!("{base}#token={TOKEN}&refresh=0.3"));
    b.wait_eval(
        "every backend, api-2 down (nothing listens there)",
        "[...document.querySelectorAll('tr[data-backend]')]\
         .map(r => r.dataset.backend + '=' + r.dataset.state).join(' ')",
        |v| v == "web-1=up web-2=up web-3=up api-1=up api-2=down",
    );
    assert_eq!(
        b.eval("location.hash"),
        "#refresh=0.3",
        "the token stays out of the address bar"
    );
    let rows = b.rows();
    assert_eq!(
        rows.iter()
            .map(|(s, n, _)| format!("{s}/{n}"))
            .collect::<Vec<_>>(),
        [
            "web/web-1",
            "web/web-2",
            "web/web-3",
            "api/api-1",
            "api/api-2"
        ]
    );
    let html = b.eval("document.documentElement.outerHTML");
    let html = html.as_str().expect("html");
    for name in ["web-1", "web-2", "web-3", "api-1", "api-2", "round-robin"] {
        assert!(html.contains(name), "{name} not in the page");
    }

    // Drained through the API: the open page shows it at its next refresh.
    let refreshes = b.eval("Number(document.body.dataset.refreshes)");
    let r = admin.req(
        "PATCH",
        "/services/web/backends/web-2",
        Some(r#"{"state":"drain"}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    b.wait_eval(
        "web-2 draining on the page",
        "document.querySelector('tr[data-backend=\"web-2\"]').dataset.state",
        |v| v == "draining",
    );
    assert!(
        b.eval("Number(document.body.dataset.refreshes)").as_f64() > refreshes.as_f64(),
        "the page refreshed itself"
    );
    b.wait_eval(
        "the change in the page's log",
        "document.getElementById('event-list').textContent",
        |v| {
            v.as_str()
                .unwrap_or_default()
                .contains("web/web-2: up \u{2192} draining")
        },
    );

    // Connections held open show as active; a stream of new ones as a rate.
    let held: Vec<_> = (0..4).map(|_| greet(web).0).collect();
    b.wait_eval(
        "4 active connections in web's header",
        "document.querySelector('section[data-service=\"web\"] h2 small:last-child').textContent",
        |v| v == "4 active",
    );
    let load = ConnLoop::start(web, 2, Duration::from_millis(20));
    load.wait_more(40);
    b.wait_eval(
        "connection rates of the load on web-1 and web-3",
        "['web-1','web-3'].map(n => [...document.querySelectorAll(\
         `tr[data-backend=\"${n}\"] td`)].map(td => td.textContent))",
        |v| {
            // [name, addr, state, health, weight, active, conns/s, total, ...]
            v.as_array().is_some_and(|rows| {
                rows.iter().all(|r| {
                    let cell = |i: usize| r[i].as_str().unwrap_or_default().replace(',', "");
                    let total: f64 = cell(7).parse().unwrap_or(0.0);
                    let rate: f64 = cell(6).trim_end_matches("/s").parse().unwrap_or(0.0);
                    total >= 10.0 && rate > 0.0
                })
            })
        },
    );
    // Draining: web-2 gets none of the new connections.
    assert_eq!(
        b.eval(
            "document.querySelector('tr[data-backend=\"web-2\"] td[data-col=\"conn-rate\"]')\
             .textContent"
        ),
        "0.00/s"
    );

    let png = b.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let shot = dir.join("status-page.png");
    std::fs::write(&shot, &png).expect("write screenshot");
    eprintln!("status page screenshot: {}", shot.display());
    // The README's copy is rewritten only when asked, so a test run leaves the work tree
    // clean.
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
        std::fs::write(&docs, &png).expect("write docs/status-page.png");
    }

    let attempts = load.finish();
    assert!(attempts.iter().all(|a| a.result.is_ok()), "failed attempts");
    drop(held);
    drop(b);
    drop(lb);
    // The directory stays, with the screenshot; the next run starts it afresh.
    let _ = std::fs::remove_dir_all(dir.join("profile"));
}
