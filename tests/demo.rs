//! `uringlb demo` through the real binary: it must run with no setup, exit 0 and print a
//! table whose numbers show traffic reaching every backend through the balancer.

use std::collections::BTreeMap;
use std::process::Command;

/// The rows of the demo's result table: `label  value [...]`, label possibly with spaces
/// (`latency p99`), value the first token that parses as a number.
fn rows(stdout: &str) -> BTreeMap<String, f64> {
    let mut rows = BTreeMap::new();
    for line in stdout.lines().filter(|l| l.starts_with("  ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| w.parse::<f64>().is_ok()) {
            if i > 0 {
                rows.insert(words[..i].join(" "), words[i].parse().unwrap());
            }
        }
    }
    rows
}

#[test]
fn demo_runs_and_reaches_every_backend() {
    let out = Command::new(env!("CARGO_BIN_EXE_uringlb"))
        .arg("demo")
        .env("URINGLB_DEMO_SECS", "2")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the uringlb binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "uringlb demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let rows = rows(&stdout);
    let get = |k: &str| {
        *rows
            .get(k)
            .unwrap_or_else(|| panic!("no '{k}' row in the demo table:\n{stdout}"))
    };

    assert!(get("requests/s") > 0.0, "no throughput:\n{stdout}");
    assert_eq!(get("errors"), 0.0, "errors during the demo:\n{stdout}");
    let requests = get("requests");
    let mut per_backend = 0.0;
    for name in ["backend-1", "backend-2", "backend-3"] {
        let n = get(name);
        assert!(n > 0.0, "{name} got no requests:\n{stdout}");
        per_backend += n;
    }
    assert_eq!(
        per_backend, requests,
        "per-backend counts do not add up to the total:\n{stdout}"
    );
    for p in ["latency p50", "latency p99", "latency p99.9"] {
        assert!(get(p) > 0.0, "no {p}:\n{stdout}");
    }
    // A progress line a second goes to stderr, not into the table.
    assert!(
        stderr.lines().any(|l| l.contains("req/s")),
        "no progress lines on stderr:\n{stderr}"
    );
}

#[test]
fn demo_rejects_a_bad_duration_in_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_uringlb"))
        .arg("demo")
        .env("URINGLB_DEMO_SECS", "soon")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the uringlb binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("URINGLB_DEMO_SECS"),
        "stderr: {stderr}"
    );
}
