//! Stopping servers and finishing loads must not leave threads behind. Its own test binary
//! (so its own process) because it counts the process's threads.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use uringlb_testbed::{load, EchoServer, HttpServer};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

#[test]
fn no_threads_leak() {
    let before = threads();
    for _ in 0..20 {
        let echo = EchoServer::start("127.0.0.1:0").unwrap();
        let http = HttpServer::start("127.0.0.1:0", "t").unwrap();
        let _open = TcpStream::connect(echo.addr()).unwrap();
        let mut c = TcpStream::connect(http.addr()).unwrap();
        load::http_keepalive(http.addr(), 2, Duration::from_millis(20)).unwrap();
        drop(echo);
        http.stop();
        let mut buf = [0u8; 1];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    }
    // Joined threads can take a moment to disappear from /proc.
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(threads(), before);
}
