//! TLS passthrough routed by server name (SNI): services sharing a listen address, each
//! claiming names; real TLS end to end (NGINX backends with certificates `openssl` makes
//! here, each answering with its own name; clients curl, `openssl s_client` and Python's
//! `ssl`). The balancer never decrypts: a client's handshake completing with the backend
//! that answers its name is the proof the hello was forwarded intact.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

/// A directory of the test's own files (certificates, configs), removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> TestDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("uringlb-sni-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        TestDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate and its key, made by `openssl` (clients here do not verify:
/// routing, not trust, is under test).
fn make_cert(dir: &TestDir) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=uringlb-test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (crt, key)
}

/// NGINX TLS servers, one per name, each answering `GET /` with its name; `extra` adds
/// directives to every server.
fn tls_backends(dir: &TestDir, names: &[&str], extra: &str) -> Peer {
    let (crt, key) = make_cert(dir);
    let servers: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                "ssl_certificate {}; ssl_certificate_key {}; ssl_protocols TLSv1.2 TLSv1.3; \
                 location / {{ return 200 \"{n}\\n\"; }} {extra}",
                crt.display(),
                key.display()
            )
        })
        .collect();
    let refs: Vec<&str> = servers.iter().map(String::as_str).collect();
    nginx("ssl", &refs)
}

/// A `[[service]]` on `listen` taking `sni` names, with one backend.
fn service(name: &str, listen: SocketAddr, sni: &str, extra: &str, backend: SocketAddr) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nsni = {sni}\n{extra}\n\
         backend = [{{ addr = \"{backend}\" }}]\n"
    )
}

fn write_config(dir: &TestDir, text: &str) -> PathBuf {
    let path = dir.path("uringlb.toml");
    write_atomic(&path, text);
    path
}

/// `curl https://NAME:PORT/` resolved to `addr`: the body, or why it failed.
fn curl(addr: SocketAddr, name: &str, extra: &[&str]) -> Result<String, String> {
    let port = addr.port();
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "30", "--resolve"])
        .arg(format!("{name}:{port}:{}", addr.ip()))
        .args(extra)
        .arg(format!("https://{name}:{port}/"))
        .output()
        .map_err(|e| format!("run curl: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `openssl s_client` with this server name (`None`: `-noservername`), one HTTP/1.0
/// request: the body, or why it failed.
fn s_client(addr: SocketAddr, name: Option<&str>, extra: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-quiet", "-connect"])
        .arg(addr.to_string())
        .args(extra);
    match name {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run openssl: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.split("\r\n\r\n").nth(1) {
        Some(body) if out.status.success() => Ok(body.trim().to_string()),
        _ => Err(format!(
            "s_client {}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

fn python_client() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/util/tls_client.py")
}

/// Python's `ssl`: one request, the body (and the TLS version on stderr), or why it failed.
fn python(addr: SocketAddr, args: &[&str]) -> Result<(String, String), String> {
    let out = Command::new("python3")
        .arg(python_client())
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run python3: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(stderr);
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr,
    ))
}

fn rejected(admin: &Admin, reason: &str) -> f64 {
    admin
        .metrics()
        .value("uringlb_rejected_total", &[("reason", reason)])
}

/// Waits until `reason` has been counted `n` times.
fn wait_rejected(admin: &Admin, reason: &str, n: f64) {
    wait_until(
        &format!("uringlb_rejected_total{{reason=\"{reason}\"}} to reach {n}"),
        Duration::from_secs(20),
        || rejected(admin, reason) >= n,
    );
}

#[test]
fn names_route_exact_then_wildcard_then_default_in_any_case_and_tls_version() {
    let dir = TestDir::new("route");
    let ng = tls_backends(&dir, &["exact", "wild", "fallback"], "");
    let addr = free_addr();
    let text = format!(
        "workers = 2\n{}{}{}",
        service("exact", addr, r#"["a.example.com"]"#, "", ng.addr(0)),
        service(
            "wild",
            addr,
            r#"["*.example.org", "b.example.com"]"#,
            "",
            ng.addr(1)
        ),
        service("fallback", addr, r#"["*"]"#, "", ng.addr(2)),
    );
    let path = write_config(&dir, &text);
    let log = TempLog::new("sni");
    let (_lb, admin) = start_services_with_admin(
        addr,
        &["-c", path.to_str().unwrap(), "--access-log", &log.arg()],
    );

    let ok = |r: Result<String, String>| r.unwrap_or_else(|e| panic!("{e}\n{}", ng.logs()));
    let py =
        |r: Result<(String, String), String>| r.unwrap_or_else(|e| panic!("{e}\n{}", ng.logs()));
    assert_eq!(ok(curl(addr, "a.example.com", &[])), "exact");
    assert_eq!(ok(curl(addr, "b.example.com", &[])), "wild");
    assert_eq!(ok(curl(addr, "x.example.org", &[])), "wild");
    // One label only: a deeper name is the default's, as is any other.
    assert_eq!(ok(curl(addr, "x.y.example.org", &[])), "fallback");
    assert_eq!(ok(curl(addr, "example.org", &[])), "fallback");
    assert_eq!(ok(curl(addr, "other.test", &[])), "fallback");
    // The access log names the service and the server name each connection was routed by.
    let lines = wait_json_lines(&log.0, 6);
    // (In any order: each worker has its own queue to the log.)
    let mut routed: Vec<(&str, Option<&str>)> = lines
        .iter()
        .map(|l| (l.service.as_str(), l.sni.as_deref()))
        .collect();
    routed.sort();
    assert_eq!(
        routed,
        [
            ("exact", Some("a.example.com")),
            ("fallback", Some("example.org")),
            ("fallback", Some("other.test")),
            ("fallback", Some("x.y.example.org")),
            ("wild", Some("b.example.com")),
            ("wild", Some("x.example.org")),
        ]
    );
    // Case does not matter.
    assert_eq!(ok(s_client(addr, Some("A.Example.COM"), &[])), "exact");
    let (body, _) = py(python(addr, &["--name", "X.EXAMPLE.ORG"]));
    assert_eq!(body, "wild");
    // No SNI at all: the default.
    assert_eq!(ok(s_client(addr, None, &[])), "fallback");
    let (body, _) = py(python(addr, &[]));
    assert_eq!(body, "fallback");
    // TLS 1.2 and 1.3, each checked to be the version the handshake agreed.
    for (v, curl_flags, openssl_flag) in [
        ("1.2", ["--tlsv1.2", "--tls-max", "1.2"], "-tls1_2"),
        ("1.3", ["--tlsv1.3", "--tls-max", "1.3"], "-tls1_3"),
    ] {
        assert_eq!(ok(curl(addr, "a.example.com", &curl_flags)), "exact");
        assert_eq!(
            ok(s_client(addr, Some("z.example.org"), &[openssl_flag])),
            "wild"
        );
        let (body, version) = py(python(addr, &["--name", "a.example.com", "--tls", v]));
        assert_eq!(
            (body.as_str(), version.as_str()),
            ("exact", &*format!("TLSv{v}"))
        );
    }
    for reason in ["no_route", "bad_tls"] {
        assert_eq!(rejected(&admin, reason), 0.0, "{reason}");
    }

    // GET /services shows each service's names.
    let services = admin.get("/services").json();
    let sni: Vec<(String, serde_json::Value)> = services
        .as_array()
        .expect("array")
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["sni"].clone()))
        .collect();
    assert_eq!(
        sni,
        vec![
            ("exact".to_string(), serde_json::json!(["a.example.com"])),
            (
                "wild".to_string(),
                serde_json::json!(["*.example.org", "b.example.com"])
            ),
            ("fallback".to_string(), serde_json::json!(["*"])),
        ]
    );
}

#[test]
fn a_hello_one_byte_per_segment_and_after_a_proxy_header_routes() {
    let dir = TestDir::new("bytewise");
    let ng = tls_backends(&dir, &["one", "two"], "");
    let addr = free_addr();
    let trusted = "accept_proxy = \"127.0.0.1/32\"";
    let text = format!(
        "workers = 2\n{}{}",
        service("one", addr, r#"["one.example"]"#, trusted, ng.addr(0)),
        service("two", addr, r#"["two.example"]"#, trusted, ng.addr(1)),
    );
    let path = write_config(&dir, &text);
    let (_lb, admin) = start_services_with_admin(addr, &["-c", path.to_str().unwrap()]);
    let ok =
        |r: Result<(String, String), String>| r.unwrap_or_else(|e| panic!("{e}\n{}", ng.logs())).0;
    for name in ["one", "two"] {
        let host = format!("{name}.example");
        // The header first, then the hello, each byte of it in its own segment.
        let args = ["--name", &host, "--proxy-v1", "--bytewise"];
        assert_eq!(ok(python(addr, &args)), name);
        let args = ["--name", &host, "--proxy-v1"];
        assert_eq!(ok(python(addr, &args)), name);
    }
    for reason in ["no_route", "bad_tls", "bad_proxy_header"] {
        assert_eq!(rejected(&admin, reason), 0.0, "{reason}");
    }
}

#[test]
fn unknown_names_garbage_and_slow_hellos_are_closed_and_counted() {
    let dir = TestDir::new("refuse");
    let ng = tls_backends(&dir, &["only"], "");
    let addr = free_addr();
    let text = format!(
        "workers = 2\n{}",
        service(
            "only",
            addr,
            r#"["only.example"]"#,
            "sni_timeout = \"1s\"",
            ng.addr(0)
        ),
    );
    let path = write_config(&dir, &text);
    let log = TempLog::new("sni-refused");
    let (_lb, admin) = start_services_with_admin(
        addr,
        &["-c", path.to_str().unwrap(), "--access-log", &log.arg()],
    );
    assert_eq!(
        s_client(addr, Some("only.example"), &[]).as_deref(),
        Ok("only")
    );

    // A name no service takes, and no name, with no default: closed, no_route.
    assert!(s_client(addr, Some("other.example"), &[]).is_err());
    wait_rejected(&admin, "no_route", 1.0);
    assert!(curl(addr, "nope.example", &[]).is_err());
    wait_rejected(&admin, "no_route", 2.0);
    assert!(s_client(addr, None, &[]).is_err());
    wait_rejected(&admin, "no_route", 3.0);
    // The access log keeps the name each refused hello asked for.
    let lines = wait_json_lines(&log.0, 4);
    let mut refused: Vec<Option<String>> = lines
        .iter()
        .filter(|l| l.result == "rejected")
        .map(|l| l.sni.clone())
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            None,
            Some("nope.example".into()),
            Some("other.example".into())
        ],
        "{lines:?}"
    );

    // Plain HTTP: closed at once, bad_tls.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: only.example\r\n\r\n")
        .expect("write");
    assert!(closed_within(&mut s, Duration::from_secs(10)).is_some());
    wait_rejected(&admin, "bad_tls", 1.0);

    // Half a hello and then nothing: closed once sni_timeout (1s) has passed, bad_tls;
    // bytes trickled meanwhile do not extend it.
    let hello = client_hello_bytes("only.example");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let start = Instant::now();
    s.write_all(&hello[..hello.len() / 2]).expect("write");
    let closed = closed_within(&mut s, Duration::from_secs(20)).expect("closed");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed after {closed:?}, before sni_timeout"
    );
    wait_rejected(&admin, "bad_tls", 2.0);

    // A client that connects and sends nothing is closed at sni_timeout too.
    let mut s = TcpStream::connect(addr).expect("connect");
    assert!(closed_within(&mut s, Duration::from_secs(20)).is_some());
    wait_rejected(&admin, "bad_tls", 3.0);
    assert_eq!(rejected(&admin, "no_route"), 3.0);
    // And the service still serves.
    assert_eq!(curl(addr, "only.example", &[]).as_deref(), Ok("only"));
}

/// The ClientHello Python's `ssl` sends for `name` (captured from a real client on a
/// listener of our own).
fn client_hello_bytes(name: &str) -> Vec<u8> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let mut child = Command::new("python3")
        .arg(python_client())
        .arg(addr.to_string())
        .args(["--name", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let (mut s, _) = l.accept().expect("accept");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = vec![0u8; 16384];
    let mut have = 0;
    // A record header says how long the hello is.
    while have < 5 || have < 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]])) {
        let n = std::io::Read::read(&mut s, &mut buf[have..]).expect("read hello");
        assert!(n > 0, "client closed before its hello");
        have += n;
    }
    let _ = child.kill();
    let _ = child.wait();
    buf.truncate(have);
    buf
}

#[test]
fn a_256_mib_download_over_tls_is_intact_in_every_forward_mode() {
    let dir = TestDir::new("big");
    let file = dir.path("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).expect("create"));
        for i in 0..256u64 {
            f.write_all(&pattern(i, 1 << 20)).expect("write");
        }
    }
    let want = sha256_of_file(&file);
    let files = format!("location /files/ {{ alias {}/; }}", dir.0.display());
    let ng = tls_backends(&dir, &["big", "small"], &files);
    for mode in ["copy", "splice", "auto"] {
        let addr = free_addr();
        let text = format!(
            "workers = 2\nforward = \"{mode}\"\n{}{}",
            service("big", addr, r#"["big.example"]"#, "", ng.addr(0)),
            service("small", addr, r#"["*"]"#, "", ng.addr(1)),
        );
        let path = write_config(&dir, &text);
        let (_lb, admin) = start_services_with_admin(addr, &["-c", path.to_str().unwrap()]);
        let port = addr.port();
        let out = Command::new("bash")
            .args(["-o", "pipefail", "-c"])
            .arg(format!(
                "curl -sSk --max-time 300 --resolve big.example:{port}:127.0.0.1 \
                 https://big.example:{port}/files/big.bin | sha256sum"
            ))
            .output()
            .expect("curl | sha256sum");
        let got = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            got.split_whitespace().next(),
            Some(want.as_str()),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = admin
            .metrics()
            .value("uringlb_bytes_total", &[("direction", "backend_to_client")]);
        assert!(bytes >= (256u64 << 20) as f64, "{mode}: {bytes}");
        let spliced = admin.metrics().sum("uringlb_splice_bytes_total");
        match mode {
            "copy" => assert_eq!(spliced, 0.0),
            _ => assert!(
                spliced >= (128u64 << 20) as f64,
                "{mode}: {spliced} spliced"
            ),
        }
    }
}

fn sha256_of_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_string()
}

#[test]
fn a_reload_moves_a_name_new_connections_follow_open_ones_stay() {
    let dir = TestDir::new("reload");
    let ng = tls_backends(&dir, &["a", "b"], "keepalive_timeout 120s;");
    let addr = free_addr();
    let config = |a_names: &str, b_names: &str| {
        format!(
            "workers = 2\n{}{}",
            service("a", addr, a_names, "", ng.addr(0)),
            service("b", addr, b_names, "", ng.addr(1)),
        )
    };
    let path = write_config(
        &dir,
        &config(r#"["moved.example", "a.example"]"#, r#"["b.example"]"#),
    );
    let (_lb, admin) = start_services_with_admin(addr, &["-c", path.to_str().unwrap()]);
    assert_eq!(curl(addr, "moved.example", &[]).as_deref(), Ok("a"));

    // One connection routed by the name before the reload, kept open across it.
    let mut held = Command::new("python3")
        .arg(python_client())
        .arg(addr.to_string())
        .args(["--name", "moved.example", "--requests", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(held.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("read"), "a");

    write_atomic(
        &path,
        &config(r#"["a.example"]"#, r#"["b.example", "moved.example"]"#),
    );
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.status, 200, "{}", r.body);
    admin.wait_settled();
    for _ in 0..5 {
        assert_eq!(curl(addr, "moved.example", &[]).as_deref(), Ok("b"));
    }
    assert_eq!(curl(addr, "a.example", &[]).as_deref(), Ok("a"));

    // The open connection is untouched: its next request still reaches "a".
    let mut stdin = held.stdin.take().expect("stdin");
    stdin.write_all(b"\n").expect("write");
    assert_eq!(lines.next().expect("a line").expect("read"), "a");
    drop(stdin);
    assert!(held.wait().expect("wait").success());
}

/// The ClientHello every attempt of [`hello_echo_once`] sends.
static KEEP_HELLO: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// One client of a service whose backend echoes: a new connection, the ClientHello for
/// `keep.example`, and the same bytes back to EOF. Any refusal, reset or difference fails.
fn hello_echo_once(addr: SocketAddr) -> Result<String, String> {
    let hello = KEEP_HELLO.get().expect("hello captured");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut s, hello).map_err(|e| format!("write: {e}"))?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut got)
        .map_err(|e| format!("read after {} bytes: {e}", got.len()))?;
    if &got != hello {
        return Err(format!(
            "echo differs ({} of {} bytes)",
            got.len(),
            hello.len()
        ));
    }
    Ok("keep".to_string())
}

/// Services sharing an address share its listening sockets: a reload that removes one of
/// them (or adds it back) closes none that the others' clients may be queued on. Before,
/// each service had sockets of its own in the address's SO_REUSEPORT group, and the kernel
/// queued any client on any of them: removing a service reset the clients of the others
/// waiting in its queues.
#[test]
fn reloads_that_remove_a_service_of_a_shared_address_lose_no_client() {
    let dir = TestDir::new("shared");
    KEEP_HELLO.get_or_init(|| client_hello_bytes("keep.example"));
    let echo = uringlb_bench::EchoServer::start("127.0.0.1:0").expect("echo server");
    let addr = free_addr();
    let config = |with_gone: bool| {
        let mut text = format!(
            "workers = 2\nhealth = \"none\"\n{}",
            service("keep", addr, r#"["keep.example"]"#, "", echo.addr())
        );
        if with_gone {
            text += &service("gone", addr, r#"["gone.example"]"#, "", echo.addr());
        }
        text
    };
    let path = write_config(&dir, &config(true));
    let (_lb, admin) = start_services_with_admin(addr, &["-c", path.to_str().unwrap()]);
    let load = ConnLoop::start_with(addr, 4, Duration::ZERO, hello_echo_once);
    load.wait_more(100);
    let cycles = 20;
    for i in 0..cycles {
        write_atomic(&path, &config(i % 2 == 1));
        let r = admin.req("POST", "/reload", None);
        assert_eq!(r.status, 200, "{}", r.body);
        admin.wait_settled();
        load.wait_more(100);
    }
    let attempts = load.finish();
    let failed = report_failures(&format!("{cycles} reloads under load"), &attempts);
    assert!(
        failed.is_empty(),
        "{} of {} clients failed",
        failed.len(),
        attempts.len()
    );
}

#[test]
fn check_refuses_what_sni_cannot_route() {
    let dir = TestDir::new("check");
    let addr = free_addr();
    let b: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let check = |text: String| {
        let path = write_config(&dir, &text);
        let (status, _out, err) = run_bin(&["--check", "-c", path.to_str().unwrap()]);
        (status.code(), err)
    };
    let refused = |text: String, needle: &str| {
        let (code, err) = check(text);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(needle), "{err} should contain {needle}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    };
    // Fine: names on a shared address, and names on an address of one's own.
    let (code, err) = check(format!(
        "{}{}",
        service("a", addr, r#"["a.example"]"#, "", b),
        service("b", addr, r#"["*.example", "*"]"#, "", b),
    ));
    assert_eq!(code, Some(0), "{err}");

    refused(
        format!(
            "{}{}",
            service("a", addr, r#"["a.example"]"#, "", b),
            service("b", addr, "[]", "", b),
        ),
        &format!("{addr} is the listen address of services 'a' and 'b': services share an address only when each sets `sni`"),
    );
    refused(
        format!(
            "{}{}",
            service("a", addr, r#"["a.example"]"#, "", b),
            service("b", addr, r#"["A.Example"]"#, "", b),
        ),
        &format!("service 'b': {addr}: sni name 'a.example' is given twice"),
    );
    refused(
        format!(
            "{}{}",
            service("a", addr, r#"["*"]"#, "", b),
            service("b", addr, r#"["*"]"#, "", b),
        ),
        "sni name '*' is given twice",
    );
    refused(
        service("a", addr, r#"["a.*.example"]"#, "", b),
        "sni name 'a.*.example' is not a host name",
    );
    refused(
        service("a", addr, r#"["a.example"]"#, "max_conns = 5", b),
        "service 'a': `max_conns` cannot go with `sni`",
    );
    refused(
        format!(
            "{}{}",
            service("a", addr, r#"["a.example"]"#, "", b),
            service("b", addr, r#"["b.example"]"#, "sni_timeout = \"2s\"", b),
        ),
        "service 'b': its `sni_timeout` differs from service 'a'",
    );
    refused(
        service("a", addr, r#"["a.example"]"#, "sni_timeout = \"0s\"", b),
        "sni_timeout",
    );
}
