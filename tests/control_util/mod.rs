//! Helpers for the admin, metrics, reload and restart tests: a small HTTP/1.1 client for
//! the admin endpoint, a strict parser of the OpenMetrics text format, a loop of new
//! connections and long byte-checked echo transfers. Test files that use it also declare
//! `mod util;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::Socket;

use crate::util::{pattern, read_line, Fnv, Lb, BIN};

// ---- HTTP ---------------------------------------------------------------------------------

/// One HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error` of a JSON error body; panics if the body is not one.
    pub fn error(&self) -> String {
        match self.json().get("error").and_then(Value::as_str) {
            Some(e) => e.to_string(),
            None => panic!("no JSON error body: {:?}", self.body),
        }
    }
}

/// Sends one request on a new connection (`Connection: close`) and reads the answer.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to admin {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    // The server may answer (413) and close before reading a large body: ignore EPIPE.
    let _ = s.write_all(&bytes);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The admin endpoint of a running balancer.
#[derive(Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Admin {
    pub fn new(addr: SocketAddr) -> Admin {
        Admin { addr, token: None }
    }

    /// A request with the bearer token (if any) and, with a body, the JSON content type.
    pub fn req(&self, method: &str, path: &str, json: Option<&str>) -> Resp {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        if json.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        http(self.addr, method, path, &headers, json.map(str::as_bytes))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, None)
    }

    /// `GET /backends`, by name.
    pub fn backends(&self) -> BTreeMap<String, Value> {
        let r = self.get("/backends");
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
            .as_array()
            .expect("an array")
            .iter()
            .map(|b| (b["name"].as_str().expect("name").to_string(), b.clone()))
            .collect()
    }

    /// `GET /metrics`, checked by the strict parser (and by the Prometheus project's own
    /// Python parser when it is installed).
    pub fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        parse_openmetrics(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body))
    }
}

/// Starts a balancer with an admin endpoint on a free loopback port.
pub fn start_with_admin(args: &[&str]) -> (Lb, Admin) {
    let admin = crate::util::free_addr();
    let a = admin.to_string();
    let mut all = vec!["--admin", a.as_str()];
    all.extend_from_slice(args);
    let lb = Lb::start(&all);
    wait_admin(admin);
    (lb, Admin::new(admin))
}

/// Waits until the admin endpoint answers.
pub fn wait_admin(addr: SocketAddr) {
    wait_until("the admin endpoint", Duration::from_secs(10), || {
        TcpStream::connect(addr).is_ok()
    });
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- OpenMetrics text, strictly ---------------------------------------------------------

/// A parsed exposition: every sample, by family.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Family name -> (type, unit).
    pub families: BTreeMap<String, (String, Option<String>)>,
    /// (sample name, labels) -> value.
    pub samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

impl Metrics {
    /// The value of the sample `name{labels}` (exactly these labels).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_string(), l)).copied()
    }

    /// Like [`get`](Self::get), panicking when the sample is missing.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    /// The sum over every sample called `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// A number as the format writes it: decimal or exponent notation, `+Inf`, `-Inf`, `NaN`.
fn parse_number(s: &str) -> Option<f64> {
    match s {
        "+Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        "NaN" => return Some(f64::NAN),
        _ => {}
    }
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && s.chars().any(|c| c.is_ascii_digit());
    if ok {
        s.parse().ok()
    } else {
        None
    }
}

/// `{k="v",...}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected '{'")?;
    if let Some(r) = rest.strip_prefix('}') {
        return Ok((labels, r));
    }
    loop {
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape in label value: {other:?}")),
                },
                Some((_, '\n')) => return Err("newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        rest = rest
            .strip_prefix(',')
            .ok_or("expected ',' or '}' after a label")?;
    }
}

/// Parses the OpenMetrics 1.0 text format strictly: every line is a descriptor or a sample
/// of the family described last, families are not interleaved or repeated, sample names
/// carry their type's suffixes (`_total` for counters; `_bucket`, `_count`, `_sum` for
/// histograms), no series twice, counters non-negative, histogram buckets cumulative and
/// ending in `+Inf` equal to `_count`, and the text ends with `# EOF`.
///
/// Written here rather than taken from `prometheus-parse`: that crate (0.2.5) is
/// regex-based and lenient (it skips lines it does not understand, splits label values at
/// `=` and `,`, and does not tie `_total` samples to their counter), and a fix for label
/// values has waited unmerged since 2024, so it would accept what Prometheus rejects.
pub fn parse_openmetrics(text: &str) -> Result<Metrics, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the exposition must end with \"# EOF\\n\"")?;
    let mut m = Metrics::default();
    let mut seen_families: HashSet<String> = HashSet::new();
    let mut current: Option<(String, String)> = None; // (name, type)
    let mut series: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
    for (i, line) in body.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", i + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or_default();
            let name = parts
                .next()
                .ok_or_else(|| at("descriptor without a name".into()))?;
            let arg = parts.next().unwrap_or_default();
            if !valid_metric_name(name) {
                return Err(at(format!("invalid metric name {name:?}")));
            }
            let new_family = current.as_ref().is_none_or(|(n, _)| n != name);
            if new_family {
                if !seen_families.insert(name.to_string()) {
                    return Err(at(format!("family {name} appears twice")));
                }
                current = Some((name.to_string(), "unknown".to_string()));
                m.families
                    .insert(name.to_string(), ("unknown".to_string(), None));
            }
            match kind {
                "HELP" => {}
                "TYPE" => {
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "gaugehistogram",
                        "stateset",
                        "info",
                        "summary",
                        "unknown",
                    ];
                    if !known.contains(&arg) {
                        return Err(at(format!("unknown type {arg:?}")));
                    }
                    if let Some(c) = current.as_mut() {
                        c.1 = arg.to_string();
                    }
                    if let Some(f) = m.families.get_mut(name) {
                        f.0 = arg.to_string();
                    }
                }
                "UNIT" => {
                    if !name.ends_with(&format!("_{arg}")) {
                        return Err(at(format!("name does not end with its unit {arg}")));
                    }
                    if let Some(f) = m.families.get_mut(name) {
                        f.1 = Some(arg.to_string());
                    }
                }
                other => return Err(at(format!("unknown descriptor {other:?}"))),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| at("sample without a value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(at(format!("invalid metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("expected one space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = fields
            .next()
            .and_then(parse_number)
            .ok_or_else(|| at("bad value".into()))?;
        if let Some(ts) = fields.next() {
            parse_number(ts).ok_or_else(|| at("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields (exemplars are not expected)".into()));
        }
        let (family, kind) = current
            .as_ref()
            .ok_or_else(|| at("sample before any descriptor".into()))?;
        let suffix = name
            .strip_prefix(family.as_str())
            .ok_or_else(|| at(format!("sample outside its family {family}")))?;
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            _ => &[""],
        };
        if !allowed.contains(&suffix) {
            return Err(at(format!("suffix {suffix:?} not allowed for a {kind}")));
        }
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("negative or NaN counter".into()));
        }
        if (suffix == "_bucket") != labels.contains_key("le") {
            return Err(at(
                "'le' belongs on histogram buckets, and only there".into()
            ));
        }
        if !series.insert((name.to_string(), labels.clone())) {
            return Err(at("the same series twice".into()));
        }
        m.samples.insert((name.to_string(), labels), value);
    }
    check_histograms(&m)?;
    Ok(m)
}

fn check_histograms(m: &Metrics) -> Result<(), String> {
    for (family, (kind, _)) in &m.families {
        if kind != "histogram" {
            continue;
        }
        // Buckets per label set (without `le`), in ascending `le`.
        let mut groups: HashMap<BTreeMap<String, String>, Vec<(f64, f64)>> = HashMap::new();
        for ((name, labels), v) in &m.samples {
            if *name != format!("{family}_bucket") {
                continue;
            }
            let mut rest = labels.clone();
            let le = rest.remove("le").and_then(|s| parse_number(&s));
            let le = le.ok_or_else(|| format!("{family}: bad le"))?;
            groups.entry(rest).or_default().push((le, *v));
        }
        for (labels, mut buckets) in groups {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
                return Err(format!("{family}{labels:?}: no +Inf bucket"));
            }
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family}{labels:?}: buckets not cumulative"));
            }
            let lv: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let count = m.get(&format!("{family}_count"), &lv);
            if count != buckets.last().map(|b| b.1) {
                return Err(format!("{family}{labels:?}: +Inf bucket != _count"));
            }
            if m.get(&format!("{family}_sum"), &lv).is_none() {
                return Err(format!("{family}{labels:?}: no _sum"));
            }
        }
    }
    Ok(())
}

/// Parses `text` with the Prometheus project's Python client (`prometheus_client`, the
/// parser prometheus-client's own tests use) under the first interpreter that has it
/// (`pip install prometheus_client`, or Debian's `python3-prometheus-client` for
/// /usr/bin/python3). `Ok(false)` = skipped: installed nowhere.
pub fn python_parse(text: &str) -> Result<bool, String> {
    for python in ["python3", "/usr/bin/python3"] {
        if python_parse_with(python, text)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn python_parse_with(python: &str, text: &str) -> Result<bool, String> {
    const SCRIPT: &str = "import sys\n\
        try:\n    from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        except ImportError:\n    sys.exit(77)\n\
        fams = list(text_string_to_metric_families(sys.stdin.read()))\n\
        print(len(fams))\n";
    let child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        return Ok(false);
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(77) => Ok(false),
        _ => Err(format!(
            "the Python OpenMetrics parser rejected the exposition: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

// ---- processes ------------------------------------------------------------------------

/// Starts `uringlb --listen addr ARGS...` logging to its own file (two balancers may share
/// a listen address) and waits until it runs.
pub fn spawn_lb(addr: SocketAddr, tag: &str, args: &[&str]) -> Lb {
    let log = std::env::temp_dir().join(format!(
        "uringlb-test-{}-{}-{tag}.log",
        std::process::id(),
        addr.port()
    ));
    let logf = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .arg("--listen")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .expect("spawn uringlb");
    let mut lb = Lb { child, addr, log };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lb.log_text().contains("uringlb running") {
        if let Ok(Some(st)) = lb.child.try_wait() {
            panic!("uringlb exited early ({st}): {}", lb.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "uringlb did not start: {}",
            lb.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lb
}

/// Writes `text` to `path` atomically (a reload never sees half a file).
pub fn write_atomic(path: &Path, text: &str) {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

// ---- load -------------------------------------------------------------------------------

/// One new-connection attempt: the backend's greeting, or why it failed.
#[derive(Debug)]
pub struct Attempt {
    pub start: Instant,
    pub end: Instant,
    pub result: Result<String, String>,
}

/// Closes with a reset (SO_LINGER 0): tens of thousands of short connections leave no
/// TIME_WAIT sockets behind on a machine shared with others.
pub fn close_reset(s: TcpStream) {
    let _ = Socket::from(s).set_linger(Some(Duration::ZERO));
}

/// Connects, reads the name backend's greeting, closes with a reset.
pub fn greet_once(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let name = read_line(&mut s);
    close_reset(s);
    if name.is_empty() {
        Err("closed without a greeting".into())
    } else {
        Ok(name)
    }
}

/// Client threads opening a new connection per attempt until stopped, each pausing
/// `pause` between attempts.
pub struct ConnLoop {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Attempt>>>,
}

impl ConnLoop {
    pub fn start(addr: SocketAddr, threads: usize, pause: Duration) -> ConnLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let result = greet_once(addr);
                        out.push(Attempt {
                            start,
                            end: Instant::now(),
                            result,
                        });
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                    out
                })
            })
            .collect();
        ConnLoop { stop, threads }
    }

    pub fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Attempt> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect();
        all.sort_by_key(|a| a.start);
        all
    }
}

/// Attempts per backend name ("FAILED" for failures).
pub fn per_backend(attempts: &[Attempt]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in attempts {
        let k = match &a.result {
            Ok(n) => n.clone(),
            Err(_) => "FAILED".to_string(),
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// A long echo transfer through a name backend: pattern data written in chunks until
/// stopped, every byte read back and compared.
pub struct LongEcho {
    pub backend: String,
    stop: Arc<AtomicBool>,
    writer: JoinHandle<Result<(usize, u64), String>>,
    reader: JoinHandle<Result<(usize, u64), String>>,
}

/// What a finished [`LongEcho`] saw.
#[derive(Debug)]
pub struct EchoResult {
    pub backend: String,
    pub sent: usize,
    pub received: usize,
    pub exact: bool,
}

impl LongEcho {
    /// Connects and reads the greeting; then writes `chunk` bytes every `pause`.
    pub fn start(addr: SocketAddr, seed: u64, chunk: usize, pause: Duration) -> LongEcho {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let backend = read_line(&mut s);
        assert!(!backend.is_empty(), "no greeting");
        let stop = Arc::new(AtomicBool::new(false));
        let mut w = s.try_clone().expect("clone");
        let st = stop.clone();
        let writer = std::thread::spawn(move || {
            let data = pattern(seed, 1 << 20);
            let mut h = Fnv::new();
            let mut sent = 0usize;
            while !st.load(Ordering::Relaxed) {
                let off = sent % data.len();
                let n = chunk.min(data.len() - off);
                w.write_all(&data[off..off + n])
                    .map_err(|e| format!("write after {sent} bytes: {e}"))?;
                h.update(&data[off..off + n]);
                sent += n;
                std::thread::sleep(pause);
            }
            w.shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            Ok((sent, h.0))
        });
        let mut r = s;
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut h = Fnv::new();
            let mut got = 0usize;
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return Ok((got, h.0)),
                    Ok(n) => {
                        h.update(&buf[..n]);
                        got += n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("read after {got} bytes: {e}")),
                }
            }
        });
        LongEcho {
            backend,
            stop,
            writer,
            reader,
        }
    }

    /// Stops writing, half-closes, reads the rest of the echo; compares.
    pub fn finish(self) -> Result<EchoResult, String> {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, sent_hash) = self.writer.join().map_err(|_| "writer panicked")??;
        let (received, got_hash) = self.reader.join().map_err(|_| "reader panicked")??;
        Ok(EchoResult {
            backend: self.backend,
            sent,
            received,
            exact: sent == received && sent_hash == got_hash,
        })
    }
}
