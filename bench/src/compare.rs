//! Aggregation of `bench/compare.sh` runs: medians per system and workload, ratios to a
//! baseline (HAProxy), the human table and the results JSON that `plot` reads.
//!
//! `compare.sh` appends one JSON object per measured run to a file ([`Run`]); a request
//! workload carries what the wrk Lua script (`bench/lab/stats.lua`) printed, a download the
//! byte count and time from curl. Every run carries the CPU clock ticks (user+sys) that the
//! balancer's processes spent during it, read from `/proc/PID/stat` (and, for reference,
//! summed over `/proc/PID/task/*/stat`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

mod udp;

use crate::load::fmt_us;
use crate::load::PercentilePoint;

pub mod tls;

/// Identifies the results file format.
pub const SCHEMA: &str = "uringlb-bench/compare/v1";

/// One measured run: one workload against one system in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub round: u32,
    pub system: String,
    /// `keepalive`, `close`, `download`, `rate` (keep-alive at a fixed offered rate) or
    /// `tls` (a new TLS connection per request, see [`tls`]).
    pub workload: String,
    /// The requests per second offered (`rate` workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_rate: Option<f64>,
    /// False when the load tool failed; the run then only counts as failed.
    #[serde(default)]
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Client connections (request workloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Connections the balancer counted as accepted during the run (uringlb in the `tls`
    /// workload): at least the requests when each request had its own connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<u64>,
    /// CPU clock ticks (user+sys) the balancer's processes spent during the run, from
    /// `/proc/PID/stat` (the whole thread group, exited threads included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ticks: Option<u64>,
    /// The same summed over `/proc/PID/task/*/stat` (live threads only), for reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ticks_tasks: Option<i64>,
    /// Clock ticks per second (`getconf CLK_TCK`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clk_tck: Option<u64>,
    /// What wrk measured (request workloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrk: Option<WrkStats>,
    /// Bytes downloaded (download workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Seconds the downloads took (download workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secs: Option<f64>,
}

/// What `bench/lab/stats.lua` prints from wrk's `done` callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrkStats {
    pub requests: u64,
    pub duration_us: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub errors: WrkErrors,
    pub latency_us: WrkLatency,
    /// Latency at several percentiles (50 to 99.99), microseconds.
    pub percentiles: Vec<PercentilePoint>,
}

/// wrk's error counters; `status` counts non-2xx/3xx responses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WrkErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub status: u64,
    pub timeout: u64,
}

impl WrkErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }
}

/// wrk's latency statistics, microseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrkLatency {
    pub min: f64,
    pub mean: f64,
    pub stdev: f64,
    pub max: f64,
}

/// The figures of one run, derived from a [`Run`].
#[derive(Debug, Clone, Default)]
struct Figures {
    rps: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    max: Option<f64>,
    cpu_us_per_req: Option<f64>,
    errors: u64,
    gbps: Option<f64>,
    cpu_s_per_gib: Option<f64>,
}

impl Run {
    fn cpu_secs(&self) -> Option<f64> {
        match (self.cpu_ticks, self.clk_tck) {
            (Some(t), Some(hz)) if hz > 0 => Some(t as f64 / hz as f64),
            _ => None,
        }
    }

    fn figures(&self) -> Figures {
        let mut f = Figures::default();
        if let Some(w) = &self.wrk {
            let at = |p: f64| {
                w.percentiles
                    .iter()
                    .find(|x| (x.percentile - p).abs() < 1e-9)
                    .map(|x| x.us as f64)
            };
            let secs = w.duration_us as f64 / 1e6;
            f.rps = (secs > 0.0).then(|| w.requests as f64 / secs);
            f.p50 = at(50.0);
            f.p99 = at(99.0);
            f.p999 = at(99.9);
            f.max = Some(w.latency_us.max);
            f.errors = w.errors.total();
            f.cpu_us_per_req = self
                .cpu_secs()
                .filter(|_| w.requests > 0)
                .map(|c| c * 1e6 / w.requests as f64);
        }
        if let (Some(bytes), Some(secs)) = (self.bytes, self.secs) {
            if bytes > 0 && secs > 0.0 {
                f.gbps = Some(bytes as f64 / secs / 1e9);
                f.cpu_s_per_gib = self
                    .cpu_secs()
                    .map(|c| c / (bytes as f64 / (1u64 << 30) as f64));
            }
        }
        f
    }
}

/// Medians over the rounds of one system under one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub workload: String,
    pub system: String,
    /// Successful runs the medians are taken over.
    pub runs: usize,
    /// Runs whose load tool failed.
    pub failed: usize,
    /// Client connections (request workloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p999_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_us: Option<f64>,
    /// Balancer CPU (user+sys) microseconds per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_req: Option<f64>,
    /// Errors summed over the runs (connect, read, write, timeouts, non-2xx).
    pub errors: u64,
    /// Download GB/s (10^9 bytes per second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
    /// Balancer CPU seconds per GiB downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_s_per_gib: Option<f64>,
    /// Median latency at each percentile over the runs (the plot's data).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percentiles_us: Vec<PercentilePoint>,
    /// This row's medians divided by the baseline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_baseline: Option<Ratios>,
}

/// A row's figures divided by the baseline system's: above 1 is better for `rps` and
/// `gbps`, below 1 is better for the latencies and CPU figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratios {
    pub baseline: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p999: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_req: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_s_per_gib: Option<f64>,
}

/// What `compare-report` writes: metadata, baselines, median rows and the raw runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub schema: String,
    /// Free-form facts about the run (`--meta key=value`): time, host, versions, settings.
    pub meta: BTreeMap<String, String>,
    /// Systems in the order they were run.
    pub systems: Vec<String>,
    /// Workloads in display order.
    pub workloads: Vec<String>,
    /// The baseline system per workload.
    pub baselines: BTreeMap<String, String>,
    pub rows: Vec<Row>,
    /// The `tls` workload's ratios to NGINX and the cost of SNI routing, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<tls::TlsSummary>,
    pub runs: Vec<Run>,
}

/// Parses the runs file: one JSON object per line; blank lines are skipped.
pub fn parse_runs(text: &str) -> anyhow::Result<Vec<Run>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("runs line {}", i + 1)))
        .collect()
}

/// Median of the values present; `None` when there are none. Even counts average the two
/// middle values.
pub fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values
        .into_iter()
        .flatten()
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

const WORKLOAD_ORDER: [&str; 5] = ["keepalive", "close", "download", "rate", tls::WORKLOAD];

/// Whether a system counts as a baseline candidate for `prefix` (e.g. `haproxy` matches
/// `haproxy` and `haproxy-splice`).
fn is_candidate(system: &str, prefix: &str) -> bool {
    system == prefix
        || system
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Medians per (workload, system) and ratios to the baseline: the system named
/// `baseline` for request workloads, and the best (highest GB/s) of the `baseline*`
/// variants for the download. `baseline` may be a comma-separated list in order of
/// preference (`haproxy,nginx`): a workload without the first (HAProxy has no UDP) takes
/// the next.
pub fn summarize(runs: Vec<Run>, meta: BTreeMap<String, String>, baseline: &str) -> Results {
    let mut systems: Vec<String> = Vec::new();
    let mut workloads: Vec<String> = Vec::new();
    for r in &runs {
        if !systems.contains(&r.system) {
            systems.push(r.system.clone());
        }
        if !workloads.contains(&r.workload) {
            workloads.push(r.workload.clone());
        }
    }
    let order: Vec<&str> = WORKLOAD_ORDER
        .iter()
        .chain(&udp::WORKLOADS)
        .copied()
        .collect();
    workloads.sort_by_key(|w| {
        (
            order.iter().position(|x| x == w).unwrap_or(order.len()),
            w.clone(),
        )
    });

    let mut rows = Vec::new();
    for w in &workloads {
        for s in &systems {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|r| &r.workload == w && &r.system == s)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let good: Vec<&Run> = mine.iter().copied().filter(|r| r.ok).collect();
            let figs: Vec<Figures> = good.iter().map(|r| r.figures()).collect();
            let med = |f: fn(&Figures) -> Option<f64>| median(figs.iter().map(f));
            rows.push(Row {
                workload: w.clone(),
                system: s.clone(),
                runs: good.len(),
                failed: mine.len() - good.len(),
                connections: mine.iter().find_map(|r| r.connections),
                rps: med(|f| f.rps),
                p50_us: med(|f| f.p50),
                p99_us: med(|f| f.p99),
                p999_us: med(|f| f.p999),
                max_us: med(|f| f.max),
                cpu_us_per_req: med(|f| f.cpu_us_per_req),
                errors: figs.iter().map(|f| f.errors).sum(),
                gbps: med(|f| f.gbps),
                cpu_s_per_gib: med(|f| f.cpu_s_per_gib),
                percentiles_us: median_distribution(&good),
                vs_baseline: None,
            });
        }
    }

    let mut baselines = BTreeMap::new();
    for w in &workloads {
        let Some((baseline, candidates)) = baseline
            .split(',')
            .map(str::trim)
            .map(|b| {
                let c: Vec<&Row> = rows
                    .iter()
                    .filter(|r| &r.workload == w && is_candidate(&r.system, b))
                    .collect();
                (b, c)
            })
            .find(|(_, c)| !c.is_empty())
        else {
            continue;
        };
        let chosen = if w == "download" {
            candidates
                .iter()
                .filter(|r| r.gbps.is_some())
                .max_by(|a, b| a.gbps.unwrap_or(0.0).total_cmp(&b.gbps.unwrap_or(0.0)))
                .or(candidates.first())
        } else {
            candidates
                .iter()
                .find(|r| r.system == baseline)
                .or(candidates.first())
        };
        if let Some(b) = chosen {
            baselines.insert(w.clone(), b.system.clone());
        }
    }
    let base_rows: BTreeMap<String, Row> = baselines
        .iter()
        .filter_map(|(w, s)| {
            rows.iter()
                .find(|r| &r.workload == w && &r.system == s)
                .map(|r| (w.clone(), r.clone()))
        })
        .collect();
    for row in &mut rows {
        if let Some(b) = base_rows.get(&row.workload) {
            row.vs_baseline = Some(ratios(row, b));
        }
    }

    Results {
        schema: SCHEMA.to_string(),
        meta,
        systems,
        workloads,
        baselines,
        tls: tls::summarize(&rows),
        rows,
        runs,
    }
}

/// `row`'s medians divided by `base`'s.
fn ratios(row: &Row, base: &Row) -> Ratios {
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    };
    Ratios {
        baseline: base.system.clone(),
        rps: ratio(row.rps, base.rps),
        p99: ratio(row.p99_us, base.p99_us),
        p999: ratio(row.p999_us, base.p999_us),
        cpu_us_per_req: ratio(row.cpu_us_per_req, base.cpu_us_per_req),
        gbps: ratio(row.gbps, base.gbps),
        cpu_s_per_gib: ratio(row.cpu_s_per_gib, base.cpu_s_per_gib),
    }
}

/// Median latency at each percentile that every run reported.
fn median_distribution(runs: &[&Run]) -> Vec<PercentilePoint> {
    let Some(first) = runs.iter().find_map(|r| r.wrk.as_ref()) else {
        return Vec::new();
    };
    first
        .percentiles
        .iter()
        .filter_map(|p| {
            let us = median(runs.iter().map(|r| {
                r.wrk.as_ref().and_then(|w| {
                    w.percentiles
                        .iter()
                        .find(|x| (x.percentile - p.percentile).abs() < 1e-9)
                        .map(|x| x.us as f64)
                })
            }))?;
            Some(PercentilePoint {
                percentile: p.percentile,
                us: us.round() as u64,
            })
        })
        .collect()
}

fn title(workload: &str, connections: Option<u64>, meta: &BTreeMap<String, String>) -> String {
    if let Some(t) = udp::title(workload, connections, meta) {
        return t;
    }
    let offered = meta.get("offered_rate");
    let conns = connections.map_or(String::new(), |c| format!(", {c} connections"));
    match workload {
        "rate" => format!(
            "keep-alive at a fixed {} req/s offered{conns} (uringlb-bench http --rate)",
            offered.map_or("?", String::as_str)
        ),
        "keepalive" => format!("keep-alive requests{conns} (wrk)"),
        "close" => format!("new connection per request{conns} (wrk, Connection: close)"),
        "download" => "download of /big.bin, 1 GiB (curl)".to_string(),
        tls::WORKLOAD => format!(
            "new TLS connection per request, full handshake{conns} (wrk https://localhost, Connection: close)"
        ),
        other => format!("{other}{conns}"),
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

fn lat(v: Option<f64>) -> String {
    opt(v, |x| fmt_us(x.round() as u64))
}

fn ratio(v: Option<f64>) -> String {
    opt(v, |x| format!("{x:.2}"))
}

impl Results {
    /// The human table: one block per workload, medians and ratios to the baseline.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let rounds = self.runs.iter().map(|r| r.round).max().unwrap_or(0);
        let width = self
            .systems
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(6)
            .max(6);
        for w in &self.workloads {
            let rows: Vec<&Row> = self.rows.iter().filter(|r| &r.workload == w).collect();
            let base = self.baselines.get(w).map_or("-", String::as_str);
            let _ = writeln!(
                out,
                "\n{}: medians of {rounds} round(s); x = ratio to {base}",
                title(w, rows.iter().find_map(|r| r.connections), &self.meta)
            );
            if w == tls::WORKLOAD {
                out.push_str(&tls::table(&rows, self.tls.as_ref(), width));
            } else if w == "download" {
                let _ = writeln!(
                    out,
                    "{:<width$} {:>7} {:>10} {:>4}  {:>7} {:>7}",
                    "system", "GB/s", "CPU s/GiB", "runs", "x GB/s", "x CPU"
                );
                for r in rows {
                    let v = r.vs_baseline.as_ref();
                    let _ = writeln!(
                        out,
                        "{:<width$} {:>7} {:>10} {:>4}  {:>7} {:>7}",
                        r.system,
                        opt(r.gbps, |x| format!("{x:.2}")),
                        opt(r.cpu_s_per_gib, |x| format!("{x:.3}")),
                        runs_cell(r),
                        ratio(v.and_then(|v| v.gbps)),
                        ratio(v.and_then(|v| v.cpu_s_per_gib)),
                    );
                }
            } else {
                let _ = writeln!(
                    out,
                    "{:<width$} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>6} {:>4}  {:>7} {:>6} {:>6}",
                    "system",
                    "req/s",
                    "p50",
                    "p99",
                    "p99.9",
                    "max",
                    "CPU us/req",
                    "errors",
                    "runs",
                    "x req/s",
                    "x p99",
                    "x CPU"
                );
                for r in rows {
                    let v = r.vs_baseline.as_ref();
                    let _ = writeln!(
                        out,
                        "{:<width$} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>6} {:>4}  {:>7} {:>6} {:>6}",
                        r.system,
                        opt(r.rps, |x| format!("{x:.0}")),
                        lat(r.p50_us),
                        lat(r.p99_us),
                        lat(r.p999_us),
                        lat(r.max_us),
                        opt(r.cpu_us_per_req, |x| format!("{x:.2}")),
                        r.errors,
                        runs_cell(r),
                        ratio(v.and_then(|v| v.rps)),
                        ratio(v.and_then(|v| v.p99)),
                        ratio(v.and_then(|v| v.cpu_us_per_req)),
                    );
                }
            }
        }
        out
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_string())
    }
}

/// `2`, or `1/2` when a run failed.
fn runs_cell(r: &Row) -> String {
    if r.failed == 0 {
        r.runs.to_string()
    } else {
        format!("{}/{}", r.runs, r.runs + r.failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrk_run(round: u32, system: &str, requests: u64, p99: u64, ticks: u64) -> String {
        format!(
            r#"{{"round":{round},"system":"{system}","workload":"keepalive","ok":true,"connections":64,"cpu_ticks":{ticks},"clk_tck":100,"wrk":{{"requests":{requests},"duration_us":2000000,"bytes":1,"errors":{{"connect":0,"read":0,"write":0,"status":0,"timeout":0}},"latency_us":{{"min":10,"mean":100,"stdev":5,"max":5000}},"percentiles":[{{"percentile":50,"us":100}},{{"percentile":99,"us":{p99}}},{{"percentile":99.9,"us":2000}}]}}}}"#
        )
    }

    fn download(round: u32, system: &str, secs: f64, ticks: u64) -> String {
        format!(
            r#"{{"round":{round},"system":"{system}","workload":"download","ok":true,"cpu_ticks":{ticks},"clk_tck":100,"bytes":1073741824,"secs":{secs}}}"#
        )
    }

    #[test]
    fn medians_ratios_and_baselines() {
        let lines = [
            wrk_run(1, "uringlb", 200_000, 900, 200),
            wrk_run(1, "haproxy", 100_000, 1800, 200),
            wrk_run(2, "uringlb", 220_000, 1100, 220),
            wrk_run(2, "haproxy", 100_000, 1800, 200),
            download(1, "uringlb", 1.0, 100),
            download(1, "haproxy", 2.0, 150),
            download(1, "haproxy-splice", 1.25, 100),
            r#"{"round":2,"system":"haproxy-splice","workload":"download","ok":false,"error":"curl failed"}"#.to_string(),
        ];
        let runs = parse_runs(&lines.join("\n")).unwrap();
        let res = summarize(runs, BTreeMap::new(), "haproxy");
        assert_eq!(res.systems, ["uringlb", "haproxy", "haproxy-splice"]);
        assert_eq!(res.workloads, ["keepalive", "download"]);
        assert_eq!(res.baselines["keepalive"], "haproxy");
        assert_eq!(res.baselines["download"], "haproxy-splice", "best GB/s");

        let ur = &res.rows[0];
        assert_eq!(
            (ur.workload.as_str(), ur.system.as_str()),
            ("keepalive", "uringlb")
        );
        assert_eq!(ur.rps, Some(105_000.0));
        assert_eq!(ur.p99_us, Some(1000.0));
        // 2 s of CPU for 200k requests, 2.2 s for 220k: 10 us each.
        assert!((ur.cpu_us_per_req.unwrap() - 10.0).abs() < 1e-9);
        let v = ur.vs_baseline.as_ref().unwrap();
        assert!((v.rps.unwrap() - 2.1).abs() < 1e-9);
        assert!((v.p99.unwrap() - 1000.0 / 1800.0).abs() < 1e-9);
        assert!((v.cpu_us_per_req.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(ur.percentiles_us.len(), 3);

        let hs = res
            .rows
            .iter()
            .find(|r| r.system == "haproxy-splice")
            .unwrap();
        assert_eq!((hs.runs, hs.failed), (1, 1));
        let ud = res
            .rows
            .iter()
            .find(|r| r.workload == "download" && r.system == "uringlb")
            .unwrap();
        assert!((ud.gbps.unwrap() - 1.073741824).abs() < 1e-9);
        assert!((ud.cpu_s_per_gib.unwrap() - 1.0).abs() < 1e-9);
        assert!((ud.vs_baseline.as_ref().unwrap().gbps.unwrap() - 1.25).abs() < 1e-9);

        let table = res.table();
        assert!(table.contains("x = ratio to haproxy-splice"), "{table}");
        assert!(table.contains("1/2"), "{table}");
        let back: Results = serde_json::from_str(&res.to_json()).unwrap();
        assert_eq!(back.rows.len(), res.rows.len());
    }

    #[test]
    fn median_of_even_and_missing() {
        assert_eq!(median([Some(1.0), None, Some(3.0)]), Some(2.0));
        assert_eq!(median([Some(5.0), Some(1.0), Some(3.0)]), Some(3.0));
        assert_eq!(median([None]), None);
        assert!(is_candidate("haproxy-splice", "haproxy"));
        assert!(!is_candidate("haproxyx", "haproxy"));
    }
}
