//! `--discovery consul:SERVICE[@HOST:PORT]` and `consul_token`: where Consul's HTTP API is
//! and how the balancer identifies itself to it.

use std::fmt;
use std::net::IpAddr;

/// Consul's HTTP API when `@HOST:PORT` is not given (the local agent).
pub const DEFAULT_CONSUL_HOST: &str = "127.0.0.1";
pub const DEFAULT_CONSUL_PORT: u16 = 8500;
/// Longest `consul_token`.
pub const MAX_CONSUL_TOKEN_LEN: usize = 4096;

/// `consul:SERVICE[@HOST:PORT]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulSource {
    /// The Consul service name, put as is in the URL path (so limited to URL-safe letters).
    pub service: String,
    /// An IP address or a host name (looked up when connecting).
    pub host: String,
    pub port: u16,
}

impl ConsulSource {
    /// Parses `consul:SERVICE[@HOST:PORT]`; the error is one line naming what is wrong.
    pub fn parse(s: &str) -> Result<ConsulSource, String> {
        let t = s.trim();
        let rest = t.strip_prefix("consul:").ok_or_else(|| {
            format!("unknown discovery source '{t}'; expected consul:SERVICE[@HOST:PORT]")
        })?;
        let (service, at) = match rest.split_once('@') {
            Some((n, a)) => (n, Some(a)),
            None => (rest, None),
        };
        if service.is_empty() {
            return Err(format!(
                "no Consul service name in '{t}'; expected consul:SERVICE[@HOST:PORT]"
            ));
        }
        if !service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(format!(
                "invalid Consul service name '{service}' in '{t}'; use letters, digits and -_."
            ));
        }
        let (host, port) = match at {
            None => (DEFAULT_CONSUL_HOST.to_string(), DEFAULT_CONSUL_PORT),
            Some(a) => parse_host_port(a).ok_or_else(|| {
                format!(
                    "invalid Consul address '{a}' in '{t}'; expected HOST:PORT (e.g. 127.0.0.1:8500)"
                )
            })?,
        };
        Ok(ConsulSource {
            service: service.to_string(),
            host,
            port,
        })
    }

    /// `HOST:PORT` as a `Host` header and a log line show it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT` with a port from 1.
fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok()?.to_string(),
        None if host.parse::<IpAddr>().is_ok() => host.to_string(),
        None => {
            let name_ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
            if !name_ok {
                return None;
            }
            host.to_string()
        }
    };
    Some((host, port))
}

/// A Consul ACL token, sent as `X-Consul-Token`. A secret: `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsulToken(String);

impl ConsulToken {
    /// The token itself, for the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConsulToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConsulToken(<redacted>)")
    }
}

/// `consul_token` (and `CONSUL_HTTP_TOKEN`): 1 to [`MAX_CONSUL_TOKEN_LEN`] visible ASCII
/// characters, what an HTTP header value can carry.
pub fn parse_consul_token(s: &str) -> Result<ConsulToken, String> {
    if s.is_empty() {
        return Err("the Consul token must not be empty".to_string());
    }
    if s.len() > MAX_CONSUL_TOKEN_LEN {
        return Err(format!(
            "the Consul token is too long; at most {MAX_CONSUL_TOKEN_LEN} characters"
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the Consul token must be visible ASCII characters (no spaces or control characters)"
                .to_string(),
        );
    }
    Ok(ConsulToken(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            ConsulSource::parse("consul:web"),
            Ok(ConsulSource {
                service: "web".into(),
                host: "127.0.0.1".into(),
                port: 8500
            })
        );
        let s = ConsulSource::parse("consul:web-1@consul.internal:8501").expect("ok");
        assert_eq!((s.host.as_str(), s.port), ("consul.internal", 8501));
        let s = ConsulSource::parse("consul:web@[::1]:8500").expect("ok");
        assert_eq!(
            (s.host.as_str(), s.authority()),
            ("::1", "[::1]:8500".into())
        );
        for bad in [
            "consul:",
            "consul:x@bad",
            "consul:x@",
            "consul:x@1.2.3.4:0",
            "consul:x@h:99999",
            "consul:a b",
            "consul:a/b",
            "consul:@1.2.3.4:1",
            "dns-srv:x",
        ] {
            assert!(ConsulSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens() {
        assert!(parse_consul_token("b1f9c2e0-0000-4000-8000-000000000001").is_ok());
        assert!(parse_consul_token("").is_err());
        assert!(parse_consul_token("a b").is_err());
        assert!(parse_consul_token(&"x".repeat(MAX_CONSUL_TOKEN_LEN + 1)).is_err());
        assert_eq!(
            format!("{:?}", parse_consul_token("s3cret").expect("ok")),
            "ConsulToken(<redacted>)"
        );
    }
}
