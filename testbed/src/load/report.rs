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
    /// HTTP with `Connection: close`: a new connection per request.
    pub close: bool,
    /// The paced rate asked for (`--rate`), requests per second.
    pub offered_rate: Option<f64>,
    /// Completed requests (HTTP responses, echo round trips, bulk transfers, downloads).
    pub requests: u64,
    /// Failed attempts: refused or failed connects, resets, timeouts, bad responses,
    /// corrupted data.
    pub errors: u64,
    /// Of the errors, exchanges whose received bytes differed from those expected (echo,
    /// bulk): the balancer corrupted, lost or reordered data.
    pub mismatches: u64,
    /// Payload bytes received (response bodies, echoed bytes).
    pub bytes: u64,
    /// Bytes sent by completed exchanges (requests, echo messages, bulk payload).
    pub bytes_sent: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency of completed requests, in microseconds.
    pub histogram: Histogram<u64>,
    /// Completed HTTP requests by response body, i.e. by backend name.
    pub per_backend: BTreeMap<String, u64>,
    /// Completed HTTP requests by status code.
    pub status: BTreeMap<u16, u64>,
}

/// The percentiles of [`Summary::percentiles_us`], for plots: 50 to 99.99, up the "nines".
pub const PERCENTILES: [f64; 10] = [
    50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999,
];

/// Serializable digest of a [`Report`] (what `--json` prints). Fields after `status` were
/// added later; the earlier ones keep their meaning.
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
    /// `keepalive`, `close`, `echo`, `bulk` or `download`.
    pub mode: &'static str,
    /// Exchanges whose bytes came back wrong (also counted in `errors`).
    pub mismatches: u64,
    /// Bytes sent by completed exchanges.
    pub bytes_sent: u64,
    /// Received bytes per second of wall time.
    pub bytes_per_sec: f64,
    /// Received GB/s (10^9 bytes), i.e. towards the client.
    pub gbytes_per_sec_down: f64,
    /// Sent GB/s (10^9 bytes), i.e. away from the client.
    pub gbytes_per_sec_up: f64,
    /// Latency at each of [`PERCENTILES`], microseconds.
    pub percentiles_us: Vec<PercentilePoint>,
    /// `--rate`: the requests per second asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_rate: Option<f64>,
    /// `--rate`: the achieved rate fell more than 5% short of it (the target, or the
    /// generator, could not keep up: the latencies then describe an overload).
    pub rate_shortfall: bool,
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
    pub p75: u64,
    pub p9999: u64,
    pub stdev: f64,
}

/// One point of a latency distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct PercentilePoint {
    /// 0-100.
    pub percentile: f64,
    /// Latency at that percentile, microseconds.
    pub us: u64,
}

impl Report {
    /// Completed requests per second of wall time.
    pub fn rate(&self) -> f64 {
        per_second(self.requests as f64, self.elapsed)
    }

    /// With `--rate`: the achieved rate is more than 5% below the offered one.
    pub fn rate_shortfall(&self) -> bool {
        self.offered_rate.is_some_and(|r| self.rate() < 0.95 * r)
    }

    /// `keepalive`, `close`, `echo`, `bulk` or `download`.
    pub fn mode(&self) -> &'static str {
        match self.kind {
            LoadKind::Http if self.close => "close",
            LoadKind::Http => "keepalive",
            LoadKind::Echo => "echo",
            LoadKind::Bulk => "bulk",
            LoadKind::Download => "download",
        }
    }

    /// `bytes` per second of wall time, divided by `unit` (1e9 for GB/s).
    fn per_sec(&self, bytes: u64, unit: f64) -> f64 {
        per_second(bytes as f64, self.elapsed) / unit
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
                p75: at(75.0),
                p9999: at(99.99),
                stdev: if empty { 0.0 } else { h.stdev() },
            },
            per_backend: self.per_backend.clone(),
            status: self.status.clone(),
            mode: self.mode(),
            mismatches: self.mismatches,
            bytes_sent: self.bytes_sent,
            bytes_per_sec: self.per_sec(self.bytes, 1.0),
            gbytes_per_sec_down: self.per_sec(self.bytes, 1e9),
            gbytes_per_sec_up: self.per_sec(self.bytes_sent, 1e9),
            percentiles_us: PERCENTILES
                .iter()
                .map(|&p| PercentilePoint {
                    percentile: p,
                    us: at(p),
                })
                .collect(),
            offered_rate: self.offered_rate,
            rate_shortfall: self.rate_shortfall(),
        }
    }

    /// One line `WRKJSON {...}` in the form `bench/lab/stats.lua` prints from wrk, so that
    /// `bench/compare.sh` and `compare-report` take this tool's runs like wrk's.
    pub fn wrk_json(&self) -> String {
        let s = self.summary();
        let l = &s.latency_us;
        let errors = self.errors - self.mismatches;
        let bad_status: u64 = s
            .status
            .iter()
            .filter(|(code, _)| !(200..400).contains(*code))
            .map(|(_, n)| n)
            .sum();
        let pct: Vec<String> = s
            .percentiles_us
            .iter()
            .map(|p| format!(r#"{{"percentile":{},"us":{}}}"#, p.percentile, p.us))
            .collect();
        format!(
            concat!(
                r#"WRKJSON {{"requests":{},"duration_us":{},"bytes":{},"#,
                r#""errors":{{"connect":0,"read":{},"write":0,"status":{},"timeout":0}},"#,
                r#""latency_us":{{"min":{},"mean":{:.2},"stdev":{:.2},"max":{}}},"percentiles":[{}]}}"#
            ),
            s.requests,
            self.elapsed.as_micros(),
            s.bytes,
            errors + self.mismatches,
            bad_status,
            l.min,
            l.mean,
            l.stdev,
            l.max,
            pct.join(",")
        )
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
            LoadKind::Http if self.close => "http new connection per request",
            LoadKind::Http => "http keep-alive",
            LoadKind::Echo => "echo",
            LoadKind::Bulk => "bulk through echo",
            LoadKind::Download => "http download",
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
        if let Some(rate) = s.offered_rate {
            let verdict = if s.rate_shortfall {
                "  could not keep up: more than 5% short"
            } else {
                ""
            };
            let _ = writeln!(out, "  offered   {:>12.1} req/s{verdict}", rate);
        }
        if self.kind == LoadKind::Bulk {
            let _ = writeln!(
                out,
                "  sent      {:>12}  {:>12.3} GB/s up",
                s.bytes_sent, s.gbytes_per_sec_up
            );
        }
        if s.bytes > 0 && s.elapsed_secs > 0.0 {
            if matches!(self.kind, LoadKind::Bulk | LoadKind::Download) {
                let _ = writeln!(
                    out,
                    "  received  {:>12}  {:>12.3} GB/s down",
                    s.bytes, s.gbytes_per_sec_down
                );
            } else {
                let _ = writeln!(
                    out,
                    "  received  {:>12}  {:>12.1} MiB/s",
                    s.bytes,
                    s.bytes as f64 / s.elapsed_secs / (1024.0 * 1024.0)
                );
            }
        }
        if self.kind == LoadKind::Bulk {
            let verdict = if s.mismatches == 0 {
                "every byte matched"
            } else {
                "CORRUPTED"
            };
            let _ = writeln!(out, "  mismatches {:>11}  {verdict}", s.mismatches);
        }
        let _ = writeln!(
            out,
            "  latency   p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
            fmt_us(l.p50),
            fmt_us(l.p90),
            fmt_us(l.p99),
            fmt_us(l.p999),
            fmt_us(l.p9999),
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

/// `n` over `elapsed`, 0 when no time passed.
pub fn per_second(n: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n / secs
    } else {
        0.0
    }
}

/// Microseconds as `850us`, `1.25ms` or `2.10s` (round values short: `2ms`, `1s`).
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us.is_multiple_of(1_000_000) {
        format!("{}s", us / 1_000_000)
    } else if us.is_multiple_of(1_000) && us < 1_000_000 {
        format!("{}ms", us / 1_000)
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}
