//! `bench/compare.sh`'s checks of its settings: bad input fails at once with one clear line,
//! before anything is installed, built or started. CARGO_TARGET_DIR points at an empty
//! directory and NO_BUILD is set, so a check that let bad input through would stop at "no
//! uringlb binary" (and fail the test on the message) instead of starting a benchmark.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn compare(env: &[(&str, &str)]) -> Output {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let empty = std::env::temp_dir().join(format!(
        "uringlb-compare-sh-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new("bash")
        .arg(script("compare.sh"))
        .arg("--quick")
        .env("NO_BUILD", "1")
        .env("CARGO_TARGET_DIR", &empty)
        .env("RESULTS_DIR", &empty)
        .env_remove("WORKLOADS")
        .env_remove("SYSTEMS")
        .env_remove("TLS_CONNS")
        .envs(env.iter().copied())
        .output()
        .expect("run bash");
    let _ = std::fs::remove_dir_all(&empty);
    out
}

#[track_caller]
fn refused(env: &[(&str, &str)], message: &str) {
    let out = compare(env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{env:?}: {out:?}");
    assert_eq!(
        stderr.trim_end(),
        format!("compare.sh: {message}"),
        "{env:?}: stdout {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bad_workloads_and_systems_are_refused_naming_what_is_known() {
    refused(
        &[("WORKLOADS", "tcp,tsl")],
        "unknown workload 'tsl' in WORKLOADS (known: tcp tls udp)",
    );
    refused(
        &[("WORKLOADS", "tcp,*")],
        "unknown workload '*' in WORKLOADS (known: tcp tls udp)",
    );
    refused(
        &[("WORKLOADS", " , ")],
        "WORKLOADS is empty (known: tcp tls udp)",
    );
    refused(
        &[("SYSTEMS", "haproxy nginx-tls")],
        "unknown system 'nginx-tls' (known: uringlb-copy uringlb-splice uringlb-auto haproxy \
         haproxy-splice nginx uringlb-sni uringlb-tcp haproxy-sni nginx-sni)",
    );
    refused(
        &[("WORKLOADS", "tls"), ("SYSTEMS", "haproxy uringlb-auto")],
        "no system of the selected workloads (WORKLOADS=tls) in SYSTEMS",
    );
    refused(
        &[("WORKLOADS", "tls"), ("TLS_CONNS", "0")],
        "TLS_CONNS: expected a whole number above 0, got '0'",
    );
}

#[test]
fn good_workloads_pass_their_check() {
    // Valid lists get as far as the next check (SYSTEMS, before any package or build).
    for w in [
        "tcp",
        "tls",
        "udp",
        "tcp,tls",
        "tls tcp",
        " tls , tcp ",
        "tcp,tls,udp",
    ] {
        refused(
            &[("WORKLOADS", w), ("SYSTEMS", "bogus")],
            "unknown system 'bogus' (known: uringlb-copy uringlb-splice uringlb-auto haproxy \
             haproxy-splice nginx uringlb-sni uringlb-tcp haproxy-sni nginx-sni)",
        );
    }
}

#[test]
fn scripts_parse() {
    for name in ["compare.sh", "lib/tls.sh", "lib/udp.sh", "ab.sh", "soak.sh"] {
        let out = Command::new("bash")
            .arg("-n")
            .arg(script(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
    }
}
