//! What other modules take from a [`Config`]: a snapshot's routing policy, the health
//! state machine's parameters, the `--check` summary line.

use super::{Config, HealthCheck, Workers};

impl Config {
    /// The routing settings a snapshot carries.
    pub fn policy(&self) -> crate::backend::Policy {
        crate::backend::Policy {
            algorithm: self.service.algorithm,
            hash_key: self.service.hash_key,
            hash_balance_factor: self.service.hash_balance_factor,
            maglev_table_size: self.service.maglev_table_size,
            connect_timeout: self.service.connect_timeout,
            idle_timeout: self.service.idle_timeout,
            retries: self.service.retries,
            proxy_protocol: self.service.proxy_protocol,
            accept_proxy: self.service.accept_proxy.clone(),
            access: crate::access::AccessList {
                allow: self.service.allow.clone(),
                deny: self.service.deny.clone(),
            },
            limits: crate::limits::Limits {
                max_open: self.service.max_conns_per_source,
                max_rate: self.service.max_conn_rate_per_source,
            },
            tcp_keepalive: self.service.tcp_keepalive.0,
        }
    }

    /// The health state machine's settings.
    pub fn health_params(&self) -> crate::health::Params {
        crate::health::Params {
            rise: self.service.rise.max(1),
            fall: self.service.fall.max(1),
            active: self.service.health != HealthCheck::None,
            eject_after: self.service.eject_after,
            eject_base: self.service.eject_base,
            eject_max: self.service.eject_max.max(self.service.eject_base),
        }
    }
}

/// One line for `--check`: what the merged configuration amounts to.
pub fn summary(cfg: &Config) -> String {
    let workers = match cfg.workers {
        Workers::Auto => "auto".to_string(),
        Workers::Count(n) => n.to_string(),
    };
    let mut s = format!(
        "ok: {} listener(s), {} backend(s), algorithm {}, workers {}, forward {}, health {}",
        cfg.service.listen.len(),
        cfg.service.backends.len(),
        cfg.service.algorithm.name(),
        workers,
        cfg.forward.name(),
        cfg.service.health,
    );
    if let Some(d) = &cfg.service.discovery {
        s.push_str(&format!(", discovery {d}"));
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
            "ok: 1 listener(s), 1 backend(s), algorithm round-robin, workers auto, forward auto, health tcp"
        );
    }
}
