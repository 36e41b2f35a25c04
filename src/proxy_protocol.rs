//! The PROXY protocol header (HAProxy's `send-proxy` / `send-proxy-v2`): tells a backend
//! the client's original address. Pure encoding, no I/O.
//!
//! Spec: <https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>.

use std::net::SocketAddr;

use crate::config::ProxyProtocol;

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Longest header `encode` writes (v2 with IPv6 addresses; v1 is at most 107 bytes).
pub const MAX_HEADER: usize = 16 + 36;

/// Writes the header for a connection from `src` to `dst` (the address the client
/// connected to) into `out`; returns its length. Mixed families are sent as UNKNOWN /
/// LOCAL-less UNSPEC, as the spec says.
pub fn encode(version: ProxyProtocol, src: SocketAddr, dst: SocketAddr, out: &mut [u8]) -> usize {
    let src = canonical(src);
    let dst = canonical(dst);
    match version {
        ProxyProtocol::V1 => {
            let line = match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    format!(
                        "PROXY TCP4 {} {} {} {}\r\n",
                        s.ip(),
                        d.ip(),
                        s.port(),
                        d.port()
                    )
                }
                (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                    format!(
                        "PROXY TCP6 {} {} {} {}\r\n",
                        s.ip(),
                        d.ip(),
                        s.port(),
                        d.port()
                    )
                }
                _ => "PROXY UNKNOWN\r\n".to_string(),
            };
            let n = line.len().min(out.len());
            out[..n].copy_from_slice(&line.as_bytes()[..n]);
            n
        }
        ProxyProtocol::V2 => {
            out[..12].copy_from_slice(&V2_SIGNATURE);
            out[12] = 0x21; // version 2, command PROXY
            let body: Vec<u8> = match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    out[13] = 0x11; // AF_INET, STREAM
                    [
                        &s.ip().octets()[..],
                        &d.ip().octets(),
                        &s.port().to_be_bytes(),
                        &d.port().to_be_bytes(),
                    ]
                    .concat()
                }
                (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                    out[13] = 0x21; // AF_INET6, STREAM
                    [
                        &s.ip().octets()[..],
                        &d.ip().octets(),
                        &s.port().to_be_bytes(),
                        &d.port().to_be_bytes(),
                    ]
                    .concat()
                }
                _ => {
                    out[13] = 0x00; // UNSPEC: the receiver uses the real connection's addresses
                    Vec::new()
                }
            };
            out[14..16].copy_from_slice(&(body.len() as u16).to_be_bytes());
            out[16..16 + body.len()].copy_from_slice(&body);
            16 + body.len()
        }
    }
}

/// An IPv4-mapped IPv6 address as plain IPv4, so a dual-stack listener still sends TCP4.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: ProxyProtocol, s: &str, d: &str) -> Vec<u8> {
        let mut out = [0u8; MAX_HEADER + 64];
        let n = encode(v, s.parse().unwrap(), d.parse().unwrap(), &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        assert_eq!(
            enc(ProxyProtocol::V1, "192.0.2.1:5555", "198.51.100.2:80"),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 5555 80\r\n"
        );
        assert_eq!(
            enc(ProxyProtocol::V1, "[2001:db8::1]:1", "[2001:db8::2]:2"),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"
        );
        assert_eq!(
            enc(
                ProxyProtocol::V1,
                "[::ffff:10.0.0.1]:9",
                "[::ffff:10.0.0.2]:8"
            ),
            b"PROXY TCP4 10.0.0.1 10.0.0.2 9 8\r\n"
        );
        assert_eq!(
            enc(ProxyProtocol::V1, "10.0.0.1:9", "[2001:db8::2]:2"),
            b"PROXY UNKNOWN\r\n"
        );
    }

    #[test]
    fn v2_tcp4() {
        let h = enc(ProxyProtocol::V2, "192.0.2.1:5555", "198.51.100.2:80");
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[192, 0, 2, 1]);
        assert_eq!(&h[20..24], &[198, 51, 100, 2]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 5555);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 80);
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn v2_tcp6_is_the_longest() {
        let h = enc(ProxyProtocol::V2, "[2001:db8::1]:1", "[2001:db8::2]:2");
        assert_eq!(h[13], 0x21);
        assert_eq!(h.len(), MAX_HEADER);
    }
}
