//! What the soak and idle-memory runs read about a process and the kernel from /proc.

use std::collections::BTreeMap;

use serde::Serialize;

/// Open descriptors of a process, by what they point at. Pipes are apart because the
/// balancer keeps a bounded pool of them for splice, which grows with use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Fds {
    pub total: usize,
    pub sockets: usize,
    pub pipes: usize,
    pub other: usize,
}

/// Counts `/proc/PID/fd` by link target; `None` when the process is gone.
pub fn fds(pid: u32) -> Option<Fds> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut f = Fds::default();
    for entry in dir.flatten() {
        // A descriptor closed between readdir and readlink simply does not count.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        f.total += 1;
        if t.starts_with("socket:") {
            f.sockets += 1;
        } else if t.starts_with("pipe:") {
            f.pipes += 1;
        } else {
            f.other += 1;
        }
    }
    Some(f)
}

/// The smallest of a few samples `gap` apart: health-check and admin sockets come and go,
/// and a single sample could catch one in flight.
pub fn fds_settled(pid: u32, samples: usize, gap: std::time::Duration) -> Option<Fds> {
    let mut best: Option<Fds> = None;
    for i in 0..samples.max(1) {
        if i > 0 {
            std::thread::sleep(gap);
        }
        let f = fds(pid)?;
        best = Some(match best {
            Some(b) if b.total <= f.total => b,
            _ => f,
        });
    }
    best
}

/// Resident memory of a process (`/proc/PID/status`), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Mem {
    /// VmRSS: everything resident.
    pub rss: u64,
    /// RssAnon: the heap and stacks, what per-connection state costs.
    pub rss_anon: u64,
}

pub fn mem(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some(Mem {
        rss: field("VmRSS:")?,
        rss_anon: field("RssAnon:").unwrap_or(0),
    })
}

/// The `TCP:` line of `/proc/net/sockstat` (`inuse`, `orphan`, `tw`, `alloc`, `mem`), and
/// `mem` (pages) converted to bytes with the system page size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TcpSockstat {
    pub fields: BTreeMap<String, u64>,
    pub mem_bytes: u64,
}

pub fn tcp_sockstat() -> Option<TcpSockstat> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let parts: Vec<&str> = line["TCP:".len()..].split_whitespace().collect();
    let fields: BTreeMap<String, u64> = parts
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((k.to_string(), v.parse().ok()?)),
            _ => None,
        })
        .collect();
    let pages = fields.get("mem").copied().unwrap_or(0);
    Some(TcpSockstat {
        mem_bytes: pages * page_size(),
        fields,
    })
}

/// The system page size (sockstat counts memory in pages).
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        let before = fds(me).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let after = fds(me).unwrap();
        assert!(after.sockets > before.sockets, "{before:?} {after:?}");
        drop(l);
        let m = mem(me).unwrap();
        assert!(m.rss > 0 && m.rss_anon <= m.rss, "{m:?}");
        assert!(fds(u32::MAX).is_none());
    }

    #[test]
    fn sockstat_has_tcp_mem() {
        let s = tcp_sockstat().unwrap();
        assert!(s.fields.contains_key("inuse") && s.fields.contains_key("mem"));
        assert!(page_size() >= 4096);
    }
}
