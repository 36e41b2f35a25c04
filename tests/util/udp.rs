//! UDP peers and clients: a real dnsmasq answering one name with an address of its own,
//! a UDP echo backend, and DNS queries built and read by hand (the wire format of one
//! question and one `A` answer is all the tests need).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::net::fixed_port;
use super::peers::find_bin;
use super::wait::poll;

/// The name every test dnsmasq answers.
pub const DNS_NAME: &str = "svc.test";

/// A DNS query for `name` (type A, class IN) with id `id`.
pub fn dns_query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The answer's id and its `A` address (the last four bytes of a one-answer reply
/// without additional records), if it is a NOERROR answer with one record.
pub fn dns_answer(reply: &[u8]) -> Option<(u16, Ipv4Addr)> {
    if reply.len() < 12 + 4 {
        return None;
    }
    let id = u16::from_be_bytes([reply[0], reply[1]]);
    let is_answer = reply[2] & 0x80 != 0 && reply[3] & 0x0f == 0;
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    let extra = u16::from_be_bytes([reply[10], reply[11]]);
    if !is_answer || answers != 1 || extra != 0 {
        return None;
    }
    let n = reply.len();
    Some((
        id,
        Ipv4Addr::new(reply[n - 4], reply[n - 3], reply[n - 2], reply[n - 1]),
    ))
}

/// A client socket on `src` (any port) that sends `query` to `to` and waits (at most
/// `timeout`) for the answer with its id.
pub fn ask(sock: &UdpSocket, to: SocketAddr, id: u16, timeout: Duration) -> Option<Ipv4Addr> {
    sock.set_read_timeout(Some(timeout)).expect("timeout");
    sock.send_to(&dns_query(DNS_NAME, id), to).ok()?;
    let mut buf = [0u8; 512];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        if let Some((got, ip)) = dns_answer(&buf[..n]) {
            if got == id {
                return Some(ip);
            }
        }
    }
}

/// A new client socket bound to `src`, any port.
pub fn client_on(src: IpAddr) -> UdpSocket {
    UdpSocket::bind(SocketAddr::new(src, 0)).expect("client socket")
}

/// A real dnsmasq on loopback, answering [`DNS_NAME`] with `answer`.
pub struct Dnsmasq {
    pub addr: SocketAddr,
    pub answer: Ipv4Addr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts one on `127.0.0.1` (or `::1` with `v6`) and waits until it answers.
    pub fn start(answer: Ipv4Addr, v6: bool) -> Dnsmasq {
        let ip: IpAddr = if v6 {
            "::1".parse().expect("ip")
        } else {
            Ipv4Addr::LOCALHOST.into()
        };
        let addr = SocketAddr::new(ip, fixed_port());
        let dir = std::env::temp_dir().join(format!(
            "uringlb-udp-dns-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = std::fs::File::create(dir.join("dnsmasq.log")).expect("log");
        let child = Command::new(find_bin("dnsmasq", "dnsmasq-base"))
            .arg("--no-daemon")
            .arg(format!("--port={}", addr.port()))
            .arg(format!("--listen-address={ip}"))
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--conf-file=/dev/null")
            .arg(format!("--address=/{DNS_NAME}/{answer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run dnsmasq");
        let mut d = Dnsmasq {
            addr,
            answer,
            dir,
            child: Some(child),
        };
        let probe = client_on(if v6 { ip } else { Ipv4Addr::LOCALHOST.into() });
        let up = poll(Duration::from_secs(10), || {
            if let Some(Ok(Some(st))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "dnsmasq exited ({st}): {}",
                    std::fs::read_to_string(d.dir.join("dnsmasq.log")).unwrap_or_default()
                );
            }
            (ask(&probe, addr, 1, Duration::from_millis(200)) == Some(answer)).then_some(())
        });
        assert!(up.is_some(), "dnsmasq on {addr} did not answer within 10 s");
        d
    }

    /// Stops it (SIGSTOP): its port stays open, queries go unanswered and no ICMP error
    /// comes back, as from a hung server. Killed when dropped.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        }
    }

    /// Kills it: its port is closed from now on (queries get ICMP port unreachable).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A UDP echo backend: every datagram goes back to its sender as it came.
pub struct UdpEcho {
    pub addr: SocketAddr,
    /// Datagrams echoed.
    pub echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start(bind: SocketAddr) -> UdpEcho {
        let sock = UdpSocket::bind(bind).expect("echo bind");
        let addr = sock.local_addr().expect("addr");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 << 20);
        let echoed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (echoed.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if sock.send_to(&buf[..n], from).is_ok() {
                        e.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        UdpEcho {
            addr,
            echoed,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// For the UDP sockets bound to `port` (every worker's, IPv4 and IPv6): the bytes waiting
/// in their receive queues and the datagrams the kernel dropped for want of room, from
/// `/proc/net/udp{,6}`.
pub fn udp_socket_queues(port: u16) -> (u64, u64) {
    let (mut queued, mut drops) = (0, 0);
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port != Some(port) {
                continue;
            }
            queued += f
                .get(4)
                .and_then(|q| q.split(':').nth(1))
                .and_then(|q| u64::from_str_radix(q, 16).ok())
                .unwrap_or(0);
            drops += f.last().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    (queued, drops)
}
