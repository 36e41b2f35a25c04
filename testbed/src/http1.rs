//! The little HTTP/1.1 parsing the test server and the load client share.
//!
//! Deliberately minimal: message heads only, `Content-Length` framing only (no chunked
//! encoding), because both ends are ours and the balancer under test never looks inside.

/// Largest head accepted; anything bigger is refused rather than buffered forever.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// Finds the blank line ending a message head. Returns `(head_len, consumed)`: the head
/// without its terminating blank line, and the bytes up to and including it. Bare `\n`
/// line ends are accepted so hand-typed requests (`nc`, `printf`) work too.
pub(crate) fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let rest = &buf[nl + 1..];
        if rest.first() == Some(&b'\n') {
            return Some((nl, nl + 2));
        }
        if rest.starts_with(b"\r\n") {
            return Some((nl, nl + 3));
        }
        i = nl + 1;
    }
    None
}

/// A parsed request or response head. For a request the start line is
/// `method target version`; for a response it is `version status reason`.
#[derive(Debug)]
pub(crate) struct Head<'a> {
    pub first: &'a str,
    pub second: &'a str,
    pub third: &'a str,
    pub content_length: Option<u64>,
    pub close: bool,
    pub keep_alive: bool,
    pub chunked: bool,
}

/// Parses a head as located by [`find_head_end`]; `None` when it is malformed.
pub(crate) fn parse_head(head: &[u8]) -> Option<Head<'_>> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines.next()?;
    let mut parts = start.splitn(3, ' ');
    let first = parts.next()?;
    let second = parts.next()?;
    let third = parts.next().unwrap_or("");
    if first.is_empty() || second.is_empty() {
        return None;
    }
    let mut h = Head {
        first,
        second,
        third,
        content_length: None,
        close: false,
        keep_alive: false,
        chunked: false,
    };
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            h.content_length = Some(value.parse().ok()?);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    h.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    h.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Some(h)
}

/// Standard reason phrase for the status codes tests are likely to ask for.
pub(crate) fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Whether a response with this status carries no body regardless of headers (RFC 9112 6.3).
pub(crate) fn status_has_no_body(code: u16) -> bool {
    (100..200).contains(&code) || code == 204 || code == 304
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_crlf_and_lf() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nX"), Some((15, 18)));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nX"), Some((14, 16)));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn parses_headers() {
        let raw = b"GET /x HTTP/1.1\r\nContent-Length: 5\r\nConnection: Close";
        let h = parse_head(raw).unwrap();
        assert_eq!((h.first, h.second, h.third), ("GET", "/x", "HTTP/1.1"));
        assert_eq!(h.content_length, Some(5));
        assert!(h.close);
        let r = parse_head(b"HTTP/1.1 503 Service Unavailable").unwrap();
        assert_eq!(r.second, "503");
        assert_eq!(r.third, "Service Unavailable");
        assert!(parse_head(b"GET / HTTP/1.1\r\nbad header").is_none());
    }
}
