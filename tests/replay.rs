//! A backend that closes (or resets) a connection before answering a byte: the client's
//! first bytes are sent again to another backend, so the client never notices. Once the
//! backend has answered anything, nothing is replayed.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use util::*;

/// Reads the request, then closes without a byte of answer (`reset`: with RST).
fn dying_backend(reset: bool, seen: Arc<AtomicUsize>) -> std::net::SocketAddr {
    serve(move |mut s| {
        let mut buf = [0u8; 1024];
        if s.read(&mut buf).unwrap_or(0) > 0 {
            seen.fetch_add(1, Ordering::Relaxed);
        }
        if reset {
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(s);
    })
}

/// Answers every request line with "ok:<line>".
fn answering_backend() -> std::net::SocketAddr {
    serve(|mut s| {
        let line = read_line(&mut s);
        let _ = s.write_all(format!("ok:{line}\n").as_bytes());
    })
}

#[test]
fn request_inside_a_backend_that_closes_unanswered_is_replayed_elsewhere() {
    for reset in [false, true] {
        let seen = Arc::new(AtomicUsize::new(0));
        let dying = dying_backend(reset, seen.clone()).to_string();
        let good = answering_backend().to_string();
        let lb = Lb::start(&[
            "--backend",
            &format!("{dying},name=a-dying"),
            "--backend",
            &format!("{good},name=b-good"),
            "--workers",
            "1",
            "--health",
            "none",
            "--eject-after",
            "0",
            "--retries",
            "2",
        ]);
        for i in 0..20 {
            let mut s = lb.connect();
            s.write_all(format!("req{i}\n").as_bytes()).unwrap();
            assert_eq!(read_line(&mut s), format!("ok:req{i}"), "reset={reset}");
        }
        // Round robin sent half of them to the dying backend first, and it saw them.
        assert!(
            seen.load(Ordering::Relaxed) >= 9,
            "reset={reset}: {}",
            seen.load(Ordering::Relaxed)
        );
    }
}

#[test]
fn nothing_is_replayed_once_the_backend_answered() {
    let partial = serve(|mut s| {
        let _ = read_line(&mut s);
        let _ = s.write_all(b"part");
        // A backend that answers part, holds the connection a moment, then goes away.
        std::thread::sleep(Duration::from_millis(100));
        let _ = s.shutdown(Shutdown::Both);
    })
    .to_string();
    let lb = Lb::start(&["--backend", &partial, "--workers", "1", "--health", "none"]);
    let mut s = lb.connect();
    s.write_all(b"req\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert_eq!(
        got, b"part",
        "the answer as the backend gave it, then its close"
    );
}
