//! The shared entry points of the fuzz targets (`fuzz/fuzz_targets/`, nightly, libFuzzer)
//! and of the corpus replay test (`tests/fuzz_corpus.rs`, stable), so that `cargo test`
//! replays every saved input through exactly the checks the fuzzer ran.
//!
//! Each function takes arbitrary bytes, must not panic on any of them, and panics (which
//! the fuzzer reports as a crash) when an invariant of the code under test is broken.
//! Host names resolve offline (see [`offline_resolver`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::config::{self, BackendSpec, Config};
use crate::control::admin;
use crate::proxy_protocol::{self, Decoded};

/// Every host resolves to 192.0.2.1 (TEST-NET-1) except `*.invalid`, which fails:
/// both outcomes are exercised and no input waits for DNS.
pub fn offline_resolver(host: &str, port: u16) -> std::io::Result<Option<SocketAddr>> {
    if host.ends_with(".invalid") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "name not known",
        ));
    }
    Ok(Some(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        port,
    )))
}

fn offline() {
    config::set_resolver(offline_resolver);
}

/// The string parsers quote their input as given (their callers escape it for display:
/// `parse_error` for TOML, JSON for the admin API), so only an input without control
/// characters must give a one-line message.
fn one_line_for(input: &[u8], what: &str, msg: &str) {
    if !input.iter().any(|b| b.is_ascii_control() || *b == b'\\') {
        one_line(what, msg);
    }
}

fn one_line(what: &str, msg: &str) {
    assert!(
        !msg.contains('\n') && !msg.contains('\r'),
        "{what}: message is not one line: {msg:?}"
    );
}

/// `proxy_protocol::decode`: a header is no longer than the input, decodes alike on its
/// own and followed by anything; an incomplete or refused input stays so when cut short
/// to any prefix that is still not a header (refusal is final, incompleteness monotone).
pub fn proxy_header(data: &[u8]) {
    let got = proxy_protocol::decode(data);
    match &got {
        Ok(Decoded::Header { len, addrs }) => {
            assert!(*len <= data.len() && *len <= proxy_protocol::MAX_DECODE);
            let alone = proxy_protocol::decode(&data[..*len]);
            assert_eq!(alone, got, "the header alone decodes differently");
            // No proper prefix of a header is itself a header or an error.
            for k in [0, len / 2, len - 1] {
                assert_eq!(
                    proxy_protocol::decode(&data[..k]),
                    Ok(Decoded::Incomplete),
                    "prefix of {k} bytes of a {len}-byte header"
                );
            }
            if let Some((s, d)) = addrs {
                assert_eq!(s.is_ipv4(), d.is_ipv4(), "mixed families");
            }
        }
        Ok(Decoded::Incomplete) => {
            assert!(data.len() < proxy_protocol::MAX_DECODE);
            for k in [0, data.len() / 2] {
                assert_eq!(proxy_protocol::decode(&data[..k]), Ok(Decoded::Incomplete));
            }
        }
        Err(e) => {
            one_line("decode", &e.to_string());
            // More bytes never rescue a refused buffer (the reason may change: a cut
            // after CR reports the bad field, CR CR the bad line end).
            for more in [&b"\n"[..], b"\r\n", b" 1 2\r\n"] {
                let longer = [data, more].concat();
                assert!(proxy_protocol::decode(&longer).is_err(), "{e} then ok");
            }
        }
    }
}

/// `config::parse_toml`, then defaults and `validate`: errors are one line; parsing is
/// deterministic; overlaying nothing changes nothing; a valid config validates again.
pub fn config_toml(data: &[u8]) {
    offline();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let partial = match config::parse_toml(text, "fuzz.toml") {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.chars().any(char::is_control), "parse_toml: {msg:?}");
            assert!(msg.starts_with("fuzz.toml:"), "no position: {msg}");
            return;
        }
    };
    assert_eq!(
        config::parse_toml(text, "fuzz.toml").ok(),
        Some(partial.clone())
    );
    let empty = config::PartialConfig::default();
    assert_eq!(partial.clone().overlay(empty.clone()), partial);
    assert_eq!(empty.overlay(partial.clone()), partial);
    let cfg = partial.apply_to(Config::default());
    match cfg.validate() {
        Ok(()) => {
            assert!(cfg.clone().validate().is_ok());
            for line in config::summary(&cfg).lines() {
                one_line("summary", line);
            }
            for b in &cfg.service.backends {
                assert_eq!(config::parse_backend_name(&b.name).as_ref(), Ok(&b.name));
                assert!(b.weight >= 1 && b.weight <= config::MAX_WEIGHT);
            }
        }
        Err(e) => one_line("validate", &e.to_string()),
    }
}

/// The `--backend` text that means `spec`.
fn backend_text(spec: &BackendSpec) -> String {
    let mut t = format!("{},weight={},name={}", spec.addr, spec.weight, spec.name);
    if let Some(m) = spec.max_conns {
        t.push_str(&format!(",max-conns={m}"));
    }
    t
}

/// A spec as `validate` would check it: weight, name and port in range.
fn check_spec(what: &str, spec: &BackendSpec) {
    assert!(
        (1..=config::MAX_WEIGHT).contains(&spec.weight),
        "{what}: weight {}",
        spec.weight
    );
    assert_ne!(spec.addr.port(), 0, "{what}: port 0");
    assert_ne!(spec.max_conns, Some(0), "{what}: max-conns 0");
    assert_eq!(
        config::parse_backend_name(&spec.name).as_ref(),
        Ok(&spec.name),
        "{what}: name"
    );
    // The canonical `--backend` text of an accepted spec means the same spec.
    let text = backend_text(spec);
    assert_eq!(config::parse_backend(&text).as_ref(), Ok(spec), "{text}");
}

/// `config::parse_backend` / `parse_backend_addr`: errors are one line; an accepted spec
/// is in range and round-trips through its canonical text; its address is the one
/// `parse_backend_addr` gives for the address part.
pub fn backend_spec(data: &[u8]) {
    offline();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse_backend(text) {
        Ok(spec) => {
            check_spec("parse_backend", &spec);
            let addr_part = text.split(',').next().unwrap_or("");
            assert_eq!(config::parse_backend_addr(addr_part), Ok(spec.addr));
        }
        Err(m) => one_line_for(data, "parse_backend", &m),
    }
    match config::parse_backend_addr(text) {
        Ok(a) => {
            assert_ne!(a.port(), 0);
            assert_eq!(config::parse_backend_addr(&a.to_string()), Ok(a));
        }
        Err(m) => one_line_for(data, "parse_backend_addr", &m),
    }
}

/// `config::parse_duration` / `parse_positive_duration`: an accepted duration is at most
/// `MAX_DURATION`; the two agree except on zero; surrounding spaces don't matter; and
/// `SECS.NANOSs` (nanosecond-exact) parses back to the same duration.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let d = config::parse_duration(text);
    let p = config::parse_positive_duration(text);
    // Messages quote the input as given, so only the outcome is compared.
    assert_eq!(
        config::parse_duration(&format!(" {text}\t")).ok(),
        d.clone().ok()
    );
    match &d {
        Ok(d) => {
            assert!(*d <= config::MAX_DURATION, "{text:?} gave {d:?}");
            match &p {
                Ok(p) => assert!(p == d && !d.is_zero()),
                Err(m) => {
                    assert!(d.is_zero(), "positive refused {d:?}: {m}");
                    one_line_for(data, "parse_positive_duration", m);
                }
            }
            let exact = format!("{}.{:09}s", d.as_secs(), d.subsec_nanos());
            assert_eq!(config::parse_duration(&exact), Ok(*d), "{exact}");
            let ms = format!("{}ms", d.as_millis());
            let floor = Duration::from_millis(d.as_millis() as u64);
            assert_eq!(config::parse_duration(&ms), Ok(floor), "{ms}");
        }
        Err(m) => {
            one_line_for(data, "parse_duration", m);
            assert!(p.is_err());
        }
    }
}

/// The admin API's `POST /backends` and `PATCH /backends/{name}` bodies: errors are one
/// line; an added backend follows `--backend`'s rules (same spec from its `--backend`
/// text and from its canonical JSON); a patch changes something, in range.
pub fn admin_body(data: &[u8]) {
    offline();
    match admin::parse_add_backend(data) {
        Ok(spec) => {
            check_spec("POST /backends", &spec);
            let mut json = serde_json::json!({
                "addr": spec.addr.to_string(),
                "weight": spec.weight,
                "name": spec.name,
            });
            if let Some(m) = spec.max_conns {
                json["max_conns"] = m.into();
            }
            let again = admin::parse_add_backend(json.to_string().as_bytes());
            assert_eq!(again.as_ref(), Ok(&spec), "{json}");
        }
        Err(m) => one_line_for(data, "POST /backends", &m),
    }
    match admin::parse_patch(data) {
        Ok((weight, state)) => {
            assert!(weight.is_some() || state.is_some());
            if let Some(w) = weight {
                assert!((1..=config::MAX_WEIGHT).contains(&w));
            }
        }
        Err(m) => one_line_for(data, "PATCH /backends", &m),
    }
}

/// `tls_hello::parse`: a name read is a valid lower-case host name; every prefix of a
/// complete hello is incomplete or complete alike (never an error: the worker would have
/// closed a client that was sending a good hello); an error stays an error with more bytes;
/// and a hello cut into records differently (any record size) reads the same name.
pub fn tls_hello(data: &[u8]) {
    use crate::tls_hello::{parse, Hello, MAX_HELLO};
    let got = parse(data);
    match got {
        Ok(Hello::Complete(name)) => {
            if let Some(n) = name {
                let s = n.as_str();
                assert!(crate::sni::SniName::parse(s) == Some(n), "{s:?}");
                assert_eq!(s, s.to_ascii_lowercase());
            }
            for k in [
                0,
                data.len() / 3,
                data.len() / 2,
                data.len().saturating_sub(1),
            ] {
                assert!(
                    parse(&data[..k]).is_ok(),
                    "a prefix of {k} bytes of a complete hello is an error"
                );
            }
            let longer = [data, &[0x17, 3, 3, 0, 1, 0][..]].concat();
            assert_eq!(parse(&longer), got, "bytes after the hello changed it");
        }
        Ok(Hello::Incomplete) => assert!(data.len() < MAX_HELLO),
        Err(e) => {
            one_line("tls_hello", &e.to_string());
            let longer = [data, &[22, 3, 1, 0, 1, 1][..]].concat();
            assert!(parse(&longer).is_err(), "{e} then ok");
        }
    }
}
