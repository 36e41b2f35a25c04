//! Routing by TLS server name (SNI): the names services claim on a listen address
//! (`sni = ["a.example.com", "*.example.org", "*"]`), and which service a name goes to.
//! An exact name beats `*.suffix` (one label in place of the `*`), which beats `*` (the
//! address's default); names are compared in lower case. Pure: the worker reads the name
//! with [`crate::tls_hello`] and asks a [`SniRoutes`] here.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::backend::ServiceId;

/// The longest host name kept (DNS names are at most 253 characters).
pub const MAX_NAME: usize = 255;

/// A host name in lower case, in a fixed buffer: a connection keeps the name it was
/// routed by without a heap allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SniName {
    len: u8,
    bytes: [u8; MAX_NAME],
}

impl SniName {
    pub const EMPTY: SniName = SniName {
        len: 0,
        bytes: [0; MAX_NAME],
    };

    /// Appends a byte, lower-cased; false when it is full or the byte cannot be in a host
    /// name (letters, digits, `-`, `_`, `.`).
    pub fn push(&mut self, b: u8) -> bool {
        if usize::from(self.len) == MAX_NAME
            || !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return false;
        }
        self.bytes[usize::from(self.len)] = b.to_ascii_lowercase();
        self.len += 1;
        true
    }

    /// Not empty, no empty label (a trailing dot included).
    pub fn is_valid(&self) -> bool {
        let s = self.as_str();
        !s.is_empty() && s.split('.').all(|l| !l.is_empty())
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever pushed.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }

    pub fn parse(s: &str) -> Option<SniName> {
        let mut n = SniName::EMPTY;
        for b in s.bytes() {
            if !n.push(b) {
                return None;
            }
        }
        n.is_valid().then_some(n)
    }
}

impl std::fmt::Debug for SniName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// One entry of a service's `sni` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// This name (lower case).
    Exact(String),
    /// `*.SUFFIX`: any one label, then this suffix (lower case, no leading dot).
    Wildcard(String),
    /// `*`: every name, and clients that send none.
    Any,
}

impl Pattern {
    /// Parses `a.example.com`, `*.example.org` or `*`.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern::Any);
        }
        let (wild, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let valid = name.len() <= 253 && SniName::parse(name).is_some();
        if !valid {
            return Err(format!(
                "sni name '{text}' is not a host name, `*.` and a host name, or `*`"
            ));
        }
        let name = name.to_ascii_lowercase();
        Ok(if wild {
            Pattern::Wildcard(name)
        } else {
            Pattern::Exact(name)
        })
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(n) => f.write_str(n),
            Pattern::Wildcard(n) => write!(f, "*.{n}"),
            Pattern::Any => f.write_str("*"),
        }
    }
}

/// The names of one listen address and the service each goes to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SniTable {
    exact: HashMap<String, ServiceId>,
    wildcard: HashMap<String, ServiceId>,
    default: Option<ServiceId>,
}

impl SniTable {
    /// Adds `service`'s `pattern`; an error names the pattern when another service (or
    /// the same one) already has it.
    pub fn insert(&mut self, pattern: &Pattern, service: ServiceId) -> Result<(), String> {
        let taken = match pattern {
            Pattern::Exact(n) => self.exact.insert(n.clone(), service).is_some(),
            Pattern::Wildcard(n) => self.wildcard.insert(n.clone(), service).is_some(),
            Pattern::Any => self.default.replace(service).is_some(),
        };
        if taken {
            return Err(format!("sni name '{pattern}' is given twice"));
        }
        Ok(())
    }

    /// The service for `name` (lower case), or for a client that sent none.
    pub fn route(&self, name: Option<&str>) -> Option<ServiceId> {
        let Some(name) = name else {
            return self.default;
        };
        if let Some(&id) = self.exact.get(name) {
            return Some(id);
        }
        if let Some((label, suffix)) = name.split_once('.') {
            if !label.is_empty() {
                if let Some(&id) = self.wildcard.get(suffix) {
                    return Some(id);
                }
            }
        }
        self.default
    }
}

/// The tables of every listen address whose services route by name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SniRoutes {
    by_addr: Vec<(SocketAddr, SniTable)>,
}

impl SniRoutes {
    /// Adds `service`'s patterns on `addr`.
    pub fn add(
        &mut self,
        addr: SocketAddr,
        patterns: &[Pattern],
        service: ServiceId,
    ) -> Result<(), String> {
        let i = match self.by_addr.iter().position(|(a, _)| *a == addr) {
            Some(i) => i,
            None => {
                self.by_addr.push((addr, SniTable::default()));
                self.by_addr.len() - 1
            }
        };
        let table = &mut self.by_addr[i].1;
        patterns
            .iter()
            .try_for_each(|p| table.insert(p, service))
            .map_err(|e| format!("{addr}: {e}"))
    }

    /// The table of `addr`, when its services route by name.
    pub fn table(&self, addr: SocketAddr) -> Option<&SniTable> {
        self.by_addr
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, t)| t)
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, u32)]) -> SniTable {
        let mut t = SniTable::default();
        for (p, id) in entries {
            t.insert(&Pattern::parse(p).expect("pattern"), ServiceId(*id))
                .expect("insert");
        }
        t
    }

    #[test]
    fn exact_beats_wildcard_beats_default() {
        let t = table(&[
            ("a.example.com", 1),
            ("*.example.com", 2),
            ("*", 3),
            ("*.b.example.com", 4),
        ]);
        let r = |n: &str| t.route(Some(n)).map(|s| s.0);
        assert_eq!(r("a.example.com"), Some(1));
        assert_eq!(r("z.example.com"), Some(2));
        assert_eq!(r("x.b.example.com"), Some(4));
        // One label only: deeper names and the bare suffix are not the wildcard's.
        assert_eq!(r("x.y.example.com"), Some(3));
        assert_eq!(r("example.com"), Some(3));
        assert_eq!(r("other.org"), Some(3));
        assert_eq!(t.route(None), Some(ServiceId(3)));

        let t = table(&[("a.example.com", 1), ("*.example.com", 2)]);
        assert_eq!(t.route(Some("other.org")), None);
        assert_eq!(t.route(None), None);
    }

    #[test]
    fn names_are_lower_case_and_checked() {
        assert_eq!(
            Pattern::parse("A.Example.COM"),
            Ok(Pattern::Exact("a.example.com".into()))
        );
        assert_eq!(
            Pattern::parse("*.Example.org"),
            Ok(Pattern::Wildcard("example.org".into()))
        );
        for bad in [
            "",
            "*.",
            "a..b",
            "a.*.b",
            "**",
            "a b",
            "*a.example",
            "a.",
            "é.fr",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
        let mut n = SniName::EMPTY;
        for b in b"WWW.Example.Com" {
            assert!(n.push(*b));
        }
        assert_eq!(n.as_str(), "www.example.com");
        assert!(!n.push(b'/'));
        assert_eq!(SniName::parse(&"a".repeat(MAX_NAME + 1)), None);
    }

    #[test]
    fn a_name_twice_on_one_address_is_refused() {
        let mut r = SniRoutes::default();
        let addr: SocketAddr = "127.0.0.1:443".parse().expect("addr");
        let p = |s: &str| Pattern::parse(s).expect("pattern");
        r.add(addr, &[p("a.example"), p("*")], ServiceId(0))
            .expect("first");
        let e = r
            .add(addr, &[p("A.example")], ServiceId(1))
            .expect_err("twice");
        assert!(e.contains("'a.example' is given twice"), "{e}");
        let other: SocketAddr = "127.0.0.1:8443".parse().expect("addr");
        r.add(other, &[p("a.example")], ServiceId(1))
            .expect("another address");
        assert_eq!(
            r.table(other).and_then(|t| t.route(Some("a.example"))),
            Some(ServiceId(1))
        );
    }
}
