//! The access log (`--access-log`) as a test reads it: JSON lines parsed strictly (every
//! field present, nothing else, each of its type), logfmt lines parsed into key/value
//! pairs, and waiting for a number of lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;

use super::wait::wait_for;

/// The keys of a JSON line, in order.
pub const KEYS: [&str; 13] = [
    "ts",
    "service",
    "client",
    "listen",
    "backend",
    "backend_addr",
    "sni",
    "duration_ms",
    "connect_ms",
    "bytes_in",
    "bytes_out",
    "retries",
    "result",
];

/// One JSON line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    pub ts: String,
    pub service: String,
    pub client: Option<String>,
    pub listen: String,
    pub backend: Option<String>,
    pub backend_addr: Option<String>,
    pub sni: Option<String>,
    pub duration_ms: f64,
    pub connect_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retries: u32,
    pub result: String,
}

/// Parses one JSON line strictly: exactly [`KEYS`], in that order, each of its type.
pub fn parse_json_line(line: &str) -> LogLine {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let keys: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {line}"))
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = KEYS.to_vec();
    want.sort_unstable();
    let mut got = keys.clone();
    got.sort_unstable();
    assert_eq!(got, want, "keys of {line}");
    let l: LogLine = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    check_ts(&l.ts);
    l
}

/// Parses one logfmt line: `key=value` or `key="quoted \" value"` pairs.
pub fn parse_logfmt(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i] != b'=' {
            assert!(b[i] != b' ', "a key without a value in {line}");
            i += 1;
        }
        let key = &line[start..i];
        assert!(i < b.len() && !key.is_empty(), "bad pair in {line}");
        i += 1;
        let mut value = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            loop {
                assert!(i < b.len(), "unterminated quote in {line}");
                match b[i] {
                    b'"' => break,
                    b'\\' => {
                        i += 1;
                        value.push(match b[i] {
                            b'n' => '\n',
                            c => c as char,
                        });
                    }
                    c => value.push(c as char),
                }
                i += 1;
            }
            i += 1;
        } else {
            let s = i;
            while i < b.len() && b[i] != b' ' {
                i += 1;
            }
            value = line[s..i].to_string();
        }
        assert!(
            out.insert(key.to_string(), value).is_none(),
            "{key} twice in {line}"
        );
        if i < b.len() {
            assert_eq!(b[i], b' ', "pairs are separated by one space: {line}");
            i += 1;
        }
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, within a day of now.
pub fn check_ts(ts: &str) {
    let b = ts.as_bytes();
    assert_eq!(b.len(), 24, "{ts}");
    for (i, c) in b.iter().enumerate() {
        let want_digit = !matches!(i, 4 | 7 | 10 | 13 | 16 | 19 | 23);
        assert_eq!(c.is_ascii_digit(), want_digit, "{ts}");
    }
    assert_eq!(
        (
            &ts[4..5],
            &ts[7..8],
            &ts[10..11],
            &ts[13..14],
            &ts[16..17],
            &ts[19..20],
            &ts[23..]
        ),
        ("-", "-", "T", ":", ":", ".", "Z"),
        "{ts}"
    );
    let n = |r: std::ops::Range<usize>| ts[r].parse::<i64>().expect("digits");
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant), to compare with the system clock.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((now - secs).abs() < 86_400, "{ts} is not about now");
}

/// The non-empty lines of a file (none if it does not exist).
pub fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Waits until `path` has at least `n` lines; returns them all, parsed.
pub fn wait_json_lines(path: &Path, n: usize) -> Vec<LogLine> {
    let lines = wait_for(
        &format!("{n} access log lines in {}", path.display()),
        Duration::from_secs(20),
        || {
            let l = file_lines(path);
            (l.len() >= n).then_some(l)
        },
    );
    lines.iter().map(|l| parse_json_line(l)).collect()
}

/// A fresh path for an access log in the temporary directory (removed when dropped).
pub struct TempLog(pub PathBuf);

impl TempLog {
    pub fn new(what: &str) -> TempLog {
        static N: AtomicUsize = AtomicUsize::new(0);
        TempLog(std::env::temp_dir().join(format!(
            "uringlb-access-{what}-{}-{}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )))
    }

    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
