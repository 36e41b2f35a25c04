//! Client allow/deny lists (`--allow`, `--deny`, `allow = [...]`, `deny = [...]`) through
//! the real binary: who is served and who is reset at accept, deny winning over allow,
//! IPv6 and IPv4-mapped clients, clients behind a trusted PROXY-protocol peer (checked by
//! the address the header carries, also behind a real HAProxy), a reload changing the
//! lists, and bad networks refused with exit status 2.
//!
//! Every test uses `--health none`, so a backend's accepted-connection count is the number
//! of clients the balancer connected to it.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use uringlb_bench::NameServer;

use util::*;

/// A connection from `src` that the balancer must refuse: not one byte arrives, only an
/// EOF or a reset (at connect or at the first read).
fn assert_refused(src: &str, dst: SocketAddr) {
    let Some(s) = connect_or_reset_from(src, dst) else {
        return;
    };
    assert_reads_nothing(s, src);
}

/// Reads `s` until it ends: it must end at once (EOF or reset), with no data.
fn assert_reads_nothing(mut s: std::net::TcpStream, who: &str) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(n) => panic!(
            "refused client {who} read {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("refused client {who}: no EOF or reset: {e}"),
    }
}

/// The backend one connection from `src` reaches (its greeting); panics on none.
fn served_by(src: &str, dst: SocketAddr) -> String {
    let ip: IpAddr = src.parse().expect("source IP");
    let name = greet_from(ip, dst);
    assert!(!name.is_empty(), "client {src} was not served");
    name
}

fn denied(admin: &Admin) -> f64 {
    admin
        .metrics()
        .value("uringlb_rejected_total", &[("reason", "denied")])
}

/// Waits for the `denied` count to reach `n`, then checks it is exactly `n`.
fn assert_denied(admin: &Admin, n: usize) {
    wait_until(
        "denied clients to be counted",
        Duration::from_secs(10),
        || denied(admin) >= n as f64,
    );
    assert_eq!(denied(admin), n as f64, "denied clients counted");
}

fn start(backend: &NameServer, extra: &[&str]) -> (Lb, Admin) {
    let b = format!("{},name={}", backend.addr(), backend.name());
    let mut args = vec!["--backend", &b, "--health", "none", "--workers", "2"];
    args.extend_from_slice(extra);
    start_with_admin(&args)
}

/// A free port on `ip` (bound then released), for a listener started at once.
fn free_port_on(ip: &str) -> u16 {
    let l = TcpListener::bind((ip.parse::<IpAddr>().expect("ip"), 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

/// Starts the balancer on `listen` with an admin endpoint.
fn start_on(listen: SocketAddr, backend: &NameServer, extra: &[&str]) -> (Lb, Admin) {
    let admin = free_addr();
    let (a, b) = (
        admin.to_string(),
        format!("{},name={}", backend.addr(), backend.name()),
    );
    let mut args = vec![
        "--admin",
        &a,
        "--backend",
        &b,
        "--health",
        "none",
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    let lb = Lb::start_on(listen, &args);
    wait_admin(admin);
    (lb, Admin::new(admin))
}

#[test]
fn an_allow_list_serves_only_its_networks() {
    let n0 = NameServer::start("127.0.0.1:0", "n0").unwrap();
    let (lb, admin) = start(&n0, &["--allow", "127.0.0.0/8"]);
    assert_eq!(served_by("127.0.0.1", lb.addr), "n0");
    assert_eq!(denied(&admin), 0.0);
    drop(lb);

    let n1 = NameServer::start("127.0.0.1:0", "n1").unwrap();
    let (lb, admin) = start(&n1, &["--allow", "10.0.0.0/8,127.0.0.2"]);
    let refused = 5;
    for _ in 0..refused {
        assert_refused("127.0.0.1", lb.addr);
    }
    assert_denied(&admin, refused);
    // A bare address in the list is that one address.
    assert_eq!(served_by("127.0.0.2", lb.addr), "n1");
    assert_eq!(
        n1.connections(),
        1,
        "the backend saw only the allowed client"
    );
    let m = admin.metrics();
    assert_eq!(
        m.value("uringlb_connections_total", &[("backend", "n1")]),
        1.0
    );
    assert_eq!(denied(&admin), refused as f64);
    println!("allow: {refused} clients outside 10.0.0.0/8,127.0.0.2 reset, none reached n1");
}

#[test]
fn deny_wins_over_allow() {
    let n0 = NameServer::start("127.0.0.1:0", "n0").unwrap();
    let (lb, admin) = start(
        &n0,
        &[
            "--allow",
            "127.0.0.0/8",
            "--deny",
            "127.0.0.3/32",
            "--deny",
            "127.0.9.0/24",
        ],
    );
    assert_refused("127.0.0.3", lb.addr);
    assert_refused("127.0.9.200", lb.addr);
    assert_refused("127.0.0.3", lb.addr);
    assert_denied(&admin, 3);
    assert_eq!(served_by("127.0.0.1", lb.addr), "n0");
    assert_eq!(served_by("127.0.0.4", lb.addr), "n0");
    assert_eq!(n0.connections(), 2);
    assert_eq!(denied(&admin), 3.0);

    // A deny list alone: everyone else is served.
    let n1 = NameServer::start("127.0.0.1:0", "n1").unwrap();
    let (lb, admin) = start(&n1, &["--deny", "127.0.0.5"]);
    assert_refused("127.0.0.5", lb.addr);
    assert_denied(&admin, 1);
    assert_eq!(served_by("127.0.0.1", lb.addr), "n1");
    assert_eq!(n1.connections(), 1);
}

#[test]
fn ipv6_clients_and_networks() {
    let n0 = NameServer::start("127.0.0.1:0", "n0").unwrap();
    let listen = SocketAddr::new("::1".parse().unwrap(), free_port_on("::1"));
    let (lb, admin) = start_on(listen, &n0, &["--allow", "::1/128"]);
    assert_eq!(served_by("::1", lb.addr), "n0");
    assert_eq!(denied(&admin), 0.0);
    drop(lb);

    let listen = SocketAddr::new("::1".parse().unwrap(), free_port_on("::1"));
    let (lb, admin) = start_on(listen, &n0, &["--allow", "2001:db8::/32"]);
    assert_refused("::1", lb.addr);
    assert_refused("::1", lb.addr);
    assert_denied(&admin, 2);
    assert_eq!(n0.connections(), 1, "only the first balancer's client");
}

#[test]
fn ipv4_clients_of_a_dual_stack_listener_match_ipv4_networks() {
    let n0 = NameServer::start("127.0.0.1:0", "n0").unwrap();
    let port = free_port_on("::");
    let listen = SocketAddr::new("::".parse().unwrap(), port);
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    let (_lb, admin) = start_on(
        listen,
        &n0,
        &["--allow", "127.0.0.0/8", "--deny", "127.0.0.7"],
    );
    // These clients reach the listener as ::ffff:127.0.0.x.
    assert_eq!(served_by("127.0.0.1", v4), "n0");
    assert_refused("127.0.0.7", v4);
    assert_denied(&admin, 1);
    assert_eq!(n0.connections(), 1);
}

/// Sends a PROXY v1 header saying the client is `client`, then reads what comes back.
fn through_header(dst: SocketAddr, client: &str) -> Option<std::net::TcpStream> {
    let mut s = connect_or_reset_from("127.0.0.1", dst)?;
    let src = SocketAddr::new(client.parse().expect("client"), 40000);
    let dst_in_header = if src.is_ipv4() {
        dst
    } else {
        "[::1]:80".parse().unwrap()
    };
    let _ = s.write_all(&v1(src, dst_in_header));
    Some(s)
}

#[test]
fn behind_a_trusted_proxy_the_address_in_its_header_is_checked() {
    let n0 = NameServer::start("127.0.0.1:0", "n0").unwrap();
    let (lb, admin) = start(
        &n0,
        &[
            "--accept-proxy",
            "127.0.0.1",
            "--allow",
            "10.0.0.0/8,2001:db8::/32",
            "--deny",
            "10.9.0.0/16",
        ],
    );
    // The trusted peer itself (127.0.0.1) is in no allowed network: its clients are.
    for client in ["10.1.2.3", "2001:db8::5"] {
        let mut s = through_header(lb.addr, client).expect("connected");
        assert_eq!(greeting(&mut s), "n0", "client {client}");
    }
    for client in ["10.9.0.1", "192.0.2.1"] {
        if let Some(s) = through_header(lb.addr, client) {
            assert_reads_nothing(s, client);
        }
    }
    // An untrusted peer is checked by its own address, at accept.
    assert_refused("127.0.0.2", lb.addr);
    assert_denied(&admin, 3);
    assert_eq!(n0.connections(), 2);
    let m = admin.metrics();
    assert_eq!(
        m.value("uringlb_rejected_total", &[("reason", "bad_proxy_header")]),
        0.0
    );
}

#[test]
fn behind_haproxy_the_real_client_is_filtered() {
    let n0 = NameServer::start("127.0.0.1:0", "n0").unwrap();
    let (lb, admin) = start(
        &n0,
        &["--accept-proxy", "127.0.0.1", "--allow", "127.0.0.9"],
    );
    let haproxy = haproxy(lb.addr, &["send-proxy-v2"]);
    let front = haproxy.addr(0);
    // HAProxy connects from 127.0.0.1, which the allow list does not name.
    let mut s = connect_from("127.0.0.9", front);
    assert_eq!(
        greeting(&mut s),
        "n0",
        "{}\n{}",
        haproxy.logs(),
        lb.log_text()
    );
    drop(s);
    let s = connect_from("127.0.0.10", front);
    assert_reads_nothing(s, "127.0.0.10 via HAProxy");
    assert_denied(&admin, 1);
    assert_eq!(n0.connections(), 1);
}

fn config_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("uringlb-access-{tag}-{}.toml", std::process::id()))
}

#[test]
fn a_reload_changes_the_lists_for_new_connections() {
    let n0 = NameServer::start("127.0.0.1:0", "n0").unwrap();
    let path = config_path("reload");
    let file = |lists: &str| {
        format!(
            "workers = 2\nhealth = \"none\"\n{lists}\n[[backend]]\naddr = \"{}\"\nname = \"n0\"\n",
            n0.addr()
        )
    };
    write_atomic(&path, &file("allow = [\"10.0.0.0/8\"]"));
    let (lb, admin) = start_with_admin(&["-c", path.to_str().unwrap()]);
    assert_refused("127.0.0.1", lb.addr);
    assert_denied(&admin, 1);

    write_atomic(
        &path,
        &file("allow = [\"10.0.0.0/8\", \"127.0.0.0/8\"]\ndeny = \"127.0.0.2\""),
    );
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["restart_needed"], serde_json::json!([]), "{r:?}");
    assert_eq!(served_by("127.0.0.1", lb.addr), "n0");
    assert_refused("127.0.0.2", lb.addr);
    assert_denied(&admin, 2);

    // Lists removed from the file: everyone is served again (SIGHUP this time).
    write_atomic(&path, &file(""));
    lb.signal(libc::SIGHUP);
    wait_until("the SIGHUP reload", Duration::from_secs(10), || {
        admin
            .metrics()
            .value("uringlb_config_reloads_total", &[("result", "ok")])
            >= 2.0
    });
    admin.wait_settled();
    assert_eq!(served_by("127.0.0.2", lb.addr), "n0");
    assert_eq!(denied(&admin), 2.0);
    assert_eq!(n0.connections(), 2);
    let _ = std::fs::remove_file(&path);
}

/// Runs the binary; asserts exit status 2 and one line on stderr, returns it.
fn fails(args: &[&str]) -> String {
    let (status, _, stderr) = run_bin(args);
    assert_eq!(status.code(), Some(2), "uringlb {args:?}; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "uringlb {args:?}: want one line: {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_string()
}

#[test]
fn bad_networks_exit_2_naming_the_flag_or_the_file_position() {
    for (flag, value, bad) in [
        ("--allow", "10.0.0.0/33", "10.0.0.0/33"),
        ("--deny", "10.0.0.0/8,nope", "nope"),
        ("--allow", "10.0.0.0/8,", "''"),
    ] {
        let line = fails(&["--check", "--backend", "127.0.0.1:9", flag, value]);
        assert!(
            line.contains(flag) && line.contains(bad),
            "{flag} {value}: {line}"
        );
    }

    let path = config_path("bad");
    for (key, text, col) in [
        ("deny", "deny = [\"10.0.0.0/8\", \"300.1.1.1\"]", "1:8"),
        ("allow", "allow = \"::1/129\"", "1:9"),
    ] {
        std::fs::write(
            &path,
            format!("{text}\n[[backend]]\naddr = \"127.0.0.1:9\"\n"),
        )
        .unwrap();
        let line = fails(&["--check", "-c", path.to_str().unwrap()]);
        let at = format!("{}:{col}", path.display());
        assert!(
            line.contains(&at) && line.contains(&format!("`{key}`")),
            "{text}: {line}"
        );
    }
    let _ = std::fs::remove_file(&path);
}
