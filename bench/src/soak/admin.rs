//! A minimal blocking client for the balancer's admin API (one request per connection)
//! and a reader of the `/metrics` text: only what the soak needs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context as _};

/// One answer: status and body.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: String,
}

/// The admin endpoint of a running balancer.
#[derive(Debug, Clone, Copy)]
pub struct Admin {
    pub addr: SocketAddr,
}

impl Admin {
    /// Sends `METHOD PATH` with an optional JSON body and reads the whole answer.
    pub fn req(&self, method: &str, path: &str, json: Option<&str>) -> anyhow::Result<Resp> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .with_context(|| format!("connect to the admin endpoint {}", self.addr))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.set_write_timeout(Some(Duration::from_secs(15)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(b) = json {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(json.unwrap_or_default());
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .with_context(|| format!("read the answer to {method} {path}"))?;
        parse_response(&raw).with_context(|| format!("{method} {path}"))
    }

    /// Like [`req`](Self::req), failing unless the status is `want`.
    pub fn expect(
        &self,
        method: &str,
        path: &str,
        json: Option<&str>,
        want: u16,
    ) -> anyhow::Result<Resp> {
        let r = self.req(method, path, json)?;
        if r.status != want {
            bail!(
                "{method} {path}: status {} (expected {want}): {}",
                r.status,
                r.body.trim()
            );
        }
        Ok(r)
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        Ok(Metrics::parse(
            &self.expect("GET", "/metrics", None, 200)?.body,
        ))
    }

    /// `GET /backends` as JSON.
    pub fn backends(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let r = self.expect("GET", "/backends", None, 200)?;
        let v: serde_json::Value = serde_json::from_str(&r.body).context("GET /backends")?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }
}

fn parse_response(raw: &[u8]) -> anyhow::Result<Resp> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP response ({} bytes)", raw.len());
    };
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim() == "chunked"
        })
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Resp { status, body })
}

/// Decodes a chunked body; stops at the last chunk or at anything malformed.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The samples of a `/metrics` answer: (name, labels as written, value).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: Vec<(String, String, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let value: f64 = value.trim().parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                Some((name.to_string(), labels.to_string(), value))
            })
            .collect();
        Metrics { samples }
    }

    /// The sum over every sample called `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The samples called `name`, by the value of label `key`.
    pub fn by_label(&self, name: &str, key: &str) -> Vec<(String, f64)> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .filter_map(|(_, labels, v)| Some((label(labels, key)?, *v)))
            .collect()
    }

    /// The sample `name{key="value"}`.
    pub fn get(&self, name: &str, key: &str, value: &str) -> Option<f64> {
        self.by_label(name, key)
            .into_iter()
            .find(|(l, _)| l == value)
            .map(|(_, v)| v)
    }
}

/// The value of `key` in `a="x",b="y"` (values here never contain quotes or commas).
fn label(labels: &str, key: &str) -> Option<String> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metrics_text() {
        let m = Metrics::parse(
            "# TYPE uringlb_accepted counter\n\
             uringlb_accepted_total{worker=\"0\"} 5\n\
             uringlb_accepted_total{worker=\"1\"} 7\n\
             uringlb_connections_active{backend=\"b0\"} 0\n\
             uringlb_connections_active{backend=\"b1\"} 2\n\
             # EOF\n",
        );
        assert_eq!(m.sum("uringlb_accepted_total"), 12.0);
        assert_eq!(
            m.get("uringlb_connections_active", "backend", "b1"),
            Some(2.0)
        );
        assert_eq!(m.by_label("uringlb_connections_active", "backend").len(), 2);
        assert_eq!(m.get("nope", "backend", "b1"), None);
    }

    #[test]
    fn parses_responses_plain_and_chunked() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (201, "{}"));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, "abcde");
        assert!(parse_response(b"garbage").is_err());
    }
}
