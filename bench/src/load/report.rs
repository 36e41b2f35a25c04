//! The result of a load run and its table and JSON forms.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::LoadKind;

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Protocol of the run.
    pub kind: LoadKind,
    /// Address loaded.
    pub target: SocketAddr,
    /// Concurrent connections used.
    pub connections: usize,
    /// Completed requests (HTTP responses or echo round trips).
    pub requests: u64,
    /// Failed attempts: refused or failed connects, resets, timeouts, bad responses.
    pub errors: u64,
    /// Payload bytes received (response bodies, echoed bytes).
    pub bytes: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency of completed requests, in microseconds.
    pub histogram: Histogram<u64>,
    /// Completed HTTP requests by response body, i.e. by backend name.
    pub per_backend: BTreeMap<String, u64>,
    /// Completed HTTP requests by status code.
    pub status: BTreeMap<u16, u64>,
}

/// Serializable digest of a [`Report`] (what `--json` prints).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub kind: LoadKind,
    pub target: String,
    pub connections: usize,
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub elapsed_secs: f64,
    pub requests_per_sec: f64,
    pub latency_us: LatencySummary,
    pub per_backend: BTreeMap<String, u64>,
    pub status: BTreeMap<u16, u64>,
}

/// Latency percentiles in microseconds (all 0 when nothing completed).
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Report {
    /// Completed requests per second of wall time.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// Latency at `percentile` (0-100), e.g. `latency(99.9)`.
    pub fn latency(&self, percentile: f64) -> Duration {
        if self.histogram.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.histogram.value_at_percentile(percentile))
    }

    /// Plain numbers for JSON output or for comparing runs.
    pub fn summary(&self) -> Summary {
        let h = &self.histogram;
        let empty = h.is_empty();
        let at = |p: f64| if empty { 0 } else { h.value_at_percentile(p) };
        Summary {
            kind: self.kind,
            target: self.target.to_string(),
            connections: self.connections,
            requests: self.requests,
            errors: self.errors,
            bytes: self.bytes,
            elapsed_secs: self.elapsed.as_secs_f64(),
            requests_per_sec: self.rate(),
            latency_us: LatencySummary {
                min: if empty { 0 } else { h.min() },
                mean: if empty { 0.0 } else { h.mean() },
                p50: at(50.0),
                p90: at(90.0),
                p99: at(99.0),
                p999: at(99.9),
                max: if empty { 0 } else { h.max() },
            },
            per_backend: self.per_backend.clone(),
            status: self.status.clone(),
        }
    }

    /// The [`Summary`] as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.summary()).unwrap_or_else(|_| "{}".to_string())
    }

    /// Human-readable table: rate, latency percentiles, requests per backend.
    pub fn table(&self) -> String {
        let s = self.summary();
        let l = &s.latency_us;
        let kind = match self.kind {
            LoadKind::Http => "http keep-alive",
            LoadKind::Echo => "echo",
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{kind} -> {}  {} connections  {:.2}s",
            s.target, s.connections, s.elapsed_secs
        );
        let _ = writeln!(
            out,
            "  requests  {:>12}  {:>12.1} req/s  errors {}",
            s.requests, s.requests_per_sec, s.errors
        );
        if s.bytes > 0 && s.elapsed_secs > 0.0 {
            let _ = writeln!(
                out,
                "  received  {:>12}  {:>12.1} MiB/s",
                s.bytes,
                s.bytes as f64 / s.elapsed_secs / (1024.0 * 1024.0)
            );
        }
        let _ = writeln!(
            out,
            "  latency   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            fmt_us(l.p50),
            fmt_us(l.p90),
            fmt_us(l.p99),
            fmt_us(l.p999),
            fmt_us(l.max)
        );
        if !s.per_backend.is_empty() {
            let width = s
                .per_backend
                .keys()
                .map(String::len)
                .max()
                .unwrap_or(0)
                .max(7);
            let _ = writeln!(
                out,
                "  {:<width$}  {:>12}  {:>6}",
                "backend", "requests", "share"
            );
            for (name, n) in &s.per_backend {
                let share = if s.requests > 0 {
                    100.0 * *n as f64 / s.requests as f64
                } else {
                    0.0
                };
                let _ = writeln!(out, "  {name:<width$}  {n:>12}  {share:>5.1}%");
            }
        }
        let odd: Vec<String> = s
            .status
            .iter()
            .filter(|(code, _)| **code != 200)
            .map(|(code, n)| format!("{code}: {n}"))
            .collect();
        if !odd.is_empty() {
            let _ = writeln!(out, "  non-200   {}", odd.join("  "));
        }
        out
    }

    /// Prints [`Report::table`] to stdout.
    pub fn print_table(&self) {
        print!("{}", self.table());
    }
}

/// Microseconds as `850us`, `1.25ms` or `2.10s`.
fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}
