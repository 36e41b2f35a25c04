//! `uringlb demo`: embedded backends, the balancer in front, a short load, a report.
//!
//! Everything runs in this one process so the demo needs no setup: three HTTP backends
//! from `uringlb-testbed`, a [`Server`] in front of them, and that crate's load generator.
//! That also means they all compete for the same CPUs, so the numbers show that the balancer
//! works and roughly how it behaves, not what it does on dedicated cores.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use uringlb_testbed::{HttpServer, LoadConfig, Report};

use crate::config::{Algorithm, BackendSpec, Config, HealthCheck, ServiceSettings, Workers};
use crate::control::StartFailed;
use crate::server::Server;

/// Number of embedded backends, named `backend-1` ..= `backend-N`.
const BACKENDS: usize = 3;
/// Balancer worker threads (see the comment where the config is built).
const WORKERS: usize = 1;
/// Concurrent client connections, each with one request in flight.
const CONNECTIONS: usize = 32;
/// Load duration when `URINGLB_DEMO_SECS` is unset.
const DEFAULT_SECS: f64 = 5.0;
/// Longest accepted `URINGLB_DEMO_SECS`, so a typo cannot start an endless run.
const MAX_SECS: f64 = 3600.0;
/// Environment variable overriding the load duration (tests use it to run short).
pub const SECS_ENV: &str = "URINGLB_DEMO_SECS";

/// Runs the demo: prints a progress line a second to stderr and the result table to stdout.
pub fn run() -> anyhow::Result<()> {
    let duration = duration_from_env()?;

    let backends = (1..=BACKENDS)
        .map(|i| {
            let name = format!("backend-{i}");
            HttpServer::start("127.0.0.1:0", &name)
                .with_context(|| format!("cannot start demo backend {name}"))
                .map_err(one_line)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let service = ServiceSettings {
        listen: vec!["127.0.0.1:0".parse()?],
        backends: backends
            .iter()
            .map(|b| BackendSpec {
                addr: b.addr(),
                weight: 1,
                name: b.name().to_string(),
                max_conns: None,
                proxy_protocol: None,
                backup: false,
            })
            .collect(),
        // The backends are in-process and cannot go away, so health checks would only add
        // noise to the numbers.
        health: HealthCheck::None,
        algorithm: Algorithm::RoundRobin,
        ..Default::default()
    };
    let cfg = Config {
        service,
        // The machine this targets has 2 cores, shared by the balancer, three backend
        // threads and the load generator. A second worker mostly steals CPU from them: in
        // trials it gave no more requests/s and ~40% more balancer CPU per request.
        workers: Workers::Count(WORKERS),
        // Pinning is for dedicated cores; here the scheduler must be free to move the
        // worker away from whichever CPU the backends or the load generator are busy on.
        pin: false,
        ..Default::default()
    };
    // StartFailed keeps main's exit status 2 for start-up errors; its message is the
    // StartError's own one-line text (e.g. "io_uring is not available ...").
    let server = Server::start(&cfg).map_err(StartFailed)?;
    let addr = server.local_addrs()[0];

    let summary = format!(
        "{BACKENDS} backends, {}, {WORKERS} worker, {CONNECTIONS} keep-alive connections, {:.1}s",
        cfg.service.algorithm.name(),
        duration.as_secs_f64(),
    );
    // Progress lines follow on stderr; say what they are about first.
    eprint_line(&format!("uringlb demo: balancer on {addr}, {summary}"));

    let cpu_before = balancer_cpu_time();
    let load = LoadConfig {
        connections: CONNECTIONS,
        duration,
        ..LoadConfig::default()
    }
    .with_progress(|p| eprint_line(&p.line()));
    let report = uringlb_testbed::load::http_keepalive_with(addr, &load);
    // Read before stopping: the worker threads' /proc entries go away when they exit.
    let cpu = match (cpu_before, balancer_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };

    server.stop(Duration::from_secs(1));
    server.join();
    for b in &backends {
        b.stop();
    }

    let report = report.context("load generator failed").map_err(one_line)?;
    let mut out = format!("uringlb demo results ({summary})\n");
    write_table(&mut out, &report, cpu);
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .context("cannot write the report to stdout")
        .map_err(one_line)?;
    Ok(())
}

/// The load duration: `URINGLB_DEMO_SECS` (seconds, fractions allowed) or 5 s.
fn duration_from_env() -> anyhow::Result<Duration> {
    let Some(raw) = std::env::var_os(SECS_ENV) else {
        return Ok(Duration::from_secs_f64(DEFAULT_SECS));
    };
    let text = raw.to_string_lossy();
    match text.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= MAX_SECS => Ok(Duration::from_secs_f64(secs)),
        _ => Err(anyhow!(
            "{SECS_ENV} must be a number of seconds in (0, {MAX_SECS}], got '{text}'"
        )),
    }
}

/// Appends the result table. Every row is `label  value`, so it is easy to read and parse.
fn write_table(out: &mut String, r: &Report, cpu: Option<Duration>) {
    let ms = |p: f64| r.latency(p).as_secs_f64() * 1e3;
    let _ = writeln!(out, "  {:<16} {:>12.1}", "requests/s", r.rate());
    let _ = writeln!(out, "  {:<16} {:>12}", "requests", r.requests);
    let _ = writeln!(out, "  {:<16} {:>12}", "errors", r.errors);
    let non_200: u64 = r
        .status
        .iter()
        .filter(|(code, _)| **code != 200)
        .map(|(_, n)| n)
        .sum();
    if non_200 > 0 {
        let _ = writeln!(out, "  {:<16} {:>12}", "non-200", non_200);
    }
    let _ = writeln!(out, "  {:<16} {:>12.3} ms", "latency p50", ms(50.0));
    let _ = writeln!(out, "  {:<16} {:>12.3} ms", "latency p99", ms(99.0));
    let _ = writeln!(out, "  {:<16} {:>12.3} ms", "latency p99.9", ms(99.9));
    for (name, n) in &r.per_backend {
        let share = if r.requests > 0 {
            100.0 * *n as f64 / r.requests as f64
        } else {
            0.0
        };
        let _ = writeln!(out, "  {name:<16} {n:>12}   {share:5.1}%");
    }
    // Uneven shares are expected: a TCP balancer picks a backend per connection, and
    // 32 keep-alive connections do not split evenly over 3 backends.
    let _ = writeln!(
        out,
        "  (round-robin picks a backend per connection, not per request)"
    );
    match cpu {
        Some(cpu) if r.requests > 0 => {
            let per_req_us = cpu.as_secs_f64() * 1e6 / r.requests as f64;
            let core_pct = 100.0 * cpu.as_secs_f64() / r.elapsed.as_secs_f64().max(1e-9);
            let _ = writeln!(out, "  {:<16} {:>12.2} us/req", "balancer cpu", per_req_us);
            let _ = writeln!(
                out,
                "  (the balancer's threads only, user+sys, {core_pct:.0}% of one core; approximate:\n   \
                 loopback TCP work is charged to whichever thread's syscall ran it)"
            );
        }
        _ => {
            let _ = writeln!(out, "  {:<16} {:>12}", "balancer cpu", "n/a");
        }
    }
}

/// CPU time of the balancer's own threads: the `uringlb-w*` workers and any io_uring
/// kernel helpers (`iou-*`; nothing else in this process uses io_uring). Process-wide
/// `getrusage` would also count the in-process backends and load generator. Read from
/// `/proc/self/task/*/schedstat` (nanoseconds on CPU, user and system together); `None`
/// if /proc cannot be read.
fn balancer_cpu_time() -> Option<Duration> {
    let mut total_ns: u64 = 0;
    let mut found = false;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        // Either read fails if the thread exited meanwhile; it is then not ours to count.
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !is_balancer_thread(comm.trim_end()) {
            continue;
        }
        let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) else {
            continue;
        };
        total_ns += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
        found = true;
    }
    found.then(|| Duration::from_nanos(total_ns))
}

fn is_balancer_thread(comm: &str) -> bool {
    comm.starts_with("uringlb-w") || comm.starts_with("iou-")
}

/// Writes a line to stderr, ignoring failure: progress output must not abort the demo.
fn eprint_line(s: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(s.as_bytes());
    if !s.ends_with('\n') {
        let _ = err.write_all(b"\n");
    }
}

/// Flattens a context chain into one line, since `main` prints only `{e}`.
fn one_line(e: anyhow::Error) -> anyhow::Error {
    anyhow!("{e:#}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancer_threads_by_name() {
        assert!(is_balancer_thread("uringlb-w0"));
        assert!(is_balancer_thread("iou-wrk-1234"));
        assert!(!is_balancer_thread("uringlb"));
        assert!(!is_balancer_thread("bench-load-work"));
    }
}
