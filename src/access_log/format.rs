//! Turning a [`Record`] into one line of JSON or logfmt (pure: names and the wall-clock
//! time are given).

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Format, Record};
use crate::direction::Dir;

/// A record with its names resolved: the line's fields, in their order.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    pub ts: &'a str,
    pub service: &'a str,
    pub client: Option<SocketAddr>,
    pub listen: SocketAddr,
    pub backend: Option<&'a str>,
    pub backend_addr: Option<SocketAddr>,
    /// The server name a TLS client asked for, once SNI routing reads it; `null` until then.
    pub sni: Option<&'a str>,
    pub duration_ms: f64,
    pub connect_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub retries: u32,
    pub result: &'static str,
}

/// Milliseconds with microsecond precision.
fn ms(ns: u64) -> f64 {
    (ns / 1000) as f64 / 1000.0
}

/// Writes `r` as one line (with its newline) to `out`. `epoch` is the wall-clock time of
/// the workers' clock zero; `service` and `backend` the names of its ids.
pub fn write_line(
    format: Format,
    r: &Record,
    epoch: SystemTime,
    service: &str,
    backend: Option<&str>,
    out: &mut Vec<u8>,
) {
    let mut ts = [0u8; 24];
    let ts = rfc3339(epoch + Duration::from_nanos(r.end_ns), &mut ts);
    let line = Line {
        ts,
        service,
        client: r.client,
        listen: r.listen,
        backend: r.backend.map(|_| backend.unwrap_or("")),
        backend_addr: r.backend.map(|(_, a)| a),
        sni: r.sni.as_ref().map(crate::sni::SniName::as_str),
        duration_ms: ms(r.end_ns.saturating_sub(r.start_ns)),
        connect_ms: r.connect_ns.map(ms),
        bytes_in: r.bytes[Dir::Up],
        bytes_out: r.bytes[Dir::Down],
        retries: r.retries,
        result: r.end.name(),
    };
    match format {
        Format::Json => {
            // Only I/O errors are possible, and a Vec has none.
            let _ = serde_json::to_writer(&mut *out, &line);
        }
        Format::Logfmt => logfmt(&line, out),
    }
    out.push(b'\n');
}

/// `key=value` pairs; a value with a space, `"`, `=` or nothing in it is quoted; absent
/// values are left out.
fn logfmt(l: &Line<'_>, out: &mut Vec<u8>) {
    let _ = write!(out, "ts={}", l.ts);
    text(out, "service", l.service);
    if let Some(c) = l.client {
        let _ = write!(out, " client={c}");
    }
    let _ = write!(out, " listen={}", l.listen);
    if let Some(b) = l.backend {
        text(out, "backend", b);
    }
    if let Some(a) = l.backend_addr {
        let _ = write!(out, " backend_addr={a}");
    }
    if let Some(s) = l.sni {
        text(out, "sni", s);
    }
    let _ = write!(out, " duration_ms={}", l.duration_ms);
    if let Some(c) = l.connect_ms {
        let _ = write!(out, " connect_ms={c}");
    }
    let _ = write!(
        out,
        " bytes_in={} bytes_out={} retries={} result={}",
        l.bytes_in, l.bytes_out, l.retries, l.result
    );
}

fn text(out: &mut Vec<u8>, key: &str, value: &str) {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b > b' ' && b != b'"' && b != b'=' && b != 0x7f);
    if plain {
        let _ = write!(out, " {key}={value}");
        return;
    }
    let _ = write!(out, " {key}=\"");
    for c in value.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// `t` as RFC 3339 in UTC with milliseconds (`2026-11-30T11:20:05.123Z`), in `buf`.
pub fn rfc3339(t: SystemTime, buf: &mut [u8; 24]) -> &str {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    let mut w = &mut buf[..];
    let _ = write!(
        w,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    );
    // Always ASCII, 24 bytes for years 0..=9999.
    std::str::from_utf8(buf).unwrap_or("")
}

/// Year, month, day of the `days`-th day after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::End;
    use crate::backend::{BackendId, ServiceId};
    use crate::direction::PerDir;

    fn record() -> Record {
        Record {
            service: ServiceId(0),
            client: Some("10.0.0.1:5555".parse().expect("addr")),
            listen: "127.0.0.1:8080".parse().expect("addr"),
            backend: Some((BackendId(3), "10.0.0.9:80".parse().expect("addr"))),
            start_ns: 1_000_000,
            end_ns: 13_500_000,
            connect_ns: Some(250_000),
            bytes: PerDir::new(100, 2000),
            retries: 1,
            end: End::Closed,
            sni: None,
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let mut b = [0u8; 24];
        assert_eq!(rfc3339(UNIX_EPOCH, &mut b), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // a leap year's Feb 29
        assert_eq!(rfc3339(t, &mut b), "2024-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_868_800); // 2000-03-01
        assert_eq!(rfc3339(t, &mut b), "2000-03-01T00:00:00.000Z");
    }

    #[test]
    fn json_line() {
        let mut out = Vec::new();
        write_line(
            Format::Json,
            &record(),
            UNIX_EPOCH,
            "web",
            Some("b\"1"),
            &mut out,
        );
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(
            text,
            "{\"ts\":\"1970-01-01T00:00:00.013Z\",\"service\":\"web\",\"client\":\"10.0.0.1:5555\",\
             \"listen\":\"127.0.0.1:8080\",\"backend\":\"b\\\"1\",\"backend_addr\":\"10.0.0.9:80\",\
             \"sni\":null,\"duration_ms\":12.5,\"connect_ms\":0.25,\"bytes_in\":100,\
             \"bytes_out\":2000,\"retries\":1,\"result\":\"closed\"}\n"
        );
    }

    #[test]
    fn logfmt_line_quotes_and_omits() {
        let mut r = record();
        r.connect_ns = None;
        r.client = None;
        let mut out = Vec::new();
        write_line(
            Format::Logfmt,
            &r,
            UNIX_EPOCH,
            "web",
            Some("my b=1"),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "ts=1970-01-01T00:00:00.013Z service=web listen=127.0.0.1:8080 \
             backend=\"my b=1\" backend_addr=10.0.0.9:80 duration_ms=12.5 bytes_in=100 \
             bytes_out=2000 retries=1 result=closed\n"
        );
    }
}
