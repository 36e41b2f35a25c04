//! What a UDP run measured, and its table, JSON and wrk-shaped forms.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::compare::{WrkErrors, WrkLatency, WrkStats};
use crate::load::{fmt_us, PercentilePoint, PERCENTILES};

/// What a UDP load run measured. Every request sent ended as exactly one of answered,
/// lost, refused, or unfinished (in flight when the run ended).
#[derive(Debug, Clone)]
pub struct UdpReport {
    pub target: SocketAddr,
    pub flows: usize,
    pub new_flow_per_request: bool,
    /// The paced rate asked for, requests per second.
    pub offered_rate: Option<f64>,
    /// Bytes of each request.
    pub request_bytes: usize,
    /// Requests the kernel took.
    pub sent: u64,
    /// Requests whose reply (the same id) came back in time.
    pub answered: u64,
    /// Requests with no reply within the timeout.
    pub lost: u64,
    /// Requests whose socket reported an error instead (ICMP port unreachable).
    pub refused: u64,
    /// Sockets that could not be opened and sends that failed (not in `sent`).
    pub send_errors: u64,
    /// Replies that came after their request was given up as lost (skipped).
    pub late: u64,
    /// Bytes of the answers.
    pub bytes_received: u64,
    pub elapsed: Duration,
    /// Latency of the answered requests, microseconds.
    pub histogram: Histogram<u64>,
}

/// Plain numbers for JSON output (`udp --json`).
#[derive(Debug, Clone, Serialize)]
pub struct UdpSummary {
    pub mode: &'static str,
    pub target: String,
    pub flows: usize,
    pub new_flow_per_request: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_rate: Option<f64>,
    /// The achieved rate fell more than 5% short of the offered one.
    pub rate_shortfall: bool,
    pub request_bytes: usize,
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    pub refused: u64,
    /// Sent but neither answered nor given up when the run ended (at most one per flow).
    pub unfinished: u64,
    pub send_errors: u64,
    pub late: u64,
    pub bytes_received: u64,
    pub elapsed_secs: f64,
    /// Answered requests per second: each is a datagram each way through the balancer.
    pub requests_per_sec: f64,
    pub latency_us: UdpLatency,
    pub percentiles_us: Vec<PercentilePoint>,
}

/// Latency of the answered requests, microseconds (all 0 when none was).
#[derive(Debug, Clone, Serialize)]
pub struct UdpLatency {
    pub min: u64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl UdpReport {
    /// Answered requests per second of wall time.
    pub fn rate(&self) -> f64 {
        crate::load::per_second(self.answered as f64, self.elapsed)
    }

    /// Sent requests still in flight when the run ended.
    pub fn unfinished(&self) -> u64 {
        self.sent
            .saturating_sub(self.answered + self.lost + self.refused)
    }

    fn at(&self, p: f64) -> u64 {
        if self.histogram.is_empty() {
            0
        } else {
            self.histogram.value_at_percentile(p)
        }
    }

    pub fn summary(&self) -> UdpSummary {
        let h = &self.histogram;
        let empty = h.is_empty();
        UdpSummary {
            mode: if self.new_flow_per_request {
                "udp-new-flow"
            } else {
                "udp"
            },
            target: self.target.to_string(),
            flows: self.flows,
            new_flow_per_request: self.new_flow_per_request,
            offered_rate: self.offered_rate,
            rate_shortfall: self.offered_rate.is_some_and(|r| self.rate() < 0.95 * r),
            request_bytes: self.request_bytes,
            sent: self.sent,
            answered: self.answered,
            lost: self.lost,
            refused: self.refused,
            unfinished: self.unfinished(),
            send_errors: self.send_errors,
            late: self.late,
            bytes_received: self.bytes_received,
            elapsed_secs: self.elapsed.as_secs_f64(),
            requests_per_sec: self.rate(),
            latency_us: UdpLatency {
                min: if empty { 0 } else { h.min() },
                mean: if empty { 0.0 } else { h.mean() },
                stdev: if empty { 0.0 } else { h.stdev() },
                p50: self.at(50.0),
                p90: self.at(90.0),
                p99: self.at(99.0),
                p999: self.at(99.9),
                p9999: self.at(99.99),
                max: if empty { 0 } else { h.max() },
            },
            percentiles_us: PERCENTILES
                .iter()
                .map(|&p| PercentilePoint {
                    percentile: p,
                    us: self.at(p),
                })
                .collect(),
        }
    }

    /// The [`UdpSummary`] as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.summary()).unwrap_or_else(|_| "{}".to_string())
    }

    /// One line `WRKJSON {...}` in the form `bench/lab/stats.lua` prints from wrk, so that
    /// `compare-report` takes UDP runs like the others: requests are the answered ones,
    /// lost requests are timeouts, refused ones read errors, failed sends write errors.
    pub fn wrk_json(&self) -> String {
        let s = self.summary();
        let stats = WrkStats {
            requests: s.answered,
            duration_us: u64::try_from(self.elapsed.as_micros()).unwrap_or(u64::MAX),
            bytes: s.bytes_received,
            errors: WrkErrors {
                connect: 0,
                read: s.refused,
                write: s.send_errors,
                status: 0,
                timeout: s.lost,
            },
            latency_us: WrkLatency {
                min: s.latency_us.min as f64,
                mean: s.latency_us.mean,
                stdev: s.latency_us.stdev,
                max: s.latency_us.max as f64,
            },
            percentiles: s.percentiles_us,
        };
        format!(
            "WRKJSON {}",
            serde_json::to_string(&stats).unwrap_or_else(|_| "{}".to_string())
        )
    }

    /// Human-readable table.
    pub fn table(&self) -> String {
        let s = self.summary();
        let l = &s.latency_us;
        let mut out = String::new();
        let flows = if s.new_flow_per_request {
            "clients, a new flow per request"
        } else {
            "flows"
        };
        let _ = writeln!(
            out,
            "udp -> {}  {} {flows}  {} B requests  {:.2}s",
            s.target, s.flows, s.request_bytes, s.elapsed_secs
        );
        let _ = writeln!(
            out,
            "  answered  {:>12}  {:>12.1} req/s",
            s.answered, s.requests_per_sec
        );
        if let Some(rate) = s.offered_rate {
            let verdict = if s.rate_shortfall {
                "  could not keep up: more than 5% short"
            } else {
                ""
            };
            let _ = writeln!(out, "  offered   {rate:>12.1} req/s{verdict}");
        }
        let _ = writeln!(
            out,
            "  sent {}  lost {}  refused {}  unfinished {}  send errors {}  late replies {}",
            s.sent, s.lost, s.refused, s.unfinished, s.send_errors, s.late
        );
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
        out
    }
}
