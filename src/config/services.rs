//! Services: a `[[service]]` table of the file is one service (HAProxy's frontend with its
//! backend, NGINX's `server` with its `upstream`): a name, listen addresses, backends and
//! every service setting, each inherited from the top level unless the table sets it.
//! A configuration without tables is the one service `default`, described by the top-level
//! settings and the command-line flags, exactly as before services existed.
//!
//! Order of precedence for a service's setting: its table, then the command-line flag,
//! then the file's top level, then the built-in default.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::settings::{FILE_KEYS, SERVICE_TABLE_KEYS};
use super::{Config, ConfigError, PartialConfig, PartialServiceSettings, ServiceSettings};

/// The name of the one service of a configuration without `[[service]]` tables.
pub const DEFAULT_SERVICE: &str = "default";

/// A service's settings, keys that only a whole file without services may set at its top
/// level: each service has its own.
const OWN_KEYS: &[&str] = &["listen", "backend", "discovery"];

/// One service, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Unique; `[a-zA-Z0-9_.-]+`. Used in metrics, logs and the admin API.
    pub name: String,
    pub settings: ServiceSettings,
    /// The service's own limit on open clients (`max_conns` in its table; at the top of
    /// the file `max_conns` is the whole balancer's). At it, its listeners stop accepting
    /// and new clients wait in the kernel's backlog.
    pub max_conns: Option<usize>,
}

/// One `[[service]]` table as the file gives it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartialService {
    pub name: String,
    pub settings: PartialServiceSettings,
    pub max_conns: Option<usize>,
}

impl Config {
    /// The services this configuration runs, in file order: the `[[service]]` tables, or
    /// the one service `default` that the top-level settings describe.
    pub fn services(&self) -> Vec<ServiceConfig> {
        if self.services.is_empty() {
            vec![ServiceConfig {
                name: DEFAULT_SERVICE.to_string(),
                settings: self.service.clone(),
                max_conns: None,
            }]
        } else {
            self.services.clone()
        }
    }

    /// Whether the configuration has `[[service]]` tables (rather than the one service
    /// the flags describe).
    pub fn has_service_tables(&self) -> bool {
        !self.services.is_empty()
    }
}

/// Resolves the file's `[[service]]` tables: each inherits `top` (the file's top level
/// with the flags over it). `file_top` and `flags` are what the file's top level and the
/// command line said, to refuse what only the one service of a file without tables may
/// say there.
pub(super) fn resolve(
    tables: Vec<PartialService>,
    file_top: &PartialConfig,
    flags: &PartialConfig,
    top: &PartialServiceSettings,
) -> Result<Vec<ServiceConfig>, ConfigError> {
    for key in file_top.service.given() {
        if OWN_KEYS.contains(&key) {
            let what = if key == "backend" {
                "top-level [[backend]] tables".to_string()
            } else {
                format!("a top-level `{key}`")
            };
            return Err(ConfigError::Services(format!(
                "{what} cannot go with [[service]] tables: each service has its own; move it into a service"
            )));
        }
    }
    for key in flags.service.given() {
        if OWN_KEYS.contains(&key) {
            let flag = if key == "backend" { "backend" } else { key };
            return Err(ConfigError::Services(format!(
                "--{flag} describes the one service of a configuration without [[service]] tables; the file has services: set it in a service"
            )));
        }
    }
    tables
        .into_iter()
        .map(|t| {
            if t.settings.listen.is_none() {
                return Err(ConfigError::InService {
                    service: t.name,
                    source: Box::new(ConfigError::NoListen),
                });
            }
            Ok(ServiceConfig {
                settings: t
                    .settings
                    .inheriting(top.clone())
                    .apply_to(ServiceSettings::default()),
                name: t.name,
                max_conns: t.max_conns,
            })
        })
        .collect()
}

/// A service name: what metrics labels, log fields and URL paths can carry as it is.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("service name '{name}' must be 1 to 64 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "service name '{name}' has {c:?}; use letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

/// The `[[service]]` tables of the file.
pub struct ServiceTables;

impl<'de> DeserializeSeed<'de> for ServiceTables {
    type Value = Vec<PartialService>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<PartialService>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ServiceTables {
    type Value = Vec<PartialService>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[[service]] tables")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<PartialService>, A::Error> {
        let mut out = Vec::new();
        while let Some(s) = seq.next_element_seed(ServiceTable)? {
            out.push(s);
        }
        Ok(out)
    }
}

/// One `[[service]]` table: `name` and service settings, each read by its setting's seed.
struct ServiceTable;

impl<'de> DeserializeSeed<'de> for ServiceTable {
    type Value = PartialService;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<PartialService, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ServiceTable {
    type Value = PartialService;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a [[service]] table")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PartialService, A::Error> {
        let mut name = None;
        let mut settings = PartialServiceSettings::default();
        let mut max_conns = None;
        while let Some(key) = map.next_key_seed(TableKey)? {
            if key == "name" {
                let n: String = map.next_value()?;
                check_service_name(&n).map_err(de::Error::custom)?;
                name = Some(n);
            } else if key == "max_conns" {
                let seed = super::file::Scalar::new("max_conns", super::parse_max_conns);
                max_conns = Some(map.next_value_seed(seed)?);
            } else if !settings.read_file_value(key, &mut map)? {
                return Err(de::Error::custom(format!(
                    "`{key}` is a setting of the whole balancer, not of one service: set it at the top of the file"
                )));
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        Ok(PartialService {
            name,
            settings,
            max_conns,
        })
    }
}

/// A key of a `[[service]]` table: refused while it is read (so the error points at it)
/// unless it is a service setting, `name`, or a process setting (refused with a reason
/// by the table).
struct TableKey;

impl<'de> DeserializeSeed<'de> for TableKey {
    type Value = &'static str;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for TableKey {
    type Value = &'static str;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<&'static str, E> {
        SERVICE_TABLE_KEYS
            .iter()
            .chain(FILE_KEYS.iter().filter(|k| **k != "service"))
            .find(|k| **k == v)
            .copied()
            .ok_or_else(|| E::unknown_field(v, SERVICE_TABLE_KEYS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, parse_toml, Algorithm, PartialConfig};

    fn file(text: &str) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "uringlb-services-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, text).expect("write");
        p
    }

    const TWO: &str = r#"
algorithm = "least-conn"
retries = 1

[[service]]
name = "web"
listen = ["127.0.0.1:8081"]
algorithm = "maglev"
[[service.backend]]
addr = "127.0.0.1:9001"
[[service.backend]]
addr = "127.0.0.1:9002"

[[service]]
name = "db"
listen = "127.0.0.1:8082"
[[service.backend]]
addr = "127.0.0.1:9001"
"#;

    #[test]
    fn tables_inherit_the_top_level_and_the_flags() {
        let cfg = load(Some(&file(TWO)), PartialConfig::default()).expect("valid");
        let s = cfg.services();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].name.as_str(), s[1].name.as_str()), ("web", "db"));
        assert_eq!(s[0].settings.algorithm, Algorithm::Maglev);
        assert_eq!(s[1].settings.algorithm, Algorithm::LeastConn);
        assert_eq!(s[0].settings.retries, 1);
        assert_eq!(s[0].settings.backends.len(), 2);
        assert_eq!(
            s[1].settings.backends[0].addr,
            s[0].settings.backends[0].addr
        );

        // A flag overrides the top level, not what a table sets itself.
        let mut flags = PartialConfig::default();
        flags.service.algorithm = Some(Algorithm::Random);
        flags.service.retries = Some(5);
        let cfg = load(Some(&file(TWO)), flags).expect("valid");
        let s = cfg.services();
        assert_eq!(s[0].settings.algorithm, Algorithm::Maglev);
        assert_eq!(s[1].settings.algorithm, Algorithm::Random);
        assert_eq!(s[1].settings.retries, 5);
    }

    #[test]
    fn a_file_without_tables_is_the_service_default() {
        let cfg = load(
            Some(&file("[[backend]]\naddr = \"127.0.0.1:9001\"\n")),
            PartialConfig::default(),
        )
        .expect("valid");
        let s = cfg.services();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, DEFAULT_SERVICE);
        assert_eq!(s[0].settings, cfg.service);
    }

    #[test]
    fn what_a_services_file_refuses() {
        let refused = |text: &str, flags: PartialConfig, needle: &str| {
            let e = load(Some(&file(text)), flags)
                .expect_err(needle)
                .to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        };
        let svc = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:8081\"\nbackend = [{ addr = \"127.0.0.1:9\" }]\n";
        refused(
            &format!("[[backend]]\naddr = \"127.0.0.1:9\"\n{svc}"),
            PartialConfig::default(),
            "top-level [[backend]] tables cannot go with [[service]] tables",
        );
        refused(
            &format!("listen = \"127.0.0.1:1\"\n{svc}"),
            PartialConfig::default(),
            "a top-level `listen` cannot go with",
        );
        let mut flags = PartialConfig::default();
        flags.service.backends = Some(vec![crate::config::parse_backend("127.0.0.1:9").unwrap()]);
        refused(svc, flags, "--backend describes the one service");
        refused(
            &format!("{svc}{}", svc.replace("8081", "8082")),
            PartialConfig::default(),
            "duplicate service name 'a'",
        );
        refused(
            &format!("{svc}{}", svc.replace("\"a\"", "\"b\"")),
            PartialConfig::default(),
            "127.0.0.1:8081 is the listen address of services 'a' and 'b'",
        );
        refused(
            "[[service]]\nname = \"a\"\nbackend = [{ addr = \"127.0.0.1:9\" }]\n",
            PartialConfig::default(),
            "service 'a': no listen address",
        );
        refused(
            "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:8081\"\n",
            PartialConfig::default(),
            "service 'a': no backends",
        );
        refused(
            &svc.replace("\"a\"", "\"a b\""),
            PartialConfig::default(),
            "service name 'a b' has ' '",
        );
        refused(
            &format!("{svc}workers = 2\n"),
            PartialConfig::default(),
            "`workers` is a setting of the whole balancer",
        );
        refused(
            &format!("{svc}colour = 2\n"),
            PartialConfig::default(),
            "unknown key `colour`",
        );
        refused(
            "[[service]]\nlisten = \"127.0.0.1:8081\"\n",
            PartialConfig::default(),
            "missing key `name`",
        );
        // A backend at another service's listen address would loop.
        refused(
            &format!(
                "{svc}[[service]]\nname = \"b\"\nlisten = \"127.0.0.1:8082\"\nbackend = [{{ addr = \"127.0.0.1:8081\" }}]\n"
            ),
            PartialConfig::default(),
            "service 'b': backend '127.0.0.1:8081'",
        );
    }

    #[test]
    fn errors_point_into_the_table() {
        let text = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:8081\"\nretries = \"lots\"\n";
        let e = parse_toml(text, "f.toml").expect_err("bad").to_string();
        assert!(e.starts_with("f.toml:4:"), "{e}");
        assert!(e.contains("`retries`"), "{e}");
    }
}
