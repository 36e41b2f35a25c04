//! SRV records to backends, pure: naming, weight mapping, priority classes and the union
//! with static backends. No I/O and no clock, so every rule here is unit-tested and two
//! balancer instances given the same DNS answers compute the same backends, whatever order
//! the answers came in.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::config::{parse_backend_name, BackendSpec, MAX_WEIGHT};

/// At most this many discovered backends are used (the lowest priority values first, then
/// by name, so every instance keeps the same ones). Backend ids are never reused while a
/// name is known (`MAX_BACKENDS` in all), so an unbounded answer could exhaust them.
pub const MAX_DISCOVERED: usize = 1024;

/// One SRV answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// As in the record; [`target_key`] normalises it.
    pub target: String,
}

/// A backend that discovery found, with the SRV priority class it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub spec: BackendSpec,
    pub priority: u16,
}

/// The SRV target as the backend name uses it: lower case (DNS names are case-insensitive
/// and resolvers may randomise case), without the root's trailing dot. Empty for the
/// target ".", which RFC 2782 uses for "service not available here".
pub fn target_key(target: &str) -> String {
    target.trim_end_matches('.').to_ascii_lowercase()
}

/// RFC 2782 weight to backend weight. Weight 0 means "a very small chance when others have
/// weight" and "no preference" when all have 0: 1 does both. Above [`MAX_WEIGHT`] (what
/// `--backend weight=` accepts) it is clamped, so a weight-65535 record cannot blow up the
/// weighted tables.
pub fn map_weight(srv_weight: u16) -> u32 {
    u32::from(srv_weight).clamp(1, MAX_WEIGHT)
}

/// The stable backend name: `TARGET:PORT`, or `TARGET:PORT#IP` for each address when the
/// target has several. Names come from DNS names, not addresses, so a backend whose address
/// changes keeps its name (and its place in a Maglev table); `#IP` appears only for targets
/// with several addresses, which Consul and Kubernetes do not publish.
pub fn backend_name(target: &str, port: u16, ip: Option<IpAddr>) -> String {
    match ip {
        None => format!("{target}:{port}"),
        Some(ip) => format!("{target}:{port}#{ip}"),
    }
}

/// The SRV targets whose addresses are needed (normalised, each once, sorted).
pub fn targets(records: &[SrvRecord]) -> Vec<String> {
    let mut t: Vec<String> = records
        .iter()
        .map(|r| target_key(&r.target))
        .filter(|t| !t.is_empty())
        .collect();
    t.sort();
    t.dedup();
    t
}

/// Turns SRV records and their targets' addresses into candidates, sorted by name.
///
/// The same target and port listed twice counts once, in its lowest priority class and with
/// the highest weight given there. Records for "." or port 0, targets without an address
/// and names a backend may not have are left out; the second value says why, one line each.
pub fn candidates(
    records: &[SrvRecord],
    addrs: &dyn Fn(&str) -> Option<Vec<IpAddr>>,
) -> (Vec<Candidate>, Vec<String>) {
    let mut problems = Vec::new();
    // (target, port) -> (priority, weight): the lowest priority, then the highest weight.
    let mut best: BTreeMap<(String, u16), (u16, u16)> = BTreeMap::new();
    for r in records {
        let target = target_key(&r.target);
        if target.is_empty() {
            continue;
        }
        if r.port == 0 {
            problems.push(format!("SRV target {target} has port 0; ignored"));
            continue;
        }
        let e = best
            .entry((target, r.port))
            .or_insert((r.priority, r.weight));
        if r.priority < e.0 || (r.priority == e.0 && r.weight > e.1) {
            *e = (r.priority, r.weight);
        }
    }
    let mut out = Vec::new();
    for ((target, port), (priority, weight)) in best {
        let mut ips = addrs(&target).unwrap_or_default();
        ips.sort();
        ips.dedup();
        if ips.is_empty() {
            problems.push(format!("SRV target {target} has no address; ignored"));
            continue;
        }
        let several = ips.len() > 1;
        for ip in ips {
            let name = backend_name(&target, port, several.then_some(ip));
            let name = match parse_backend_name(&name) {
                Ok(n) => n,
                Err(e) => {
                    problems.push(format!("SRV target {target}: {e}; ignored"));
                    break;
                }
            };
            out.push(Candidate {
                spec: BackendSpec {
                    addr: SocketAddr::new(ip, port),
                    weight: map_weight(weight),
                    name,
                    max_conns: None,
                    proxy_protocol: None,
                    backup: false,
                },
                priority,
            });
        }
    }
    if out.len() > MAX_DISCOVERED {
        out.sort_by(|a, b| (a.priority, &a.spec.name).cmp(&(b.priority, &b.spec.name)));
        problems.push(format!(
            "{} backends discovered; only the first {MAX_DISCOVERED} (lowest priority values) are used",
            out.len()
        ));
        out.truncate(MAX_DISCOVERED);
    }
    out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    (out, problems)
}

/// The priority rule (RFC 2782: use the lowest priority value you can reach): the classes
/// in ascending priority value, up to and including the first that has a backend up; all
/// of them when none has. `up(name)` is that backend's health as the table knows it (one
/// the table does not have yet counts as up: it starts up). Higher classes that are down
/// stay in, so their health checks go on and they take over again once one is back up.
pub fn select(candidates: &[Candidate], up: &dyn Fn(&str) -> bool) -> Vec<BackendSpec> {
    let mut classes: BTreeMap<u16, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates {
        classes.entry(c.priority).or_default().push(c);
    }
    let mut out = Vec::new();
    for members in classes.values() {
        out.extend(members.iter().map(|c| c.spec.clone()));
        if members.iter().any(|c| up(&c.spec.name)) {
            break;
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The backend set with discovery on: the static backends, then the discovered ones, then
/// `kept` (backends added another way, e.g. the admin API), each name once; sorted by name.
/// A static backend wins over a discovered one of the same name; the names that lost are
/// the second value.
pub fn merge(
    statics: &[BackendSpec],
    discovered: Vec<BackendSpec>,
    kept: Vec<BackendSpec>,
) -> (Vec<BackendSpec>, Vec<String>) {
    let mut names: HashSet<String> = statics.iter().map(|s| s.name.clone()).collect();
    let mut out: Vec<BackendSpec> = statics.to_vec();
    let mut shadowed = Vec::new();
    for d in discovered {
        if names.insert(d.name.clone()) {
            out.push(d);
        } else {
            shadowed.push(d.name);
        }
    }
    for k in kept {
        if names.insert(k.name.clone()) {
            out.push(k);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, shadowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.to_string(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn lookup(table: &[(&str, &[&str])]) -> impl Fn(&str) -> Option<Vec<IpAddr>> {
        let m: HashMap<String, Vec<IpAddr>> = table
            .iter()
            .map(|(t, ips)| (t.to_string(), ips.iter().map(|s| ip(s)).collect()))
            .collect();
        move |t: &str| m.get(t).cloned()
    }

    fn names(specs: &[BackendSpec]) -> Vec<&str> {
        specs.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn weights_follow_rfc_2782_and_the_config_limit() {
        assert_eq!(map_weight(0), 1);
        assert_eq!(map_weight(1), 1);
        assert_eq!(map_weight(100), 100);
        assert_eq!(map_weight(10_000), MAX_WEIGHT);
        assert_eq!(map_weight(10_001), MAX_WEIGHT);
        assert_eq!(map_weight(u16::MAX), MAX_WEIGHT);
    }

    #[test]
    fn names_come_from_the_target_not_the_address() {
        let records = [
            srv(0, 10, 8080, "Web-1.Node.DC1.Consul."),
            srv(0, 0, 8080, "web-2.node.dc1.consul"),
        ];
        let (c, problems) = candidates(
            &records,
            &lookup(&[
                ("web-1.node.dc1.consul", &["10.0.0.1"]),
                ("web-2.node.dc1.consul", &["10.0.0.2"]),
            ]),
        );
        assert!(problems.is_empty(), "{problems:?}");
        let specs: Vec<BackendSpec> = c.iter().map(|c| c.spec.clone()).collect();
        assert_eq!(
            names(&specs),
            ["web-1.node.dc1.consul:8080", "web-2.node.dc1.consul:8080"]
        );
        assert_eq!(c[0].spec.addr, "10.0.0.1:8080".parse().expect("addr"));
        assert_eq!((c[0].spec.weight, c[1].spec.weight), (10, 1));
        // A new address keeps the name.
        let (moved, _) = candidates(
            &records,
            &lookup(&[
                ("web-1.node.dc1.consul", &["10.0.0.9"]),
                ("web-2.node.dc1.consul", &["10.0.0.2"]),
            ]),
        );
        assert_eq!(moved[0].spec.name, c[0].spec.name);
        assert_eq!(moved[0].spec.addr, "10.0.0.9:8080".parse().expect("addr"));
    }

    #[test]
    fn a_target_with_several_addresses_is_one_backend_per_address() {
        let (c, _) = candidates(
            &[srv(0, 5, 80, "multi.example.")],
            &lookup(&[(
                "multi.example",
                &["::1", "127.0.0.2", "127.0.0.1", "127.0.0.2"],
            )]),
        );
        let specs: Vec<BackendSpec> = c.iter().map(|c| c.spec.clone()).collect();
        assert_eq!(
            names(&specs),
            [
                "multi.example:80#127.0.0.1",
                "multi.example:80#127.0.0.2",
                "multi.example:80#::1"
            ]
        );
        assert!(c.iter().all(|c| c.spec.weight == 5));
    }

    #[test]
    fn answer_order_does_not_matter() {
        let mut records = vec![
            srv(0, 3, 1001, "a.test."),
            srv(0, 1, 1002, "b.test."),
            srv(5, 2, 1003, "c.test."),
        ];
        let addrs = lookup(&[
            ("a.test", &["127.0.0.1"]),
            ("b.test", &["127.0.0.1"]),
            ("c.test", &["127.0.0.1"]),
        ]);
        let first = candidates(&records, &addrs);
        records.reverse();
        assert_eq!(candidates(&records, &addrs), first);
    }

    #[test]
    fn duplicates_unusable_records_and_missing_addresses() {
        let records = [
            srv(10, 50, 80, "a.test."),
            srv(0, 1, 80, "a.test."),
            srv(0, 7, 80, "A.test."),
            srv(0, 0, 80, "."),
            srv(0, 0, 0, "zero.test."),
            srv(0, 0, 80, "gone.test."),
            srv(0, 0, 80, "bad\\032name.test."),
        ];
        let (c, problems) = candidates(
            &records,
            &lookup(&[
                ("a.test", &["127.0.0.1"]),
                ("bad\\032name.test", &["127.0.0.1"]),
            ]),
        );
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].priority, c[0].spec.weight), (0, 7));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("zero.test has port 0")));
        assert!(problems
            .iter()
            .any(|p| p.contains("gone.test has no address")));
        assert!(problems.iter().any(|p| p.contains("bad\\032name.test")));
        assert_eq!(targets(&records).len(), 4);
    }

    #[test]
    fn too_many_keeps_the_lowest_priorities() {
        let records: Vec<SrvRecord> = (0..MAX_DISCOVERED + 10)
            .map(|i| srv(if i < 10 { 9 } else { 1 }, 1, 1000 + i as u16, "t.test."))
            .collect();
        let (c, problems) = candidates(&records, &lookup(&[("t.test", &["127.0.0.1"])]));
        assert_eq!(c.len(), MAX_DISCOVERED);
        assert!(c.iter().all(|c| c.priority == 1));
        assert_eq!(problems.len(), 1);
    }

    fn cand(name: &str, priority: u16) -> Candidate {
        Candidate {
            spec: BackendSpec {
                addr: "127.0.0.1:1".parse().expect("addr"),
                weight: 1,
                name: name.to_string(),
                max_conns: None,
                proxy_protocol: None,
                backup: false,
            },
            priority,
        }
    }

    #[test]
    fn the_lowest_priority_class_with_a_backend_up_is_used() {
        let c = [
            cand("p0-a", 0),
            cand("p0-b", 0),
            cand("p10", 10),
            cand("p20", 20),
        ];
        let all_up = |_: &str| true;
        assert_eq!(names(&select(&c, &all_up)), ["p0-a", "p0-b"]);
        let one_down = |n: &str| n != "p0-a";
        assert_eq!(names(&select(&c, &one_down)), ["p0-a", "p0-b"]);
        // Class 0 all down: class 10 joins; class 0 stays so it is still checked.
        let p0_down = |n: &str| !n.starts_with("p0");
        assert_eq!(names(&select(&c, &p0_down)), ["p0-a", "p0-b", "p10"]);
        let only_p20 = |n: &str| n == "p20";
        assert_eq!(
            names(&select(&c, &only_p20)),
            ["p0-a", "p0-b", "p10", "p20"]
        );
        // Nothing up anywhere: everything (the table's panic mode balances over them).
        let none = |_: &str| false;
        assert_eq!(select(&c, &none).len(), 4);
        assert!(select(&[], &all_up).is_empty());
    }

    fn spec(name: &str, port: u16) -> BackendSpec {
        BackendSpec {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            name: name.to_string(),
            max_conns: None,
            proxy_protocol: None,
            backup: false,
        }
    }

    #[test]
    fn static_backends_are_a_union_and_win_a_name_clash() {
        let statics = [spec("static", 1), spec("dup", 2)];
        let (all, shadowed) = merge(
            &statics,
            vec![spec("dup", 3), spec("found", 4)],
            vec![spec("admin", 5), spec("found", 6)],
        );
        assert_eq!(names(&all), ["admin", "dup", "found", "static"]);
        assert_eq!(all[1].addr.port(), 2, "the static one");
        assert_eq!(all[2].addr.port(), 4, "discovered before kept");
        assert_eq!(shadowed, ["dup"]);
    }
}
