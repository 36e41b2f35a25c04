//! The I/O half: a task on the control thread's runtime that resolves the SRV name with
//! hickory-resolver, then each target's addresses, and sends every changed answer to the
//! control loop. It re-resolves every `--discovery-interval`, or sooner when the answer's
//! TTL runs out first.
//!
//! A failed resolution (timeout, SERVFAIL, NXDOMAIN, no records, nothing usable) sends
//! nothing, so the last known set stays; it is counted in [`super::FAILURES`] and logged at
//! warn once per run of failures. A target whose address lookup fails keeps the addresses
//! it had (that counts as a failure too).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;

use super::records::{self, Candidate, SrvRecord};
use super::{DISCOVERED, FAILURES, RESOLUTIONS};

/// A TTL shorter than this does not make re-resolution more frequent than this (a TTL of 0,
/// dnsmasq's default for its own records, would otherwise mean a tight loop).
const MIN_TTL_WAIT: Duration = Duration::from_secs(1);
/// Target address lookups in flight at once.
const PARALLEL_LOOKUPS: usize = 32;

/// `--discovery dns-srv:NAME[@IP[:PORT]]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    /// `None`: the system's resolver configuration (/etc/resolv.conf).
    pub resolver: Option<SocketAddr>,
}

impl Source {
    /// Parses a value `config::parse_discovery` accepted; the resolver's port defaults to 53.
    pub fn parse(s: &str) -> Result<Source, String> {
        let rest = s
            .trim()
            .strip_prefix("dns-srv:")
            .ok_or_else(|| format!("unknown discovery source '{s}'"))?;
        let (name, resolver) = match rest.split_once('@') {
            Some((n, r)) => (n, Some(r)),
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(format!("no SRV name in '{s}'"));
        }
        let resolver = match resolver {
            None => None,
            Some(r) => Some(
                r.parse::<SocketAddr>()
                    .or_else(|_| r.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| format!("invalid resolver '{r}' in '{s}'"))?,
            ),
        };
        Ok(Source {
            name: name.to_string(),
            resolver,
        })
    }
}

/// A resolver for `source` whose answers are never older than `interval`: the operator's
/// interval, not a long TTL, bounds how stale the backend set can be.
fn build_resolver(source: &Source, interval: Duration) -> Result<TokioResolver, String> {
    let mut builder = match source.resolver {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
    };
    let system = source.resolver.is_none();
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(5));
    opts.attempts = 2;
    opts.positive_max_ttl = Some(interval);
    opts.negative_max_ttl = Some(interval);
    if !system {
        // A named resolver answers for everything; /etc/hosts would shadow it.
        opts.use_hosts_file = ResolveHosts::Never;
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the resolver: {e}"))
}

/// One successful resolution.
struct Answer {
    candidates: Vec<Candidate>,
    /// Every target's addresses (kept for the next round's failed lookups).
    addrs: HashMap<String, Vec<IpAddr>>,
    /// The earliest expiry among the records used.
    valid_until: Instant,
    /// One line each: what was left out or looked up in vain.
    problems: Vec<String>,
    /// Some target lookup failed (its old addresses were used).
    partial: bool,
}

async fn resolve(
    resolver: &TokioResolver,
    name: &str,
    previous: &HashMap<String, Vec<IpAddr>>,
) -> Result<Answer, String> {
    let lookup = resolver.srv_lookup(name).await.map_err(|e| e.to_string())?;
    let mut valid_until = lookup.valid_until();
    let srv: Vec<(SrvRecord, Name)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((
                SrvRecord {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_ascii(),
                },
                s.target.clone(),
            )),
            _ => None,
        })
        .collect();
    if srv.is_empty() {
        return Err("no SRV records".to_string());
    }
    // Each target once, by its normalised name; the record's own Name is fully qualified,
    // so no search domain is tried.
    let mut wanted: Vec<(String, Name)> = Vec::new();
    let mut seen = HashSet::new();
    for (r, n) in &srv {
        let key = records::target_key(&r.target);
        if !key.is_empty() && seen.insert(key.clone()) {
            wanted.push((key, n.clone()));
        }
    }
    let mut addrs: HashMap<String, Vec<IpAddr>> = HashMap::new();
    let mut problems = Vec::new();
    let mut partial = false;
    for chunk in wanted.chunks(PARALLEL_LOOKUPS) {
        let mut set = JoinSet::new();
        for (key, n) in chunk {
            let (resolver, key, n) = (resolver.clone(), key.clone(), n.clone());
            set.spawn(async move { (key, resolver.lookup_ip(n).await) });
        }
        while let Some(joined) = set.join_next().await {
            let Ok((key, result)) = joined else { continue };
            match result {
                Ok(ips) => {
                    valid_until = valid_until.min(ips.valid_until());
                    addrs.insert(key, ips.iter().collect());
                }
                Err(e) => {
                    partial = true;
                    match previous.get(&key) {
                        Some(old) => {
                            problems.push(format!(
                                "looking up SRV target {key} failed ({e}); using its last known address(es)"
                            ));
                            addrs.insert(key, old.clone());
                        }
                        None => problems.push(format!("looking up SRV target {key} failed: {e}")),
                    }
                }
            }
        }
    }
    let records: Vec<SrvRecord> = srv.into_iter().map(|(r, _)| r).collect();
    let (candidates, more) = records::candidates(&records, &|t| addrs.get(t).cloned());
    problems.extend(more);
    if candidates.is_empty() {
        return Err(format!(
            "no usable backend in the answer ({})",
            problems.join("; ")
        ));
    }
    Ok(Answer {
        candidates,
        addrs,
        valid_until,
        problems,
        partial,
    })
}

/// Resolves `source` until the receiver goes away (the control loop ended).
pub async fn run(source: Source, interval: Duration, tx: UnboundedSender<Vec<Candidate>>) {
    let label = format!("SRV {}", source.name);
    let mut resolver = None;
    let mut last: Option<Vec<Candidate>> = None;
    let mut addrs: HashMap<String, Vec<IpAddr>> = HashMap::new();
    let mut streak: u64 = 0;
    let mut logged: HashSet<String> = HashSet::new();
    while !tx.is_closed() {
        if resolver.is_none() {
            match build_resolver(&source, interval) {
                Ok(r) => resolver = Some(r),
                Err(e) => {
                    failed_to("resolving", &mut streak, &label, &e, last.as_ref());
                    tokio::time::sleep(interval).await;
                    continue;
                }
            }
        }
        let Some(r) = &resolver else { continue };
        let mut wait = interval;
        match resolve(r, &source.name, &addrs).await {
            Ok(answer) => {
                RESOLUTIONS.fetch_add(1, Ordering::Relaxed);
                // Each problem is logged when it first appears, not every round.
                let now: HashSet<String> = answer.problems.iter().cloned().collect();
                for p in answer.problems.iter().filter(|p| !logged.contains(*p)) {
                    tracing::warn!("discovery: {label}: {p}");
                }
                logged = now;
                if answer.partial {
                    failed_to(
                        "resolving",
                        &mut streak,
                        &label,
                        "some target lookups failed",
                        last.as_ref(),
                    );
                } else if streak > 0 {
                    tracing::info!("discovery: {label} resolves again after {streak} failure(s)");
                    streak = 0;
                }
                let ttl = answer.valid_until.saturating_duration_since(Instant::now());
                wait = interval.min(ttl.max(MIN_TTL_WAIT));
                addrs = answer.addrs;
                if last.as_ref() != Some(&answer.candidates) {
                    tracing::info!(
                        "discovery: {label}: {} backend(s): {}",
                        answer.candidates.len(),
                        describe(&answer.candidates)
                    );
                    DISCOVERED.store(answer.candidates.len() as u64, Ordering::Relaxed);
                    if tx.send(answer.candidates.clone()).is_err() {
                        return;
                    }
                    last = Some(answer.candidates);
                }
            }
            Err(e) => failed_to("resolving", &mut streak, &label, &e, last.as_ref()),
        }
        tokio::time::sleep(wait).await;
    }
}

/// Counts a failure to follow `label` (`doing`: what failed, e.g. "resolving"); warns on the
/// first of a run, then only at debug.
pub(super) fn failed_to(
    doing: &str,
    streak: &mut u64,
    label: &str,
    why: &str,
    last: Option<&Vec<Candidate>>,
) {
    FAILURES.fetch_add(1, Ordering::Relaxed);
    *streak += 1;
    let kept = match last {
        Some(l) => format!("keeping the last {} discovered backend(s)", l.len()),
        None => "no backends discovered yet".to_string(),
    };
    if *streak == 1 {
        tracing::warn!("discovery: {doing} {label} failed: {why}; {kept}");
    } else {
        tracing::debug!("discovery: {doing} {label} failed again ({streak}): {why}");
    }
}

/// `name=addr,weight=W,priority=P` for the first few candidates.
pub(super) fn describe(c: &[Candidate]) -> String {
    const SHOWN: usize = 16;
    let mut s: Vec<String> = c
        .iter()
        .take(SHOWN)
        .map(|c| {
            format!(
                "{}={} weight={} priority={}",
                c.spec.name, c.spec.addr, c.spec.weight, c.priority
            )
        })
        .collect();
    if c.len() > SHOWN {
        s.push(format!("and {} more", c.len() - SHOWN));
    }
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("dns-srv:_web._tcp.service.consul@127.0.0.1:8600"),
            Ok(Source {
                name: "_web._tcp.service.consul".into(),
                resolver: Some("127.0.0.1:8600".parse().expect("addr")),
            })
        );
        assert_eq!(
            Source::parse("dns-srv:_web._tcp.svc@10.0.0.1")
                .expect("ok")
                .resolver,
            Some("10.0.0.1:53".parse().expect("addr"))
        );
        assert_eq!(
            Source::parse("dns-srv:_web._tcp.svc@::1")
                .expect("ok")
                .resolver,
            Some("[::1]:53".parse().expect("addr"))
        );
        assert_eq!(
            Source::parse("dns-srv:_web._tcp.svc").expect("ok").resolver,
            None
        );
        assert!(Source::parse("dns-srv:").is_err());
        assert!(Source::parse("dns-srv:x@nope").is_err());
        assert!(Source::parse("file:x").is_err());
    }
}
