//! The TOML file. Keys are the long flags with `-` as `_`; backends are `[[backend]]`
//! tables. Each key's value is read by the seed its setting declares (see
//! [`super::settings`]): a scalar goes through the flag's own parser, so a value means the
//! same thing in both places and is rejected with the same words, at its file:line:column.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::address::parse_backend_addr;
use super::backend_spec::{parse_backend_max_conns, parse_backend_name, parse_weight};
use super::settings::FILE_KEYS;
use super::values::parse_proxy_protocol;
use super::{BackendSpec, ConfigError, PartialConfig, ProxyProtocol};

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
    let FileConfig(partial) = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| s.start).unwrap_or(0);
        parse_error(text, file, at, e.message())
    })?;
    Ok(partial)
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

/// The whole file: each key read into a [`PartialConfig`] by its setting.
struct FileConfig(PartialConfig);

impl<'de> Deserialize<'de> for FileConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FileConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("struct FileConfig")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FileConfig, A::Error> {
                let mut partial = PartialConfig::default();
                while let Some(key) = map.next_key_seed(Key)? {
                    partial.read_file_value(key, &mut map)?;
                }
                Ok(FileConfig(partial))
            }
        }
        d.deserialize_struct("FileConfig", FILE_KEYS, V)
    }
}

/// A key of the file, refused while it is read (so the error points at the key) unless a
/// setting declares it.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = &'static str;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for Key {
    type Value = &'static str;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field identifier")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<&'static str, E> {
        FILE_KEYS
            .iter()
            .find(|k| **k == v)
            .copied()
            .ok_or_else(|| E::unknown_field(v, FILE_KEYS))
    }
}

/// A value parsed from its text by `parse`, the parser of the flag.
pub struct Scalar<T> {
    key: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Scalar<T> {
    pub fn new(key: &'static str, parse: fn(&str) -> Result<T, String>) -> Self {
        Scalar { key, parse }
    }
}

impl<'de, T> DeserializeSeed<'de> for Scalar<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        scalar_with(d, self.key, self.parse)
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

/// `KEY = "ADDR"` or `KEY = ["ADDR", ...]`, each string parsed by `parse` (so an error
/// points at the element rather than the array).
pub fn each_string<T>(
    parse: fn(&str) -> Result<T, String>,
) -> impl Fn(&'static str) -> EachString<T> {
    move |key| EachString { key, parse }
}

pub struct EachString<T> {
    key: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<'de, T> DeserializeSeed<'de> for EachString<T> {
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T> Visitor<'de> for EachString<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address string or an array of them")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
        let one = (self.parse)(v).map_err(|m| E::custom(format!("`{}`: {m}", self.key)))?;
        Ok(vec![one])
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element_seed(ParsedString {
            key: self.key,
            parse: self.parse,
        })? {
            out.push(item);
        }
        Ok(out)
    }
}

/// One string of an array, parsed by `parse`.
struct ParsedString<T> {
    key: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<'de, T> DeserializeSeed<'de> for ParsedString<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_str(self)
    }
}

// Parsed inside the element's own deserialization, so that the error carries the
// element's position rather than the array's.
impl<T> Visitor<'_> for ParsedString<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(|m| E::custom(format!("`{}`: {m}", self.key)))
    }
}

/// `KEY = "A,B"` or `KEY = ["A", "B"]`, joined with commas and parsed whole by `parse`
/// (`accept_proxy`, whose parser also bounds the list's length).
pub fn joined_strings<T>(
    parse: fn(&str) -> Result<Vec<T>, String>,
) -> impl Fn(&'static str) -> JoinedStrings<T> {
    move |key| JoinedStrings { key, parse }
}

pub struct JoinedStrings<T> {
    key: &'static str,
    parse: fn(&str) -> Result<Vec<T>, String>,
}

impl<'de, T> DeserializeSeed<'de> for JoinedStrings<T> {
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        let texts = d.deserialize_any(Strings)?;
        (self.parse)(&texts.join(","))
            .map_err(|m| de::Error::custom(format!("`{}`: {m}", self.key)))
    }
}

/// A string or an array of strings, as they are.
struct Strings;

impl<'de> Visitor<'de> for Strings {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address string or an array of them")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        Ok(vec![v.to_string()])
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<String>()? {
            out.push(item);
        }
        Ok(out)
    }
}

/// `[[backend]]` tables. A name used twice is refused at the second table.
pub fn backend_tables(_key: &'static str) -> BackendTables {
    BackendTables
}

pub struct BackendTables;

impl<'de> DeserializeSeed<'de> for BackendTables {
    type Value = Vec<BackendSpec>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<BackendSpec>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BackendTables {
    type Value = Vec<BackendSpec>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<BackendSpec>, A::Error> {
        let mut out: Vec<BackendSpec> = Vec::new();
        while let Some(spec) = seq.next_element_seed(BackendTable { before: &out })? {
            out.push(spec);
        }
        Ok(out)
    }
}

/// One `[[backend]]` table; `before` are the tables above it.
struct BackendTable<'a> {
    before: &'a [BackendSpec],
}

impl<'de> DeserializeSeed<'de> for BackendTable<'_> {
    type Value = BackendSpec;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<BackendSpec, D::Error> {
        d.deserialize_struct("FileBackend", FILE_BACKEND_KEYS, self)
    }
}

impl<'de> Visitor<'de> for BackendTable<'_> {
    type Value = BackendSpec;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct FileBackend")
    }
    // The duplicate is refused here, inside the table's own deserialization, so that the
    // error carries the table's position.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<BackendSpec, A::Error> {
        let b = FileBackend::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let spec = BackendSpec {
            addr: b.addr.1,
            weight: b.weight.unwrap_or(1),
            name: b.name.unwrap_or(b.addr.0),
            max_conns: b.max_conns,
            proxy_protocol: b.proxy_protocol,
            backup: b.backup,
        };
        if self.before.iter().any(|o| o.name == spec.name) {
            let msg = ConfigError::DuplicateBackendName(spec.name).to_string();
            return Err(de::Error::custom(msg));
        }
        Ok(spec)
    }
}

const FILE_BACKEND_KEYS: &[&str] = &[
    "addr",
    "weight",
    "name",
    "max_conns",
    "proxy_protocol",
    "backup",
];

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
    /// Used only while no primary backend is up.
    #[serde(default)]
    backup: bool,
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

macro_rules! de_scalar {
    ($($fn_name:ident: $key:literal, $ty:ty, $parse:path;)*) => {$(
        fn $fn_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
            scalar_with(d, $key, $parse).map(Some)
        }
    )*};
}

de_scalar! {
    de_weight: "weight", u32, parse_weight;
    de_name: "name", String, parse_backend_name;
    de_backend_max_conns: "max_conns", u32, parse_backend_max_conns;
    de_proxy_protocol: "proxy_protocol", ProxyProtocol, parse_proxy_protocol;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        AdminToken, Algorithm, Config, ForwardMode, HashKey, HealthCheck, PartialServiceSettings,
        Workers,
    };
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn parse_backend(s: &str) -> Result<BackendSpec, String> {
        crate::config::parse_backend(s)
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
        assert_eq!(c.service.listen.len(), 2);
        assert_eq!(c.service.algorithm, Algorithm::RingHash);
        assert_eq!(c.workers, Workers::Count(2));
        assert!(!c.pin);
        assert_eq!(c.forward, ForwardMode::Copy);
        assert_eq!(c.service.connect_timeout, ms(1000));
        assert_eq!(c.service.idle_timeout, ms(600_000));
        assert_eq!(c.service.retries, 3);
        assert_eq!(c.max_conns, Some(5000));
        assert_eq!(c.service.health, HealthCheck::Http("/healthz".into()));
        assert_eq!(
            (c.service.health_interval, c.service.health_timeout),
            (ms(3000), ms(500))
        );
        assert_eq!((c.service.rise, c.service.fall), (1, 2));
        assert_eq!(c.service.eject_after, 7);
        assert_eq!(
            (c.service.eject_base, c.service.eject_max),
            (ms(10_000), ms(120_000))
        );
        assert_eq!(c.service.slow_start, ms(20_000));
        assert_eq!(c.service.hash_key, HashKey::SourceIpPort);
        assert_eq!(c.service.hash_balance_factor, Some(150));
        assert_eq!(c.service.proxy_protocol, Some(ProxyProtocol::V1));
        assert_eq!(
            c.service.discovery.as_deref(),
            Some("dns-srv:_web._tcp.example")
        );
        assert_eq!(c.service.discovery_interval, ms(10_000));
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
        assert_eq!(c.service.maglev_table_size, 251);
        let b = &c.service.backends;
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
        assert_eq!(
            p.service.listen,
            Some(vec!["0.0.0.0:9000".parse().expect("addr")])
        );
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
    fn toml_backup_backends() {
        let text = "[[backend]]\naddr = \"127.0.0.1:1\"\n\n[[backend]]\naddr = \"127.0.0.1:2\"\nbackup = true\n\n[[backend]]\naddr = \"127.0.0.1:3\"\nbackup = false\n";
        let c = parse_toml(text, "f")
            .expect("valid")
            .apply_to(Config::default());
        let backup: Vec<bool> = c.service.backends.iter().map(|b| b.backup).collect();
        assert_eq!(backup, vec![false, true, false]);
        let (l, c, m) = toml_error("[[backend]]\naddr = \"127.0.0.1:1\"\nbackup = \"yes\"\n");
        assert_eq!((l, c), (3, 10), "{m}");
        assert!(m.contains("boolean"), "{m}");
    }

    #[test]
    fn line_columns_count_characters() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 3), (2, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é=\n", 2), (1, 2));
        assert_eq!(line_column("x", 99), (1, 2));
    }

    #[test]
    fn overlay_replaces_lists_and_keeps_the_rest() {
        let file = parse_toml(FULL, "f").expect("valid");
        let cli = PartialConfig {
            service: PartialServiceSettings {
                backends: Some(vec![parse_backend("127.0.0.1:7000").expect("b")]),
                retries: Some(9),
                ..PartialServiceSettings::default()
            },
            ..PartialConfig::default()
        };
        let c = file.overlay(cli).apply_to(Config::default());
        assert_eq!(c.service.backends.len(), 1);
        assert_eq!(c.service.retries, 9);
        assert_eq!(c.service.algorithm, Algorithm::RingHash);
        assert_eq!(c.service.listen.len(), 2);
    }
}
