//! The resolved configuration: what the balancer runs with after the TOML file and the
//! command-line flags have been merged and validated. No sockets are touched here.
//!
//! # One declaration per setting
//!
//! Every setting is one entry in [`settings`]: its scope, type, default, value parser,
//! flag attributes and an example value. The [`settings!`](declare) macro turns the table
//! into everything a setting used to be written out for by hand:
//!
//! - [`Config`] (process-wide settings, plus [`ServiceSettings`] for the per-service ones)
//!   and its [`Default`];
//! - [`PartialConfig`] / [`PartialServiceSettings`], every setting optional, with
//!   `overlay` (file < flags) and `apply_to` (defaults under both);
//! - [`Flags`], the clap arguments (`cli.rs` flattens them into its parser), and their
//!   conversion into a [`PartialConfig`];
//! - the reading of each TOML key ([`file`]) with the same parser as the flag;
//! - the list the wiring test walks, so a setting cannot be declared and left half-wired.
//!
//! Why a `macro_rules!` table rather than a derive or a runtime table: the generated items
//! are plain structs with typed fields (the rest of the code reads `cfg.workers`, not a map
//! lookup), clap's own derive still reads the flag attributes and doc comments (so `--help`
//! is clap's), and the mechanism is visible in one file ([`declare`]) without a proc-macro
//! crate or a new dependency. Settings are either `process` (one value for the balancer:
//! workers, pinning, the admin endpoint, ...) or `service` (listen addresses, backends,
//! balancing, health, timeouts, limits, PROXY protocol, discovery): a service will take the
//! top-level [`PartialServiceSettings`] as its defaults with
//! [`PartialServiceSettings::inheriting`].
//!
//! # Files
//!
//! [`settings`] the table · [`declare`] the macro · [`file`] the TOML file · [`flags`] flag
//! helpers · [`validate`] the rules a resolved configuration keeps · [`derived`] what other
//! modules take from it · value parsers: [`values`], [`duration`], [`address`],
//! [`backend_spec`], [`admin_token`], [`consul`] · [`error`] why a configuration was rejected.

use std::path::Path;

pub use crate::backend::BackendSpec;
pub use crate::balance::{Algorithm, HashKey};
pub use crate::health::HealthCheck;
pub use crate::proxy_protocol::ProxyProtocol;
pub use crate::worker::ForwardMode;

pub mod address;
pub mod admin_token;
pub mod backend_spec;
pub mod consul;
mod declare;
pub mod derived;
pub mod duration;
pub mod error;
pub mod file;
pub mod flags;
pub mod services;
mod settings;
pub mod udp;
pub mod validate;
pub mod values;

pub use address::*;
pub use admin_token::*;
pub use backend_spec::*;
pub use consul::{parse_consul_token, ConsulSource, ConsulToken};
pub use derived::summary;
pub use duration::*;
pub use error::ConfigError;
pub use file::{load_file, parse_toml};
pub use services::{ServiceConfig, DEFAULT_SERVICE};
pub use settings::{Config, Flags, PartialConfig, PartialServiceSettings, ServiceSettings};
pub use udp::*;
pub use validate::{check_backend_protocol, check_not_self};
pub use values::*;

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
    let tables = from_file.services.clone();
    let merged = from_file.clone().overlay(overrides.clone());
    let top = merged.service.clone();
    let mut cfg = merged.apply_to(base);
    if let Some(tables) = tables {
        cfg.services = services::resolve(tables, &from_file, &overrides, &top)?;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Re-reads `current`'s config file and lays the original command-line flags over it
/// again (SIGHUP, `POST /reload`). Without a file this rebuilds the same configuration.
pub fn reload(current: &Config) -> Result<Config, ConfigError> {
    load(current.config_file.as_deref(), current.overrides.clone())
}

#[cfg(test)]
mod wiring_tests;
