//! The rules a resolved [`Config`] must keep whatever the source of its values (a flag,
//! the file, or a test building it by hand), cross-field rules included.

use std::net::SocketAddr;

use super::address::{check_accept_proxy_len, check_client_networks_len};
use super::backend_spec::{check_backend_name, check_weight};
use super::duration::{check_duration, check_positive};
use super::services::check_service_name;
use super::services::ServiceConfig;
use super::udp::{Protocol, MAX_MAX_FLOWS, MAX_UDP_RESPONSES};
use super::values::*;
use super::{Algorithm, Config, ConfigError, HealthCheck, ServiceSettings};
use crate::backend::BackendSpec;

impl Config {
    /// Checks the rules that hold whatever the source of a value; cross-field rules too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Workers::Count(n) = self.workers {
            check_range(n as u64, 1, MAX_WORKERS as u64).map_err(|m| invalid("--workers", m))?;
        }
        if let Some(n) = self.max_conns {
            check_range(n as u64, 1, u64::from(u32::MAX)).map_err(|m| invalid("--max-conns", m))?;
        }
        check_duration(self.grace).map_err(|m| invalid("--grace", m))?;
        parse_log_level(&self.log_level).map_err(|m| invalid("--log-level", m))?;
        if self.splice_pipes > MAX_SPLICE_PIPES {
            return Err(invalid(
                "--splice-pipes",
                format!("at most {MAX_SPLICE_PIPES}, got {}", self.splice_pipes),
            ));
        }
        let services = self.services();
        let mut names = std::collections::HashSet::new();
        let mut listen: Vec<(SocketAddr, &str, Protocol)> = Vec::new();
        let mut backends = 0;
        for s in &services {
            check_service_name(&s.name).map_err(ConfigError::Services)?;
            if !names.insert(s.name.as_str()) {
                return Err(ConfigError::DuplicateService(s.name.clone()));
            }
            let protocol = s.settings.protocol;
            listen.extend(
                s.settings
                    .listen
                    .iter()
                    .map(|a| (*a, s.name.as_str(), protocol)),
            );
            backends += s.settings.backends.len();
        }
        check_shared_listen(&services)?;
        if backends > crate::backend::MAX_BACKENDS {
            return Err(ConfigError::TooManyBackends(backends));
        }
        for s in &services {
            let own_listen: Vec<SocketAddr> = listen
                .iter()
                .filter(|(_, _, p)| *p == s.settings.protocol)
                .map(|(a, _, _)| *a)
                .collect();
            s.settings.validate(&own_listen).map_err(|e| {
                if self.has_service_tables() {
                    ConfigError::InService {
                        service: s.name.clone(),
                        source: Box::new(e),
                    }
                } else {
                    e
                }
            })?;
        }
        Ok(())
    }
}

/// Services of one protocol may share a listen address only when each routes by TLS server name (`sni`):
/// each name once per address, and the same values for what acts on a client before its
/// name picks the service (reading a PROXY header, the time to send the hello, keepalive).
/// A service's own `max_conns` cannot go with `sni`: its clients are accepted before the
/// name that makes them its clients is known.
fn check_shared_listen(services: &[ServiceConfig]) -> Result<(), ConfigError> {
    let mut routes = crate::sni::SniRoutes::default();
    for (i, s) in services.iter().enumerate() {
        let in_service = |message: String| ConfigError::InService {
            service: s.name.clone(),
            source: Box::new(ConfigError::Services(message)),
        };
        let sni = &s.settings.sni;
        let protocol = s.settings.protocol;
        if !sni.is_empty() && protocol == Protocol::Udp {
            return Err(in_service(
                "`sni` is for TLS over TCP: a UDP service cannot route by server name".to_string(),
            ));
        }
        if !sni.is_empty() && s.max_conns.is_some() {
            return Err(in_service(
                "`max_conns` cannot go with `sni`: clients are accepted before their server name picks the service".to_string(),
            ));
        }
        for addr in &s.settings.listen {
            // A TCP and a UDP service may share an address: they are different ports.
            if let Some(first) = services[..i]
                .iter()
                .find(|o| o.settings.listen.contains(addr) && o.settings.protocol == protocol)
            {
                if sni.is_empty() || first.settings.sni.is_empty() {
                    return Err(ConfigError::SharedListen {
                        addr: *addr,
                        first: first.name.clone(),
                        second: s.name.clone(),
                    });
                }
                let (a, b) = (&first.settings, &s.settings);
                for (key, same) in [
                    ("accept_proxy", a.accept_proxy == b.accept_proxy),
                    ("sni_timeout", a.sni_timeout == b.sni_timeout),
                    ("tcp_keepalive", a.tcp_keepalive == b.tcp_keepalive),
                ] {
                    if !same {
                        return Err(in_service(format!(
                            "its `{key}` differs from service '{}' on {addr}: services sharing an address must agree on it (it acts before the server name picks one)",
                            first.name
                        )));
                    }
                }
            }
            if !sni.is_empty() {
                routes
                    .add(*addr, sni, crate::backend::ServiceId(i as u32))
                    .map_err(in_service)?;
            }
        }
    }
    Ok(())
}

fn invalid(key: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

impl ServiceSettings {
    /// The rules of one service; `own_listen` are the listen addresses of every service of
    /// its protocol (a backend at any of them would loop; a TCP backend at a UDP listen
    /// address would not).
    pub fn validate(&self, own_listen: &[SocketAddr]) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::NoListen);
        }
        for (i, addr) in self.listen.iter().enumerate() {
            if self.listen[..i].contains(addr) {
                return Err(ConfigError::DuplicateListen(*addr));
            }
        }
        if self.backends.is_empty() && self.discovery.is_none() {
            return Err(ConfigError::NoBackends);
        }
        if self.backends.len() > crate::backend::MAX_BACKENDS {
            return Err(ConfigError::TooManyBackends(self.backends.len()));
        }
        // Duplicate addresses are allowed when the names differ: the name, not the
        // address, is the backend's identity (hashing key, admin API path).
        let mut names = std::collections::HashSet::new();
        for b in &self.backends {
            let bad = |message: String| ConfigError::InvalidBackend {
                name: b.name.clone(),
                message,
            };
            check_backend_name(&b.name).map_err(bad)?;
            check_weight(u64::from(b.weight)).map_err(bad)?;
            if b.max_conns == Some(0) {
                return Err(bad("max-conns must be at least 1".to_string()));
            }
            if b.addr.port() == 0 {
                return Err(bad(
                    "port 0 is not a port a backend can listen on".to_string()
                ));
            }
            if !names.insert(b.name.as_str()) {
                return Err(ConfigError::DuplicateBackendName(b.name.clone()));
            }
            check_not_self(b.addr, own_listen).map_err(bad)?;
        }
        check_range(u64::from(self.retries), 0, u64::from(MAX_RETRIES))
            .map_err(|m| invalid("--retries", m))?;
        check_range(u64::from(self.rise), 1, u64::from(MAX_RISE_FALL))
            .map_err(|m| invalid("--rise", m))?;
        check_range(u64::from(self.fall), 1, u64::from(MAX_RISE_FALL))
            .map_err(|m| invalid("--fall", m))?;
        for (key, d) in [
            ("--connect-timeout", self.connect_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--health-interval", self.health_interval),
            ("--health-timeout", self.health_timeout),
            ("--discovery-interval", self.discovery_interval),
            ("--eject-base", self.eject_base),
            ("--eject-max", self.eject_max),
        ] {
            check_positive(d).map_err(|m| invalid(key, m))?;
        }
        check_range(u64::from(self.eject_after), 0, u64::from(MAX_EJECT_AFTER))
            .map_err(|m| invalid("--eject-after", m))?;
        if self.eject_max < self.eject_base {
            return Err(invalid(
                "--eject-max",
                format!(
                    "must be at least --eject-base ({:?}), got {:?}",
                    self.eject_base, self.eject_max
                ),
            ));
        }
        check_duration(self.slow_start).map_err(|m| invalid("--slow-start", m))?;
        match (&self.health, self.protocol) {
            (HealthCheck::Http(path), Protocol::Tcp) => {
                check_http_path(path).map_err(|m| invalid("--health", m))?
            }
            (HealthCheck::Http(_), Protocol::Udp) => {
                return Err(invalid(
                    "--health",
                    "an HTTP check cannot test a UDP service; use dns:NAME or none".to_string(),
                ))
            }
            (HealthCheck::Dns(name), Protocol::Udp) => {
                check_dns_name(name).map_err(|m| invalid("--health", m))?
            }
            (HealthCheck::Dns(_), Protocol::Tcp) => {
                return Err(invalid(
                    "--health",
                    "dns:NAME checks UDP services (--protocol udp); use tcp or http:PATH"
                        .to_string(),
                ))
            }
            _ => {}
        }
        if self.protocol == Protocol::Udp {
            check_positive(self.udp_idle_timeout).map_err(|m| invalid("--udp-idle-timeout", m))?;
            check_range(u64::from(self.max_flows), 1, u64::from(MAX_MAX_FLOWS))
                .map_err(|m| invalid("--max-flows", m))?;
            check_range(
                u64::from(self.udp_responses),
                0,
                u64::from(MAX_UDP_RESPONSES),
            )
            .map_err(|m| invalid("--udp-responses", m))?;
            // Settings of a byte stream that a datagram service cannot honour: refused
            // rather than silently ignored.
            if self.proxy_protocol.is_some() {
                return Err(invalid(
                    "--proxy-protocol",
                    UDP_NO_PROXY_HEADERS.to_string(),
                ));
            }
            for b in &self.backends {
                check_backend_protocol(self.protocol, b)
                    .map_err(|m| invalid("--proxy-protocol", m))?;
            }
            if !self.accept_proxy.is_empty() {
                return Err(invalid(
                    "--accept-proxy",
                    "a UDP service cannot read PROXY headers".to_string(),
                ));
            }
        }
        if let Some(f) = self.hash_balance_factor {
            check_range(
                u64::from(f),
                u64::from(MIN_HASH_BALANCE_FACTOR),
                u64::from(MAX_HASH_BALANCE_FACTOR),
            )
            .map_err(|m| invalid("--hash-balance-factor", m))?;
        }
        if let Some(d) = &self.discovery {
            parse_discovery(d).map_err(|m| invalid("--discovery", m))?;
        }
        check_accept_proxy_len(self.accept_proxy.len())
            .map_err(|m| invalid("--accept-proxy", m))?;
        check_client_networks_len(self.allow.len()).map_err(|m| invalid("--allow", m))?;
        check_client_networks_len(self.deny.len()).map_err(|m| invalid("--deny", m))?;
        check_maglev_table_size(self.maglev_table_size)
            .map_err(|m| invalid("--maglev-table-size", m))?;
        if self.algorithm == Algorithm::Maglev {
            crate::balance::validate_table_size(self.maglev_table_size, self.backends.len())
                .map_err(|m| invalid("--maglev-table-size", m))?;
        }
        Ok(())
    }
}

const UDP_NO_PROXY_HEADERS: &str = "a UDP service cannot send PROXY headers";

/// What a backend of a service of `protocol` may not ask for, whether the file or the
/// admin API adds it: PROXY headers belong to a byte stream, not to datagrams.
pub fn check_backend_protocol(protocol: Protocol, b: &BackendSpec) -> Result<(), String> {
    match (protocol, b.proxy_protocol) {
        (Protocol::Udp, Some(_)) => Err(UDP_NO_PROXY_HEADERS.to_string()),
        _ => Ok(()),
    }
}

/// A backend at one of the balancer's own listen addresses would send every connection
/// back to the balancer, which sends it there again.
pub fn check_not_self(backend: SocketAddr, listen: &[SocketAddr]) -> Result<(), String> {
    match crate::loops::own_listener(backend, listen, crate::loops::is_local_ip) {
        Some(l) => Err(format!(
            "{backend} is the balancer's own listen address {l}: every connection would come back to it"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_backend, ServiceSettings};
    use std::time::Duration;

    fn valid() -> Config {
        Config {
            service: ServiceSettings {
                backends: vec![parse_backend("127.0.0.1:9001").expect("backend")],
                ..ServiceSettings::default()
            },
            ..Config::default()
        }
    }

    #[test]
    fn validate_rules() {
        valid().validate().expect("valid");
        let fails = |f: &dyn Fn(&mut Config), needle: &str| {
            let mut c = valid();
            f(&mut c);
            let e = c.validate().expect_err(needle).to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        };
        fails(&|c| c.service.listen.clear(), "no listen");
        fails(
            &|c| c.service.listen.push(c.service.listen[0]),
            "duplicate listen",
        );
        fails(&|c| c.service.backends.clear(), "no backends");
        fails(
            &|c| c.service.backends.push(c.service.backends[0].clone()),
            "duplicate backend name '127.0.0.1:9001'",
        );
        fails(&|c| c.service.backends[0].weight = 0, "weight");
        fails(&|c| c.service.rise = 0, "--rise");
        fails(&|c| c.service.fall = 0, "--fall");
        fails(&|c| c.service.retries = 101, "--retries");
        fails(&|c| c.workers = Workers::Count(0), "--workers");
        fails(&|c| c.workers = Workers::Count(1025), "--workers");
        fails(&|c| c.max_conns = Some(0), "--max-conns");
        fails(
            &|c| c.service.health_timeout = Duration::ZERO,
            "--health-timeout",
        );
        fails(&|c| c.service.eject_base = Duration::ZERO, "--eject-base");
        fails(
            &|c| c.service.eject_max = Duration::from_secs(1),
            "--eject-max",
        );
        fails(
            &|c| c.service.eject_after = MAX_EJECT_AFTER + 1,
            "--eject-after",
        );
        fails(
            &|c| c.service.hash_balance_factor = Some(99),
            "--hash-balance-factor",
        );
        fails(
            &|c| c.service.health = HealthCheck::Http("x".into()),
            "--health",
        );
        fails(&|c| c.log_level = "loud".into(), "--log-level");
        fails(
            &|c| c.service.maglev_table_size = 100,
            "--maglev-table-size",
        );
        fails(
            &|c| {
                c.service.algorithm = Algorithm::Maglev;
                c.service.maglev_table_size = 3;
                for port in 2..6 {
                    c.service
                        .backends
                        .push(parse_backend(&format!("127.0.0.1:{port}")).expect("b"));
                }
            },
            "too small for 5 backends",
        );

        // The same address twice is fine under distinct names.
        let mut c = valid();
        c.service
            .backends
            .push(parse_backend("127.0.0.1:9001,name=again").expect("b"));
        c.validate().expect("same address, distinct names");
        // Discovery stands in for static backends.
        let mut c = valid();
        c.service.backends.clear();
        c.service.discovery = Some("dns-srv:_web._tcp.example".into());
        c.validate().expect("discovery without static backends");
    }
}
