//! The connection-per-request, bulk and download modes, and the `compare-report` and `plot`
//! commands behind `bench/compare.sh`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use uringlb_bench::{load, EchoServer, HttpServer, LoadConfig, LoadKind};

const LOCAL: &str = "127.0.0.1:0";
const BIN: &str = env!("CARGO_BIN_EXE_uringlb-bench");

#[test]
fn close_mode_opens_a_connection_per_request() {
    let server = HttpServer::start(LOCAL, "c").unwrap();
    let cfg = LoadConfig {
        close: true,
        total_requests: Some(200),
        ..LoadConfig::new(4, Duration::from_secs(30))
    };
    let report = load::http_keepalive_with(server.addr(), &cfg).unwrap();
    assert_eq!((report.requests, report.errors), (200, 0));
    assert_eq!(server.connections(), 200, "one connection per request");
    assert_eq!(report.per_backend.get("c"), Some(&200));
    let s = report.summary();
    assert_eq!(s.mode, "close");
    assert!(s.latency_us.p9999 >= s.latency_us.p999);
    assert!(s.latency_us.max >= s.latency_us.p9999);
    assert_eq!(s.percentiles_us.len(), load::PERCENTILES.len());
    assert!(report.table().contains("new connection per request"));

    let ka = load::http_keepalive(server.addr(), 2, Duration::from_millis(200)).unwrap();
    assert_eq!(ka.summary().mode, "keepalive");
}

#[test]
fn bulk_moves_verified_bytes_both_ways() {
    let server = EchoServer::start(LOCAL).unwrap();
    let cfg = LoadConfig {
        bulk_bytes: 8 << 20,
        ..LoadConfig::new(3, Duration::from_secs(60))
    };
    let report = load::bulk_with(server.addr(), &cfg).unwrap();
    assert_eq!(report.kind, LoadKind::Bulk);
    assert_eq!(
        (report.requests, report.errors, report.mismatches),
        (3, 0, 0)
    );
    assert_eq!(report.bytes, 3 * (8 << 20));
    assert_eq!(report.bytes_sent, 3 * (8 << 20));
    assert_eq!(server.connections(), 3);
    let s = report.summary();
    assert_eq!(s.mode, "bulk");
    assert!(s.gbytes_per_sec_up > 0.0 && s.gbytes_per_sec_down > 0.0);
    assert!(report.table().contains("every byte matched"));
}

/// An echo that flips one bit at `corrupt_at` in the stream of each connection.
fn corrupting_echo(corrupt_at: usize) -> SocketAddr {
    let listener = TcpListener::bind(LOCAL).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut pos = 0usize;
                loop {
                    let n = match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if (pos..pos + n).contains(&corrupt_at) {
                        buf[corrupt_at - pos] ^= 0x10;
                    }
                    pos += n;
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = conn.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn bulk_detects_corruption() {
    let addr = corrupting_echo(100_000);
    let cfg = LoadConfig {
        bulk_bytes: 1 << 20,
        ..LoadConfig::new(2, Duration::from_secs(30))
    };
    let report = load::bulk_with(addr, &cfg).unwrap();
    assert_eq!(report.requests, 0);
    assert_eq!((report.errors, report.mismatches), (2, 2));
    assert!(report.table().contains("CORRUPTED"));

    // The command fails on it.
    let out = Command::new(BIN)
        .args(["bulk", "--target", &addr.to_string(), "--bytes", "1MiB"])
        .args(["--json", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mismatches"], 1);
}

#[test]
fn download_counts_bytes() {
    let server = HttpServer::start(LOCAL, "d").unwrap();
    let cfg = LoadConfig {
        path: "/big?bytes=3MiB".into(),
        ..LoadConfig::new(2, Duration::from_secs(30))
    };
    let report = load::download_with(server.addr(), &cfg).unwrap();
    assert_eq!((report.requests, report.errors), (2, 0));
    assert_eq!(report.bytes, 6 << 20);
    assert_eq!(report.summary().mode, "download");

    let out = Command::new(BIN)
        .args(["download", "--target", &server.addr().to_string()])
        .args([
            "--download-path",
            "/big?bytes=1MiB",
            "--requests",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bytes"], 3 << 20);
    assert!(v["gbytes_per_sec_down"].as_f64().unwrap() > 0.0);
    // The fields older consumers read are still there.
    for key in [
        "kind",
        "requests",
        "errors",
        "latency_us",
        "per_backend",
        "status",
    ] {
        assert!(v.get(key).is_some(), "{key}");
    }
    assert!(v["latency_us"]["max"].as_u64().unwrap() >= v["latency_us"]["p999"].as_u64().unwrap());
}

#[test]
fn http_close_flag_and_plot_of_load_reports() {
    let server = HttpServer::start(LOCAL, "p").unwrap();
    let dir = std::env::temp_dir().join(format!("uringlb-bench-modes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut inputs = Vec::new();
    for close in [false, true] {
        let mut cmd = Command::new(BIN);
        cmd.args(["http", "--target", &server.addr().to_string()])
            .args(["-c", "2", "-d", "300ms", "--json", "--quiet"]);
        if close {
            cmd.arg("--close");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["mode"], if close { "close" } else { "keepalive" });
        let path = dir.join(format!("{close}.json"));
        std::fs::write(&path, &out.stdout).unwrap();
        inputs.push(path);
    }
    let svg = dir.join("p.svg");
    let out = Command::new(BIN)
        .arg("plot")
        .args([
            "--input",
            inputs[0].to_str().unwrap(),
            "--label",
            "keep-alive",
        ])
        .args(["--input", inputs[1].to_str().unwrap(), "--label", "close"])
        .args(["--output", svg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("keep-alive") && text.contains("close"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compare_report_writes_results_and_plot() {
    let dir = std::env::temp_dir().join(format!("uringlb-bench-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrk = |requests: u64, p99: u64| {
        format!(
            r#"{{"requests":{requests},"duration_us":3000000,"bytes":10,"errors":{{"connect":0,"read":0,"write":0,"status":0,"timeout":0}},"latency_us":{{"min":50,"mean":900.5,"stdev":100.25,"max":9000}},"percentiles":[{{"percentile":50,"us":800}},{{"percentile":90,"us":1000}},{{"percentile":99,"us":{p99}}},{{"percentile":99.9,"us":3000}},{{"percentile":99.99,"us":8000}}]}}"#
        )
    };
    let mut lines = Vec::new();
    for (sys, reqs, p99) in [("uringlb-auto", 200_000, 1500), ("haproxy", 180_000, 1800)] {
        for wl in ["keepalive", "close"] {
            lines.push(format!(
                r#"{{"round":1,"system":"{sys}","workload":"{wl}","ok":true,"connections":64,"cpu_ticks":250,"clk_tck":100,"wrk":{}}}"#,
                wrk(reqs, p99)
            ));
        }
        lines.push(format!(
            r#"{{"round":1,"system":"{sys}","workload":"download","ok":true,"cpu_ticks":110,"clk_tck":100,"bytes":1073741824,"secs":1.1}}"#
        ));
    }
    let runs = dir.join("runs.jsonl");
    std::fs::write(&runs, lines.join("\n") + "\n").unwrap();
    let (results, latest, svg) = (
        dir.join("r.json"),
        dir.join("latest.json"),
        dir.join("l.svg"),
    );
    let out = Command::new(BIN)
        .arg("compare-report")
        .args(["--runs", runs.to_str().unwrap()])
        .args(["--output", results.to_str().unwrap()])
        .args(["--latest", latest.to_str().unwrap()])
        .args(["--meta", "rounds=1", "--meta", "note=a=b"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("keep-alive requests") && table.contains("x CPU"),
        "{table}"
    );
    assert!(
        table.contains("uringlb-auto") && table.contains("1.11"),
        "{table}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&latest).unwrap()).unwrap();
    assert_eq!(v["schema"], "uringlb-bench/compare/v1");
    assert_eq!(v["meta"]["note"], "a=b");
    assert_eq!(v["baselines"]["download"], "haproxy");
    assert_eq!(
        std::fs::read(&results).unwrap(),
        std::fs::read(&latest).unwrap()
    );

    let out = Command::new(BIN)
        .args(["plot", "--input", latest.to_str().unwrap()])
        .args(["--output", svg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("uringlb-auto") && text.contains("haproxy") && text.contains("99.9"));
    std::fs::remove_dir_all(&dir).unwrap();
}
