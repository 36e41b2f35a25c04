//! The PROXY protocol header (HAProxy's `send-proxy` / `send-proxy-v2`): tells a backend
//! the client's original address ([`encode`]), or tells us a trusted client's original
//! address when we sit behind another proxy ([`decode`]). Pure, no I/O.
//!
//! Spec: <https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which PROXY protocol header to send (`--proxy-protocol`, `proxy-protocol=` of a backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    V1,
    V2,
}

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

/// Longest header `decode` accepts (a v2 header's TLVs included); longer is an error.
/// Bounds what a connection must buffer before it knows its client (v1 is at most 107 bytes).
pub const MAX_DECODE: usize = 4096;

/// Longest v1 line, CRLF included (spec section 2.1).
const V1_MAX: usize = 107;

/// The v1 line's start.
const V1_PREFIX: &[u8] = b"PROXY ";

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A prefix of a valid header: read more bytes and call again.
    Incomplete,
    /// A complete header of `len` bytes at the start of the buffer. `addrs` = (source, destination)
    /// for PROXY TCP4/TCP6 (v1) or command PROXY with AF_INET/AF_INET6 (v2); `None` for v1 UNKNOWN,
    /// v2 LOCAL, and v2 families/protocols whose addresses we don't use (UNSPEC, UNIX, DGRAM):
    /// the receiver then uses the connection's own addresses, as the spec says.
    Header {
        len: usize,
        addrs: Option<(SocketAddr, SocketAddr)>,
    },
}

/// Why a buffer can never start a valid header. Field contents are shown escaped
/// (`\r`, `\x00`, ...) so every message is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("v1 header longer than 107 bytes")]
    V1TooLong,
    #[error("v1 header line must end in CRLF")]
    V1BadLineEnd,
    #[error("bad v1 protocol '{0}' (want TCP4, TCP6 or UNKNOWN)")]
    V1BadProtocol(String),
    #[error("v1 header must have 4 fields after the protocol, separated by single spaces")]
    V1BadFields,
    #[error("bad v1 address '{0}'")]
    V1BadAddress(String),
    #[error("bad v1 port '{0}' (want 0..65535)")]
    V1BadPort(String),
    #[error("v2 version must be 2, got {0}")]
    V2BadVersion(u8),
    #[error("v2 command must be 0 (LOCAL) or 1 (PROXY), got {0}")]
    V2BadCommand(u8),
    #[error("v2 unknown address family/protocol 0x{0:02x}")]
    V2BadFamily(u8),
    #[error("v2 header of {0} bytes exceeds 4096")]
    V2TooLong(usize),
    #[error(
        "v2 address block too short for its family (0x{family:02x} needs {need} bytes, got {len})"
    )]
    V2ShortAddress { family: u8, need: usize, len: usize },
}

/// Parses the PROXY protocol header (v1 or v2) at the start of `buf`. Bytes after the
/// header are not looked at: they are the client's data. Refuses a buffer as soon as it
/// cannot become a header, so a client that sends none is refused without a timeout.
pub fn decode(buf: &[u8]) -> Result<Decoded, DecodeError> {
    match buf.first() {
        None => Ok(Decoded::Incomplete),
        Some(b'P') => decode_v1(buf),
        Some(0x0D) => decode_v2(buf),
        Some(_) => Err(DecodeError::NotProxy),
    }
}

/// `Ok(true)` if `buf` is shorter than `want` and a prefix of it (read more).
fn starts_like(buf: &[u8], want: &[u8]) -> Result<bool, DecodeError> {
    let n = buf.len().min(want.len());
    if buf[..n] != want[..n] {
        return Err(DecodeError::NotProxy);
    }
    Ok(buf.len() < want.len())
}

fn decode_v1(buf: &[u8]) -> Result<Decoded, DecodeError> {
    if starts_like(buf, V1_PREFIX)? {
        return Ok(Decoded::Incomplete);
    }
    // The line ends at the first CR, which must be followed by LF; a CR at index
    // V1_MAX - 1 or later would make the line longer than V1_MAX.
    let window = &buf[..buf.len().min(V1_MAX - 1)];
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.len() >= V1_MAX - 1 {
            return Err(DecodeError::V1TooLong);
        }
        v1_fields(&buf[V1_PREFIX.len()..], false)?;
        return Ok(Decoded::Incomplete);
    };
    if buf[cr] == b'\n' {
        return Err(DecodeError::V1BadLineEnd);
    }
    let line = &buf[V1_PREFIX.len()..cr];
    match buf.get(cr + 1) {
        None => {
            v1_fields(line, false)?;
            Ok(Decoded::Incomplete)
        }
        Some(b'\n') => Ok(Decoded::Header {
            len: cr + 2,
            addrs: v1_fields(line, true)?,
        }),
        Some(_) => Err(DecodeError::V1BadLineEnd),
    }
}

/// Checks the v1 line after "PROXY " (without CRLF). When `complete` is false the line
/// is still arriving: its last field may be cut short, and only what cannot become
/// valid is an error (the returned addresses are then meaningless).
fn v1_fields(line: &[u8], complete: bool) -> Result<Option<(SocketAddr, SocketAddr)>, DecodeError> {
    const PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];
    // UNKNOWN may be followed by anything up to the CRLF, which the receiver ignores.
    if line.starts_with(b"UNKNOWN") {
        return Ok(None);
    }
    let proto_end = line.iter().position(|&b| b == b' ');
    let proto = &line[..proto_end.unwrap_or(line.len())];
    let v6 = match proto {
        b"TCP4" => false,
        b"TCP6" => true,
        _ if !complete && proto_end.is_none() && PROTOCOLS.iter().any(|p| p.starts_with(proto)) => {
            return Ok(None)
        }
        _ => return Err(DecodeError::V1BadProtocol(escape(proto))),
    };
    let Some(proto_end) = proto_end else {
        return if complete {
            Err(DecodeError::V1BadFields)
        } else {
            Ok(None)
        };
    };
    let mut fields = line[proto_end + 1..].split(|&b| b == b' ');
    let mut parsed = [None::<IpAddr>; 2];
    let mut ports = [0u16; 2];
    for i in 0..4 {
        let Some(field) = fields.next() else {
            // Fewer than 4 fields: fine only while the line is still arriving.
            return if complete {
                Err(DecodeError::V1BadFields)
            } else {
                Ok(None)
            };
        };
        let last_partial = !complete && fields.clone().next().is_none();
        if last_partial {
            // The field may still grow: only its characters and length can be wrong.
            let ok = if i < 2 {
                let (max, ok_char): (usize, fn(&u8) -> bool) = if v6 {
                    (45, |b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
                } else {
                    (15, |b| b.is_ascii_digit() || *b == b'.')
                };
                field.len() <= max && field.iter().all(ok_char)
            } else {
                field.is_empty() || parse_port(field).is_some()
            };
            return match ok {
                true => Ok(None),
                false if i < 2 => Err(DecodeError::V1BadAddress(escape(field))),
                false => Err(DecodeError::V1BadPort(escape(field))),
            };
        }
        if field.is_empty() {
            return Err(DecodeError::V1BadFields);
        }
        if i < 2 {
            parsed[i] =
                Some(parse_ip(field, v6).ok_or_else(|| DecodeError::V1BadAddress(escape(field)))?);
        } else {
            ports[i - 2] =
                parse_port(field).ok_or_else(|| DecodeError::V1BadPort(escape(field)))?;
        }
    }
    if fields.next().is_some() {
        return Err(DecodeError::V1BadFields);
    }
    match parsed {
        [Some(s), Some(d)] => Ok(Some((
            SocketAddr::new(s, ports[0]),
            SocketAddr::new(d, ports[1]),
        ))),
        // Unreachable: the loop either filled both addresses or returned.
        _ => Err(DecodeError::V1BadFields),
    }
}

fn parse_ip(field: &[u8], v6: bool) -> Option<IpAddr> {
    let s = std::str::from_utf8(field).ok()?;
    if v6 {
        s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// 1 to 5 decimal digits, at most 65535 (no sign, no spaces).
fn parse_port(field: &[u8]) -> Option<u16> {
    if field.is_empty() || field.len() > 5 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = field
        .iter()
        .fold(0u32, |n, &b| n * 10 + u32::from(b - b'0'));
    u16::try_from(n).ok()
}

/// A field for an error message: escaped to one line, at most 64 bytes shown.
fn escape(field: &[u8]) -> String {
    field[..field.len().min(64)].escape_ascii().to_string()
}

fn decode_v2(buf: &[u8]) -> Result<Decoded, DecodeError> {
    if starts_like(buf, &V2_SIGNATURE)? {
        return Ok(Decoded::Incomplete);
    }
    // Check each fixed byte as soon as it arrives, so garbage is refused early.
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Decoded::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(DecodeError::V2BadVersion(ver_cmd >> 4));
    }
    let proxy = match ver_cmd & 0x0F {
        0 => false,
        1 => true,
        c => return Err(DecodeError::V2BadCommand(c)),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(Decoded::Incomplete);
    };
    // LOCAL: the spec says to discard the whole block, family included.
    let need = match (proxy, family) {
        (false, _) => 0,
        (true, 0x11) => 12,
        (true, 0x21) => 36,
        (true, 0x00 | 0x12 | 0x22 | 0x31 | 0x32) => 0,
        (true, f) => return Err(DecodeError::V2BadFamily(f)),
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Decoded::Incomplete);
    };
    let body_len = usize::from(u16::from_be_bytes([hi, lo]));
    let len = 16 + body_len;
    if len > MAX_DECODE {
        return Err(DecodeError::V2TooLong(len));
    }
    if body_len < need {
        return Err(DecodeError::V2ShortAddress {
            family,
            need,
            len: body_len,
        });
    }
    let Some(body) = buf.get(16..len) else {
        return Ok(Decoded::Incomplete);
    };
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let addrs = match (proxy, family) {
        (true, 0x11) => {
            let ip = |at: usize| Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]);
            Some((
                SocketAddr::new(ip(0).into(), port(8)),
                SocketAddr::new(ip(4).into(), port(10)),
            ))
        }
        (true, 0x21) => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&body[at..at + 16]);
                Ipv6Addr::from(o)
            };
            Some((
                SocketAddr::new(ip(0).into(), port(32)),
                SocketAddr::new(ip(16).into(), port(34)),
            ))
        }
        _ => None,
    };
    Ok(Decoded::Header { len, addrs })
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
    use proptest::prelude::*;

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

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn header(len: usize, s: &str, d: &str) -> Result<Decoded, DecodeError> {
        Ok(Decoded::Header {
            len,
            addrs: Some((sa(s), sa(d))),
        })
    }

    /// A v2 header with the given version/command and family bytes and body.
    fn v2(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[ver_cmd, family]);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn decode_round_trips_encode() {
        for v in [ProxyProtocol::V1, ProxyProtocol::V2] {
            for (s, d) in [
                ("192.0.2.1:5555", "198.51.100.2:80"),
                ("0.0.0.0:0", "255.255.255.255:65535"),
                ("[2001:db8::1]:1", "[2001:db8::2]:2"),
                ("[::]:0", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
            ] {
                let h = enc(v, s, d);
                assert_eq!(decode(&h), header(h.len(), s, d), "{v:?} {s} {d}");
            }
        }
    }

    #[test]
    fn every_proper_prefix_is_incomplete() {
        let mut headers = vec![
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY UNKNOWN ffff:f::f ffff:f::f 65535 65535\r\n".to_vec(),
            b"PROXY TCP6 ::ffff:1.2.3.4 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 0 65535\r\n"
                .to_vec(),
            v2(0x20, 0x00, b""),
            v2(0x21, 0x11, &[7; 12 + 9]),
        ];
        for v in [ProxyProtocol::V1, ProxyProtocol::V2] {
            headers.push(enc(v, "192.0.2.1:5555", "198.51.100.2:80"));
            headers.push(enc(v, "[2001:db8::1]:65535", "[2001:db8::2]:2"));
        }
        for h in headers {
            assert!(matches!(decode(&h), Ok(Decoded::Header { len, .. }) if len == h.len()));
            for k in 0..h.len() {
                assert_eq!(decode(&h[..k]), Ok(Decoded::Incomplete), "{:?}", &h[..k]);
            }
        }
    }

    #[test]
    fn bytes_after_the_header_are_not_consumed() {
        let mut b = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n".to_vec();
        assert_eq!(decode(&b), header(32, "1.2.3.4:1", "5.6.7.8:2"));
        b = enc(ProxyProtocol::V2, "1.2.3.4:1", "5.6.7.8:2");
        b.extend_from_slice(b"\r\n\r\n\0 trailing bytes that look like a signature");
        assert_eq!(decode(&b), header(28, "1.2.3.4:1", "5.6.7.8:2"));
    }

    #[test]
    fn spec_examples() {
        // Section 2.1's examples.
        assert_eq!(
            decode(b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"),
            header(56, "255.255.255.255:65535", "255.255.255.255:65535")
        );
        let worst = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(worst.len(), 104);
        assert!(matches!(
            decode(worst),
            Ok(Decoded::Header {
                len: 104,
                addrs: Some(_)
            })
        ));
        let unknown = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(unknown.len(), V1_MAX);
        assert_eq!(
            decode(unknown),
            Ok(Decoded::Header {
                len: V1_MAX,
                addrs: None
            })
        );
        assert_eq!(
            decode(b"PROXY UNKNOWN\r\n"),
            Ok(Decoded::Header {
                len: 15,
                addrs: None
            })
        );
        assert_eq!(
            decode(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"),
            header(47, "192.168.0.1:56324", "192.168.0.11:443")
        );
        // v2 LOCAL (health checks from the proxy itself), with and without a body.
        for body in [&b""[..], &[1; 12]] {
            let h = v2(0x20, 0x11, body);
            assert_eq!(
                decode(&h),
                Ok(Decoded::Header {
                    len: h.len(),
                    addrs: None
                })
            );
        }
        // Families whose addresses we don't use.
        for f in [0x00, 0x12, 0x22, 0x31, 0x32] {
            let h = v2(0x21, f, &[0; 216]);
            assert_eq!(
                decode(&h),
                Ok(Decoded::Header {
                    len: h.len(),
                    addrs: None
                })
            );
        }
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut body = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x12, 0x34, 0, 80];
        body.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c']); // PP2_TYPE_NOOP
        body.extend_from_slice(&[0x05, 0x00, 0x02, 0xAB, 0xCD]); // PP2_TYPE_UNIQUE_ID
        let mut h = v2(0x21, 0x11, &body);
        let len = h.len();
        h.extend_from_slice(b"payload");
        assert_eq!(decode(&h), header(len, "10.0.0.1:4660", "10.0.0.2:80"));
        // The largest accepted header, all TLVs.
        let h = v2(0x21, 0x21, &vec![0; MAX_DECODE - 16]);
        assert!(matches!(
            decode(&h),
            Ok(Decoded::Header {
                len: MAX_DECODE,
                addrs: Some(_)
            })
        ));
    }

    #[test]
    fn errors() {
        use DecodeError::*;
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (b"GET / HTTP/1.1\r\n".to_vec(), NotProxy),
            (b"\x16\x03\x01".to_vec(), NotProxy),
            (b"PROXX".to_vec(), NotProxy),
            (b"proxy tcp4".to_vec(), NotProxy),
            (b"\r\n\r\n\0\r\nQUIT\r".to_vec(), NotProxy),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(), V1BadLineEnd),
            (b"PROXY UNKNOWN\n".to_vec(), V1BadLineEnd),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX".to_vec(), V1BadLineEnd),
            (b"PROXY UNKNOWN\r\r\n".to_vec(), V1BadLineEnd),
            ([&b"PROXY UNKNOWN "[..], &[b'x'; 92]].concat(), V1TooLong),
            (
                [&b"PROXY UNKNOWN "[..], &[b'x'; 92], b"\r\n"].concat(),
                V1TooLong,
            ),
            (b"PROXY TCP5 ".to_vec(), V1BadProtocol("TCP5".into())),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3".to_vec(), V1BadFields),
            (
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                V1BadProtocol("UDP4".into()),
            ),
            (b"PROXY \r\n".to_vec(), V1BadProtocol("".into())),
            (b"PROXY TCP4\r\n".to_vec(), V1BadFields),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec(), V1BadFields),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n".to_vec(), V1BadFields),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(),
                V1BadFields,
            ),
            (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), V1BadFields),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n".to_vec(), V1BadFields),
            (
                b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                V1BadProtocol("".into()),
            ),
            (
                b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n".to_vec(),
                V1BadAddress("::1".into()),
            ),
            (
                b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n".to_vec(),
                V1BadAddress("1.2.3.4".into()),
            ),
            (
                b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n".to_vec(),
                V1BadAddress("1.2.3.256".into()),
            ),
            (
                b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                V1BadAddress("01.2.3.4".into()),
            ),
            (b"PROXY TCP4 1.2.3 ".to_vec(), V1BadAddress("1.2.3".into())),
            (
                b"PROXY TCP4 1.2.3.4x".to_vec(),
                V1BadAddress("1.2.3.4x".into()),
            ),
            (b"PROXY TCP6 ::g".to_vec(), V1BadAddress("::g".into())),
            (
                b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n".to_vec(),
                V1BadAddress("fe80::1%eth0".into()),
            ),
            (
                b"PROXY TCP4 1.2.3.\xff".to_vec(),
                V1BadAddress("1.2.3.\\xff".into()),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".to_vec(),
                V1BadPort("65536".into()),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n".to_vec(),
                V1BadPort("+1".into()),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n".to_vec(),
                V1BadPort("-2".into()),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 000001 2\r\n".to_vec(),
                V1BadPort("000001".into()),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0x1\r\n".to_vec(),
                V1BadPort("0x1".into()),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 99999".to_vec(),
                V1BadPort("99999".into()),
            ),
            (v2(0x11, 0x11, &[0; 12]), V2BadVersion(1)),
            (v2(0x31, 0x11, &[0; 12])[..13].to_vec(), V2BadVersion(3)),
            (v2(0x22, 0x11, &[0; 12])[..13].to_vec(), V2BadCommand(2)),
            (v2(0x2F, 0x11, &[0; 12]), V2BadCommand(15)),
            (v2(0x21, 0x13, &[0; 12])[..14].to_vec(), V2BadFamily(0x13)),
            (v2(0x21, 0x41, &[0; 12]), V2BadFamily(0x41)),
            (v2(0x21, 0x01, &[0; 12]), V2BadFamily(0x01)),
            (
                v2(0x21, 0x11, &[0; 11]),
                V2ShortAddress {
                    family: 0x11,
                    need: 12,
                    len: 11,
                },
            ),
            (
                v2(0x21, 0x21, &[0; 12])[..16].to_vec(),
                V2ShortAddress {
                    family: 0x21,
                    need: 36,
                    len: 12,
                },
            ),
            (
                v2(0x21, 0x21, &vec![0; MAX_DECODE - 15])[..16].to_vec(),
                V2TooLong(MAX_DECODE + 1),
            ),
            (
                v2(0x20, 0x00, &vec![0; 65535])[..16].to_vec(),
                V2TooLong(16 + 65535),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode(&input),
                Err(want.clone()),
                "{}",
                input.escape_ascii()
            );
            let msg = want.to_string();
            assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg}");
        }
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(
            s in any_addr(),
            d in any_addr(),
            v2 in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let v = if v2 { ProxyProtocol::V2 } else { ProxyProtocol::V1 };
            let mut buf = vec![0u8; MAX_HEADER + 64];
            let n = encode(v, s, d, &mut buf);
            buf.truncate(n);
            buf.extend_from_slice(&tail);
            let (s, d) = (canonical(s), canonical(d));
            let addrs = (s.is_ipv4() == d.is_ipv4()).then_some((s, d));
            prop_assert_eq!(decode(&buf), Ok(Decoded::Header { len: n, addrs }));
        }

        #[test]
        fn decode_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(Decoded::Header { len, .. }) = decode(&buf) {
                prop_assert!(len <= buf.len());
            }
        }

        #[test]
        fn decode_never_panics_after_a_valid_start(
            start in 0usize..4,
            tail in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let starts: [&[u8]; 4] = [b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY ", &V2_SIGNATURE];
            let buf = [starts[start], &tail].concat();
            if let Ok(Decoded::Header { len, .. }) = decode(&buf) {
                prop_assert!(len <= buf.len());
            }
        }
    }
}
