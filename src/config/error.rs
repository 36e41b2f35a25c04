//! Why a configuration was rejected.

use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// What a file with `[[service]]` tables cannot say.
    #[error("{0}")]
    Services(String),
    #[error("service '{service}': {source}")]
    InService {
        service: String,
        source: Box<ConfigError>,
    },
    #[error("duplicate service name '{0}'")]
    DuplicateService(String),
    #[error("{addr} is the listen address of services '{first}' and '{second}': services share an address only when each sets `sni`")]
    SharedListen {
        addr: SocketAddr,
        first: String,
        second: String,
    },
    /// A setting out of range; `key` is the flag name.
    #[error("invalid {key}: {message}")]
    Invalid { key: &'static str, message: String },
}
