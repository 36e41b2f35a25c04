//! Consul's `/v1/health/service/SERVICE` answer to backends, and the blocking-query index
//! rules, pure (the HTTP side is [`super::consul_watch`]).
//!
//! The format is the one Consul 1.x documents for that endpoint: a JSON array of
//! `{ "Node": {..}, "Service": {..}, "Checks": [..] }`; only `Node.Node`, `Node.Address`,
//! `Service.ID`, `Service.Address`, `Service.Port` and `Service.Weights.Passing` are read,
//! every other field is ignored.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use crate::config::{parse_backend_name, BackendSpec, MAX_WEIGHT};

use super::records::{Candidate, MAX_DISCOVERED};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(default, rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    #[serde(default)]
    passing: Option<i64>,
}

/// The backend name of a service instance: `SERVICE_ID@NODE`. Consul identifies an instance
/// by its node and its service ID (an ID is unique only on its node), and neither depends
/// on the address or on the order of the answer: every balancer fed by the same Consul
/// gets the same names, so the same Maglev table, and an instance re-registered at a new
/// address keeps its name (and its place in the table).
pub fn backend_name(service_id: &str, node: &str) -> String {
    format!("{service_id}@{node}")
}

/// Consul's `Weights.Passing` to a backend weight: absent means 1 (Consul's default), and
/// it is kept within what `--backend weight=` accepts.
pub fn map_weight(passing: Option<i64>) -> u32 {
    passing.unwrap_or(1).clamp(1, i64::from(MAX_WEIGHT)) as u32
}

/// Parses a health answer into candidates (priority 0, sorted by name) and the reasons
/// entries were left out, one line each. An error is a body that is not the documented
/// JSON array.
pub fn candidates(body: &[u8]) -> Result<(Vec<Candidate>, Vec<String>), String> {
    let entries: Vec<Entry> =
        serde_json::from_slice(body).map_err(|e| format!("not a Consul health answer: {e}"))?;
    let mut problems = Vec::new();
    let mut by_name: BTreeMap<String, BackendSpec> = BTreeMap::new();
    for e in entries {
        let addr_text = if e.service.address.is_empty() {
            &e.node.address
        } else {
            &e.service.address
        };
        let id = if e.service.id.is_empty() {
            "?"
        } else {
            &e.service.id
        };
        let Ok(ip) = addr_text.parse::<IpAddr>() else {
            problems.push(format!(
                "instance {id} on node {}: address '{addr_text}' is not an IP address; ignored",
                e.node.node
            ));
            continue;
        };
        if e.service.port == 0 {
            problems.push(format!(
                "instance {id} on node {}: no port; ignored",
                e.node.node
            ));
            continue;
        }
        let name = match parse_backend_name(&backend_name(&e.service.id, &e.node.node)) {
            Ok(n) if !e.service.id.is_empty() && !e.node.node.is_empty() => n,
            Ok(n) => {
                problems.push(format!("instance {n}: no service ID or node name; ignored"));
                continue;
            }
            Err(m) => {
                problems.push(format!("instance {id}: {m}; ignored"));
                continue;
            }
        };
        let weight = map_weight(e.service.weights.and_then(|w| w.passing));
        by_name.entry(name.clone()).or_insert(BackendSpec {
            addr: SocketAddr::new(ip, e.service.port),
            weight,
            name,
            max_conns: None,
            proxy_protocol: None,
            backup: false,
        });
    }
    if by_name.len() > MAX_DISCOVERED {
        problems.push(format!(
            "{} instances found; only the first {MAX_DISCOVERED} by name are used",
            by_name.len()
        ));
    }
    let out = by_name
        .into_values()
        .take(MAX_DISCOVERED)
        .map(|spec| Candidate { spec, priority: 0 })
        .collect();
    Ok((out, problems))
}

/// The index for the next blocking query, from the one just used and the `X-Consul-Index`
/// of the answer (Consul's "Blocking Queries" rules): an index that went backwards (a
/// restored snapshot, a new cluster) resets to 0, one that is 0 or missing becomes 1 (so
/// a buggy answer does not turn every query into an immediate one).
pub fn next_index(used: u64, answered: Option<u64>) -> u64 {
    match answered {
        Some(a) if a < used => 0,
        Some(a) => a.max(1),
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"[
      {"Node": {"ID": "x", "Node": "node-a", "Address": "10.0.0.1", "Datacenter": "dc1",
                "TaggedAddresses": {"lan": "10.0.0.1"}, "Meta": {}},
       "Service": {"ID": "web-1", "Service": "web", "Tags": ["v1"], "Address": "10.0.1.1",
                   "Port": 8080, "Weights": {"Passing": 3, "Warning": 1}, "Meta": null},
       "Checks": [{"Status": "passing"}]},
      {"Node": {"Node": "node-b", "Address": "10.0.0.2"},
       "Service": {"ID": "web-2", "Service": "web", "Address": "", "Port": 8080},
       "Checks": []},
      {"Node": {"Node": "node-c", "Address": "10.0.0.3"},
       "Service": {"ID": "web-3", "Service": "web", "Address": "web3.example", "Port": 80}},
      {"Node": {"Node": "node-d", "Address": "10.0.0.4"},
       "Service": {"ID": "web-4", "Service": "web", "Address": "", "Port": 0}}
    ]"#;

    #[test]
    fn answer_to_candidates() {
        let (c, problems) = candidates(ANSWER.as_bytes()).expect("parses");
        let got: Vec<(String, String, u32)> = c
            .iter()
            .map(|c| (c.spec.name.clone(), c.spec.addr.to_string(), c.spec.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("web-1@node-a".into(), "10.0.1.1:8080".into(), 3),
                ("web-2@node-b".into(), "10.0.0.2:8080".into(), 1),
            ]
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(candidates(b"{}").is_err());
        assert!(candidates(b"[{\"Node\": 1}]").is_err());
        assert_eq!(candidates(b"[]").expect("empty").0, []);
    }

    #[test]
    fn weights() {
        assert_eq!(map_weight(None), 1);
        assert_eq!(map_weight(Some(0)), 1);
        assert_eq!(map_weight(Some(-5)), 1);
        assert_eq!(map_weight(Some(7)), 7);
        assert_eq!(map_weight(Some(1 << 40)), MAX_WEIGHT);
    }

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, Some(42)), 42);
        assert_eq!(next_index(42, Some(42)), 42);
        assert_eq!(next_index(42, Some(50)), 50);
        assert_eq!(next_index(42, Some(7)), 0, "backwards: reset");
        assert_eq!(next_index(0, Some(0)), 1, "0 is never used again");
        assert_eq!(next_index(5, None), 1);
    }
}
