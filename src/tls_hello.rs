//! The server name of a TLS ClientHello, read without decrypting anything and without
//! allocating: what SNI routing needs from the first bytes a TLS client sends.
//!
//! The hello may be cut into several TLS records (and arrive in many TCP segments), so the
//! parser reads through a [`Records`] cursor that walks the record payloads in place; it
//! never copies the message. It reads at most [`MAX_HELLO`] bytes. Versions: any record
//! and hello of TLS 1.0 to 1.3 (1.3 hellos say 1.2 and carry `supported_versions`).
//! GREASE values are unknown extensions and cipher suites, skipped like any other. With
//! Encrypted Client Hello the name read is the outer hello's, the public name, which is
//! the one to route on. No crate fitted: `tls-parser` allocates a `Vec` per extension list
//! and cannot read a hello spread over records; `rustls` only parses as a server it
//! terminates.

use crate::sni::SniName;

/// The most bytes of TLS records a hello may take (records' headers included).
pub const MAX_HELLO: usize = 16 * 1024;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;
/// The largest TLS plaintext record payload.
const MAX_RECORD: usize = 1 << 14;

/// What the bytes so far hold.
// The name is held inline on purpose (no allocation per connection); one is returned per
// read of a hello.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// A valid start: more bytes are needed.
    Incomplete,
    /// A whole ClientHello, and the host name it asks for (`None`: no SNI).
    Complete(Option<SniName>),
}

/// Why the bytes are not a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not a TLS handshake record")]
    NotTls,
    #[error("malformed TLS record")]
    BadRecord,
    #[error("the first handshake message is not a ClientHello")]
    NotClientHello,
    #[error("malformed ClientHello")]
    Malformed,
    #[error("malformed server name")]
    BadName,
    #[error("ClientHello longer than {MAX_HELLO} bytes")]
    TooLong,
}

/// Reads the ClientHello at the start of `buf`. Bytes after it are ignored. Once this says
/// `Incomplete`, a longer `buf` with the same start can only give a result; an error stays
/// an error for any longer `buf`.
pub fn parse(buf: &[u8]) -> Result<Hello, HelloError> {
    let buf = &buf[..buf.len().min(MAX_HELLO)];
    let mut r = Records::new(buf);
    let (Some(kind), Some(len)) = (r.u8()?, r.u24()?) else {
        return incomplete(buf);
    };
    if kind != HANDSHAKE_CLIENT_HELLO {
        return Err(HelloError::NotClientHello);
    }
    // The message's bytes, plus at least one 5-byte record header, must fit.
    if len + 4 + 5 > MAX_HELLO {
        return Err(HelloError::TooLong);
    }
    match client_hello(&mut r, len) {
        Ok(Some(name)) => Ok(Hello::Complete(name)),
        Ok(None) => incomplete(buf),
        Err(e) => Err(e),
    }
}

/// Not finished: more bytes may finish it, unless there is no room for them.
fn incomplete(buf: &[u8]) -> Result<Hello, HelloError> {
    if buf.len() >= MAX_HELLO {
        Err(HelloError::TooLong)
    } else {
        Ok(Hello::Incomplete)
    }
}

/// The body of a ClientHello of `len` bytes: `Ok(None)` when the bytes run out first,
/// `Ok(Some(name))` when it is whole.
#[allow(clippy::option_option)]
fn client_hello(r: &mut Records<'_>, len: usize) -> Result<Option<Option<SniName>>, HelloError> {
    let end = r.consumed + len;
    macro_rules! need {
        ($e:expr) => {
            match $e? {
                Some(v) => v,
                None => return Ok(None),
            }
        };
    }
    let check = |r: &Records<'_>| {
        if r.consumed > end {
            Err(HelloError::Malformed)
        } else {
            Ok(())
        }
    };
    let version = need!(r.u16());
    if version >> 8 != 3 {
        return Err(HelloError::Malformed);
    }
    need!(r.skip(32)); // random
    let session = need!(r.u8()) as usize;
    if session > 32 {
        return Err(HelloError::Malformed);
    }
    need!(r.skip(session));
    let suites = need!(r.u16()) as usize;
    if suites == 0 || suites & 1 != 0 {
        return Err(HelloError::Malformed);
    }
    need!(r.skip(suites));
    let compression = need!(r.u8()) as usize;
    if compression == 0 {
        return Err(HelloError::Malformed);
    }
    need!(r.skip(compression));
    check(r)?;
    if r.consumed == end {
        return Ok(Some(None)); // no extensions (TLS 1.0 allows that)
    }
    let ext_len = need!(r.u16()) as usize;
    if r.consumed + ext_len != end {
        return Err(HelloError::Malformed);
    }
    let mut name = None;
    while r.consumed < end {
        let kind = need!(r.u16());
        let len = need!(r.u16()) as usize;
        if r.consumed + len > end {
            return Err(HelloError::Malformed);
        }
        if kind != EXT_SERVER_NAME {
            need!(r.skip(len));
            continue;
        }
        if name.is_some() {
            return Err(HelloError::Malformed); // a second server_name extension
        }
        name = Some(need!(server_name(r, len)));
    }
    Ok(Some(name.flatten()))
}

/// The `server_name` extension's data (`len` bytes): its first host name, if any.
#[allow(clippy::option_option)]
fn server_name(r: &mut Records<'_>, len: usize) -> Result<Option<Option<SniName>>, HelloError> {
    let end = r.consumed + len;
    let Some(list) = r.u16()? else {
        return Ok(None);
    };
    if r.consumed + list as usize != end || list == 0 {
        return Err(HelloError::Malformed);
    }
    let mut found = None;
    while r.consumed < end {
        let Some(kind) = r.u8()? else { return Ok(None) };
        let Some(n) = r.u16()? else { return Ok(None) };
        let n = n as usize;
        if r.consumed + n > end {
            return Err(HelloError::Malformed);
        }
        if kind != NAME_TYPE_HOST || found.is_some() {
            if r.skip(n)?.is_none() {
                return Ok(None);
            }
            continue;
        }
        let mut name = SniName::EMPTY;
        for _ in 0..n {
            let Some(b) = r.u8()? else { return Ok(None) };
            if !name.push(b) {
                return Err(HelloError::BadName);
            }
        }
        if !name.is_valid() {
            return Err(HelloError::BadName);
        }
        found = Some(name);
    }
    Ok(Some(found))
}

/// A cursor over the payloads of the handshake records at the start of a buffer, as if
/// they were one byte string. `Ok(None)`: the buffer ends first (more may come).
struct Records<'a> {
    buf: &'a [u8],
    /// Where the next payload byte is.
    at: usize,
    /// Payload bytes left in the current record.
    left: usize,
    /// Payload bytes read so far.
    consumed: usize,
}

impl<'a> Records<'a> {
    fn new(buf: &'a [u8]) -> Records<'a> {
        Records {
            buf,
            at: 0,
            left: 0,
            consumed: 0,
        }
    }

    /// Makes sure a payload byte is at `at`: crosses into the next record if needed.
    fn ready(&mut self) -> Result<Option<()>, HelloError> {
        while self.left == 0 {
            let Some(header) = self.buf.get(self.at..self.at + 5) else {
                // A partial header: check what there is of it.
                let part = &self.buf[self.at.min(self.buf.len())..];
                if part.first().is_some_and(|&t| t != CONTENT_HANDSHAKE) {
                    return Err(HelloError::NotTls);
                }
                if part.get(1).is_some_and(|&v| v != 3) {
                    return Err(HelloError::NotTls);
                }
                return Ok(None);
            };
            if header[0] != CONTENT_HANDSHAKE || header[1] != 3 {
                return Err(HelloError::NotTls);
            }
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if len == 0 || len > MAX_RECORD {
                return Err(HelloError::BadRecord);
            }
            self.at += 5;
            self.left = len;
        }
        Ok(if self.at < self.buf.len() {
            Some(())
        } else {
            None
        })
    }

    fn u8(&mut self) -> Result<Option<u8>, HelloError> {
        if self.ready()?.is_none() {
            return Ok(None);
        }
        let b = self.buf[self.at];
        self.at += 1;
        self.left -= 1;
        self.consumed += 1;
        Ok(Some(b))
    }

    fn u16(&mut self) -> Result<Option<u16>, HelloError> {
        let (Some(a), Some(b)) = (self.u8()?, self.u8()?) else {
            return Ok(None);
        };
        Ok(Some(u16::from_be_bytes([a, b])))
    }

    fn u24(&mut self) -> Result<Option<usize>, HelloError> {
        let Some(a) = self.u8()? else { return Ok(None) };
        let Some(b) = self.u16()? else {
            return Ok(None);
        };
        Ok(Some((usize::from(a) << 16) | usize::from(b)))
    }

    /// Skips `n` payload bytes, record by record.
    fn skip(&mut self, mut n: usize) -> Result<Option<()>, HelloError> {
        while n > 0 {
            if self.ready()?.is_none() {
                return Ok(None);
            }
            let here = n.min(self.left).min(self.buf.len() - self.at);
            self.at += here;
            self.left -= here;
            self.consumed += here;
            n -= here;
        }
        Ok(Some(()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello handshake message (without record framing) with these extensions.
    pub(crate) fn hello_message(extensions: &[(u16, Vec<u8>)], version: u16) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&version.to_be_bytes());
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        let suites: &[u16] = &[0x2a2a, 0x1301, 0x1302, 0xc02f];
        body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
        for s in suites {
            body.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    pub(crate) fn sni_ext(name: &str) -> (u16, Vec<u8>) {
        let mut d = Vec::new();
        d.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        d.push(0);
        d.extend_from_slice(&(name.len() as u16).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        (EXT_SERVER_NAME, d)
    }

    /// `msg` cut into records of at most `size` payload bytes.
    pub(crate) fn records(msg: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in msg.chunks(size) {
            out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn name_of(buf: &[u8]) -> Option<String> {
        match parse(buf) {
            Ok(Hello::Complete(n)) => n.map(|n| n.as_str().to_string()),
            other => panic!("not a complete hello: {other:?}"),
        }
    }

    #[test]
    fn reads_the_name_in_one_record_and_in_many() {
        let grease = (0x0a0a, vec![]);
        let versions = (43, vec![4, 0x03, 0x04, 0x03, 0x03]);
        let msg = hello_message(&[grease, sni_ext("Api.Example.COM"), versions], 0x0303);
        for size in [1, 2, 3, 7, 100, MAX_RECORD] {
            let buf = records(&msg, size);
            assert_eq!(name_of(&buf).as_deref(), Some("api.example.com"), "{size}");
            // Every prefix is incomplete, never an error.
            for cut in 0..buf.len() {
                assert_eq!(parse(&buf[..cut]), Ok(Hello::Incomplete), "{size} {cut}");
            }
            // Bytes after the hello do not matter.
            let mut more = buf.clone();
            more.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
            assert_eq!(name_of(&more).as_deref(), Some("api.example.com"));
        }
    }

    #[test]
    fn no_sni_and_no_extensions_and_ech() {
        let msg = hello_message(&[(10, vec![0, 2, 0, 29])], 0x0303);
        assert_eq!(name_of(&records(&msg, 512)), None);
        // TLS 1.0 without any extension block.
        let mut msg = hello_message(&[], 0x0301);
        msg.truncate(msg.len() - 2);
        let body = (msg.len() - 4) as u32;
        msg[1..4].copy_from_slice(&body.to_be_bytes()[1..]);
        assert_eq!(name_of(&records(&msg, 512)), None);
        // ECH: the outer name routes; the encrypted inner hello is opaque bytes.
        let ech = (
            0xfe0d,
            vec![0, 0, 1, 0, 1, 42, 0, 3, 1, 2, 3, 0, 4, 9, 9, 9, 9],
        );
        let msg = hello_message(&[ech, sni_ext("public.example.net")], 0x0303);
        assert_eq!(
            name_of(&records(&msg, 512)).as_deref(),
            Some("public.example.net")
        );
    }

    #[test]
    fn refuses_what_is_not_a_hello() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert_eq!(parse(b"G"), Err(HelloError::NotTls));
        assert_eq!(parse(&[22, 2]), Err(HelloError::NotTls));
        assert_eq!(parse(&[22, 3, 1, 0, 0]), Err(HelloError::BadRecord));
        assert_eq!(parse(&[22, 3, 1, 0x40, 1]), Err(HelloError::BadRecord));
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
            Err(HelloError::NotClientHello)
        );
        // A handshake announced longer than the limit.
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 1, 0, 0x40, 0]),
            Err(HelloError::TooLong)
        );
        // An alert record in the middle of the hello.
        let msg = hello_message(&[sni_ext("a.example")], 0x0303);
        let mut buf = records(&msg[..10], 10);
        buf.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
        assert_eq!(parse(&buf), Err(HelloError::NotTls));
        // A name with a byte no host name has, and two server_name extensions.
        let msg = hello_message(&[sni_ext("a b.example")], 0x0303);
        assert_eq!(parse(&records(&msg, 512)), Err(HelloError::BadName));
        let msg = hello_message(&[sni_ext("a.example"), sni_ext("b.example")], 0x0303);
        assert_eq!(parse(&records(&msg, 512)), Err(HelloError::Malformed));
        // Extensions whose lengths disagree.
        let mut msg = hello_message(&[sni_ext("a.example")], 0x0303);
        let n = msg.len();
        msg[n - 16] ^= 0x40; // the server_name extension's length
        assert_eq!(parse(&records(&msg, 512)), Err(HelloError::Malformed));
    }

    #[test]
    fn a_hello_that_never_ends_is_too_long_at_the_limit() {
        let big = (0xffce, vec![0; 15_000]);
        let msg = hello_message(&[big, sni_ext("a.example")], 0x0303);
        let buf = records(&msg, MAX_RECORD);
        assert!(buf.len() < MAX_HELLO);
        assert_eq!(name_of(&buf).as_deref(), Some("a.example"));
        let big = (0xffce, vec![0; 17_000]);
        let msg = hello_message(&[big], 0x0303);
        assert_eq!(parse(&records(&msg, MAX_RECORD)), Err(HelloError::TooLong));
        // Declared short enough, but cut into so many records that the headers overflow.
        let msg = hello_message(&[(0xffce, vec![0; 12_000])], 0x0303);
        assert_eq!(parse(&records(&msg, 2)), Err(HelloError::TooLong));
    }
}
