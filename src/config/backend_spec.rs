//! `--backend ADDR[,weight=N][,name=S][,max-conns=N][,proxy-protocol=v1|v2][,backup]` and the
//! checks on a backend's parts that the TOML `[[backend]]` table shares.

use super::address::parse_backend_addr;
use super::values::{check_range, parse_proxy_protocol, parse_uint};
use super::BackendSpec;

/// Highest backend weight. Ring-hash points and weighted tables grow with the weight, so an
/// unbounded weight could make a snapshot rebuild allocate without limit.
pub const MAX_WEIGHT: u32 = 10_000;

/// `ADDR[,weight=N][,name=S][,max-conns=N][,proxy-protocol=v1|v2][,backup]`; ADDR as in
/// [`parse_listen`](super::parse_listen) but with a host and a non-zero port. The name
/// defaults to ADDR as written. `backup` is a bare word, as in HAProxy's and NGINX's
/// server lines.
pub fn parse_backend(s: &str) -> Result<BackendSpec, String> {
    const FORM: &str = "ADDR[,weight=N][,name=S][,max-conns=N][,proxy-protocol=v1|v2][,backup]";
    let mut parts = s.split(',');
    let addr_text = parts.next().unwrap_or("").trim();
    if addr_text.is_empty() {
        return Err(format!("missing backend address; expected {FORM}"));
    }
    let mut spec = BackendSpec {
        addr: parse_backend_addr(addr_text)?,
        weight: 1,
        name: addr_text.to_string(),
        max_conns: None,
        proxy_protocol: None,
        backup: false,
    };
    let mut seen: Vec<&str> = Vec::new();
    for part in parts {
        if part.trim() == "backup" {
            if spec.backup {
                return Err("'backup' given twice in backend spec".to_string());
            }
            spec.backup = true;
            continue;
        }
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!(
                "expected KEY=VALUE or backup after the address, got '{part}'; expected {FORM}"
            ));
        };
        let key = key.trim();
        let canonical = match key {
            "weight" => {
                spec.weight = parse_weight(value)?;
                "weight"
            }
            "name" => {
                spec.name = parse_backend_name(value)?;
                "name"
            }
            "max-conns" | "max_conns" => {
                spec.max_conns = Some(parse_backend_max_conns(value)?);
                "max-conns"
            }
            "proxy-protocol" | "proxy_protocol" => {
                spec.proxy_protocol = Some(parse_proxy_protocol(value)?);
                "proxy-protocol"
            }
            "backup" => {
                return Err(format!(
                    "'backup' takes no value, got 'backup={}'; write ',backup' to make this a backup backend",
                    value.trim()
                ))
            }
            other => {
                return Err(format!(
                    "unknown key '{other}' in backend spec; expected weight, name, max-conns, proxy-protocol or backup"
                ))
            }
        };
        if seen.contains(&canonical) {
            return Err(format!("'{canonical}' given twice in backend spec"));
        }
        seen.push(canonical);
    }
    Ok(spec)
}

/// An integer from 1 to [`MAX_WEIGHT`].
pub fn parse_weight(s: &str) -> Result<u32, String> {
    let bad = || {
        format!(
            "weight must be an integer from 1 to {MAX_WEIGHT}, got '{}'",
            s.trim()
        )
    };
    let n: i64 = s.trim().parse().map_err(|_| bad())?;
    let n = u64::try_from(n).map_err(|_| bad())?;
    check_weight(n).map_err(|_| bad())
}

pub(crate) fn check_weight(n: u64) -> Result<u32, String> {
    check_range(n, 1, u64::from(MAX_WEIGHT)).map_err(|m| format!("weight {m}"))?;
    Ok(n as u32)
}

/// A backend name: it appears in URLs (`/backends/{name}`) and metric labels, so no
/// whitespace, control characters, `/` or quotes.
pub fn parse_backend_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    check_backend_name(s)?;
    Ok(s.to_string())
}

pub(crate) fn check_backend_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("backend name must not be empty".to_string());
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '"' | '\\' | ','))
    {
        return Err(format!(
            "backend name '{s}' contains {c:?}; use letters, digits and -_.:[]"
        ));
    }
    Ok(())
}

pub(crate) fn parse_backend_max_conns(s: &str) -> Result<u32, String> {
    let n = parse_uint(s, 1, u64::from(u32::MAX)).map_err(|m| format!("max-conns {m}"))?;
    Ok(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends() {
        let b = parse_backend("127.0.0.1:9001").expect("plain");
        assert_eq!(b.addr, "127.0.0.1:9001".parse().expect("addr"));
        assert_eq!(
            (b.weight, b.name.as_str(), b.max_conns),
            (1, "127.0.0.1:9001", None)
        );
        let b = parse_backend("[::1]:80,weight=5,name=web-1,max-conns=100").expect("full");
        assert_eq!(b.addr, "[::1]:80".parse().expect("addr"));
        assert_eq!(
            (b.weight, b.name.as_str(), b.max_conns),
            (5, "web-1", Some(100))
        );
        let b = parse_backend("localhost:80,name=l").expect("host name");
        assert!(b.addr.ip().is_loopback());
        assert_eq!(b.addr.port(), 80);

        let err = |s: &str| parse_backend(s).expect_err(s);
        assert!(err("127.0.0.1:1,weight=0").contains("weight must be an integer from 1"));
        assert!(err("127.0.0.1:1,weight=-1").contains("got '-1'"));
        assert!(err("127.0.0.1:1,weight=x").contains("got 'x'"));
        assert!(err("127.0.0.1:1,weight=10001").contains("weight"));
        assert!(err("127.0.0.1:1,colour=red").contains("unknown key 'colour'"));
        assert!(err("127.0.0.1:1,weight=1,weight=2").contains("twice"));
        assert!(err("127.0.0.1:1,name=").contains("empty"));
        assert!(err("127.0.0.1:1,name=a/b").contains("'/'"));
        assert!(err("127.0.0.1:1,max-conns=0").contains("max-conns"));
        assert!(err("127.0.0.1:1,weight").contains("KEY=VALUE"));
        assert!(err("1.2.3:x").contains("invalid port 'x'"));
        assert!(err("1.2.3:80").contains("invalid IPv4 address"));
        assert!(err("::1:80").contains("brackets"));
        assert!(err("[::g]:80").contains("IPv6"));
        assert!(err("nope").contains("missing port"));
        assert!(err(":80").contains("missing host"));
        assert!(err("127.0.0.1:0").contains("port 0"));
        assert!(err("").contains("missing backend address"));
        assert!(err("bad host:80").contains("invalid host name"));

        assert!(!parse_backend("127.0.0.1:1").expect("primary").backup);
        let b = parse_backend("127.0.0.1:1,backup").expect("backup");
        assert!(b.backup);
        let b = parse_backend("127.0.0.1:1, backup ,weight=3,name=spare").expect("backup");
        assert_eq!((b.backup, b.weight, b.name.as_str()), (true, 3, "spare"));
        assert!(err("127.0.0.1:1,backup=x").contains("'backup' takes no value"));
        assert!(err("127.0.0.1:1,backup=true").contains("write ',backup'"));
        assert!(err("127.0.0.1:1,backup,backup").contains("twice"));
        assert!(err("127.0.0.1:1,backups").contains("KEY=VALUE"));
    }
}
