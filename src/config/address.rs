//! Socket addresses and networks: `--listen`, `--admin`, a backend's address (host names
//! resolved), `--accept-proxy`, `--allow` and `--deny` networks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Longest `--accept-proxy` list.
pub const MAX_ACCEPT_PROXY: usize = 256;

/// `--listen`/`--admin`: `IP:PORT`, `[IPv6]:PORT`, `HOST:PORT` (resolved; first address)
/// or `:PORT` for every IPv4 address. Port 0 is allowed (the kernel picks one).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    parse_socket_addr(s.trim(), true)
}

/// A backend address alone (the TOML `addr` key).
pub fn parse_backend_addr(s: &str) -> Result<SocketAddr, String> {
    parse_socket_addr(s.trim(), false)
}

fn parse_socket_addr(s: &str, listen: bool) -> Result<SocketAddr, String> {
    let expected = if listen {
        "expected IP:PORT, [IPv6]:PORT, HOST:PORT or :PORT"
    } else {
        "expected IP:PORT, [IPv6]:PORT or HOST:PORT"
    };
    let port_ok = |addr: SocketAddr| {
        if addr.port() == 0 && !listen {
            Err(format!(
                "port 0 in '{s}' is not a port a backend can listen on"
            ))
        } else {
            Ok(addr)
        }
    };
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return port_ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("missing port in '{s}'; {expected}"));
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!("an IPv6 address needs brackets: '[{host}]:{port}'"));
    }
    let lowest = if listen { 0 } else { 1 };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid port '{port}' in '{s}'; expected {lowest}-65535"))?;
    if host.starts_with('[') {
        return Err(format!("invalid IPv6 address {host} in '{s}'"));
    }
    if host.is_empty() {
        if listen {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        }
        return Err(format!("missing host in '{s}'; {expected}"));
    }
    // The resolver would read "1.2.3" as 1.2.0.3 (inet_aton); a typo must not become an
    // address.
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!("invalid IPv4 address '{host}' in '{s}'"));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(format!("invalid host name '{host}' in '{s}'; {expected}"));
    }
    let addr = RESOLVER
        .with(|r| r.get()(host, port))
        .map_err(|e| format!("cannot resolve '{host}': {e}"))?
        .ok_or_else(|| format!("'{host}' resolved to no address"))?;
    port_ok(addr)
}

/// Turns a host name and port into the first address it resolves to.
pub type Resolver = fn(&str, u16) -> std::io::Result<Option<SocketAddr>>;

thread_local! {
    static RESOLVER: std::cell::Cell<Resolver> = const { std::cell::Cell::new(system_resolver) };
}

fn system_resolver(host: &str, port: u16) -> std::io::Result<Option<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.next())
}

/// Makes host names in addresses parsed on this thread resolve with `r` instead of the
/// system resolver. For fuzzing: a DNS lookup per input would be slow and need a network.
pub fn set_resolver(r: Resolver) {
    RESOLVER.with(|c| c.set(r));
}

/// `--accept-proxy`: `CIDR[,CIDR...]`; a bare IP is one address (`/32` or `/128`).
pub fn parse_accept_proxy(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
    let out = parse_networks(s)?;
    check_accept_proxy_len(out.len())?;
    Ok(out)
}

/// `--allow`/`--deny`: `CIDR[,CIDR...]`, as `--accept-proxy`, at most
/// [`MAX_NETWORKS`](crate::access::MAX_NETWORKS) of them.
pub fn parse_client_networks(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
    let out = parse_networks(s)?;
    check_client_networks_len(out.len())?;
    Ok(out)
}

/// `CIDR[,CIDR...]` with no empty entry.
fn parse_networks(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let t = part.trim();
        if t.is_empty() {
            return Err(format!(
                "empty entry in '{}'; expected CIDR[,CIDR...] such as 10.0.0.0/8,127.0.0.1",
                s.trim()
            ));
        }
        out.push(parse_cidr(t)?);
    }
    Ok(out)
}

/// One network for `--accept-proxy`, `--allow`, `--deny`: `10.0.0.0/8`, `::1/128`, or an
/// address alone.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let t = s.trim();
    match t.parse::<ipnet::IpNet>() {
        Ok(n) => Ok(n.trunc()),
        Err(_) => t
            .parse::<IpAddr>()
            .map(ipnet::IpNet::from)
            .map_err(|_| format!("'{t}' is not an address or CIDR such as 10.0.0.0/8 or ::1/128")),
    }
}

pub(crate) fn check_accept_proxy_len(n: usize) -> Result<(), String> {
    if n > MAX_ACCEPT_PROXY {
        return Err(format!("{n} networks; at most {MAX_ACCEPT_PROXY}"));
    }
    Ok(())
}

/// Bounds an `--allow` or `--deny` list: each new client is matched against every entry.
pub(crate) fn check_client_networks_len(n: usize) -> Result<(), String> {
    let max = crate::access::MAX_NETWORKS;
    if n > max {
        return Err(format!("{n} networks; at most {max}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen(":8080"),
            Ok("0.0.0.0:8080".parse().expect("addr"))
        );
        assert_eq!(
            parse_listen("127.0.0.1:0"),
            Ok("127.0.0.1:0".parse().expect("addr"))
        );
        assert!(parse_listen("nope").is_err());
        assert!(parse_listen("127.0.0.1:65536").is_err());
    }
}
