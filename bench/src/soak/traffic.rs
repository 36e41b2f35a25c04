//! The soak's load: threads of new-connection request/response exchanges and threads of
//! long streaming transfers, every byte checked against the [`pattern`] stream, and every
//! failure classified by what else was happening while it ran (see [`Marks`]).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::rng::Rng;
use crate::pattern;

/// Counters the events bump so that a failure can be told apart from its cause: a
/// transfer that fails while a backend was killed is unavoidable; one that fails while
/// the balancer was held at its connection limit is counted on its own.
#[derive(Debug, Default)]
pub struct Marks {
    /// Odd while a backend is being killed: bumped before it starts closing its listener
    /// and connections and again once all are closed (an exchange can reach the dying
    /// backend in between).
    pub kill_phase: AtomicU64,
    /// Odd while an idle burst holds connections (bumped when it starts and when it ends).
    pub burst_phase: AtomicU64,
}

impl Marks {
    fn snapshot(&self) -> (u64, u64) {
        (
            self.kill_phase.load(Ordering::SeqCst),
            self.burst_phase.load(Ordering::SeqCst),
        )
    }
}

/// What the load did; all counters, shared by the load threads.
#[derive(Debug, Default)]
pub struct Tally {
    /// Connections opened for request/response exchanges and long transfers.
    pub attempted: AtomicU64,
    pub ok: AtomicU64,
    /// Failed with no backend killed and no idle burst during the exchange: a balancer fault.
    pub failed: AtomicU64,
    /// Failed while a backend was killed (its connections are cut: unavoidable).
    pub unavoidable: AtomicU64,
    /// Failed while an idle burst held the balancer at --max-conns.
    pub refused_at_limit: AtomicU64,
    /// Came back with a wrong byte or bytes beyond what was sent: always a fault.
    pub corrupted: AtomicU64,
    /// Bytes received and found equal to what was sent.
    pub bytes_checked: AtomicU64,
    /// Long transfers started and completed (also counted in `attempted` and `ok`).
    pub long_attempted: AtomicU64,
    pub long_ok: AtomicU64,
    /// Slowest successful exchange, in microseconds.
    pub max_latency_us: AtomicU64,
    /// The first few failures, described, for the report.
    pub samples: Mutex<Vec<String>>,
}

/// How many failure descriptions to keep.
const SAMPLES: usize = 20;

impl Tally {
    fn note(&self, what: String) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < SAMPLES {
            s.push(what);
        }
    }

    fn record(
        &self,
        outcome: Result<u64, Failure>,
        marks: &Marks,
        before: (u64, u64),
        t0: Instant,
    ) {
        match outcome {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let us = t0.elapsed().as_micros() as u64;
                self.max_latency_us.fetch_max(us, Ordering::Relaxed);
            }
            Err(Failure::Corrupt(what)) => {
                self.corrupted.fetch_add(1, Ordering::Relaxed);
                self.note(format!("{} corrupted: {what}", utc_now()));
            }
            Err(Failure::Broken(what)) => {
                let after = marks.snapshot();
                let killed = after.0 != before.0 || before.0 % 2 == 1;
                let at_limit = after.1 != before.1 || before.1 % 2 == 1;
                let (counter, class) = if killed {
                    (&self.unavoidable, "unavoidable")
                } else if at_limit {
                    (&self.refused_at_limit, "at limit")
                } else {
                    (&self.failed, "FAILED")
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.note(format!(
                    "{} {class} after {:.3}s: {what}",
                    utc_now(),
                    t0.elapsed().as_secs_f64()
                ));
            }
        }
    }
}

/// The UTC time of day as `HH:MM:SS.mmm`, as uringlb's log prints it, so that a failure
/// can be matched with the balancer's log lines.
pub fn utc_now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 86_400_000)
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Why an exchange did not complete.
#[derive(Debug)]
enum Failure {
    /// Connection refused, reset, timed out or closed early: bytes lost, none wrong.
    Broken(String),
    /// A byte differed from what was sent, or more came back than was sent.
    Corrupt(String),
}

fn broken(ctx: &str, e: std::io::Error) -> Failure {
    Failure::Broken(format!("{ctx}: {e}"))
}

/// Settings of the load threads.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: SocketAddr,
    /// Threads doing new-connection request/response exchanges.
    pub exchange_threads: usize,
    /// Threads doing long transfers, one after another.
    pub long_threads: usize,
    /// Largest request/response message.
    pub max_message: usize,
    /// Bounds of a long transfer's size (each way).
    pub long_min: u64,
    pub long_max: u64,
    /// How long an exchange may stall before it counts as broken.
    pub timeout: Duration,
    pub seed: u64,
}

/// Running load threads; [`Load::stop`] lets each finish what it is doing.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(spec: &LoadSpec, tally: Arc<Tally>, marks: Arc<Marks>) -> std::io::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..spec.exchange_threads + spec.long_threads {
            let long = i >= spec.exchange_threads;
            let (spec, tally, marks, stop) =
                (spec.clone(), tally.clone(), marks.clone(), stop.clone());
            let mut rng = Rng::new(spec.seed, 1000 + i as u64);
            let name = if long { "soak-long" } else { "soak-exchange" };
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let before = marks.snapshot();
                            let t0 = Instant::now();
                            tally.attempted.fetch_add(1, Ordering::Relaxed);
                            let outcome = if long {
                                tally.long_attempted.fetch_add(1, Ordering::Relaxed);
                                let r = long_transfer(&spec, &mut rng, &tally);
                                if r.is_ok() {
                                    tally.long_ok.fetch_add(1, Ordering::Relaxed);
                                }
                                r
                            } else {
                                exchange(&spec, &mut rng, &tally)
                            };
                            tally.record(outcome, &marks, before, t0);
                        }
                    })?,
            );
        }
        Ok(Load { stop, threads })
    }

    /// Asks every thread to stop after its current exchange and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn connect(spec: &LoadSpec) -> Result<TcpStream, Failure> {
    let s =
        TcpStream::connect_timeout(&spec.target, spec.timeout).map_err(|e| broken("connect", e))?;
    s.set_read_timeout(Some(spec.timeout))
        .and_then(|_| s.set_write_timeout(Some(spec.timeout)))
        .and_then(|_| s.set_nodelay(true))
        .map_err(|e| broken("socket options", e))?;
    Ok(s)
}

/// One connection: writes a message (1 byte to `max_message`, mostly small), half-closes
/// or not, reads the echo back and checks it; with a half-close, EOF must follow at once.
fn exchange(spec: &LoadSpec, rng: &mut Rng, tally: &Tally) -> Result<u64, Failure> {
    let size = if rng.coin() {
        rng.range(1, 512) as usize
    } else {
        rng.range(1, spec.max_message as u64) as usize
    };
    let offset = rng.next_u64() >> 16;
    let half_close = rng.coin();
    let msg = pattern::bytes(offset, size);
    let mut s = connect(spec)?;
    s.write_all(&msg).map_err(|e| broken("write", e))?;
    if half_close {
        s.shutdown(Shutdown::Write)
            .map_err(|e| broken("half-close", e))?;
    }
    let mut got = vec![0u8; size];
    let mut n = 0;
    while n < size {
        match s.read(&mut got[n..]) {
            Ok(0) => {
                return Err(Failure::Broken(format!(
                    "EOF after {n} of {size} bytes (half-close {half_close})"
                )))
            }
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(broken(
                    &format!("read after {n} of {size} bytes (half-close {half_close})"),
                    e,
                ))
            }
        }
    }
    if let Some(i) = pattern::mismatch(offset, &got) {
        return Err(Failure::Corrupt(format!(
            "byte {i} of a {size}-byte message differs"
        )));
    }
    tally
        .bytes_checked
        .fetch_add(size as u64, Ordering::Relaxed);
    if half_close {
        let mut extra = [0u8; 64];
        match s.read(&mut extra) {
            Ok(0) => {}
            Ok(k) => {
                return Err(Failure::Corrupt(format!(
                    "{k} bytes beyond the {size} sent"
                )))
            }
            Err(e) => return Err(broken("read to EOF", e)),
        }
    }
    Ok(size as u64)
}

/// One long transfer: streams `long_min..=long_max` bytes while reading the echo back
/// (a second thread writes), checking every byte at its offset, then expects EOF exactly
/// after the last byte.
fn long_transfer(spec: &LoadSpec, rng: &mut Rng, tally: &Tally) -> Result<u64, Failure> {
    let size = rng.range(spec.long_min, spec.long_max);
    let offset = rng.next_u64() >> 16;
    let s = connect(spec)?;
    let mut w = s.try_clone().map_err(|e| broken("clone socket", e))?;
    let mut r = s;
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<(), Failure> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            while sent < size {
                let n = (size - sent).min(buf.len() as u64) as usize;
                pattern::fill(offset + sent, &mut buf[..n]);
                w.write_all(&buf[..n])
                    .map_err(|e| broken(&format!("write at {sent} of {size}"), e))?;
                sent += n as u64;
            }
            w.shutdown(Shutdown::Write)
                .map_err(|e| broken("half-close", e))
        });
        let read = read_checked(&mut r, offset, size, tally);
        // A reader that gave up must not leave the writer blocked on a full socket.
        if read.is_err() {
            let _ = r.shutdown(Shutdown::Both);
        }
        let wrote = writer
            .join()
            .unwrap_or_else(|_| Err(Failure::Broken("writer thread panicked".into())));
        // The reader's verdict names the lost or wrong bytes; a write error follows from it.
        let n = read?;
        wrote?;
        Ok(n)
    })
}

fn read_checked(r: &mut TcpStream, offset: u64, size: u64, tally: &Tally) -> Result<u64, Failure> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) if got == size => return Ok(got),
            Ok(0) => return Err(Failure::Broken(format!("EOF after {got} of {size} bytes"))),
            Ok(n) => {
                if got + n as u64 > size {
                    return Err(Failure::Corrupt(format!(
                        "{} bytes beyond the {size} sent",
                        got + n as u64 - size
                    )));
                }
                if let Some(i) = pattern::mismatch(offset + got, &buf[..n]) {
                    return Err(Failure::Corrupt(format!(
                        "byte {} of a {size}-byte transfer differs",
                        got + i as u64
                    )));
                }
                got += n as u64;
                tally.bytes_checked.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(broken(&format!("read after {got} of {size} bytes"), e)),
        }
    }
}
