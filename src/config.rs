//! The resolved configuration: what the balancer runs with after the TOML file and the
//! command-line flags have been merged and validated. No sockets are touched here.
//!
//! Parsing (TOML file, flags, durations, `--backend` specs) and `validate()` live in this
//! module too; `cli.rs` only declares the flags.

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::backend::BackendSpec;
pub use crate::balance::{Algorithm, HashKey};
pub use crate::health::HealthCheck;
pub use crate::proxy_protocol::ProxyProtocol;
pub use crate::worker::ForwardMode;

/// Everything a running balancer needs. Built by [`load`], never by hand outside tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub backends: Vec<BackendSpec>,
    pub algorithm: Algorithm,
    pub workers: Workers,
    pub pin: bool,
    pub forward: ForwardMode,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Other backends tried after a failed connect.
    pub retries: u32,
    /// Client connections for the whole balancer; `None` = derive from RLIMIT_NOFILE.
    pub max_conns: Option<usize>,
    pub health: HealthCheck,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Consecutive connect failures that eject a backend (passive health); 0 = never.
    pub eject_after: u32,
    /// First ejection's length; doubles with each further ejection up to `eject_max`.
    pub eject_base: Duration,
    pub eject_max: Duration,
    /// Ramp a recovered backend's weight from 10% to 100% over this; zero = off.
    pub slow_start: Duration,
    pub hash_key: HashKey,
    /// Bounded-load factor in percent (e.g. 125); `None` = unbounded.
    pub hash_balance_factor: Option<u32>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub discovery: Option<String>,
    /// How often `--discovery` re-resolves its source.
    pub discovery_interval: Duration,
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin endpoint requires (all but `GET /health`); `None` = open.
    pub admin_token: Option<AdminToken>,
    pub grace: Duration,
    pub log_level: String,
    /// The file the configuration came from, if any (reload re-reads it).
    pub config_file: Option<std::path::PathBuf>,
    /// Maglev lookup table size; a prime so every backend's permutation covers the table.
    pub maglev_table_size: u64,
    /// Sources trusted to send a PROXY protocol header (`--accept-proxy`); empty = none.
    pub accept_proxy: Vec<ipnet::IpNet>,
    /// Open client connections per source IP, across workers; `None` = unlimited.
    pub max_conns_per_source: Option<u32>,
    /// New connections per second per source IP; `None` = unlimited.
    pub max_conn_rate_per_source: Option<u32>,
    /// Splice pipes per worker (two descriptors each); 0 = always copy.
    pub splice_pipes: usize,
    /// The values given as command-line flags: a reload re-reads the file and lays these
    /// over it again, so a flag keeps overriding the file after SIGHUP.
    pub overrides: PartialConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per CPU of this process's affinity mask.
    Auto,
    Count(usize),
}

impl Default for Config {
    /// The documented defaults (README "Flags") with no backends.
    fn default() -> Self {
        Config {
            listen: vec!["127.0.0.1:8080".parse().expect("literal address")],
            backends: Vec::new(),
            algorithm: Algorithm::RoundRobin,
            workers: Workers::Auto,
            pin: true,
            forward: ForwardMode::Auto,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(300),
            retries: 2,
            max_conns: None,
            health: HealthCheck::Tcp,
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            eject_after: 5,
            eject_base: Duration::from_secs(30),
            eject_max: Duration::from_secs(300),
            slow_start: Duration::ZERO,
            hash_key: HashKey::SourceIp,
            hash_balance_factor: None,
            proxy_protocol: None,
            discovery: None,
            discovery_interval: Duration::from_secs(5),
            admin: None,
            admin_token: None,
            grace: Duration::from_secs(30),
            log_level: "info".to_string(),
            config_file: None,
            maglev_table_size: 65537,
            accept_proxy: Vec::new(),
            max_conns_per_source: None,
            max_conn_rate_per_source: None,
            splice_pipes: DEFAULT_SPLICE_PIPES,
            overrides: PartialConfig::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parsing, merging and validation.
//
// Every value parser below is shared by the command line (clap `value_parser`) and the
// TOML file (serde `deserialize_with`), so a value means the same thing in both places and
// is rejected with the same words. Parsers return a one-line `String` reason; the caller
// adds the flag name (clap) or the file:line:column (TOML).

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// Highest backend weight. Ring-hash points and weighted tables grow with the weight, so an
/// unbounded weight could make a snapshot rebuild allocate without limit.
pub const MAX_WEIGHT: u32 = 10_000;
/// Highest `--workers`.
pub const MAX_WORKERS: usize = 1024;
/// Highest `--retries`.
pub const MAX_RETRIES: u32 = 100;
/// Highest `--rise`/`--fall`.
pub const MAX_RISE_FALL: u32 = 1000;
/// Highest `--eject-after`.
pub const MAX_EJECT_AFTER: u32 = 1_000_000;
/// Lowest `--hash-balance-factor` (percent of the mean load; below 100 nothing fits).
pub const MIN_HASH_BALANCE_FACTOR: u32 = 100;
/// Highest `--hash-balance-factor`.
pub const MAX_HASH_BALANCE_FACTOR: u32 = 100_000;
/// Highest `--maglev-table-size`: one table per worker, 4 bytes an entry.
pub use crate::balance::MAX_MAGLEV_TABLE_SIZE;
/// Longest accepted duration. Deadlines are `Instant + Duration`, which panics on overflow;
/// a year is far beyond any sensible timeout and far from that overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default `--splice-pipes`.
pub const DEFAULT_SPLICE_PIPES: usize = 256;
/// Highest `--splice-pipes`: each pipe holds two descriptors of the 20 000 a process may have.
pub const MAX_SPLICE_PIPES: usize = 4096;
/// Longest `--accept-proxy` list.
pub const MAX_ACCEPT_PROXY: usize = 256;
/// The `--log-level` values.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Why a configuration was rejected. Each Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: crate::config_file::ReadError,
    },
    /// A TOML syntax error, an unknown key or a bad value, at its position (1-based).
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("no listen address: give --listen ADDR")]
    NoListen,
    #[error("duplicate listen address {0}")]
    DuplicateListen(SocketAddr),
    #[error(
        "no backends: give --backend ADDR, a [[backend]] table in the config file, or --discovery"
    )]
    NoBackends,
    #[error("too many backends: {0} (at most {max})", max = crate::backend::MAX_BACKENDS)]
    TooManyBackends(usize),
    #[error("duplicate backend name '{0}': give each backend a distinct name=")]
    DuplicateBackendName(String),
    #[error("backend '{name}': {message}")]
    InvalidBackend { name: String, message: String },
    /// A setting out of range; `key` is the flag name.
    #[error("invalid {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// A configuration with every setting optional: what a TOML file or the command line
/// said, before defaults. `overlay` merges two of them, `apply_to` fills a [`Config`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartialConfig {
    pub listen: Option<Vec<SocketAddr>>,
    pub backends: Option<Vec<BackendSpec>>,
    pub algorithm: Option<Algorithm>,
    pub workers: Option<Workers>,
    pub pin: Option<bool>,
    pub forward: Option<ForwardMode>,
    pub connect_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub max_conns: Option<usize>,
    pub health: Option<HealthCheck>,
    pub health_interval: Option<Duration>,
    pub health_timeout: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub eject_after: Option<u32>,
    pub eject_base: Option<Duration>,
    pub eject_max: Option<Duration>,
    pub slow_start: Option<Duration>,
    pub hash_key: Option<HashKey>,
    pub hash_balance_factor: Option<u32>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub discovery: Option<String>,
    pub discovery_interval: Option<Duration>,
    pub admin: Option<SocketAddr>,
    pub admin_token: Option<AdminToken>,
    pub grace: Option<Duration>,
    pub log_level: Option<String>,
    pub maglev_table_size: Option<u64>,
    pub accept_proxy: Option<Vec<ipnet::IpNet>>,
    pub max_conns_per_source: Option<u32>,
    pub max_conn_rate_per_source: Option<u32>,
    pub splice_pipes: Option<usize>,
}

impl PartialConfig {
    /// `top` wins wherever it says something. Lists are replaced whole, not appended:
    /// `--backend` on the command line means "these backends", not "these as well".
    pub fn overlay(self, top: PartialConfig) -> PartialConfig {
        PartialConfig {
            listen: top.listen.or(self.listen),
            backends: top.backends.or(self.backends),
            algorithm: top.algorithm.or(self.algorithm),
            workers: top.workers.or(self.workers),
            pin: top.pin.or(self.pin),
            forward: top.forward.or(self.forward),
            connect_timeout: top.connect_timeout.or(self.connect_timeout),
            idle_timeout: top.idle_timeout.or(self.idle_timeout),
            retries: top.retries.or(self.retries),
            max_conns: top.max_conns.or(self.max_conns),
            health: top.health.or(self.health),
            health_interval: top.health_interval.or(self.health_interval),
            health_timeout: top.health_timeout.or(self.health_timeout),
            rise: top.rise.or(self.rise),
            fall: top.fall.or(self.fall),
            eject_after: top.eject_after.or(self.eject_after),
            eject_base: top.eject_base.or(self.eject_base),
            eject_max: top.eject_max.or(self.eject_max),
            slow_start: top.slow_start.or(self.slow_start),
            hash_key: top.hash_key.or(self.hash_key),
            hash_balance_factor: top.hash_balance_factor.or(self.hash_balance_factor),
            proxy_protocol: top.proxy_protocol.or(self.proxy_protocol),
            discovery: top.discovery.or(self.discovery),
            discovery_interval: top.discovery_interval.or(self.discovery_interval),
            admin: top.admin.or(self.admin),
            admin_token: top.admin_token.or(self.admin_token),
            grace: top.grace.or(self.grace),
            log_level: top.log_level.or(self.log_level),
            maglev_table_size: top.maglev_table_size.or(self.maglev_table_size),
            accept_proxy: top.accept_proxy.or(self.accept_proxy),
            max_conns_per_source: top.max_conns_per_source.or(self.max_conns_per_source),
            max_conn_rate_per_source: top
                .max_conn_rate_per_source
                .or(self.max_conn_rate_per_source),
            splice_pipes: top.splice_pipes.or(self.splice_pipes),
        }
    }

    /// `base` with every setting this says replaced.
    pub fn apply_to(self, base: Config) -> Config {
        Config {
            listen: self.listen.unwrap_or(base.listen),
            backends: self.backends.unwrap_or(base.backends),
            algorithm: self.algorithm.unwrap_or(base.algorithm),
            workers: self.workers.unwrap_or(base.workers),
            pin: self.pin.unwrap_or(base.pin),
            forward: self.forward.unwrap_or(base.forward),
            connect_timeout: self.connect_timeout.unwrap_or(base.connect_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(base.idle_timeout),
            retries: self.retries.unwrap_or(base.retries),
            max_conns: self.max_conns.or(base.max_conns),
            health: self.health.unwrap_or(base.health),
            health_interval: self.health_interval.unwrap_or(base.health_interval),
            health_timeout: self.health_timeout.unwrap_or(base.health_timeout),
            rise: self.rise.unwrap_or(base.rise),
            fall: self.fall.unwrap_or(base.fall),
            eject_after: self.eject_after.unwrap_or(base.eject_after),
            eject_base: self.eject_base.unwrap_or(base.eject_base),
            eject_max: self.eject_max.unwrap_or(base.eject_max),
            slow_start: self.slow_start.unwrap_or(base.slow_start),
            hash_key: self.hash_key.unwrap_or(base.hash_key),
            hash_balance_factor: self.hash_balance_factor.or(base.hash_balance_factor),
            proxy_protocol: self.proxy_protocol.or(base.proxy_protocol),
            discovery: self.discovery.or(base.discovery),
            discovery_interval: self.discovery_interval.unwrap_or(base.discovery_interval),
            admin: self.admin.or(base.admin),
            admin_token: self.admin_token.or(base.admin_token),
            grace: self.grace.unwrap_or(base.grace),
            log_level: self.log_level.unwrap_or(base.log_level),
            maglev_table_size: self.maglev_table_size.unwrap_or(base.maglev_table_size),
            accept_proxy: self.accept_proxy.unwrap_or(base.accept_proxy),
            max_conns_per_source: self.max_conns_per_source.or(base.max_conns_per_source),
            max_conn_rate_per_source: self
                .max_conn_rate_per_source
                .or(base.max_conn_rate_per_source),
            splice_pipes: self.splice_pipes.unwrap_or(base.splice_pipes),
            config_file: base.config_file,
            overrides: base.overrides,
        }
    }
}

/// The full pipeline: the file (if any), then `overrides` (the command-line flags) over
/// it, then the defaults under both; validated.
pub fn load(file: Option<&Path>, overrides: PartialConfig) -> Result<Config, ConfigError> {
    let from_file = match file {
        Some(path) => load_file(path)?,
        None => PartialConfig::default(),
    };
    let base = Config {
        config_file: file.map(Path::to_path_buf),
        overrides: overrides.clone(),
        ..Config::default()
    };
    let cfg = from_file.overlay(overrides).apply_to(base);
    cfg.validate()?;
    Ok(cfg)
}

/// Re-reads `current`'s config file and lays the original command-line flags over it
/// again (SIGHUP, `POST /reload`). Without a file this rebuilds the same configuration.
pub fn reload(current: &Config) -> Result<Config, ConfigError> {
    load(current.config_file.as_deref(), current.overrides.clone())
}

/// Reads and parses one TOML config file (no defaults, no cross-field validation).
pub fn load_file(path: &Path) -> Result<PartialConfig, ConfigError> {
    let text = crate::config_file::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(&text, &path.display().to_string())
}

/// Parses TOML config text; `file` only names it in error messages.
pub fn parse_toml(text: &str, file: &str) -> Result<PartialConfig, ConfigError> {
    let parsed: FileConfig = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| s.start).unwrap_or(0);
        parse_error(text, file, at, e.message())
    })?;
    parsed.into_partial(text, file)
}

/// `file:line:column: message` for a byte offset into `text`.
fn parse_error(text: &str, file: &str, offset: usize, message: &str) -> ConfigError {
    let (line, column) = line_column(text, offset);
    // toml says "field"; in a config file they are keys. Keep the message on one line:
    // toml's own line breaks become "; ", and any other control character (a quoted
    // value's "\r", say, which would garble a log line) is escaped.
    let mut one_line = String::with_capacity(message.len());
    for c in message
        .trim()
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
        .replace('\n', "; ")
        .chars()
    {
        if c.is_control() {
            one_line.extend(c.escape_default());
        } else {
            one_line.push(c);
        }
    }
    ConfigError::Parse {
        file: file.to_string(),
        line,
        column,
        message: one_line,
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

impl Config {
    /// Checks the rules that hold whatever the source of a value; cross-field rules too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: String) -> ConfigError {
            ConfigError::Invalid { key, message }
        }
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
            check_not_self(b.addr, &self.listen).map_err(bad)?;
        }
        if let Workers::Count(n) = self.workers {
            check_range(n as u64, 1, MAX_WORKERS as u64).map_err(|m| invalid("--workers", m))?;
        }
        check_range(u64::from(self.retries), 0, u64::from(MAX_RETRIES))
            .map_err(|m| invalid("--retries", m))?;
        check_range(u64::from(self.rise), 1, u64::from(MAX_RISE_FALL))
            .map_err(|m| invalid("--rise", m))?;
        check_range(u64::from(self.fall), 1, u64::from(MAX_RISE_FALL))
            .map_err(|m| invalid("--fall", m))?;
        if let Some(n) = self.max_conns {
            check_range(n as u64, 1, u64::from(u32::MAX)).map_err(|m| invalid("--max-conns", m))?;
        }
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
        check_duration(self.grace).map_err(|m| invalid("--grace", m))?;
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
        if let HealthCheck::Http(path) = &self.health {
            check_http_path(path).map_err(|m| invalid("--health", m))?;
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
        parse_log_level(&self.log_level).map_err(|m| invalid("--log-level", m))?;
        check_accept_proxy_len(self.accept_proxy.len())
            .map_err(|m| invalid("--accept-proxy", m))?;
        if self.splice_pipes > MAX_SPLICE_PIPES {
            return Err(invalid(
                "--splice-pipes",
                format!("at most {MAX_SPLICE_PIPES}, got {}", self.splice_pipes),
            ));
        }
        check_maglev_table_size(self.maglev_table_size)
            .map_err(|m| invalid("--maglev-table-size", m))?;
        if self.algorithm == Algorithm::Maglev {
            crate::balance::validate_table_size(self.maglev_table_size, self.backends.len())
                .map_err(|m| invalid("--maglev-table-size", m))?;
        }
        Ok(())
    }
}

impl Config {
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
            limits: crate::limits::Limits {
                max_open: self.max_conns_per_source,
                max_rate: self.max_conn_rate_per_source,
            },
        }
    }

    /// The health state machine's settings.
    pub fn health_params(&self) -> crate::health::Params {
        crate::health::Params {
            rise: self.rise.max(1),
            fall: self.fall.max(1),
            active: self.health != HealthCheck::None,
            eject_after: self.eject_after,
            eject_base: self.eject_base,
            eject_max: self.eject_max.max(self.eject_base),
        }
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

/// One line for `--check`: what the merged configuration amounts to.
pub fn summary(cfg: &Config) -> String {
    let workers = match cfg.workers {
        Workers::Auto => "auto".to_string(),
        Workers::Count(n) => n.to_string(),
    };
    let mut s = format!(
        "ok: {} listener(s), {} backend(s), algorithm {}, workers {}, forward {}, health {}",
        cfg.listen.len(),
        cfg.backends.len(),
        cfg.algorithm.name(),
        workers,
        cfg.forward.name(),
        cfg.health,
    );
    if let Some(d) = &cfg.discovery {
        s.push_str(&format!(", discovery {d}"));
    }
    s
}

// --- value parsers (shared by clap and the TOML file) ----------------------------------

/// `500ms`, `2s`, `5m`, `1h`; a decimal such as `1.5s` is accepted too. A bare number is
/// an error: `--connect-timeout 5` is ambiguous between seconds and milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "e.g. 500ms, 2s, 5m, 1h";
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!("expected a duration ({HINT}), got '{s}'"));
    }
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => {
            return Err(format!(
                "duration '{s}' needs a unit: ms, s, m or h ({HINT})"
            ))
        }
        other => {
            return Err(format!(
                "unknown unit '{other}' in duration '{s}'; expected ms, s, m or h"
            ))
        }
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
        return Err(format!("expected a duration ({HINT}), got '{s}'"));
    }
    let too_long = || format!("duration '{s}' is too long; at most 8760h");
    let int: u128 = int.parse().map_err(|_| too_long())?;
    let mut nanos = int.checked_mul(unit_nanos).ok_or_else(too_long)?;
    // Nanoseconds are the resolution; digits beyond 18 cannot matter.
    let frac = &frac[..frac.len().min(18)];
    if !frac.is_empty() {
        let digits: u128 = frac.parse().map_err(|_| too_long())?;
        // Checked: an integer part just below u128::MAX nanoseconds plus a fraction would
        // wrap (in release) to a short, accepted duration.
        nanos = nanos
            .checked_add(digits * unit_nanos / 10u128.pow(frac.len() as u32))
            .ok_or_else(too_long)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
    let d = Duration::new(secs, (nanos % 1_000_000_000) as u32);
    check_duration(d).map_err(|_| too_long())?;
    Ok(d)
}

fn check_duration(d: Duration) -> Result<(), String> {
    if d > MAX_DURATION {
        return Err("too long; at most 8760h".to_string());
    }
    Ok(())
}

fn check_positive(d: Duration) -> Result<(), String> {
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    check_duration(d)
}

/// A duration that must be greater than zero (timeouts, intervals).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    check_positive(d).map_err(|m| format!("duration {m}"))?;
    Ok(d)
}

/// `--listen`/`--admin`: `IP:PORT`, `[IPv6]:PORT`, `HOST:PORT` (resolved; first address)
/// or `:PORT` for every IPv4 address. Port 0 is allowed (the kernel picks one).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    parse_socket_addr(s.trim(), true)
}

/// `ADDR[,weight=N][,name=S][,max-conns=N]`; ADDR as in [`parse_listen`] but with a host
/// and a non-zero port. The name defaults to ADDR as written.
pub fn parse_backend(s: &str) -> Result<BackendSpec, String> {
    const FORM: &str = "ADDR[,weight=N][,name=S][,max-conns=N][,proxy-protocol=v1|v2]";
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
    };
    let mut seen: Vec<&str> = Vec::new();
    for part in parts {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!(
                "expected KEY=VALUE after the address, got '{part}'; expected {FORM}"
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
            other => {
                return Err(format!(
                    "unknown key '{other}' in backend spec; expected weight, name, max-conns or proxy-protocol"
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

fn check_weight(n: u64) -> Result<u32, String> {
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

fn check_backend_name(s: &str) -> Result<(), String> {
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

fn parse_backend_max_conns(s: &str) -> Result<u32, String> {
    let n = parse_uint(s, 1, u64::from(u32::MAX)).map_err(|m| format!("max-conns {m}"))?;
    Ok(n as u32)
}

/// An unsigned integer in `min..=max`.
fn parse_uint(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let t = s.trim();
    let n: u64 = t
        .parse()
        .map_err(|_| format!("must be an integer from {min} to {max}, got '{t}'"))?;
    check_range(n, min, max)?;
    Ok(n)
}

fn check_range(n: u64, min: u64, max: u64) -> Result<(), String> {
    if n < min || n > max {
        return Err(format!("must be an integer from {min} to {max}, got {n}"));
    }
    Ok(())
}

/// A name from [`Algorithm::ALL`].
pub fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    Algorithm::from_name(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = Algorithm::ALL.iter().map(|(n, _)| *n).collect();
        format!(
            "unknown algorithm '{}'; expected one of: {}",
            s.trim(),
            names.join(", ")
        )
    })
}

/// `auto` or 1 to [`MAX_WORKERS`].
pub fn parse_workers(s: &str) -> Result<Workers, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Ok(Workers::Auto);
    }
    parse_uint(t, 1, MAX_WORKERS as u64)
        .map(|n| Workers::Count(n as usize))
        .map_err(|_| format!("expected 'auto' or an integer from 1 to {MAX_WORKERS}, got '{t}'"))
}

pub fn parse_forward(s: &str) -> Result<ForwardMode, String> {
    match s.trim() {
        "copy" => Ok(ForwardMode::Copy),
        "splice" => Ok(ForwardMode::Splice),
        "auto" => Ok(ForwardMode::Auto),
        other => Err(format!(
            "unknown forward mode '{other}'; expected copy, splice or auto"
        )),
    }
}

/// Other backends tried after a failed connect: 0 to [`MAX_RETRIES`].
pub fn parse_retries(s: &str) -> Result<u32, String> {
    parse_uint(s, 0, u64::from(MAX_RETRIES)).map(|n| n as u32)
}

/// `--rise`/`--fall`: 1 to [`MAX_RISE_FALL`].
pub fn parse_rise_fall(s: &str) -> Result<u32, String> {
    parse_uint(s, 1, u64::from(MAX_RISE_FALL)).map(|n| n as u32)
}

/// `--eject-after`: 0 (never eject) to [`MAX_EJECT_AFTER`].
pub fn parse_eject_after(s: &str) -> Result<u32, String> {
    parse_uint(s, 0, u64::from(MAX_EJECT_AFTER)).map(|n| n as u32)
}

/// `--max-conns` for the whole balancer: at least 1.
pub fn parse_max_conns(s: &str) -> Result<usize, String> {
    parse_uint(s, 1, u64::from(u32::MAX)).map(|n| n as usize)
}

/// `tcp`, `http:/path` or `none`.
pub fn parse_health(s: &str) -> Result<HealthCheck, String> {
    let t = s.trim();
    match t {
        "tcp" => Ok(HealthCheck::Tcp),
        "none" => Ok(HealthCheck::None),
        _ => match t.strip_prefix("http:") {
            Some(path) => {
                check_http_path(path)?;
                Ok(HealthCheck::Http(path.to_string()))
            }
            None => Err(format!(
                "unknown health check '{t}'; expected tcp, http:/PATH or none"
            )),
        },
    }
}

/// The path goes into a request line verbatim, so it must not be able to break it.
fn check_http_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "the HTTP health check path must start with '/', got '{path}'"
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "the HTTP health check path must not contain spaces or control characters".to_string(),
        );
    }
    Ok(())
}

pub fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    match s.trim() {
        "source-ip" => Ok(HashKey::SourceIp),
        "source-ip-port" => Ok(HashKey::SourceIpPort),
        other => Err(format!(
            "unknown hash key '{other}'; expected source-ip or source-ip-port"
        )),
    }
}

/// Percent of the mean load, [`MIN_HASH_BALANCE_FACTOR`] or more.
pub fn parse_hash_balance_factor(s: &str) -> Result<u32, String> {
    parse_uint(
        s.trim().trim_end_matches('%'),
        u64::from(MIN_HASH_BALANCE_FACTOR),
        u64::from(MAX_HASH_BALANCE_FACTOR),
    )
    .map(|n| n as u32)
}

pub fn parse_proxy_protocol(s: &str) -> Result<ProxyProtocol, String> {
    match s.trim() {
        "v1" => Ok(ProxyProtocol::V1),
        "v2" => Ok(ProxyProtocol::V2),
        other => Err(format!(
            "unknown PROXY protocol version '{other}'; expected v1 or v2"
        )),
    }
}

/// `--accept-proxy`: `CIDR[,CIDR...]`; a bare IP is one address (`/32` or `/128`).
pub fn parse_accept_proxy(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
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
    check_accept_proxy_len(out.len())?;
    Ok(out)
}

/// One network for `--accept-proxy`: `10.0.0.0/8`, `::1/128`, or an address alone.
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

fn check_accept_proxy_len(n: usize) -> Result<(), String> {
    if n > MAX_ACCEPT_PROXY {
        return Err(format!("{n} networks; at most {MAX_ACCEPT_PROXY}"));
    }
    Ok(())
}

/// `--max-conns-per-source`.
pub fn parse_max_conns_per_source(s: &str) -> Result<u32, String> {
    parse_uint(s, 1, u64::from(u32::MAX)).map(|n| n as u32)
}

/// `--max-conn-rate-per-source`: new connections per second.
pub fn parse_max_conn_rate_per_source(s: &str) -> Result<u32, String> {
    parse_uint(s, 1, 1_000_000).map(|n| n as u32)
}

/// `--splice-pipes`: per worker; 0 turns splicing off (everything is copied).
pub fn parse_splice_pipes(s: &str) -> Result<usize, String> {
    parse_uint(s, 0, MAX_SPLICE_PIPES as u64).map(|n| n as usize)
}

/// `dns-srv:NAME[@RESOLVER]`; RESOLVER is `IP` or `IP:PORT` (a host name would need a
/// resolver to find the resolver). Returned unchanged once it is known to be well formed.
pub fn parse_discovery(s: &str) -> Result<String, String> {
    let t = s.trim();
    let Some(rest) = t.strip_prefix("dns-srv:") else {
        return Err(format!(
            "unknown discovery source '{t}'; expected dns-srv:NAME[@RESOLVER]"
        ));
    };
    let (name, resolver) = match rest.split_once('@') {
        Some((n, r)) => (n, Some(r)),
        None => (rest, None),
    };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid SRV name '{name}' in '{t}'"));
    }
    if let Some(r) = resolver {
        if r.parse::<SocketAddr>().is_err() && r.parse::<IpAddr>().is_err() {
            return Err(format!(
                "invalid resolver '{r}' in '{t}'; expected IP or IP:PORT"
            ));
        }
    }
    Ok(t.to_string())
}

/// One of [`LOG_LEVELS`], case-insensitive; returned in lower case.
pub fn parse_log_level(s: &str) -> Result<String, String> {
    let t = s.trim().to_ascii_lowercase();
    if LOG_LEVELS.contains(&t.as_str()) {
        Ok(t)
    } else {
        Err(format!(
            "unknown log level '{}'; expected one of: {}",
            s.trim(),
            LOG_LEVELS.join(", ")
        ))
    }
}

/// Longest `--admin-token`.
pub const MAX_ADMIN_TOKEN_LEN: usize = 4096;

/// The admin endpoint's bearer token. A secret: `Debug` does not show it, so a logged
/// configuration cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token itself, for the constant-time comparison.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// `--admin-token`: 1 to [`MAX_ADMIN_TOKEN_LEN`] visible ASCII characters, the bytes an
/// `Authorization: Bearer` header can carry.
pub fn parse_admin_token(s: &str) -> Result<AdminToken, String> {
    if s.is_empty() {
        return Err("the admin token must not be empty".to_string());
    }
    if s.len() > MAX_ADMIN_TOKEN_LEN {
        return Err(format!(
            "the admin token is too long; at most {MAX_ADMIN_TOKEN_LEN} characters"
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the admin token must be visible ASCII characters (no spaces or control characters)"
                .to_string(),
        );
    }
    Ok(AdminToken(s.to_string()))
}

/// A prime from 3 to [`MAX_MAGLEV_TABLE_SIZE`].
pub fn parse_maglev_table_size(s: &str) -> Result<u64, String> {
    let n = parse_uint(s, 3, MAX_MAGLEV_TABLE_SIZE)?;
    check_maglev_table_size(n)?;
    Ok(n)
}

fn check_maglev_table_size(n: u64) -> Result<(), String> {
    check_range(n, 3, MAX_MAGLEV_TABLE_SIZE)?;
    if !is_prime(n) {
        return Err(format!("must be a prime number (e.g. 65537), got {n}"));
    }
    Ok(())
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

// --- the TOML file ----------------------------------------------------------------------

/// The file's shape. Keys are the long flags with `-` as `_`; backends are `[[backend]]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    listen: Option<toml::Spanned<ListenList>>,
    #[serde(default)]
    backend: Option<Vec<toml::Spanned<FileBackend>>>,
    #[serde(default, deserialize_with = "de_algorithm")]
    algorithm: Option<Algorithm>,
    #[serde(default, deserialize_with = "de_workers")]
    workers: Option<Workers>,
    #[serde(default)]
    pin: Option<bool>,
    #[serde(default, deserialize_with = "de_forward")]
    forward: Option<ForwardMode>,
    #[serde(default, deserialize_with = "de_connect_timeout")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_idle_timeout")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_retries")]
    retries: Option<u32>,
    #[serde(default, deserialize_with = "de_max_conns")]
    max_conns: Option<usize>,
    #[serde(default, deserialize_with = "de_health")]
    health: Option<HealthCheck>,
    #[serde(default, deserialize_with = "de_health_interval")]
    health_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_health_timeout")]
    health_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_rise")]
    rise: Option<u32>,
    #[serde(default, deserialize_with = "de_fall")]
    fall: Option<u32>,
    #[serde(default, deserialize_with = "de_eject_after")]
    eject_after: Option<u32>,
    #[serde(default, deserialize_with = "de_eject_base")]
    eject_base: Option<Duration>,
    #[serde(default, deserialize_with = "de_eject_max")]
    eject_max: Option<Duration>,
    #[serde(default, deserialize_with = "de_slow_start")]
    slow_start: Option<Duration>,
    #[serde(default, deserialize_with = "de_hash_key")]
    hash_key: Option<HashKey>,
    #[serde(default, deserialize_with = "de_hash_balance_factor")]
    hash_balance_factor: Option<u32>,
    #[serde(default, deserialize_with = "de_proxy_protocol")]
    proxy_protocol: Option<ProxyProtocol>,
    #[serde(default, deserialize_with = "de_discovery")]
    discovery: Option<String>,
    #[serde(default, deserialize_with = "de_discovery_interval")]
    discovery_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_admin")]
    admin: Option<SocketAddr>,
    #[serde(default, deserialize_with = "de_admin_token")]
    admin_token: Option<AdminToken>,
    #[serde(default, deserialize_with = "de_grace")]
    grace: Option<Duration>,
    #[serde(default, deserialize_with = "de_log_level")]
    log_level: Option<String>,
    #[serde(default, deserialize_with = "de_maglev_table_size")]
    maglev_table_size: Option<u64>,
    #[serde(default, deserialize_with = "de_accept_proxy")]
    accept_proxy: Option<Vec<ipnet::IpNet>>,
    #[serde(default, deserialize_with = "de_max_conns_per_source")]
    max_conns_per_source: Option<u32>,
    #[serde(default, deserialize_with = "de_max_conn_rate_per_source")]
    max_conn_rate_per_source: Option<u32>,
    #[serde(default, deserialize_with = "de_splice_pipes")]
    splice_pipes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    addr: BackendAddr,
    #[serde(default, deserialize_with = "de_weight")]
    weight: Option<u32>,
    #[serde(default, deserialize_with = "de_name")]
    name: Option<String>,
    #[serde(default, deserialize_with = "de_backend_max_conns")]
    max_conns: Option<u32>,
    #[serde(default, deserialize_with = "de_proxy_protocol")]
    proxy_protocol: Option<ProxyProtocol>,
}

/// The address as written (the default name) and as resolved.
struct BackendAddr(String, SocketAddr);

impl<'de> Deserialize<'de> for BackendAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = scalar_with(d, "addr", |s| Ok(s.trim().to_string()))?;
        let addr =
            parse_backend_addr(&text).map_err(|m| de::Error::custom(format!("`addr`: {m}")))?;
        Ok(BackendAddr(text, addr))
    }
}

/// `listen = "ADDR"` or `listen = ["ADDR", ...]`, kept as text with each element's span:
/// parsed in `into_partial`, so an error points at the element rather than the array.
struct ListenList(Vec<(Option<std::ops::Range<usize>>, String)>);

impl<'de> Deserialize<'de> for ListenList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ListenList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address string or an array of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ListenList, E> {
                Ok(ListenList(vec![(None, v.to_string())]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ListenList, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<toml::Spanned<String>>()? {
                    let span = item.span();
                    out.push((Some(span), item.into_inner()));
                }
                Ok(ListenList(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl FileConfig {
    fn into_partial(self, text_of_file: &str, file: &str) -> Result<PartialConfig, ConfigError> {
        let backends = match self.backend {
            None => None,
            Some(list) => {
                let mut out: Vec<BackendSpec> = Vec::with_capacity(list.len());
                for entry in list {
                    let span = entry.span();
                    let b = entry.into_inner();
                    let spec = BackendSpec {
                        addr: b.addr.1,
                        weight: b.weight.unwrap_or(1),
                        name: b.name.unwrap_or(b.addr.0),
                        max_conns: b.max_conns,
                        proxy_protocol: b.proxy_protocol,
                    };
                    if out.iter().any(|o| o.name == spec.name) {
                        let msg = ConfigError::DuplicateBackendName(spec.name).to_string();
                        return Err(parse_error(text_of_file, file, span.start, &msg));
                    }
                    out.push(spec);
                }
                Some(out)
            }
        };
        let listen = match self.listen {
            None => None,
            Some(list) => {
                let whole = list.span();
                let mut out = Vec::new();
                for (span, text) in list.into_inner().0 {
                    let at = span.unwrap_or_else(|| whole.clone()).start;
                    let addr = parse_listen(&text).map_err(|m| {
                        parse_error(text_of_file, file, at, &format!("`listen`: {m}"))
                    })?;
                    out.push(addr);
                }
                Some(out)
            }
        };
        Ok(PartialConfig {
            listen,
            backends,
            algorithm: self.algorithm,
            workers: self.workers,
            pin: self.pin,
            forward: self.forward,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            retries: self.retries,
            max_conns: self.max_conns,
            health: self.health,
            health_interval: self.health_interval,
            health_timeout: self.health_timeout,
            rise: self.rise,
            fall: self.fall,
            eject_after: self.eject_after,
            eject_base: self.eject_base,
            eject_max: self.eject_max,
            slow_start: self.slow_start,
            hash_key: self.hash_key,
            hash_balance_factor: self.hash_balance_factor,
            proxy_protocol: self.proxy_protocol,
            discovery: self.discovery,
            discovery_interval: self.discovery_interval,
            admin: self.admin,
            admin_token: self.admin_token,
            grace: self.grace,
            log_level: self.log_level,
            maglev_table_size: self.maglev_table_size,
            accept_proxy: self.accept_proxy,
            max_conns_per_source: self.max_conns_per_source,
            max_conn_rate_per_source: self.max_conn_rate_per_source,
            splice_pipes: self.splice_pipes,
        })
    }
}

/// A TOML string or number as text, so the file and the command line share one parser
/// (`workers = 4` and `workers = "auto"`, `retries = 3`).
struct ScalarText(String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

fn scalar_with<'de, D, T>(
    d: D,
    key: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let ScalarText(text) = ScalarText::deserialize(d)?;
    parse(&text).map_err(|m| de::Error::custom(format!("`{key}`: {m}")))
}

macro_rules! de_scalar {
    ($($fn_name:ident: $key:literal, $ty:ty, $parse:path;)*) => {$(
        fn $fn_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
            scalar_with(d, $key, $parse).map(Some)
        }
    )*};
}

de_scalar! {
    de_algorithm: "algorithm", Algorithm, parse_algorithm;
    de_workers: "workers", Workers, parse_workers;
    de_forward: "forward", ForwardMode, parse_forward;
    de_connect_timeout: "connect_timeout", Duration, parse_positive_duration;
    de_idle_timeout: "idle_timeout", Duration, parse_positive_duration;
    de_retries: "retries", u32, parse_retries;
    de_max_conns: "max_conns", usize, parse_max_conns;
    de_health: "health", HealthCheck, parse_health;
    de_health_interval: "health_interval", Duration, parse_positive_duration;
    de_health_timeout: "health_timeout", Duration, parse_positive_duration;
    de_rise: "rise", u32, parse_rise_fall;
    de_fall: "fall", u32, parse_rise_fall;
    de_eject_after: "eject_after", u32, parse_eject_after;
    de_eject_base: "eject_base", Duration, parse_positive_duration;
    de_eject_max: "eject_max", Duration, parse_positive_duration;
    de_slow_start: "slow_start", Duration, parse_duration;
    de_hash_key: "hash_key", HashKey, parse_hash_key;
    de_hash_balance_factor: "hash_balance_factor", u32, parse_hash_balance_factor;
    de_proxy_protocol: "proxy_protocol", ProxyProtocol, parse_proxy_protocol;
    de_discovery: "discovery", String, parse_discovery;
    de_discovery_interval: "discovery_interval", Duration, parse_positive_duration;
    de_admin: "admin", SocketAddr, parse_listen;
    de_admin_token: "admin_token", AdminToken, parse_admin_token;
    de_grace: "grace", Duration, parse_duration;
    de_log_level: "log_level", String, parse_log_level;
    de_maglev_table_size: "maglev_table_size", u64, parse_maglev_table_size;
    de_weight: "weight", u32, parse_weight;
    de_name: "name", String, parse_backend_name;
    de_backend_max_conns: "max_conns", u32, parse_backend_max_conns;
    de_max_conns_per_source: "max_conns_per_source", u32, parse_max_conns_per_source;
    de_max_conn_rate_per_source: "max_conn_rate_per_source", u32, parse_max_conn_rate_per_source;
    de_splice_pipes: "splice_pipes", usize, parse_splice_pipes;
}

/// `accept_proxy = "10.0.0.0/8,127.0.0.1"` or `accept_proxy = ["10.0.0.0/8", "127.0.0.1"]`.
fn de_accept_proxy<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<ipnet::IpNet>>, D::Error> {
    let list = ListenList::deserialize(d)?;
    let joined: Vec<String> = list.0.into_iter().map(|(_, t)| t).collect();
    parse_accept_proxy(&joined.join(","))
        .map(Some)
        .map_err(|m| de::Error::custom(format!("`accept_proxy`: {m}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("2s"), Ok(ms(2000)));
        assert_eq!(parse_duration("5m"), Ok(ms(300_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("0.25ms"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        let err = |s: &str| parse_duration(s).expect_err(s);
        assert!(err("5").contains("needs a unit"));
        assert!(err("2sec").contains("unknown unit 'sec'"));
        for bad in [
            "",
            "s",
            "-1s",
            "1..5s",
            "1.s",
            ".5s",
            "1e3s",
            "8761h",
            "99999999999999999999999999999999999999999h",
        ] {
            let e = err(bad);
            assert!(!e.contains('\n'), "{e}");
        }
        assert_eq!(parse_positive_duration("0ms").ok(), None);
    }

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
    }

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

    #[test]
    fn scalar_values() {
        assert_eq!(parse_workers("auto"), Ok(Workers::Auto));
        assert_eq!(parse_workers("3"), Ok(Workers::Count(3)));
        assert!(parse_workers("0").is_err());
        assert!(parse_workers("1025").is_err());
        assert_eq!(
            parse_health("http:/up"),
            Ok(HealthCheck::Http("/up".into()))
        );
        assert!(parse_health("http:up").is_err());
        assert!(parse_health("http:/a b").is_err());
        assert!(parse_health("udp").is_err());
        assert_eq!(parse_retries("100"), Ok(100));
        assert!(parse_retries("101").is_err());
        assert!(parse_rise_fall("0").is_err());
        assert_eq!(parse_hash_balance_factor("125%"), Ok(125));
        assert!(parse_hash_balance_factor("99").is_err());
        assert_eq!(parse_log_level("Warn"), Ok("warn".into()));
        assert!(parse_log_level("verbose").is_err());
        assert_eq!(
            parse_admin_token("abc.DEF-1_~").map(|t| t.expose().to_string()),
            Ok("abc.DEF-1_~".to_string())
        );
        assert!(parse_admin_token("").is_err());
        assert!(parse_admin_token("has space").is_err());
        assert!(parse_admin_token("tab\there").is_err());
        assert!(parse_admin_token("é").is_err());
        assert!(parse_admin_token(&"x".repeat(MAX_ADMIN_TOKEN_LEN + 1)).is_err());
        assert_eq!(parse_maglev_table_size("65537"), Ok(65537));
        assert!(parse_maglev_table_size("65536").is_err());
        assert!(parse_discovery("dns-srv:_web._tcp.svc").is_ok());
        assert!(parse_discovery("dns-srv:_web._tcp.svc@10.0.0.1").is_ok());
        assert!(parse_discovery("dns-srv:_web._tcp.svc@resolver").is_err());
        assert!(parse_discovery("dns-srv:").is_err());
        assert!(parse_discovery("consul:web").is_err());
        let e = parse_algorithm("fastest").expect_err("unknown");
        for (name, _) in Algorithm::ALL {
            assert!(e.contains(name), "{e}");
        }
        for (name, a) in Algorithm::ALL {
            assert_eq!(parse_algorithm(name), Ok(a));
        }
    }

    const FULL: &str = r#"
listen = ["127.0.0.1:8080", "[::1]:8080"]
algorithm = "ring-hash"
workers = 2
pin = false
forward = "copy"
connect_timeout = "1s"
idle_timeout = "10m"
retries = 3
max_conns = 5000
health = "http:/healthz"
health_interval = "3s"
health_timeout = "500ms"
rise = 1
fall = 2
eject_after = 7
eject_base = "10s"
eject_max = "2m"
slow_start = "20s"
hash_key = "source-ip-port"
hash_balance_factor = 150
proxy_protocol = "v1"
discovery = "dns-srv:_web._tcp.example"
discovery_interval = "10s"
admin = "127.0.0.1:9900"
admin_token = "s3cret-token"
grace = "5s"
log_level = "debug"
maglev_table_size = 251

[[backend]]
addr = "127.0.0.1:9001"
weight = 2
name = "a"
max_conns = 10

[[backend]]
addr = "127.0.0.1:9002"
"#;

    #[test]
    fn toml_every_key() {
        let p = parse_toml(FULL, "full.toml").expect("valid");
        let c = p.apply_to(Config::default());
        c.validate().expect("valid config");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.algorithm, Algorithm::RingHash);
        assert_eq!(c.workers, Workers::Count(2));
        assert!(!c.pin);
        assert_eq!(c.forward, ForwardMode::Copy);
        assert_eq!(c.connect_timeout, ms(1000));
        assert_eq!(c.idle_timeout, ms(600_000));
        assert_eq!(c.retries, 3);
        assert_eq!(c.max_conns, Some(5000));
        assert_eq!(c.health, HealthCheck::Http("/healthz".into()));
        assert_eq!((c.health_interval, c.health_timeout), (ms(3000), ms(500)));
        assert_eq!((c.rise, c.fall), (1, 2));
        assert_eq!(c.eject_after, 7);
        assert_eq!((c.eject_base, c.eject_max), (ms(10_000), ms(120_000)));
        assert_eq!(c.slow_start, ms(20_000));
        assert_eq!(c.hash_key, HashKey::SourceIpPort);
        assert_eq!(c.hash_balance_factor, Some(150));
        assert_eq!(c.proxy_protocol, Some(ProxyProtocol::V1));
        assert_eq!(c.discovery.as_deref(), Some("dns-srv:_web._tcp.example"));
        assert_eq!(c.discovery_interval, ms(10_000));
        assert_eq!(c.admin, Some("127.0.0.1:9900".parse().expect("addr")));
        assert_eq!(
            c.admin_token.as_ref().map(AdminToken::expose),
            Some("s3cret-token")
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the token is not logged"
        );
        assert_eq!(c.grace, ms(5000));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.maglev_table_size, 251);
        let b = &c.backends;
        assert_eq!(
            (b[0].weight, b[0].name.as_str(), b[0].max_conns),
            (2, "a", Some(10))
        );
        assert_eq!(
            (b[1].weight, b[1].name.as_str(), b[1].max_conns),
            (1, "127.0.0.1:9002", None)
        );
    }

    #[test]
    fn toml_listen_may_be_a_string_and_workers_auto() {
        let p = parse_toml("listen = \":9000\"\nworkers = \"auto\"\n", "f").expect("valid");
        assert_eq!(p.listen, Some(vec!["0.0.0.0:9000".parse().expect("addr")]));
        assert_eq!(p.workers, Some(Workers::Auto));
    }

    /// (line, column, message) of a TOML error.
    fn toml_error(text: &str) -> (usize, usize, String) {
        match parse_toml(text, "t.toml") {
            Err(ConfigError::Parse {
                file,
                line,
                column,
                message,
            }) => {
                assert_eq!(file, "t.toml");
                assert!(!message.contains('\n'), "{message}");
                (line, column, message)
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn toml_errors_have_positions() {
        let (l, c, m) = toml_error("retries = 2\nalgorithm = \"p2c\"\nworkers = = 3\n");
        assert_eq!((l, c), (3, 11), "{m}");

        let (l, c, m) = toml_error("retries = 2\n\ncolour = \"red\"\n");
        assert_eq!((l, c), (3, 1));
        assert!(m.contains("unknown key `colour`"), "{m}");

        let (l, c, m) = toml_error("retries = 2\nconnect_timeout = \"5\"\n");
        assert_eq!((l, c), (2, 19));
        assert!(m.contains("connect_timeout") && m.contains("unit"), "{m}");

        let (l, _, m) = toml_error("connect_timeout = 5\n");
        assert_eq!(l, 1);
        assert!(m.contains("unit"), "{m}");

        let (l, _, m) = toml_error("algorithm = \"fastest\"\n");
        assert_eq!(l, 1);
        assert!(m.contains("round-robin"), "{m}");

        let (l, c, m) = toml_error("[[backend]]\naddr = \"127.0.0.1:1\"\nweight = 0\n");
        assert_eq!((l, c), (3, 10));
        assert!(m.contains("weight"), "{m}");

        let (l, _, m) = toml_error("[[backend]]\naddr = \"127.0.0.1:1\"\nport = 80\n");
        assert_eq!(l, 3);
        assert!(m.contains("unknown key `port`"), "{m}");

        let (l, _, m) = toml_error("listen = [\"127.0.0.1:1\",\n  \"nope\"]\n");
        assert_eq!(l, 2, "{m}");

        let (_, _, m) = toml_error("retries = 1\n[[backend]]\nweight = 2\n");
        assert!(m.contains("addr"), "{m}");

        let (l, c, m) = toml_error("listen = [\"127.0.0.1:1\", \"127.0.0.1:2\",\n  \"nope\"]\n");
        assert_eq!((l, c), (2, 3), "{m}");
    }

    /// The integer part times the unit fits in u128 but the fraction pushed it over: this
    /// wrapped to about 36 minutes in release builds instead of being refused.
    #[test]
    fn duration_fraction_overflow_is_refused() {
        let s = "94522879700260684295381835.999999999999999999h";
        assert_eq!(
            parse_duration(s),
            Err(format!("duration '{s}' is too long; at most 8760h"))
        );
    }

    /// Found by fuzzing: a quoted value's "\r" (or any control character) was echoed raw.
    #[test]
    fn toml_error_escapes_control_characters() {
        for text in [
            "connect_timeout = \"5\\r\"\n",
            "connect_timeout = \"\\u0001\\u0007s\"\n",
            "algorithm = \"mag\\rlev\"\n",
        ] {
            let msg = parse_toml(text, "f.toml").unwrap_err().to_string();
            assert!(!msg.chars().any(char::is_control), "{msg:?}");
            assert!(msg.contains("\\r") || msg.contains("\\u{1}"), "{msg:?}");
        }
    }

    #[test]
    fn toml_duplicate_backend_name_points_at_the_second() {
        let text = "[[backend]]\naddr = \"127.0.0.1:1\"\nname = \"a\"\n\n[[backend]]\naddr = \"127.0.0.1:2\"\nname = \"a\"\n";
        let (l, _, m) = toml_error(text);
        assert!((5..=7).contains(&l), "line {l}: {m}");
        assert!(m.contains("duplicate backend name 'a'"), "{m}");
    }

    #[test]
    fn line_columns_count_characters() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 3), (2, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é=\n", 2), (1, 2));
        assert_eq!(line_column("x", 99), (1, 2));
    }

    fn valid() -> Config {
        Config {
            backends: vec![parse_backend("127.0.0.1:9001").expect("backend")],
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
        fails(&|c| c.listen.clear(), "no listen");
        fails(&|c| c.listen.push(c.listen[0]), "duplicate listen");
        fails(&|c| c.backends.clear(), "no backends");
        fails(
            &|c| c.backends.push(c.backends[0].clone()),
            "duplicate backend name '127.0.0.1:9001'",
        );
        fails(&|c| c.backends[0].weight = 0, "weight");
        fails(&|c| c.rise = 0, "--rise");
        fails(&|c| c.fall = 0, "--fall");
        fails(&|c| c.retries = 101, "--retries");
        fails(&|c| c.workers = Workers::Count(0), "--workers");
        fails(&|c| c.workers = Workers::Count(1025), "--workers");
        fails(&|c| c.max_conns = Some(0), "--max-conns");
        fails(&|c| c.health_timeout = Duration::ZERO, "--health-timeout");
        fails(&|c| c.eject_base = Duration::ZERO, "--eject-base");
        fails(&|c| c.eject_max = Duration::from_secs(1), "--eject-max");
        fails(&|c| c.eject_after = MAX_EJECT_AFTER + 1, "--eject-after");
        fails(
            &|c| c.hash_balance_factor = Some(99),
            "--hash-balance-factor",
        );
        fails(&|c| c.health = HealthCheck::Http("x".into()), "--health");
        fails(&|c| c.log_level = "loud".into(), "--log-level");
        fails(&|c| c.maglev_table_size = 100, "--maglev-table-size");
        fails(
            &|c| {
                c.algorithm = Algorithm::Maglev;
                c.maglev_table_size = 3;
                for port in 2..6 {
                    c.backends
                        .push(parse_backend(&format!("127.0.0.1:{port}")).expect("b"));
                }
            },
            "too small for 5 backends",
        );

        // The same address twice is fine under distinct names.
        let mut c = valid();
        c.backends
            .push(parse_backend("127.0.0.1:9001,name=again").expect("b"));
        c.validate().expect("same address, distinct names");
        // Discovery stands in for static backends.
        let mut c = valid();
        c.backends.clear();
        c.discovery = Some("dns-srv:_web._tcp.example".into());
        c.validate().expect("discovery without static backends");
    }

    #[test]
    fn overlay_replaces_lists_and_keeps_the_rest() {
        let file = parse_toml(FULL, "f").expect("valid");
        let cli = PartialConfig {
            backends: Some(vec![parse_backend("127.0.0.1:7000").expect("b")]),
            retries: Some(9),
            ..PartialConfig::default()
        };
        let c = file.overlay(cli).apply_to(Config::default());
        assert_eq!(c.backends.len(), 1);
        assert_eq!(c.retries, 9);
        assert_eq!(c.algorithm, Algorithm::RingHash);
        assert_eq!(c.listen.len(), 2);
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
