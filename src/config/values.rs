//! The value parsers of the scalar settings (numbers, names, modes), shared by the
//! command line (clap `value_parser`) and the TOML file, so a value means the same thing
//! in both places and is rejected with the same words. Parsers return a one-line `String`
//! reason; the caller adds the flag name (clap) or the file:line:column (TOML).
//! Durations, addresses and backend specs have their own modules.

use std::net::{IpAddr, SocketAddr};

use super::{Algorithm, ForwardMode, HashKey, HealthCheck, ProxyProtocol};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per CPU of this process's affinity mask.
    Auto,
    Count(usize),
}

/// `--tcp-keepalive`: probe a connection idle this long (both sides), or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpKeepalive(pub Option<std::time::Duration>);

/// `DUR` (at least 1s: the kernel counts whole seconds) or `off`.
pub fn parse_tcp_keepalive(s: &str) -> Result<TcpKeepalive, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(TcpKeepalive(None));
    }
    let d = super::duration::parse_duration(t)
        .map_err(|_| format!("expected a duration such as 60s, or 'off', got '{t}'"))?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(32767) {
        return Err(format!(
            "expected a duration from 1s to 32767s, or 'off', got '{t}'"
        ));
    }
    Ok(TcpKeepalive(Some(d)))
}

/// Highest `--workers`.
pub const MAX_WORKERS: usize = 1024;
/// Highest `--retries`.
pub const MAX_RETRIES: u32 = 100;
/// Highest `--rise`/`--fall`.
pub const MAX_RISE_FALL: u32 = 1000;
/// Highest `--eject-after`.
pub const MAX_EJECT_AFTER: u32 = 1_000_000;
/// Lowest `--hash-balance-factor` (percent of the mean load; below 100 nothing fits).
pub const MIN_HASH_BALANCE_FACTOR: u32 = 100;
/// Highest `--hash-balance-factor`.
pub const MAX_HASH_BALANCE_FACTOR: u32 = 100_000;
/// Highest `--maglev-table-size`: one table per worker, 4 bytes an entry.
pub use crate::balance::MAX_MAGLEV_TABLE_SIZE;
/// Default `--splice-pipes`.
pub const DEFAULT_SPLICE_PIPES: usize = 256;
/// Highest `--splice-pipes`: each pipe holds two descriptors of the 20 000 a process may have.
pub const MAX_SPLICE_PIPES: usize = 4096;
/// The `--log-level` values.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// An unsigned integer in `min..=max`.
pub(crate) fn parse_uint(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let t = s.trim();
    let n: u64 = t
        .parse()
        .map_err(|_| format!("must be an integer from {min} to {max}, got '{t}'"))?;
    check_range(n, min, max)?;
    Ok(n)
}

pub(crate) fn check_range(n: u64, min: u64, max: u64) -> Result<(), String> {
    if n < min || n > max {
        return Err(format!("must be an integer from {min} to {max}, got {n}"));
    }
    Ok(())
}

/// A name from [`Algorithm::ALL`].
pub fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    Algorithm::from_name(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = Algorithm::ALL.iter().map(|(n, _)| *n).collect();
        format!(
            "unknown algorithm '{}'; expected one of: {}",
            s.trim(),
            names.join(", ")
        )
    })
}

/// `auto` or 1 to [`MAX_WORKERS`].
pub fn parse_workers(s: &str) -> Result<Workers, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Ok(Workers::Auto);
    }
    parse_uint(t, 1, MAX_WORKERS as u64)
        .map(|n| Workers::Count(n as usize))
        .map_err(|_| format!("expected 'auto' or an integer from 1 to {MAX_WORKERS}, got '{t}'"))
}

pub fn parse_forward(s: &str) -> Result<ForwardMode, String> {
    match s.trim() {
        "copy" => Ok(ForwardMode::Copy),
        "splice" => Ok(ForwardMode::Splice),
        "auto" => Ok(ForwardMode::Auto),
        other => Err(format!(
            "unknown forward mode '{other}'; expected copy, splice or auto"
        )),
    }
}

/// Other backends tried after a failed connect: 0 to [`MAX_RETRIES`].
pub fn parse_retries(s: &str) -> Result<u32, String> {
    parse_uint(s, 0, u64::from(MAX_RETRIES)).map(|n| n as u32)
}

/// `--rise`/`--fall`: 1 to [`MAX_RISE_FALL`].
pub fn parse_rise_fall(s: &str) -> Result<u32, String> {
    parse_uint(s, 1, u64::from(MAX_RISE_FALL)).map(|n| n as u32)
}

/// `--eject-after`: 0 (never eject) to [`MAX_EJECT_AFTER`].
pub fn parse_eject_after(s: &str) -> Result<u32, String> {
    parse_uint(s, 0, u64::from(MAX_EJECT_AFTER)).map(|n| n as u32)
}

/// `--max-conns` for the whole balancer: at least 1.
pub fn parse_max_conns(s: &str) -> Result<usize, String> {
    parse_uint(s, 1, u64::from(u32::MAX)).map(|n| n as usize)
}

/// `tcp`, `http:/path`, `dns:NAME` (UDP services) or `none`.
pub fn parse_health(s: &str) -> Result<HealthCheck, String> {
    let t = s.trim();
    match t {
        "tcp" => Ok(HealthCheck::Tcp),
        "none" => Ok(HealthCheck::None),
        _ => {
            if let Some(path) = t.strip_prefix("http:") {
                check_http_path(path)?;
                Ok(HealthCheck::Http(path.to_string()))
            } else if let Some(name) = t.strip_prefix("dns:") {
                check_dns_name(name)?;
                Ok(HealthCheck::Dns(name.to_string()))
            } else {
                Err(format!(
                    "unknown health check '{t}'; expected tcp, http:/PATH, dns:NAME or none"
                ))
            }
        }
    }
}

/// A name a DNS health check can ask for.
pub(crate) fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the DNS health check needs a name, e.g. dns:example.com".to_string());
    }
    hickory_resolver::proto::rr::Name::from_ascii(name)
        .map(|_| ())
        .map_err(|e| format!("'{name}' is not a DNS name: {e}"))
}

/// The path goes into a request line verbatim, so it must not be able to break it.
pub(crate) fn check_http_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "the HTTP health check path must start with '/', got '{path}'"
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "the HTTP health check path must not contain spaces or control characters".to_string(),
        );
    }
    Ok(())
}

pub fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    match s.trim() {
        "source-ip" => Ok(HashKey::SourceIp),
        "source-ip-port" => Ok(HashKey::SourceIpPort),
        other => Err(format!(
            "unknown hash key '{other}'; expected source-ip or source-ip-port"
        )),
    }
}

/// Percent of the mean load, [`MIN_HASH_BALANCE_FACTOR`] or more.
pub fn parse_hash_balance_factor(s: &str) -> Result<u32, String> {
    parse_uint(
        s.trim().trim_end_matches('%'),
        u64::from(MIN_HASH_BALANCE_FACTOR),
        u64::from(MAX_HASH_BALANCE_FACTOR),
    )
    .map(|n| n as u32)
}

pub fn parse_proxy_protocol(s: &str) -> Result<ProxyProtocol, String> {
    match s.trim() {
        "v1" => Ok(ProxyProtocol::V1),
        "v2" => Ok(ProxyProtocol::V2),
        other => Err(format!(
            "unknown PROXY protocol version '{other}'; expected v1 or v2"
        )),
    }
}

/// `--max-conns-per-source`.
pub fn parse_max_conns_per_source(s: &str) -> Result<u32, String> {
    parse_uint(s, 1, u64::from(u32::MAX)).map(|n| n as u32)
}

/// `--max-conn-rate-per-source`: new connections per second.
pub fn parse_max_conn_rate_per_source(s: &str) -> Result<u32, String> {
    parse_uint(s, 1, 1_000_000).map(|n| n as u32)
}

/// `--splice-pipes`: per worker; 0 turns splicing off (everything is copied).
pub fn parse_splice_pipes(s: &str) -> Result<usize, String> {
    parse_uint(s, 0, MAX_SPLICE_PIPES as u64).map(|n| n as usize)
}

/// `dns-srv:NAME[@RESOLVER]` (RESOLVER is `IP` or `IP:PORT`: a host name would need a
/// resolver to find the resolver) or `consul:SERVICE[@HOST:PORT]`. Returned unchanged once
/// it is known to be well formed.
pub fn parse_discovery(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.starts_with("consul:") {
        return super::ConsulSource::parse(t).map(|_| t.to_string());
    }
    let Some(rest) = t.strip_prefix("dns-srv:") else {
        return Err(format!(
            "unknown discovery source '{t}'; expected dns-srv:NAME[@RESOLVER] or consul:SERVICE[@HOST:PORT]"
        ));
    };
    let (name, resolver) = match rest.split_once('@') {
        Some((n, r)) => (n, Some(r)),
        None => (rest, None),
    };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid SRV name '{name}' in '{t}'"));
    }
    if let Some(r) = resolver {
        if r.parse::<SocketAddr>().is_err() && r.parse::<IpAddr>().is_err() {
            return Err(format!(
                "invalid resolver '{r}' in '{t}'; expected IP or IP:PORT"
            ));
        }
    }
    Ok(t.to_string())
}

/// One of [`LOG_LEVELS`], case-insensitive; returned in lower case.
pub fn parse_log_level(s: &str) -> Result<String, String> {
    let t = s.trim().to_ascii_lowercase();
    if LOG_LEVELS.contains(&t.as_str()) {
        Ok(t)
    } else {
        Err(format!(
            "unknown log level '{}'; expected one of: {}",
            s.trim(),
            LOG_LEVELS.join(", ")
        ))
    }
}

/// A prime from 3 to [`MAX_MAGLEV_TABLE_SIZE`].
pub fn parse_maglev_table_size(s: &str) -> Result<u64, String> {
    let n = parse_uint(s, 3, MAX_MAGLEV_TABLE_SIZE)?;
    check_maglev_table_size(n)?;
    Ok(n)
}

pub(crate) fn check_maglev_table_size(n: u64) -> Result<(), String> {
    check_range(n, 3, MAX_MAGLEV_TABLE_SIZE)?;
    if !is_prime(n) {
        return Err(format!("must be a prime number (e.g. 65537), got {n}"));
    }
    Ok(())
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_values() {
        assert_eq!(parse_workers("auto"), Ok(Workers::Auto));
        assert_eq!(parse_workers("3"), Ok(Workers::Count(3)));
        assert!(parse_workers("0").is_err());
        assert!(parse_workers("1025").is_err());
        assert_eq!(
            parse_health("http:/up"),
            Ok(HealthCheck::Http("/up".into()))
        );
        assert!(parse_health("http:up").is_err());
        assert!(parse_health("http:/a b").is_err());
        assert!(parse_health("udp").is_err());
        assert_eq!(parse_retries("100"), Ok(100));
        assert!(parse_retries("101").is_err());
        assert!(parse_rise_fall("0").is_err());
        assert_eq!(parse_hash_balance_factor("125%"), Ok(125));
        assert!(parse_hash_balance_factor("99").is_err());
        assert_eq!(parse_log_level("Warn"), Ok("warn".into()));
        assert!(parse_log_level("verbose").is_err());
        assert_eq!(parse_maglev_table_size("65537"), Ok(65537));
        assert!(parse_maglev_table_size("65536").is_err());
        assert!(parse_discovery("dns-srv:_web._tcp.svc").is_ok());
        assert!(parse_discovery("dns-srv:_web._tcp.svc@10.0.0.1").is_ok());
        assert!(parse_discovery("dns-srv:_web._tcp.svc@resolver").is_err());
        assert!(parse_discovery("dns-srv:").is_err());
        assert!(parse_discovery("consul:web").is_ok());
        assert!(parse_discovery("consul:web@bad").is_err());
        assert!(parse_discovery("etcd:web").is_err());
        let e = parse_algorithm("fastest").expect_err("unknown");
        for (name, _) in Algorithm::ALL {
            assert!(e.contains(name), "{e}");
        }
        for (name, a) in Algorithm::ALL {
            assert_eq!(parse_algorithm(name), Ok(a));
        }
    }
}

/// Longest `--upgrade-socket` path: a Unix socket path holds at most 107 bytes, and the
/// socket is first bound under a longer temporary name next to it (then renamed).
pub const MAX_UPGRADE_SOCKET_LEN: usize = 80;

/// `--upgrade-socket PATH`: a non-empty path short enough for a Unix socket.
pub fn parse_upgrade_socket(s: &str) -> Result<std::path::PathBuf, String> {
    if s.is_empty() {
        return Err("expected a path for the upgrade socket".to_string());
    }
    if s.len() > MAX_UPGRADE_SOCKET_LEN {
        return Err(format!(
            "'{s}' is too long for a Unix socket path (at most {MAX_UPGRADE_SOCKET_LEN} bytes)"
        ));
    }
    if s.contains('\0') {
        return Err("a path cannot contain a NUL byte".to_string());
    }
    Ok(std::path::PathBuf::from(s))
}

#[cfg(test)]
mod upgrade_socket_tests {
    use super::*;

    #[test]
    fn upgrade_socket_paths() {
        assert_eq!(
            parse_upgrade_socket("/run/uringlb.sock"),
            Ok(std::path::PathBuf::from("/run/uringlb.sock"))
        );
        assert!(parse_upgrade_socket("").is_err());
        assert!(parse_upgrade_socket(&format!("/{}", "x".repeat(100))).is_err());
    }
}
