//! The settings of UDP services: the protocol a service speaks and the bounds of its flow
//! table. Parsers as in [`super::values`]: one-line reasons, the caller names the flag or
//! the file position.

use std::fmt;

/// What a service balances: TCP connections or UDP datagrams (flows keyed by client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `tcp` or `udp`.
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.trim() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        t => Err(format!("unknown protocol '{t}'; expected tcp or udp")),
    }
}

/// Highest `--udp-responses`.
pub const MAX_UDP_RESPONSES: u32 = 1_000_000;
/// Default `--max-flows`.
pub const DEFAULT_MAX_FLOWS: u32 = 16384;
/// Highest `--max-flows`: each flow holds a descriptor (its backend socket).
pub const MAX_MAX_FLOWS: u32 = 1_000_000;

/// Replies after which a flow ends; 0 = unlimited.
pub fn parse_udp_responses(s: &str) -> Result<u32, String> {
    super::values::parse_uint(s, 0, u64::from(MAX_UDP_RESPONSES)).map(|n| n as u32)
}

/// Flows of a service at once, at least 1.
pub fn parse_max_flows(s: &str) -> Result<u32, String> {
    super::values::parse_uint(s, 1, u64::from(MAX_MAX_FLOWS)).map(|n| n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_protocol("udp"), Ok(Protocol::Udp));
        assert_eq!(parse_protocol(" tcp "), Ok(Protocol::Tcp));
        assert!(parse_protocol("sctp").unwrap_err().contains("tcp or udp"));
        assert_eq!(parse_udp_responses("0"), Ok(0));
        assert!(parse_udp_responses("-1").is_err());
        assert_eq!(parse_max_flows("1000"), Ok(1000));
        assert!(parse_max_flows("0").is_err());
        assert!(parse_max_flows("1000001").is_err());
    }
}
