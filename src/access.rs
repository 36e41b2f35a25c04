//! Client allow/deny lists (`--allow`, `--deny`): which client networks a service serves.
//! Pure: the worker asks [`AccessList::permits`] at accept, or, for a client trusted to send
//! a PROXY header, once the header says who the real client is. The lists travel in the
//! snapshot, so a reload changes them for new connections.

use std::net::IpAddr;

use ipnet::IpNet;

/// Longest `--allow` or `--deny` list: every new client is matched against each entry.
pub const MAX_NETWORKS: usize = 4096;

/// The allow and deny lists of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessList {
    /// Only clients in these networks are served; empty = everyone.
    pub allow: Vec<IpNet>,
    /// Clients in these networks are never served, whatever `allow` says.
    pub deny: Vec<IpNet>,
}

impl AccessList {
    /// No list is set: every client is served, and nobody needs to ask for its address.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether a client from `ip` is served: not denied, and allowed (when an allow list
    /// is set). An IPv4-mapped IPv6 address (a v4 client of a dual-stack `[::]` listener)
    /// matches IPv4 networks as the IPv4 address it is.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let plain = crate::loops::canonical(ip);
        let listed = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&plain) || n.contains(&ip));
        !listed(&self.deny) && (self.allow.is_empty() || listed(&self.allow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn empty_lists_serve_everyone() {
        let a = AccessList::default();
        assert!(a.is_open());
        assert!(a.permits(ip("192.0.2.1")));
        assert!(a.permits(ip("2001:db8::1")));
    }

    #[test]
    fn allow_list_serves_only_its_networks() {
        let a = AccessList {
            allow: nets(&["10.0.0.0/8", "2001:db8::/32"]),
            deny: vec![],
        };
        assert!(!a.is_open());
        assert!(a.permits(ip("10.1.2.3")));
        assert!(a.permits(ip("2001:db8::7")));
        assert!(!a.permits(ip("11.0.0.1")));
        assert!(!a.permits(ip("::1")));
    }

    #[test]
    fn deny_wins_over_allow() {
        let a = AccessList {
            allow: nets(&["10.0.0.0/8"]),
            deny: nets(&["10.9.0.0/16"]),
        };
        assert!(a.permits(ip("10.1.0.1")));
        assert!(!a.permits(ip("10.9.0.1")));
        let deny_only = AccessList {
            allow: vec![],
            deny: nets(&["192.0.2.0/24"]),
        };
        assert!(deny_only.permits(ip("198.51.100.1")));
        assert!(!deny_only.permits(ip("192.0.2.200")));
    }

    #[test]
    fn mapped_v6_clients_match_v4_networks() {
        let a = AccessList {
            allow: nets(&["127.0.0.0/8"]),
            deny: nets(&["127.0.0.2/32"]),
        };
        assert!(a.permits(ip("::ffff:127.0.0.1")));
        assert!(!a.permits(ip("::ffff:127.0.0.2")));
        assert!(!a.permits(ip("::ffff:10.0.0.1")));
        // A network written in the mapped form matches too.
        let mapped = AccessList {
            allow: nets(&["::ffff:10.0.0.0/104"]),
            deny: vec![],
        };
        assert!(mapped.permits(ip("::ffff:10.1.1.1")));
    }
}
