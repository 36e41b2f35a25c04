//! A strict parser of the OpenMetrics text format that `/metrics` serves, and a second
//! opinion from the Prometheus project's own Python parser when it is installed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};

/// A parsed exposition: every sample, by family.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Family name -> (type, unit).
    pub families: BTreeMap<String, (String, Option<String>)>,
    /// (sample name, labels) -> value.
    pub samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

impl Metrics {
    /// The value of the sample `name{labels}` (exactly these labels). A per-backend series
    /// asked for without `service` is the one of the service `default` (a balancer set up
    /// by flags).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(v) = self.samples.get(&(name.to_string(), l.clone())) {
            return Some(*v);
        }
        if l.contains_key("backend") && !l.contains_key("service") {
            l.insert("service".to_string(), "default".to_string());
            return self.samples.get(&(name.to_string(), l)).copied();
        }
        None
    }

    /// Like [`get`](Self::get), panicking when the sample is missing.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    /// Every sample called `name`: (labels, value).
    pub fn all(&self, name: &str) -> Vec<(&BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l, *v))
            .collect()
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
