//! Test backends on loopback and the `--backend` flags that name them. The usual ones
//! (`NameServer` greets with its name, `EchoServer`, `HttpServer`) are the bench crate's;
//! here are the ad hoc ones and the glue.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;

use uringlb_bench::NameServer;

/// Runs `handler` on its own thread for every connection to a new loopback listener.
pub fn serve<F>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = l.local_addr().unwrap();
    let handler = std::sync::Arc::new(handler);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let h = handler.clone();
            std::thread::spawn(move || h(s));
        }
    });
    addr
}

/// A backend that reads each connection to EOF and reports everything it received on the
/// channel (then closes). Its listener address and the channel.
pub fn recorder() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = serve(move |mut s| {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let _ = tx.lock().unwrap().send(got);
    });
    (addr, rx)
}

/// A backend `start`ed on a port from [`fixed_port`](super::net::fixed_port): a port no
/// client takes meanwhile, so it can be stopped and started there again ([`restart_on`]).
pub fn on_fixed_port<S>(start: impl Fn(SocketAddr) -> std::io::Result<S>) -> S {
    for _ in 0..200 {
        let addr = SocketAddr::from(([127, 0, 0, 1], super::net::fixed_port()));
        if let Ok(s) = start(addr) {
            return s;
        }
    }
    panic!("no free fixed port");
}

/// Starts a backend on `addr` again, retrying while the port is still busy.
pub fn restart_on<S>(addr: SocketAddr, start: impl Fn(SocketAddr) -> std::io::Result<S>) -> S {
    super::wait::wait_for(
        &format!("{addr} to be free to start a backend again"),
        std::time::Duration::from_secs(10),
        || start(addr).ok(),
    )
}

/// One name backend per name, each on its own loopback port.
pub fn name_servers(names: &[&str]) -> Vec<NameServer> {
    names
        .iter()
        .map(|n| NameServer::start("127.0.0.1:0", n).expect("start name server"))
        .collect()
}

/// `--backend ADDR,name=NAME` pairs.
pub fn named(backends: &[(SocketAddr, &str)]) -> Vec<String> {
    backends
        .iter()
        .flat_map(|(a, n)| ["--backend".to_string(), format!("{a},name={n}")])
        .collect()
}

/// `--backend ADDR,name=NAME` pairs for name backends.
pub fn named_servers(servers: &[&NameServer]) -> Vec<String> {
    let pairs: Vec<(SocketAddr, &str)> = servers.iter().map(|s| (s.addr(), s.name())).collect();
    named(&pairs)
}

/// `--backend ADDR` pairs (named by their address).
pub fn backend_args(addrs: &[SocketAddr]) -> Vec<String> {
    addrs
        .iter()
        .flat_map(|a| ["--backend".to_string(), a.to_string()])
        .collect()
}
