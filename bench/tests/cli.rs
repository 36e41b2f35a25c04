//! The `uringlb-bench` binary as tests use it: a backend process to kill, and a load client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use uringlb_bench::HttpServer;

const BIN: &str = env!("CARGO_BIN_EXE_uringlb-bench");

/// Kills the child even when an assertion fails, so no server outlives the test.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(args: &[&str]) -> (Proc, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (Proc(child), addr)
}

#[test]
fn serve_name_process_announces_port_and_dies_on_kill() {
    let (mut proc, addr) = spawn_server(&["serve-name", "--listen", "127.0.0.1:0", "--name", "p1"]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 3];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"p1\n");
    c.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    c.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"x");
    proc.0.kill().unwrap();
    proc.0.wait().unwrap();
    let mut rest = Vec::new();
    assert!(matches!(c.read_to_end(&mut rest), Ok(0) | Err(_)));
}

#[test]
fn serve_commands_start() {
    for args in [
        &["serve-http", "--name", "h"][..],
        &["serve-echo"][..],
        &["serve-sink", "--never-read"][..],
        &["serve-source", "--bytes", "10"][..],
    ] {
        let (_proc, addr) = spawn_server(args);
        assert!(TcpStream::connect(addr).is_ok(), "{args:?}");
    }
}

#[test]
fn http_load_prints_json() {
    let server = HttpServer::start("127.0.0.1:0", "j").unwrap();
    let out = Command::new(BIN)
        .args(["http", "--target", &server.addr().to_string()])
        .args([
            "--connections",
            "2",
            "--duration",
            "300ms",
            "--json",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["requests"].as_u64().unwrap() > 0);
    assert_eq!(v["per_backend"]["j"], v["requests"]);
    assert_eq!(v["errors"], 0);
}

#[test]
fn echo_load_prints_table_and_fails_without_target() {
    let (_proc, addr) = spawn_server(&["serve-echo"]);
    let out = Command::new(BIN)
        .args(["echo", "--target", &addr.to_string(), "--size", "1KiB"])
        .args(["-c", "2", "-d", "300ms", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("req/s") && text.contains("p99.9"), "{text}");

    drop(_proc);
    let out = Command::new(BIN)
        .args(["echo", "--target", &addr.to_string(), "-d", "200ms", "-q"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "no request completed");
}

#[test]
fn bad_duration_is_rejected() {
    let out = Command::new(BIN)
        .args(["http", "--target", "127.0.0.1:1", "--duration", "5parsecs"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// A duration too long to run (or to represent at all) is a usage error, not a panic, in
/// the parser or later when the run's deadline is computed.
#[test]
fn overlong_duration_is_a_clear_error() {
    for duration in ["99999999999999999999999h", "4000000000000000h"] {
        let out = Command::new(BIN)
            .args(["http", "--target", "127.0.0.1:1", "--duration", duration])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{duration}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "duration \"{duration}\" is too long; at most 8760h"
            )),
            "{duration}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `http --rate` paces the requests: the achieved rate is the offered one, not what the
/// server could take (a closed loop against this server does tens of thousands per second),
/// and the JSON says so.
#[test]
fn http_rate_paces_requests_open_loop() {
    let (_server, addr) = spawn_server(&["serve-http", "--listen", "127.0.0.1:0"]);
    let out = Command::new(BIN)
        .args(["http", "-t", &addr.to_string(), "--rate", "2000", "-c", "8"])
        .args(["-d", "2s", "--json", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rate = v["requests_per_sec"].as_f64().unwrap();
    assert!((1800.0..=2200.0).contains(&rate), "achieved {rate} req/s");
    assert_eq!(v["offered_rate"].as_f64(), Some(2000.0));
    assert_eq!(v["rate_shortfall"].as_bool(), Some(false));
    assert_eq!(v["errors"].as_u64(), Some(0));

    // The wrk-shaped line compare.sh reads.
    let out = Command::new(BIN)
        .args(["http", "-t", &addr.to_string(), "--rate", "1000", "-c", "4"])
        .args(["-d", "1s", "--wrk-json", "--quiet"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let json = text.strip_prefix("WRKJSON ").expect("a WRKJSON line");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let requests = v["requests"].as_u64().unwrap();
    assert!(
        (900..=1100).contains(&requests),
        "{requests} requests in 1 s at 1000/s"
    );
    assert!(v["percentiles"].as_array().unwrap().len() >= 9);
}
