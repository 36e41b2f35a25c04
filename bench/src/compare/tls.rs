//! The TLS workload of `bench/compare.sh` (`tls`): a new TLS connection per request, through
//! balancers that route by the ClientHello's server name. Besides the ratios to HAProxy
//! that every workload has, its table gives the ratios to NGINX (both route by SNI, so both
//! are references) and what routing by SNI costs uringlb per connection: the CPU per
//! connection of `uringlb-sni` minus that of `uringlb-tcp`, which forwards the same traffic
//! to the same backends as plain TCP.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{lat, opt, ratio, ratios, runs_cell, Ratios, Row};

/// The workload's name in the runs file.
pub const WORKLOAD: &str = "tls";
/// uringlb routing by SNI.
pub const SNI_SYSTEM: &str = "uringlb-sni";
/// uringlb forwarding the same TLS traffic as plain TCP.
pub const PLAIN_SYSTEM: &str = "uringlb-tcp";
/// Prefix of the NGINX system, the second reference.
const NGINX: &str = "nginx";

/// The TLS workload's own figures, beside its rows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TlsSummary {
    /// The system of the second ratios (`nginx-sni`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nginx_baseline: Option<String>,
    /// Each system's medians divided by `nginx_baseline`'s, by system.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vs_nginx: BTreeMap<String, Ratios>,
    /// Median CPU us per connection of uringlb routing by SNI, and forwarding as plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni_cpu_us_per_conn: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_cpu_us_per_conn: Option<f64>,
    /// What SNI routing adds: the first minus the second, microseconds per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni_cost_us_per_conn: Option<f64>,
}

/// The summary of the TLS rows among `rows`; `None` when there are none.
pub fn summarize(rows: &[Row]) -> Option<TlsSummary> {
    let mine: Vec<&Row> = rows.iter().filter(|r| r.workload == WORKLOAD).collect();
    if mine.is_empty() {
        return None;
    }
    let nginx = mine
        .iter()
        .find(|r| r.system == NGINX)
        .or_else(|| mine.iter().find(|r| super::is_candidate(&r.system, NGINX)));
    let vs_nginx = nginx
        .map(|n| {
            mine.iter()
                .map(|r| (r.system.clone(), ratios(r, n)))
                .collect()
        })
        .unwrap_or_default();
    let cpu = |system: &str| {
        mine.iter()
            .find(|r| r.system == system)
            .and_then(|r| r.cpu_us_per_req)
    };
    let (sni, plain) = (cpu(SNI_SYSTEM), cpu(PLAIN_SYSTEM));
    Some(TlsSummary {
        nginx_baseline: nginx.map(|n| n.system.clone()),
        vs_nginx,
        sni_cpu_us_per_conn: sni,
        plain_cpu_us_per_conn: plain,
        sni_cost_us_per_conn: sni.zip(plain).map(|(s, p)| s - p),
    })
}

/// The table of the TLS rows (after the workload's title line): connections per second,
/// latency, CPU per connection, ratios to HAProxy (`x`) and to NGINX (`n`), then the cost
/// of SNI routing in uringlb.
pub fn table(rows: &[&Row], summary: Option<&TlsSummary>, width: usize) -> String {
    let mut out = String::new();
    let nginx = summary.and_then(|s| s.nginx_baseline.as_deref());
    let _ = match nginx {
        Some(n) => writeln!(out, "n = ratio to {n}"),
        None => writeln!(out, "n = ratio to NGINX: none ran"),
    };
    let _ = writeln!(
        out,
        "{:<width$} {:>7} {:>8} {:>8} {:>8} {:>8} {:>11} {:>6} {:>4}  {:>8} {:>6} {:>6}  {:>8} {:>6} {:>6}",
        "system",
        "conn/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "CPU us/conn",
        "errors",
        "runs",
        "x conn/s",
        "x p99",
        "x CPU",
        "n conn/s",
        "n p99",
        "n CPU"
    );
    for r in rows {
        let x = r.vs_baseline.as_ref();
        let n = summary.and_then(|s| s.vs_nginx.get(&r.system));
        let _ = writeln!(
            out,
            "{:<width$} {:>7} {:>8} {:>8} {:>8} {:>8} {:>11} {:>6} {:>4}  {:>8} {:>6} {:>6}  {:>8} {:>6} {:>6}",
            r.system,
            opt(r.rps, |v| format!("{v:.0}")),
            lat(r.p50_us),
            lat(r.p99_us),
            lat(r.p999_us),
            lat(r.max_us),
            opt(r.cpu_us_per_req, |v| format!("{v:.2}")),
            r.errors,
            runs_cell(r),
            ratio(x.and_then(|v| v.rps)),
            ratio(x.and_then(|v| v.p99)),
            ratio(x.and_then(|v| v.cpu_us_per_req)),
            ratio(n.and_then(|v| v.rps)),
            ratio(n.and_then(|v| v.p99)),
            ratio(n.and_then(|v| v.cpu_us_per_req)),
        );
    }
    if let Some(s) = summary {
        match (
            s.sni_cpu_us_per_conn,
            s.plain_cpu_us_per_conn,
            s.sni_cost_us_per_conn,
        ) {
            (Some(sni), Some(plain), Some(cost)) => {
                let _ = writeln!(
                    out,
                    "SNI routing in uringlb: {sni:.2} us CPU/conn ({SNI_SYSTEM}) - {plain:.2} ({PLAIN_SYSTEM}) = {cost:+.2} us per connection{}",
                    if plain > 0.0 {
                        format!(" ({:+.1}%)", cost / plain * 100.0)
                    } else {
                        String::new()
                    }
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "SNI routing in uringlb: needs both {SNI_SYSTEM} and {PLAIN_SYSTEM} measured"
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{parse_runs, summarize as summarize_all};
    use super::*;

    fn run(round: u32, system: &str, requests: u64, p99: u64, ticks: u64) -> String {
        format!(
            r#"{{"round":{round},"system":"{system}","workload":"tls","ok":true,"connections":32,"accepted":{requests},"cpu_ticks":{ticks},"clk_tck":100,"wrk":{{"requests":{requests},"duration_us":2000000,"bytes":1,"errors":{{"connect":0,"read":0,"write":0,"status":0,"timeout":0}},"latency_us":{{"min":10,"mean":100,"stdev":5,"max":5000}},"percentiles":[{{"percentile":50,"us":100}},{{"percentile":99,"us":{p99}}},{{"percentile":99.9,"us":2000}}]}}}}"#
        )
    }

    #[test]
    fn ratios_to_haproxy_and_nginx_and_the_cost_of_sni() {
        // CPU per connection: 10 ticks = 0.1 s over 1000 connections = 100 us.
        let lines = [
            run(1, "uringlb-sni", 1000, 900, 12),
            run(1, "uringlb-tcp", 1000, 800, 10),
            run(1, "haproxy-sni", 800, 1000, 16),
            run(1, "nginx-sni", 500, 2000, 10),
        ];
        let res = summarize_all(
            parse_runs(&lines.join("\n")).unwrap(),
            BTreeMap::new(),
            "haproxy",
        );
        assert_eq!(res.baselines[WORKLOAD], "haproxy-sni");
        let tls = res.tls.as_ref().expect("a TLS summary");
        assert_eq!(tls.nginx_baseline.as_deref(), Some("nginx-sni"));
        assert!((tls.sni_cpu_us_per_conn.unwrap() - 120.0).abs() < 1e-9);
        assert!((tls.plain_cpu_us_per_conn.unwrap() - 100.0).abs() < 1e-9);
        assert!((tls.sni_cost_us_per_conn.unwrap() - 20.0).abs() < 1e-9);
        let n = &tls.vs_nginx["uringlb-sni"];
        assert!((n.rps.unwrap() - 2.0).abs() < 1e-9);
        assert!((n.cpu_us_per_req.unwrap() - 0.6).abs() < 1e-9);
        let x = res
            .rows
            .iter()
            .find(|r| r.system == "uringlb-sni")
            .and_then(|r| r.vs_baseline.as_ref())
            .unwrap();
        assert!((x.rps.unwrap() - 1.25).abs() < 1e-9);
        assert!((x.cpu_us_per_req.unwrap() - 0.6).abs() < 1e-9);

        let table = res.table();
        assert!(
            table.contains("new TLS connection per request")
                && table.contains("n = ratio to nginx-sni"),
            "{table}"
        );
        assert!(
            table.contains("= +20.00 us per connection (+20.0%)"),
            "{table}"
        );
        assert_eq!(res.runs[0].accepted, Some(1000));
        let back: super::super::Results = serde_json::from_str(&res.to_json()).unwrap();
        assert_eq!(
            back.tls.unwrap().sni_cost_us_per_conn,
            tls.sni_cost_us_per_conn
        );
    }

    #[test]
    fn no_tls_rows_no_summary_and_a_missing_system_says_so() {
        assert!(summarize(&[]).is_none());
        let res = summarize_all(
            parse_runs(&run(1, "uringlb-sni", 1000, 900, 12)).unwrap(),
            BTreeMap::new(),
            "haproxy",
        );
        let tls = res.tls.as_ref().unwrap();
        assert_eq!(tls.sni_cost_us_per_conn, None);
        assert_eq!(tls.nginx_baseline, None);
        assert!(res
            .table()
            .contains("needs both uringlb-sni and uringlb-tcp"));
    }
}
