//! Forwarding through the real binary over loopback: every byte exactly once, in order,
//! both directions at once, half-close passed on in both directions.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use util::*;

/// Forwarding modes the data-path tests run in.
const MODES: [&str; 3] = ["copy", "splice", "auto"];

fn lb_for(backend: std::net::SocketAddr, mode: &str, workers: &str) -> Lb {
    let b = backend.to_string();
    Lb::start(&[
        "--backend",
        &b,
        "--workers",
        workers,
        "--forward",
        mode,
        "--health",
        "none",
    ])
}

#[test]
fn concurrent_echo_64_connections_4mib_each_byte_exact() {
    let echo = uringlb_bench::EchoServer::start("127.0.0.1:0").unwrap();
    for mode in MODES {
        let lb = lb_for(echo.addr(), mode, "2");
        let handles: Vec<_> = (0..64u64)
            .map(|i| {
                let addr = lb.addr;
                std::thread::spawn(move || {
                    let data = pattern(i + 1, 4 << 20);
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let mut w = s.try_clone().unwrap();
                    let to_send = data.clone();
                    let writer = std::thread::spawn(move || {
                        for c in to_send.chunks(64 * 1024) {
                            w.write_all(c).unwrap();
                        }
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut got = Vec::with_capacity(data.len());
                    s.read_to_end(&mut got).unwrap();
                    writer.join().unwrap();
                    assert_eq!(got.len(), data.len(), "connection {i}: length");
                    assert!(got == data, "connection {i}: bytes differ");
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a connection failed");
        }
    }
}

/// A backend that reads to EOF, then answers with the byte count and hash it saw.
fn hashing_backend() -> std::net::SocketAddr {
    serve(|mut s| {
        let (n, h) = read_stream(&mut s);
        let _ = s.write_all(format!("{n} {h}\n").as_bytes());
    })
}

#[test]
fn upload_256mib_hash_checked_after_half_close() {
    let backend = hashing_backend();
    for mode in MODES {
        let lb = lb_for(backend, mode, "1");
        let mut s = lb.connect();
        let len = 256 << 20;
        let sent = write_stream(&mut s, 7, len);
        // The client half-closes and still reads the backend's whole answer.
        s.shutdown(Shutdown::Write).unwrap();
        let answer = read_line(&mut s);
        assert_eq!(answer, format!("{len} {sent}"), "mode {mode}");
    }
}

#[test]
fn download_256mib_hash_checked() {
    let len = 256 << 20;
    let backend = serve(move |mut s| {
        let h = write_stream(&mut s, 11, len);
        let _ = s.shutdown(Shutdown::Write);
        // Then the client's answer: the hash it received.
        let line = read_line(&mut s);
        assert_eq!(line, format!("{len} {h}"));
    });
    for mode in MODES {
        let lb = lb_for(backend, mode, "1");
        let mut s = lb.connect();
        let (n, h) = read_stream(&mut s);
        assert_eq!(n, len, "mode {mode}");
        let expected = {
            let mut f = Fnv::new();
            let chunk = pattern(11, 1 << 20);
            for _ in 0..(len >> 20) {
                f.update(&chunk);
            }
            f.0
        };
        assert_eq!(h, expected, "mode {mode}");
        // The backend half-closed; the client can still talk to it.
        s.write_all(format!("{n} {h}\n").as_bytes()).unwrap();
    }
}

#[test]
fn backend_half_close_first_client_keeps_sending() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let backend = serve(move |mut s| {
        s.write_all(b"bye\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = read_stream(&mut s);
        tx.lock().unwrap().send(got).unwrap();
    });
    for mode in MODES {
        let lb = lb_for(backend, mode, "1");
        let mut s = lb.connect();
        let mut greeting = Vec::new();
        s.read_to_end(&mut greeting).unwrap(); // EOF passed on from the backend
        assert_eq!(greeting, b"bye\n");
        let h = write_stream(&mut s, 3, 1 << 20);
        s.shutdown(Shutdown::Write).unwrap();
        let (n, got) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("backend result");
        assert_eq!((n, got), (1 << 20, h), "mode {mode}");
    }
}

#[test]
fn client_reset_resets_backend() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let backend = serve(move |mut s| {
        let mut buf = [0u8; 1024];
        let r = loop {
            match s.read(&mut buf) {
                Ok(0) => break "eof".to_string(),
                Ok(n) => {
                    let _ = tx.lock().unwrap().send(format!("{n} bytes"));
                }
                Err(e) => break format!("{:?}", e.kind()),
            }
        };
        tx.lock().unwrap().send(r).unwrap();
    });
    let lb = lb_for(backend, "copy", "1");
    let s = lb.connect();
    (&s).write_all(b"hello").unwrap();
    // Forwarded: the backend connection is established and carries data.
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(got, "5 bytes");
    // SO_LINGER 0 then close = RST.
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let r = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(r, "ConnectionReset");
}
