//! Real third-party peers for the interoperability tests: NGINX and HAProxy run as children
//! of the test, each with its own config, pid file, logs and temp paths in a temp dir, on
//! free loopback ports, and stopped when dropped. Never a system service.
//!
//! Both come from Debian's packages; `./scripts/install-test-deps.sh` installs them. When
//! one is missing the test fails saying so (a skipped interop test would hide a break).
//!
//! Also: PROXY protocol headers built by hand (independently of the balancer's encoder).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::net::fixed_port;
use super::wait::{poll, wait_for};

// ---- clients ------------------------------------------------------------------------------

/// Waits until the peer closed `s` (EOF or reset), at most `within`; returns how long it
/// took, or `None` if it sent data or was still open.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => Some(start.elapsed()),
        Ok(n) => panic!("expected a close, got {:?}", &buf[..n]),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            Some(start.elapsed())
        }
        Err(_) => None,
    }
}

// ---- PROXY protocol headers, by hand -------------------------------------------------------

/// The v2 signature, spelled out from the spec.
pub const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// `PROXY TCP4|TCP6 src dst sport dport\r\n`.
pub fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v2 PROXY command (TCP over IPv4 or IPv6).
pub fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    h.push(0x21);
    let body: Vec<u8> = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11);
            [&s.octets()[..], &d.octets()].concat()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            h.push(0x21);
            [&s.octets()[..], &d.octets()].concat()
        }
        _ => panic!("mixed families"),
    };
    let len = body.len() + 4;
    h.extend_from_slice(&(len as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// A v2 LOCAL command (a health check of the proxy itself), with `block` as its address
/// block (which the receiver must skip).
pub fn v2_local(family: u8, block: &[u8]) -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    h.push(0x20);
    h.push(family);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(block);
    h
}

/// Splits a v2 header (TCP over IPv4 or IPv6) off the front of `data`: (src, dst, rest).
pub fn parse_v2(data: &[u8]) -> (SocketAddr, SocketAddr, &[u8]) {
    assert!(
        data.len() >= 16 && &data[..12] == V2_SIG,
        "no v2 signature: {:?}",
        &data[..data.len().min(32)]
    );
    assert_eq!(data[12], 0x21, "version 2, command PROXY");
    let len = u16::from_be_bytes([data[14], data[15]]) as usize;
    let b = &data[16..16 + len];
    let (src, dst, ports) = match data[13] {
        0x11 => {
            assert_eq!(len, 12);
            let s = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let d = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            (IpAddr::V4(s), IpAddr::V4(d), &b[8..12])
        }
        0x21 => {
            assert_eq!(len, 36);
            let s: [u8; 16] = b[..16].try_into().unwrap();
            let d: [u8; 16] = b[16..32].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d), &b[32..36])
        }
        f => panic!("unexpected v2 family 0x{f:02x}"),
    };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    (
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
        &data[16 + len..],
    )
}

/// Sends `data` on `s`, half-closes, and waits until the far end closes.
pub fn send_and_finish(mut s: TcpStream, data: &[u8]) {
    s.write_all(data).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

// ---- ports ---------------------------------------------------------------------------------

/// Whether something listens on 127.0.0.1:`port` (from /proc/net/tcp, without connecting:
/// a probe connection would be a client the peer forwards).
pub fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1);
            let state = f.nth(1);
            local == Some(want.as_str()) && state == Some("0A")
        })
}

// ---- peer processes ------------------------------------------------------------------------

/// Finds a program in PATH, /usr/sbin or /sbin, or fails naming the install script.
pub fn find_bin(name: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} is not installed: these tests run a real {name}. \
         Run ./scripts/install-test-deps.sh (apt-get install {package})"
    );
}

/// A peer process in its own directory; stopped (and the directory removed) on drop.
pub struct Peer {
    name: &'static str,
    child: Child,
    pub dir: PathBuf,
    log: PathBuf,
    /// The loopback ports it listens on, in the order the config was given them.
    pub ports: Vec<u16>,
}

impl Peer {
    fn start(name: &'static str, mut cmd: Command, dir: PathBuf, ports: Vec<u16>) -> Peer {
        let log = dir.join(format!("{name}.stderr"));
        let logf = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut peer = Peer {
            name,
            child,
            dir,
            log,
            ports,
        };
        wait_for(
            &format!("{name} to listen on {:?}", peer.ports),
            Duration::from_secs(10),
            || {
                peer.check_alive();
                peer.ports.iter().all(|&p| listening(p)).then_some(())
            },
        );
        peer
    }

    /// Panics, with its logs, if it has exited.
    fn check_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{} exited ({st}): {}", self.name, self.logs());
        }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    /// Its stderr and any log files in its directory, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = format!("--- {} stderr:\n", self.name);
        out += &std::fs::read_to_string(&self.log).unwrap_or_default();
        for f in ["error.log", "access.log"] {
            if let Ok(t) = std::fs::read_to_string(self.dir.join(f)) {
                out += &format!("--- {f}:\n{t}");
            }
        }
        out
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SIGTERM: NGINX's master then stops its workers too (a SIGKILL would orphan them).
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let exited = poll(Duration::from_secs(5), || match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(_)) | Err(_) => Some(()),
        });
        if exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn peer_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("uringlb-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("peer dir");
    dir
}

/// NGINX with one `server` per entry of `servers`, each `listen 127.0.0.1:PORT LISTEN_OPTS;`
/// followed by the entry's directives (e.g. `return 200 "...";`).
pub fn nginx(listen_opts: &str, servers: &[&str]) -> Peer {
    let bin = find_bin("nginx", "nginx");
    let dir = peer_dir("nginx");
    let d = dir.display();
    let ports: Vec<u16> = servers.iter().map(|_| fixed_port()).collect();
    let mut conf = format!(
        "worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         \x20 access_log {d}/access.log;\n\
         \x20 client_body_temp_path {d}/body;\n\
         \x20 proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi;\n\
         \x20 uwsgi_temp_path {d}/uwsgi;\n\
         \x20 scgi_temp_path {d}/scgi;\n\
         \x20 default_type text/plain;\n"
    );
    for (port, body) in ports.iter().zip(servers) {
        conf += &format!("  server {{ listen 127.0.0.1:{port} {listen_opts}; {body} }}\n");
    }
    conf += "}\n";
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(format!("{d}/"))
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-g")
        .arg("daemon off;");
    Peer::start("nginx", cmd, dir, ports)
}

/// HAProxy in TCP mode: one frontend per `(server line options)` entry, each forwarding to
/// `server u TARGET OPTIONS` (e.g. `send-proxy-v2`).
pub fn haproxy(target: SocketAddr, server_opts: &[&str]) -> Peer {
    let bin = find_bin("haproxy", "haproxy");
    let dir = peer_dir("haproxy");
    let ports: Vec<u16> = server_opts.iter().map(|_| fixed_port()).collect();
    let mut conf = format!(
        "global\n\
         \x20 maxconn 256\n\
         \x20 pidfile {}/haproxy.pid\n\
         defaults\n\
         \x20 mode tcp\n\
         \x20 timeout connect 5s\n\
         \x20 timeout client 30s\n\
         \x20 timeout server 30s\n",
        dir.display()
    );
    for (i, (port, opts)) in ports.iter().zip(server_opts).enumerate() {
        conf += &format!(
            "frontend fe{i}\n  bind 127.0.0.1:{port}\n  default_backend be{i}\n\
             backend be{i}\n  server u {target} {opts}\n"
        );
    }
    let conf_path = dir.join("haproxy.cfg");
    std::fs::write(&conf_path, conf).expect("write haproxy.cfg");
    let mut cmd = Command::new(bin);
    cmd.arg("-f").arg(&conf_path).arg("-db");
    Peer::start("haproxy", cmd, dir, ports)
}
