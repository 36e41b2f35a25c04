//! The UDP workloads of `bench/compare.sh`: their order and titles. Their runs carry the
//! same wrk-shaped figures as the TCP ones (`uringlb-bench udp --wrk-json`): a request is
//! one datagram to the balancer and its answer back, lost requests are timeouts.

use std::collections::BTreeMap;

/// Display order, after the TCP workloads.
pub(super) const WORKLOADS: [&str; 3] = ["udp", "udp-rate", "udp-new-flow"];

/// The table title of a UDP workload; `None` for the others.
pub(super) fn title(
    workload: &str,
    flows: Option<u64>,
    meta: &BTreeMap<String, String>,
) -> Option<String> {
    let flows = flows.map_or(String::new(), |c| format!(", {c}"));
    let tail = "a request = a datagram each way; errors = lost";
    Some(match workload {
        "udp" => format!("UDP, steady flows{flows} flows, closed loop ({tail})"),
        "udp-rate" => format!(
            "UDP at a fixed {} req/s offered{flows} flows ({tail})",
            meta.get("udp_offered_rate").map_or("?", String::as_str)
        ),
        "udp-new-flow" => format!(
            "UDP, a new flow per request (DNS-like, one response per flow){flows} clients ({tail})"
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::compare::{parse_runs, summarize};

    fn run(system: &str, workload: &str, answered: u64, lost: u64, ticks: u64) -> String {
        format!(
            r#"{{"round":1,"system":"{system}","workload":"{workload}","ok":true,"connections":64,"cpu_ticks":{ticks},"clk_tck":100,"wrk":{{"requests":{answered},"duration_us":1000000,"bytes":0,"errors":{{"connect":0,"read":0,"write":0,"status":0,"timeout":{lost}}},"latency_us":{{"min":1,"mean":2,"stdev":1,"max":9}},"percentiles":[{{"percentile":99,"us":100}}]}}}}"#
        )
    }

    #[test]
    fn udp_rows_take_nginx_as_baseline_when_there_is_no_haproxy() {
        let lines = [
            run("haproxy", "keepalive", 1000, 0, 10),
            run("nginx", "keepalive", 1000, 0, 10),
            run("uringlb", "udp-new-flow", 20_000, 0, 40),
            run("uringlb", "udp", 50_000, 3, 50),
            run("nginx", "udp", 25_000, 0, 50),
        ];
        let runs = parse_runs(&lines.join("\n")).unwrap();
        let res = summarize(runs, BTreeMap::new(), "haproxy,nginx");
        assert_eq!(res.workloads, ["keepalive", "udp", "udp-new-flow"]);
        assert_eq!(res.baselines["keepalive"], "haproxy");
        assert_eq!(res.baselines["udp"], "nginx");
        assert!(!res.baselines.contains_key("udp-new-flow"), "no nginx run");
        let ur = res
            .rows
            .iter()
            .find(|r| r.workload == "udp" && r.system == "uringlb")
            .unwrap();
        assert_eq!(ur.errors, 3, "lost requests");
        let v = ur.vs_baseline.as_ref().unwrap();
        assert!((v.rps.unwrap() - 2.0).abs() < 1e-9);
        // 0.5 s of CPU: 10 us per request against nginx's 20.
        assert!((v.cpu_us_per_req.unwrap() - 0.5).abs() < 1e-9);
        let table = res.table();
        assert!(table.contains("UDP, steady flows, 64 flows"), "{table}");
        assert!(table.contains("x = ratio to nginx"), "{table}");
    }
}
