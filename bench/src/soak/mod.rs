//! Fault soak: the real `uringlb` binary under byte-checked load for a bounded time while
//! backends are killed and restarted, the config is reloaded, backends are drained and
//! re-added, and bursts of idle connections hit `--max-conns`; then checks that no byte was
//! lost or corrupted, that nothing failed beyond what a killed backend makes unavoidable,
//! and that no descriptor leaked. `uringlb-bench soak`, `bench/soak.sh`, `tests/soak.rs`.
//!
//! - [`traffic`]: the load and the classification of failures;
//! - [`events`]: the faults and operations;
//! - [`backends`]: echo backends that can be killed and restarted;
//! - [`balancer`], [`admin`], [`procfs`]: the process under test, its admin API, /proc;
//! - [`report`]: the figures and the verdict.

pub mod admin;
pub mod backends;
pub mod balancer;
pub mod events;
pub mod procfs;
pub mod report;
pub mod rng;
pub mod traffic;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use admin::Admin;
use backends::Backends;
use balancer::Balancer;
use events::{EventSpec, Target};
use report::{EndMetrics, LoadCounts, Report};
use traffic::{Load, LoadSpec, Marks, Tally};

pub use report::Report as SoakReport;

/// Everything a soak run can be told.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The `uringlb` binary.
    pub uringlb: PathBuf,
    pub duration: Duration,
    /// Load without events before the start figures are taken.
    pub warmup: Duration,
    pub seed: u64,
    /// `--workers` of the balancer (`auto` or a number).
    pub workers: String,
    pub backends: usize,
    /// `--max-conns` of the balancer; each burst opens this many idle connections.
    pub max_conns: usize,
    pub exchange_threads: usize,
    pub long_threads: usize,
    pub max_message: usize,
    pub long_min: u64,
    pub long_max: u64,
    pub timeout: Duration,
    pub interval_min: Duration,
    pub interval_max: Duration,
    pub downtime_min: Duration,
    pub downtime_max: Duration,
    pub burst_hold: Duration,
    /// A progress line on stderr every this often (`None`: quiet).
    pub progress: Option<Duration>,
}

impl SoakConfig {
    /// The defaults of `uringlb-bench soak` for `uringlb` and `duration`.
    pub fn new(uringlb: PathBuf, duration: Duration) -> SoakConfig {
        SoakConfig {
            uringlb,
            duration,
            warmup: Duration::from_secs(3),
            seed: 1,
            workers: "auto".into(),
            backends: 4,
            max_conns: 1500,
            exchange_threads: 4,
            long_threads: 2,
            max_message: 64 * 1024,
            long_min: 8 << 20,
            long_max: 64 << 20,
            timeout: Duration::from_secs(10),
            interval_min: Duration::from_secs(1),
            interval_max: Duration::from_secs(5),
            downtime_min: Duration::from_millis(500),
            downtime_max: Duration::from_secs(2),
            burst_hold: Duration::from_secs(1),
            progress: Some(Duration::from_secs(10)),
        }
    }
}

/// How often the balancer's memory is sampled during the run (growth without bound would
/// show in the samples, where start and end alone could hide a plateau or a leak).
const MEM_SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Runs the soak. `Err` only when it could not run at all (no binary, no ports); a run
/// that found faults returns a report that did not pass.
pub fn run(cfg: &SoakConfig) -> anyhow::Result<Report> {
    if cfg.backends < 2 {
        bail!("the soak needs at least 2 backends (one is killed at a time)");
    }
    let dir = std::env::temp_dir().join(format!(
        "uringlb-soak-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = dir.join("uringlb.toml");
    let backends = Arc::new(Backends::start(cfg.backends)?);
    let weights = vec![1; cfg.backends];
    events::write_config(
        &config,
        &events::config_text(events::ALGORITHMS[0], &backends, &weights),
    )?;
    let args: Vec<String> = [
        "-c",
        &config.to_string_lossy(),
        "--workers",
        &cfg.workers,
        "--max-conns",
        &cfg.max_conns.to_string(),
        "--forward",
        "auto",
        "--health",
        "tcp",
        "--health-interval",
        "200ms",
        "--grace",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut lb = Balancer::start(&cfg.uringlb, &args, dir.join("uringlb.log"))?;
    let pid = lb.pid();
    wait_all_up(lb.admin, &backends)?;

    let spec = LoadSpec {
        target: lb.listen,
        exchange_threads: cfg.exchange_threads,
        long_threads: cfg.long_threads,
        max_message: cfg.max_message.max(1),
        long_min: cfg.long_min.max(1),
        long_max: cfg.long_max.max(cfg.long_min.max(1)),
        timeout: cfg.timeout,
        seed: cfg.seed,
    };

    // Warm-up: the same load without events, so buffers and pools exist before the start
    // figures are taken.
    let warm = Arc::new(Tally::default());
    let warm_load = Load::start(&spec, warm.clone(), Arc::new(Marks::default()))?;
    std::thread::sleep(cfg.warmup);
    warm_load.stop();
    settle(lb.admin)?;
    let fds_start = procfs::fds_settled(pid, 5, Duration::from_millis(100))
        .context("cannot read the balancer's descriptors")?;
    let mem_start = procfs::mem(pid).context("cannot read the balancer's memory")?;

    let tally = Arc::new(Tally::default());
    let marks = Arc::new(Marks::default());
    let load = Load::start(&spec, tally.clone(), marks.clone())?;
    let stop = Arc::new(AtomicBool::new(false));
    let ev = events::spawn(
        EventSpec {
            interval_min: cfg.interval_min,
            interval_max: cfg.interval_max,
            downtime_min: cfg.downtime_min,
            downtime_max: cfg.downtime_max,
            burst_hold: cfg.burst_hold,
            max_conns: cfg.max_conns,
            seed: cfg.seed,
        },
        Target {
            listen: lb.listen,
            admin: lb.admin,
            pid,
            config: config.clone(),
        },
        backends.clone(),
        marks,
        stop.clone(),
    )?;
    let t0 = Instant::now();
    let mut next_progress = cfg.progress.map(|p| t0 + p);
    let mut died = None;
    let mut mem_samples = Vec::new();
    let mut next_sample = t0;
    while t0.elapsed() < cfg.duration {
        if Instant::now() >= next_sample {
            next_sample += MEM_SAMPLE_EVERY;
            if let Some(m) = procfs::mem(pid) {
                mem_samples.push((t0.elapsed().as_secs(), m.rss_anon));
            }
        }
        std::thread::sleep(Duration::from_millis(200).min(cfg.duration - t0.elapsed()));
        if let Err(e) = lb.check_alive() {
            died = Some(format!("{e:#}"));
            break;
        }
        if let (Some(at), Some(every)) = (next_progress, cfg.progress) {
            if Instant::now() >= at {
                next_progress = Some(at + every);
                eprintln!("{}", progress_line(t0.elapsed(), &tally));
            }
        }
    }
    let elapsed = t0.elapsed();
    // Events first, so the load ends with every backend up and in the table.
    stop.store(true, Ordering::Relaxed);
    let mut counts = ev.join().unwrap_or_default();
    load.stop();

    let mut report = Report {
        seed: cfg.seed,
        duration_secs: elapsed.as_secs_f64(),
        workers: cfg.workers.clone(),
        backends: cfg.backends,
        max_conns: cfg.max_conns,
        connections: counts_of(&tally),
        warmup: counts_of(&warm),
        fds_start,
        mem_start,
        log: lb.log.display().to_string(),
        rss_anon_over_time: mem_samples,
        failure_samples: tally.samples.lock().map(|s| s.clone()).unwrap_or_default(),
        ..Report::default()
    };
    if let Some(d) = died {
        counts
            .errors
            .push(format!("uringlb died during the run: {d}"));
        report.events = counts;
        report.balancer_exit = "died during the run".into();
        report.judge();
        return Ok(report);
    }
    report.events = counts;
    if let Err(e) = settle(lb.admin) {
        report.events.errors.push(format!("{e:#}"));
    }
    report.fds_end = procfs::fds_settled(pid, 5, Duration::from_millis(100)).unwrap_or_default();
    report.mem_end = procfs::mem(pid).unwrap_or_default();
    match end_metrics(lb.admin) {
        Ok(m) => report.metrics = m,
        Err(e) => report.events.errors.push(format!("final metrics: {e:#}")),
    }
    // Two directions per connection, two descriptors per pipe, per worker's pool.
    report.pipe_slack =
        4 * (cfg.exchange_threads + cfg.long_threads) * report.metrics.workers.max(1);
    report.balancer_exit = match lb.stop(Duration::from_secs(10)) {
        Some(st) => st.to_string(),
        None => "did not exit within 10 s of SIGTERM".into(),
    };
    let warnings = lb.warnings();
    report.log_warnings = warnings.len();
    report.log_warning_samples = warnings.into_iter().take(5).collect();
    backends.stop_all();
    report.judge();
    if report.passed {
        // Keep the log of a failed run for whoever looks into it.
        drop(lb);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

fn progress_line(elapsed: Duration, t: &Tally) -> String {
    let c = counts_of(t);
    format!(
        "soak {:>5.0}s: {} attempted, {} ok, {} failed, {} unavoidable, {} at limit, {} corrupted, {:.0} MiB checked",
        elapsed.as_secs_f64(),
        c.attempted,
        c.ok,
        c.failed,
        c.unavoidable,
        c.refused_at_limit,
        c.corrupted,
        c.bytes_checked as f64 / (1024.0 * 1024.0)
    )
}

fn counts_of(t: &Tally) -> LoadCounts {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    LoadCounts {
        attempted: g(&t.attempted),
        ok: g(&t.ok),
        failed: g(&t.failed),
        unavoidable: g(&t.unavoidable),
        refused_at_limit: g(&t.refused_at_limit),
        corrupted: g(&t.corrupted),
        bytes_checked: g(&t.bytes_checked),
        long_attempted: g(&t.long_attempted),
        long_ok: g(&t.long_ok),
        max_latency_ms: g(&t.max_latency_us) as f64 / 1000.0,
    }
}

/// Waits until every backend is in the table, up and healthy.
fn wait_all_up(admin: Admin, backends: &Backends) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = admin.backends()?;
        let up = list
            .iter()
            .filter(|b| b["state"] == "up" && b["healthy"] == true)
            .count();
        if up == backends.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("backends not all up after 15 s: {list:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the balancer reports no connection open to any backend.
fn settle(admin: Admin) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let active = admin.metrics()?.sum("uringlb_connections_active");
        if active == 0.0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{active} connections still active 20 s after the load stopped");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn end_metrics(admin: Admin) -> anyhow::Result<EndMetrics> {
    let m = admin.metrics()?;
    let as_map = |name: &str, key: &str| {
        m.by_label(name, key)
            .into_iter()
            .map(|(k, v)| (k, v as u64))
            .collect()
    };
    Ok(EndMetrics {
        accepted_total: m.sum("uringlb_accepted_total") as u64,
        connections_active: as_map("uringlb_connections_active", "backend"),
        rejected: as_map("uringlb_rejected_total", "reason"),
        reloads_ok: m
            .get("uringlb_config_reloads_total", "result", "ok")
            .unwrap_or(0.0) as u64,
        reloads_error: m
            .get("uringlb_config_reloads_total", "result", "error")
            .unwrap_or(0.0) as u64,
        workers: m.by_label("uringlb_accepted_total", "worker").len(),
    })
}
