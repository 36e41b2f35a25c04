//! The request datagrams: a DNS query, or a fixed payload of a given size; either way
//! the first two bytes are the request's id (the DNS header's id), which an echo returns
//! as it is and a DNS server copies into its answer.

/// The name queried by default; a server without it answers NXDOMAIN or REFUSED, which
/// is an answer all the same.
pub const DEFAULT_NAME: &str = "bench.uringlb.test";

/// Smallest `--size`: the two id bytes.
pub const MIN_SIZE: usize = 2;

/// Largest `--size`: the largest UDP payload over IPv4.
pub const MAX_SIZE: usize = 65_507;

/// What each request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A DNS query (type A, class IN, recursion desired) for this name.
    Dns(String),
    /// This many bytes: the id, then a fixed pattern.
    Fixed(usize),
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Dns(DEFAULT_NAME.to_string())
    }
}

impl Payload {
    /// The request bytes with id 0; [`set_id`] stamps each request's.
    pub fn build(&self) -> Result<Vec<u8>, String> {
        match self {
            Payload::Dns(name) => dns_query(name),
            Payload::Fixed(size) if (MIN_SIZE..=MAX_SIZE).contains(size) => {
                Ok((0..*size).map(|i| b'a' + (i % 26) as u8).collect())
            }
            Payload::Fixed(size) => Err(format!(
                "--size must be {MIN_SIZE} to {MAX_SIZE} bytes, got {size}"
            )),
        }
    }
}

/// Stamps `id` into a request built by [`Payload::build`].
pub fn set_id(request: &mut [u8], id: u16) {
    request[..2].copy_from_slice(&id.to_be_bytes());
}

/// The id of a reply, if it is long enough to have one.
pub fn reply_id(reply: &[u8]) -> Option<u16> {
    (reply.len() >= 2).then(|| u16::from_be_bytes([reply[0], reply[1]]))
}

/// A DNS query for `name` with id 0: a 12-byte header, the name as labels, type A, class IN.
fn dns_query(name: &str) -> Result<Vec<u8>, String> {
    let name = name.trim_end_matches('.');
    let bad = |why: &str| Err(format!("--name {name:?} is not a DNS name: {why}"));
    if name.is_empty() || name.len() > 253 {
        return bad("it must have 1 to 253 characters");
    }
    let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 || !label.is_ascii() {
            return bad("each label must have 1 to 63 ASCII characters");
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_query_wire_format() {
        let mut q = Payload::default().build().unwrap();
        // header 12, "bench" 1+5, "uringlb" 1+7, "test" 1+4, root 1, type and class 4.
        assert_eq!(q.len(), 36);
        assert_eq!(&q[12..18], b"\x05bench");
        assert_eq!(&q[q.len() - 5..], &[0, 0, 1, 0, 1]);
        set_id(&mut q, 0xbeef);
        assert_eq!(reply_id(&q), Some(0xbeef));
        assert_eq!(q[2], 0x01, "recursion desired");
    }

    #[test]
    fn fixed_payload_and_bad_input() {
        assert_eq!(Payload::Fixed(40).build().unwrap().len(), 40);
        assert!(Payload::Fixed(1).build().is_err());
        assert!(Payload::Fixed(MAX_SIZE + 1).build().is_err());
        assert!(Payload::Dns("a..b".into()).build().is_err());
        assert!(Payload::Dns(String::new()).build().is_err());
        assert!(Payload::Dns("x".repeat(64)).build().is_err());
        assert_eq!(reply_id(&[1]), None);
    }
}
