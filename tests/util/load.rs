//! Load while something changes: client threads opening a new connection per attempt, and
//! long echo transfers checked byte for byte.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::data::{pattern, Fnv};
use super::net::{greet_once, read_line};
use super::wait::wait_until;

/// One new-connection attempt: what it got (the backend's name), or why it failed.
#[derive(Debug)]
pub struct Attempt {
    pub start: Instant,
    pub end: Instant,
    pub result: Result<String, String>,
}

/// Client threads each opening a new connection per attempt until stopped.
pub struct ConnLoop {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Vec<Attempt>>>,
}

impl ConnLoop {
    /// Attempts are [`greet_once`]: a name backend's greeting.
    pub fn start(addr: SocketAddr, threads: usize, pause: Duration) -> ConnLoop {
        ConnLoop::start_with(addr, threads, pause, greet_once)
    }

    /// `attempt` from each of `threads` threads, each pausing `pause` between attempts (a
    /// pace, so that the load leaves room for the rest of the test on two cores).
    pub fn start_with(
        addr: SocketAddr,
        threads: usize,
        pause: Duration,
        attempt: fn(SocketAddr) -> Result<String, String>,
    ) -> ConnLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let result = attempt(addr);
                        out.push(Attempt {
                            start,
                            end: Instant::now(),
                            result,
                        });
                        done.fetch_add(1, Ordering::Relaxed);
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                    out
                })
            })
            .collect();
        ConnLoop {
            stop,
            done,
            threads,
        }
    }

    /// Attempts finished so far.
    pub fn completed(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `n` more attempts than now have finished.
    pub fn wait_more(&self, n: usize) {
        let target = self.completed() + n;
        wait_until(
            &format!("{n} more attempts of the load"),
            Duration::from_secs(30),
            || self.completed() >= target,
        );
    }

    /// Stops the threads; every attempt, in the order they started.
    pub fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Attempt> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect();
        all.sort_by_key(|a| a.start);
        all
    }
}

/// The failed attempts, after printing `what`, how many were served and failed, and the
/// first five failures (the figures a test's output reports).
pub fn report_failures<'a>(what: &str, attempts: &'a [Attempt]) -> Vec<&'a Attempt> {
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.result.is_err()).collect();
    println!(
        "{what}: {} connections served, {} failed",
        attempts.len() - failed.len(),
        failed.len()
    );
    for f in failed.iter().take(5) {
        println!("{what}: failed: {:?}", f.result);
    }
    failed
}

/// Attempts per backend name (`FAILED` for failures).
pub fn per_backend<'a>(attempts: impl IntoIterator<Item = &'a Attempt>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in attempts {
        let k = match &a.result {
            Ok(n) => n.clone(),
            Err(_) => "FAILED".to_string(),
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// A long echo transfer: pattern data written in chunks until stopped, every byte read
/// back and compared.
pub struct LongEcho {
    pub backend: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    writer: JoinHandle<Result<(usize, u64), String>>,
    reader: JoinHandle<Result<(usize, u64), String>>,
}

/// What a finished [`LongEcho`] saw.
#[derive(Debug)]
pub struct EchoResult {
    pub backend: String,
    pub sent: usize,
    pub received: usize,
    pub exact: bool,
}

impl LongEcho {
    /// Connects to a name backend through `addr` and reads its greeting; then writes
    /// `chunk` bytes every `pause`.
    pub fn start(addr: SocketAddr, seed: u64, chunk: usize, pause: Duration) -> LongEcho {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let backend = read_line(&mut s);
        assert!(!backend.is_empty(), "no greeting");
        LongEcho::on(s, backend, seed, chunk, pause)
    }

    /// The same on an open connection to an echoing `backend` (greeting already read).
    /// `pause` paces the writer, so that the transfer spans what the test does meanwhile.
    pub fn on(s: TcpStream, backend: String, seed: u64, chunk: usize, pause: Duration) -> LongEcho {
        let stop = Arc::new(AtomicBool::new(false));
        let sent_count = Arc::new(AtomicUsize::new(0));
        let mut w = s.try_clone().expect("clone");
        let (st, count) = (stop.clone(), sent_count.clone());
        let writer = std::thread::spawn(move || {
            let data = pattern(seed, 1 << 20);
            let mut h = Fnv::new();
            let mut sent = 0usize;
            while !st.load(Ordering::Relaxed) {
                let off = sent % data.len();
                let n = chunk.min(data.len() - off);
                w.write_all(&data[off..off + n])
                    .map_err(|e| format!("write after {sent} bytes: {e}"))?;
                h.update(&data[off..off + n]);
                sent += n;
                count.store(sent, Ordering::Relaxed);
                std::thread::sleep(pause);
            }
            w.shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            Ok((sent, h.0))
        });
        let mut r = s;
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut h = Fnv::new();
            let mut got = 0usize;
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return Ok((got, h.0)),
                    Ok(n) => {
                        h.update(&buf[..n]);
                        got += n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("read after {got} bytes: {e}")),
                }
            }
        });
        LongEcho {
            backend,
            stop,
            sent: sent_count,
            writer,
            reader,
        }
    }

    /// Bytes written so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops writing, half-closes, reads the rest of the echo; compares.
    pub fn finish(self) -> Result<EchoResult, String> {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, sent_hash) = self.writer.join().map_err(|_| "writer panicked")??;
        let (received, got_hash) = self.reader.join().map_err(|_| "reader panicked")??;
        Ok(EchoResult {
            backend: self.backend,
            sent,
            received,
            exact: sent == received && sent_hash == got_hash,
        })
    }
}

/// Echoes at least `len` bytes through the open connection `s` (256 KiB every 20 ms) while
/// `during` runs, then checks every byte came back.
pub fn long_echo_while(s: TcpStream, len: usize, during: impl FnOnce()) {
    let echo = LongEcho::on(s, String::new(), 23, 256 * 1024, Duration::from_millis(20));
    during();
    wait_until(
        &format!("{len} bytes into the long transfer"),
        Duration::from_secs(60),
        || echo.sent() >= len,
    );
    let r = echo
        .finish()
        .unwrap_or_else(|e| panic!("long transfer: {e}"));
    assert!(r.sent >= len, "{r:?}");
    assert!(r.exact, "every byte came back, in order: {r:?}");
}

/// Sends `len` pattern bytes through a new connection, reads the echo back to EOF and
/// closes with a FIN; returns the client's own address.
pub fn echo_exchange(addr: SocketAddr, seed: u64, len: usize) -> SocketAddr {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let me = s.local_addr().unwrap();
    let data = pattern(seed, len);
    let mut r = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        r.read_to_end(&mut got).expect("read echo");
        got
    });
    s.write_all(&data).expect("write");
    s.shutdown(Shutdown::Write).unwrap();
    let got = reader.join().unwrap();
    assert!(got == data, "echo differs ({} of {len} bytes)", got.len());
    me
}
