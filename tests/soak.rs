//! The fault soak (`uringlb-bench soak`) for 60 seconds against the real binary: under
//! byte-checked load, with backends killed and restarted, reloads by SIGHUP and by
//! `POST /reload`, drains, deletes and re-adds, and idle bursts up to `--max-conns`, no
//! byte is lost or corrupted, nothing fails that a killed backend does not explain, no
//! descriptor leaks, and every backend ends with no active connection.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use uringlb_bench::soak::{self, SoakConfig};

#[test]
fn sixty_second_fault_soak() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    let cfg = SoakConfig {
        seed,
        // Shorter gaps than the 1-5 s default, so a minute surely holds every kind twice.
        interval_max: Duration::from_secs(3),
        progress: None,
        ..SoakConfig::new(
            PathBuf::from(env!("CARGO_BIN_EXE_uringlb")),
            Duration::from_secs(60),
        )
    };
    let t0 = Instant::now();
    let r = soak::run(&cfg).expect("the soak could not run");
    let took = t0.elapsed();
    let table = r.table();
    eprintln!(
        "soak took {:.1} s (seed {seed}):\n{table}",
        took.as_secs_f64()
    );

    assert!(r.passed, "the soak failed (seed {seed}):\n{table}");
    let c = &r.connections;
    assert_eq!(c.failed, 0, "{table}");
    assert_eq!(c.corrupted, 0, "{table}");
    assert!(c.bytes_checked >= 256 << 20, "too little traffic: {table}");
    assert!(c.long_ok >= 1 && c.ok >= 1000, "{table}");
    // The balancer saw all of it (and the bursts): nothing bypassed it.
    assert!(r.metrics.accepted_total >= c.attempted, "{table}");
    assert!(r.metrics.workers >= 1, "{table}");

    let e = &r.events;
    for (kind, n) in [
        ("kill", e.kills),
        ("SIGHUP reload", e.reloads_sighup),
        ("POST /reload", e.reloads_post),
        ("drain", e.drains),
        ("delete and re-add", e.removes),
        ("idle burst", e.bursts),
        ("burst reaching --max-conns", e.bursts_at_limit),
    ] {
        assert!(n >= 1, "no {kind} happened:\n{table}");
    }
    assert!(e.errors.is_empty(), "{table}");
    assert!(
        r.metrics.reloads_ok >= e.reloads_sighup + e.reloads_post,
        "{table}"
    );

    let (s, end) = (&r.fds_start, &r.fds_end);
    assert!(end.sockets <= s.sockets && end.other <= s.other, "{table}");
    assert!(end.pipes <= s.pipes + r.pipe_slack, "{table}");
    assert!(
        r.metrics.connections_active.values().all(|n| *n == 0)
            && r.metrics.connections_active.len() == r.backends,
        "{table}"
    );
    assert_eq!(r.balancer_exit, "exit status: 0", "{table}");
}
