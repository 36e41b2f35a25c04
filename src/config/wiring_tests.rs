//! Every declared setting reaches the resolved [`Config`] both as a flag and as a file key,
//! and to its own field only: the test walks the same table the code is generated from,
//! so a setting declared once cannot be half-wired.

use clap::{CommandFactory, Parser};

use super::settings::{differing, Declared, DECLARED, FILE_KEYS};
use super::{parse_toml, Config, Flags, PartialConfig};

/// The settings' flags alone, as `cli.rs` flattens them.
#[derive(Parser)]
struct FlagsOnly {
    #[command(flatten)]
    flags: Flags,
}

fn from_flags(args: &[String]) -> Config {
    let parsed = FlagsOnly::try_parse_from(
        std::iter::once("uringlb".to_string()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    parsed.flags.into_partial().apply_to(Config::default())
}

fn from_file(text: &str) -> Config {
    let partial: PartialConfig =
        parse_toml(text, "wiring.toml").unwrap_or_else(|e| panic!("{text:?}: {e}"));
    partial.apply_to(Config::default())
}

/// `--FLAG` of a declared setting, as clap derived it.
fn long_flag(name: &str) -> String {
    let cmd = FlagsOnly::command();
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_id().as_str() == name)
        .unwrap_or_else(|| panic!("no flag for setting {name}"));
    let long = arg
        .get_long()
        .unwrap_or_else(|| panic!("{name} has no long flag"));
    format!("--{long}")
}

/// The example as command-line arguments: `--FLAG VALUE` unless declared otherwise.
fn example_args(s: &Declared) -> Vec<String> {
    if s.example_args.is_empty() {
        vec![long_flag(s.name), s.example.to_string()]
    } else {
        s.example_args.iter().map(|a| a.to_string()).collect()
    }
}

/// The example as a one-key file: `KEY = "VALUE"` unless declared otherwise.
fn example_file(s: &Declared) -> String {
    let value = match s.example_toml {
        Some(v) => v.to_string(),
        None => toml::Value::String(s.example.to_string()).to_string(),
    };
    format!("{} = {value}\n", s.key)
}

#[test]
fn every_setting_is_wired_to_its_flag_and_its_file_key() {
    // Every setting's key, and `service` for the `[[service]]` tables.
    assert_eq!(DECLARED.len() + 1, FILE_KEYS.len());
    assert_eq!(FILE_KEYS.last(), Some(&"service"));
    let defaults = Config::default();
    for s in DECLARED {
        let args = example_args(s);
        let by_flag = from_flags(&args);
        assert_eq!(
            differing(&defaults, &by_flag),
            [s.name],
            "{args:?} must set {} and nothing else",
            s.name
        );

        let text = example_file(s);
        let by_file = from_file(&text);
        assert_eq!(
            differing(&defaults, &by_file),
            [s.name],
            "{text:?} must set {} and nothing else",
            s.name
        );
        assert_eq!(by_flag, by_file, "{args:?} and {text:?} must mean the same");
    }
}

#[test]
fn file_keys_and_flags_are_unique() {
    let mut keys = FILE_KEYS.to_vec();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), FILE_KEYS.len());
    let mut longs: Vec<String> = DECLARED
        .iter()
        .filter(|s| s.example_args.is_empty())
        .map(|s| long_flag(s.name))
        .collect();
    longs.sort_unstable();
    longs.dedup();
    assert_eq!(
        longs.len(),
        DECLARED
            .iter()
            .filter(|s| s.example_args.is_empty())
            .count()
    );
}
