//! What other modules take from a [`Config`]: a snapshot's routing policy, the health
//! state machine's parameters, the `--check` summary line.

use super::{Config, HealthCheck, ServiceSettings, Workers};

impl ServiceSettings {
    /// The routing settings a snapshot carries.
    pub fn policy(&self) -> crate::backend::Policy {
        crate::backend::Policy {
            algorithm: self.algorithm,
            hash_key: self.hash_key,
            hash_balance_factor: self.hash_balance_factor,
            maglev_table_size: self.maglev_table_size,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            retries: self.retries,
            proxy_protocol: self.proxy_protocol,
            accept_proxy: self.accept_proxy.clone(),
            access: crate::access::AccessList {
                allow: self.allow.clone(),
                deny: self.deny.clone(),
            },
            limits: crate::limits::Limits {
                max_open: self.max_conns_per_source,
                max_rate: self.max_conn_rate_per_source,
            },
            tcp_keepalive: self.tcp_keepalive.0,
            sni: self.sni.clone(),
            sni_timeout: self.sni_timeout,
            udp: (self.protocol == super::Protocol::Udp).then_some(crate::backend::UdpPolicy {
                idle_timeout: self.udp_idle_timeout,
                responses: self.udp_responses,
                max_flows: self.max_flows,
            }),
        }
    }

    /// The active check the service runs: a UDP service has no TCP port to try, so the
    /// default `tcp` means none there (passive health only).
    pub fn active_check(&self) -> HealthCheck {
        match (&self.health, self.protocol) {
            (HealthCheck::Tcp, super::Protocol::Udp) => HealthCheck::None,
            (h, _) => h.clone(),
        }
    }

    /// The health state machine's settings.
    pub fn health_params(&self) -> crate::health::Params {
        crate::health::Params {
            rise: self.rise.max(1),
            fall: self.fall.max(1),
            active: self.active_check() != HealthCheck::None,
            eject_after: self.eject_after,
            eject_base: self.eject_base,
            eject_max: self.eject_max.max(self.eject_base),
        }
    }
}

/// What `--check` prints: one line for the balancer, then one per service with its
/// listeners and backends.
pub fn summary(cfg: &Config) -> String {
    let workers = match cfg.workers {
        Workers::Auto => "auto".to_string(),
        Workers::Count(n) => n.to_string(),
    };
    let services = cfg.services();
    let mut s = format!(
        "ok: {} service(s), workers {}, forward {}",
        services.len(),
        workers,
        cfg.forward.name(),
    );
    for svc in &services {
        let c = &svc.settings;
        let listen: Vec<String> = c.listen.iter().map(|a| a.to_string()).collect();
        let backends: Vec<String> = c
            .backends
            .iter()
            .map(|b| {
                let named = if b.name == b.addr.to_string() {
                    b.name.clone()
                } else {
                    format!("{}={}", b.name, b.addr)
                };
                if b.backup {
                    format!("{named} backup")
                } else {
                    named
                }
            })
            .collect();
        let backups = c.backends.iter().filter(|b| b.backup).count();
        let count = if backups > 0 {
            format!("{} backend(s) ({backups} backup)", c.backends.len())
        } else {
            format!("{} backend(s)", c.backends.len())
        };
        let listen = if c.protocol == super::Protocol::Udp {
            format!("udp {}", listen.join(", "))
        } else {
            listen.join(", ")
        };
        s.push_str(&format!(
            "\nservice {}: listen {listen}; {count} [{}]; algorithm {}, health {}",
            svc.name,
            backends.join(", "),
            c.algorithm.name(),
            c.active_check(),
        ));
        if c.protocol == super::Protocol::Udp {
            s.push_str(&format!(
                ", udp_idle_timeout {:?}, udp_responses {}, max_flows {}",
                c.udp_idle_timeout, c.udp_responses, c.max_flows
            ));
        }
        if let Some(d) = &c.discovery {
            s.push_str(&format!(", discovery {d}"));
        }
        if let Some(m) = svc.max_conns {
            s.push_str(&format!(", max_conns {m}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_backend, ServiceSettings};

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
    fn summary_line() {
        let c = valid();
        assert_eq!(
            summary(&c),
            "ok: 1 service(s), workers auto, forward auto\nservice default: listen 127.0.0.1:8080; 1 backend(s) [127.0.0.1:9001]; algorithm round-robin, health tcp"
        );
        let mut c = valid();
        c.service
            .backends
            .push(parse_backend("127.0.0.1:9002,backup").expect("backend"));
        assert!(
            summary(&c).contains(
                "; 2 backend(s) (1 backup) [127.0.0.1:9001, 127.0.0.1:9002 backup]; algorithm"
            ),
            "{}",
            summary(&c)
        );
    }
}
