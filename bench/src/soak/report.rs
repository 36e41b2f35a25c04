//! The soak's report: what was done, what broke and why, the balancer's descriptors and
//! memory before and after, and the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::events::EventCounts;
use super::procfs::{Fds, Mem};

/// Load counters, as plain numbers.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LoadCounts {
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    pub unavoidable: u64,
    pub refused_at_limit: u64,
    pub corrupted: u64,
    pub bytes_checked: u64,
    pub long_attempted: u64,
    pub long_ok: u64,
    pub max_latency_ms: f64,
}

/// What the balancer's `/metrics` said once the load had stopped.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EndMetrics {
    pub accepted_total: u64,
    /// `uringlb_connections_active` per backend: must all be 0.
    pub connections_active: BTreeMap<String, u64>,
    pub rejected: BTreeMap<String, u64>,
    pub reloads_ok: u64,
    pub reloads_error: u64,
    pub workers: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub passed: bool,
    /// Why it did not pass; empty when it did.
    pub problems: Vec<String>,
    pub seed: u64,
    pub duration_secs: f64,
    pub workers: String,
    pub backends: usize,
    pub max_conns: usize,
    pub events: EventCounts,
    pub connections: LoadCounts,
    /// The warm-up before the start figures (no events): must be clean too.
    pub warmup: LoadCounts,
    pub fds_start: Fds,
    pub fds_end: Fds,
    /// Pipes the end may hold beyond the start: the splice pool keeps its pipes.
    pub pipe_slack: usize,
    pub mem_start: Mem,
    pub mem_end: Mem,
    /// (seconds into the run, RssAnon bytes), sampled every 10 s.
    pub rss_anon_over_time: Vec<(u64, u64)>,
    pub metrics: EndMetrics,
    /// How uringlb exited on SIGTERM at the end.
    pub balancer_exit: String,
    /// WARN and ERROR lines in the balancer's log (not failures by themselves).
    pub log_warnings: usize,
    pub log_warning_samples: Vec<String>,
    pub failure_samples: Vec<String>,
    pub log: String,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn table(&self) -> String {
        let c = &self.connections;
        let e = &self.events;
        let m = &self.metrics;
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "{k:<28} {v}");
        };
        row(
            "duration",
            format!(
                "{:.1} s (seed {}, workers {}, {} backends, max-conns {})",
                self.duration_secs, self.seed, self.workers, self.backends, self.max_conns
            ),
        );
        row(
            "events",
            format!(
                "kills {}, reloads {} (SIGHUP {}, POST {}), drains {}, removes {}, bursts {}",
                e.kills,
                e.reloads_sighup + e.reloads_post,
                e.reloads_sighup,
                e.reloads_post,
                e.drains,
                e.removes,
                e.bursts
            ),
        );
        row(
            "  cut by kills",
            format!("{} connections", e.conns_cut_by_kills),
        );
        row(
            "  bursts at the limit",
            format!(
                "{} of {} (peak {} backend connections, {} connect errors)",
                e.bursts_at_limit, e.bursts, e.burst_peak_conns, e.burst_connect_errors
            ),
        );
        row("  event errors", e.errors.len().to_string());
        row("connections attempted", c.attempted.to_string());
        row("  ok", c.ok.to_string());
        row("  failed", c.failed.to_string());
        row("  unavoidable (killed)", c.unavoidable.to_string());
        row("  refused_at_limit", c.refused_at_limit.to_string());
        row("  corrupted", c.corrupted.to_string());
        row(
            "  long transfers",
            format!("{} of {} completed", c.long_ok, c.long_attempted),
        );
        row("  slowest exchange", format!("{:.1} ms", c.max_latency_ms));
        row(
            "bytes checked",
            format!("{} ({})", c.bytes_checked, mib(c.bytes_checked)),
        );
        row(
            "warm-up",
            format!(
                "{} attempted, {} failed, {} corrupted",
                self.warmup.attempted, self.warmup.failed, self.warmup.corrupted
            ),
        );
        row(
            "fds start -> end",
            format!(
                "{} -> {} (sockets {} -> {}, pipes {} -> {} (slack {}), other {} -> {})",
                self.fds_start.total,
                self.fds_end.total,
                self.fds_start.sockets,
                self.fds_end.sockets,
                self.fds_start.pipes,
                self.fds_end.pipes,
                self.pipe_slack,
                self.fds_start.other,
                self.fds_end.other
            ),
        );
        row(
            "RSS start -> end",
            format!(
                "{} -> {} (anon {} -> {})",
                mib(self.mem_start.rss),
                mib(self.mem_end.rss),
                mib(self.mem_start.rss_anon),
                mib(self.mem_end.rss_anon)
            ),
        );
        row(
            "  anon over time (MiB)",
            self.rss_anon_over_time
                .iter()
                .map(|(t, b)| format!("{t}s:{:.1}", *b as f64 / (1024.0 * 1024.0)))
                .collect::<Vec<_>>()
                .join(" "),
        );
        row(
            "metrics",
            format!(
                "accepted {}, rejected {:?}, reloads ok {} error {}",
                m.accepted_total, m.rejected, m.reloads_ok, m.reloads_error
            ),
        );
        row(
            "  connections_active",
            format!("{:?}", m.connections_active),
        );
        row("balancer exit", self.balancer_exit.clone());
        row("log warnings", self.log_warnings.to_string());
        for w in &self.log_warning_samples {
            let _ = writeln!(t, "    {w}");
        }
        if !self.failure_samples.is_empty() {
            let _ = writeln!(t, "failures (first {}):", self.failure_samples.len());
            for f in &self.failure_samples {
                let _ = writeln!(t, "    {f}");
            }
        }
        if !self.passed {
            let _ = writeln!(t, "timeline (UTC):");
            for l in &e.timeline {
                let _ = writeln!(t, "    {l}");
            }
        }
        for err in &e.errors {
            let _ = writeln!(t, "event error: {err}");
        }
        if self.passed {
            let _ = writeln!(t, "PASSED");
        } else {
            let _ = writeln!(t, "FAILED:");
            for p in &self.problems {
                let _ = writeln!(t, "  - {p}");
            }
            let _ = writeln!(t, "balancer log: {}", self.log);
        }
        t
    }

    /// Fills `problems` and `passed` from the figures.
    pub fn judge(&mut self) {
        let mut p = Vec::new();
        let c = &self.connections;
        if c.corrupted > 0 {
            p.push(format!("{} exchanges came back corrupted", c.corrupted));
        }
        if c.failed > 0 {
            p.push(format!(
                "{} exchanges failed with no backend killed and no burst running",
                c.failed
            ));
        }
        if c.ok == 0 || c.bytes_checked == 0 {
            p.push("no exchange completed".into());
        }
        let w = &self.warmup;
        if w.failed + w.unavoidable + w.refused_at_limit + w.corrupted > 0 {
            p.push(format!(
                "the warm-up (no events) had {} failed and {} corrupted exchanges",
                w.failed + w.unavoidable + w.refused_at_limit,
                w.corrupted
            ));
        }
        let (s, e) = (&self.fds_start, &self.fds_end);
        if e.sockets > s.sockets || e.other > s.other || e.pipes > s.pipes + self.pipe_slack {
            p.push(format!(
                "descriptor leak: {s:?} at the start, {e:?} at the end (pipe slack {})",
                self.pipe_slack
            ));
        }
        let open: Vec<_> = self
            .metrics
            .connections_active
            .iter()
            .filter(|(_, n)| **n != 0)
            .collect();
        if !open.is_empty() {
            p.push(format!("connections still active after the load: {open:?}"));
        }
        if !self.events.errors.is_empty() {
            p.push(format!("{} events failed", self.events.errors.len()));
        }
        if self.balancer_exit != "exit status: 0" {
            p.push(format!(
                "uringlb did not exit cleanly on SIGTERM: {}",
                self.balancer_exit
            ));
        }
        self.passed = p.is_empty();
        self.problems = p;
    }
}
