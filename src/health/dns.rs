//! The `dns:NAME` check of UDP services: an `A` query for NAME over UDP, healthy when an
//! answer with the query's id comes back with `NOERROR` or `NXDOMAIN` (the server is up
//! and answering; `SERVFAIL` or `REFUSED` say it cannot serve).

use std::net::SocketAddr;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

use super::ProbeError;

/// The query for `name` with id `id`, as bytes.
pub fn query(name: &str, id: u16) -> Result<Vec<u8>, String> {
    let name = Name::from_ascii(name).map_err(|e| e.to_string())?;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, RecordType::A));
    m.to_vec().map_err(|e| e.to_string())
}

/// Whether `answer` answers query `id` with a code of a working server.
pub fn judge(answer: &[u8], id: u16) -> Result<(), ProbeError> {
    let m = Message::from_vec(answer)
        .map_err(|e| ProbeError::Invalid(format!("not a DNS message: {e}")))?;
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
        return Err(ProbeError::Invalid(
            "not the answer to the query".to_string(),
        ));
    }
    match m.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(()),
        code => Err(ProbeError::Invalid(format!("DNS answer {code}"))),
    }
}

/// Sends the query to `addr` and waits for its answer (the caller bounds the time).
/// Datagrams that are not the answer (a late one of an earlier check) are skipped.
pub async fn check(addr: SocketAddr, name: &str) -> Result<(), ProbeError> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await.map_err(ProbeError::Io)?;
    sock.connect(addr).await.map_err(ProbeError::Connect)?;
    let id = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish() as u16
    };
    let q = query(name, id).map_err(ProbeError::Invalid)?;
    sock.send(&q).await.map_err(ProbeError::Io)?;
    let mut buf = vec![0u8; 4096];
    loop {
        // ECONNREFUSED here: the port is closed (ICMP unreachable).
        let n = sock.recv(&mut buf).await.map_err(ProbeError::Connect)?;
        match judge(&buf[..n], id) {
            Err(ProbeError::Invalid(why)) if why == "not the answer to the query" => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_and_its_answers() {
        let q = query("example.com", 7).expect("query");
        let asked = Message::from_vec(&q).expect("parse");
        assert_eq!(asked.metadata.id, 7);
        let answer = |id: u16, code: ResponseCode| {
            let mut m = Message::new(id, MessageType::Response, OpCode::Query);
            m.metadata.response_code = code;
            m.to_vec().expect("bytes")
        };
        assert!(judge(&answer(7, ResponseCode::NoError), 7).is_ok());
        assert!(judge(&answer(7, ResponseCode::NXDomain), 7).is_ok());
        assert!(judge(&answer(7, ResponseCode::ServFail), 7).is_err());
        assert!(judge(&answer(8, ResponseCode::NoError), 7).is_err());
        assert!(judge(&q, 7).is_err(), "a query is not an answer");
        assert!(judge(b"junk", 7).is_err());
    }
}
