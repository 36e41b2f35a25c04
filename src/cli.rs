//! The command line (README "Flags"): `--check`, `--config`, the `demo` subcommand, and
//! the settings' flags, which are declared with the settings in [`crate::config`] (shared
//! with the config file so a value means the same thing in both). Errors become one line.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, Config};

/// What the command line asked for.
#[derive(Debug)]
pub enum Invocation {
    /// Run the balancer.
    Run(Config),
    /// `--check`: validate and exit 0.
    Check(Config),
    /// `uringlb demo`.
    Demo,
    /// `uringlb completions SHELL` or `uringlb man`: a text to print, made from the flags'
    /// own definitions (so it never drifts from them).
    Print(Vec<u8>),
}

/// Why parsing stopped: `code` is the exit status (2 for bad input, 0 for `--help` and
/// `--version`), `message` what to print (one line for errors; the text for help).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    fn usage(message: String) -> CliError {
        CliError { code: 2, message }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "uringlb",
    version,
    about = "A thread-per-core io_uring TCP load balancer",
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true,
    after_help = "DUR is a number with a unit: 500ms, 2s, 5m, 1h. \
                  Flags given on the command line override the config file."
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Validate the configuration, print a one-line summary and exit (0 = valid)
    #[arg(long)]
    check: bool,

    /// TOML config file; flags given on the command line override it
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Every setting's flag, declared with the setting in `config::settings`.
    #[command(flatten)]
    settings: config::Flags,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start embedded backends, the balancer and a short load; print a report
    Demo,
    /// Print a shell completion script (e.g. `uringlb completions bash > /etc/bash_completion.d/uringlb`)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff; e.g. `uringlb man > /usr/share/man/man1/uringlb.1`)
    Man,
}

/// Parses `args` (the first one is the program name) into an [`Invocation`], reading and
/// validating the config file if one is named. Never exits, never panics.
pub fn parse_from<I, T>(args: I) -> Result<Invocation, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args).map_err(from_clap)?;
    match args.command {
        Some(Command::Demo) => return Ok(Invocation::Demo),
        Some(Command::Completions { shell }) => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Args::command(), "uringlb", &mut out);
            return Ok(Invocation::Print(out));
        }
        Some(Command::Man) => return Ok(Invocation::Print(man_page())),
        None => {}
    }
    let check = args.check;
    let file = args.config.clone();
    let cfg = config::load(file.as_deref(), args.settings.into_partial())
        .map_err(|e| CliError::usage(format!("error: {e}")))?;
    Ok(if check {
        Invocation::Check(cfg)
    } else {
        Invocation::Run(cfg)
    })
}

/// The man page: the flags and subcommands as `--help` gives them, in roff.
fn man_page() -> Vec<u8> {
    let mut out = Vec::new();
    // Rendering into memory cannot fail.
    let _ = clap_mangen::Man::new(Args::command()).render(&mut out);
    out
}

/// Parses the process arguments; on bad input prints one line to stderr and exits 2
/// (`--help`/`--version` print to stdout and exit 0).
pub fn parse_or_exit() -> Invocation {
    match parse_from(std::env::args_os()) {
        Ok(invocation) => invocation,
        Err(e) => {
            let mut text = e.message;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            // Write errors (a closed pipe) are ignored: print! would panic on them.
            let _ = if e.code == 0 {
                std::io::stdout().lock().write_all(text.as_bytes())
            } else {
                std::io::stderr().lock().write_all(text.as_bytes())
            };
            std::process::exit(e.code)
        }
    }
}

/// clap's errors are several lines (message, usage, tip); operators and scripts get one.
fn from_clap(err: clap::Error) -> CliError {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => CliError {
            code: 0,
            message: err.render().to_string(),
        },
        _ => CliError::usage(one_line(&err)),
    }
}

fn one_line(err: &clap::Error) -> String {
    let context = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    // "--retries <N>" -> "--retries"
    let arg = context(ContextKind::InvalidArg)
        .map(|a| a.split_whitespace().next().unwrap_or_default().to_string());
    match (err.kind(), arg) {
        (ErrorKind::UnknownArgument, Some(arg)) => {
            let hint = match context(ContextKind::SuggestedArg) {
                Some(s) => format!("; did you mean '{s}'?"),
                None => String::new(),
            };
            format!("error: unexpected argument '{arg}'{hint} (see --help)")
        }
        (ErrorKind::ValueValidation, Some(arg)) => {
            let value = context(ContextKind::InvalidValue).unwrap_or_default();
            let reason = std::error::Error::source(err)
                .map(|s| s.to_string().replace('\n', "; "))
                .unwrap_or_else(|| "invalid value".to_string());
            format!("error: invalid value '{value}' for '{arg}': {reason}")
        }
        _ => {
            let rendered = err.render().to_string();
            let first = rendered
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            format!("error: {} (see --help)", strip_value_names(first))
        }
    }
}

/// "'--workers <N|auto>'" -> "'--workers'": the flag is what names the problem.
fn strip_value_names(line: &str) -> String {
    let mut out = line.to_string();
    while let Some(start) = out.find(" <") {
        match out[start..].find(">'") {
            Some(len) => out.replace_range(start..start + len + 1, ""),
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        AdminToken, Algorithm, ForwardMode, HashKey, HealthCheck, ProxyProtocol, ServiceSettings,
        Workers,
    };
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<Invocation, CliError> {
        parse_from(std::iter::once("uringlb").chain(args.iter().copied()))
    }

    fn config_of(args: &[&str]) -> Config {
        match parse(args) {
            Ok(Invocation::Run(c)) | Ok(Invocation::Check(c)) => c,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    fn error_of(args: &[&str]) -> String {
        match parse(args) {
            Err(e) => {
                assert_eq!(e.code, 2, "{}", e.message);
                assert_eq!(e.message.lines().count(), 1, "one line: {:?}", e.message);
                assert!(e.message.starts_with("error: "), "{}", e.message);
                e.message
            }
            Ok(i) => panic!("expected an error, got {i:?}"),
        }
    }

    #[test]
    fn defaults_with_one_backend() {
        let c = config_of(&["-b", "127.0.0.1:9001"]);
        let expected = Config {
            service: ServiceSettings {
                backends: c.service.backends.clone(),
                ..ServiceSettings::default()
            },
            overrides: c.overrides.clone(),
            ..Config::default()
        };
        assert_eq!(c, expected);
        assert_eq!(c.service.backends[0].name, "127.0.0.1:9001");
    }

    #[test]
    fn every_flag() {
        let c = config_of(&[
            "-l",
            "127.0.0.1:8081",
            "--listen",
            "[::1]:8082",
            "-b",
            "127.0.0.1:9001,weight=3,name=a",
            "-b",
            "127.0.0.1:9002,max-conns=10",
            "-a",
            "maglev",
            "-w",
            "4",
            "--no-pin",
            "--forward",
            "splice",
            "--connect-timeout",
            "500ms",
            "--idle-timeout",
            "1h",
            "--retries",
            "0",
            "--max-conns",
            "1000",
            "--health",
            "http:/healthz",
            "--health-interval",
            "5s",
            "--health-timeout",
            "2s",
            "--rise",
            "1",
            "--fall",
            "5",
            "--hash-key",
            "source-ip-port",
            "--hash-balance-factor",
            "125",
            "--proxy-protocol",
            "v2",
            "--discovery",
            "dns-srv:_web._tcp.example@127.0.0.1:8600",
            "--discovery-interval",
            "30s",
            "--admin",
            "127.0.0.1:9900",
            "--admin-token",
            "tok",
            "--grace",
            "0s",
            "--log-level",
            "DEBUG",
            "--maglev-table-size",
            "251",
        ]);
        assert_eq!(c.service.listen.len(), 2);
        assert_eq!(c.service.backends[0].weight, 3);
        assert_eq!(c.service.backends[0].name, "a");
        assert_eq!(c.service.backends[1].max_conns, Some(10));
        assert_eq!(c.service.algorithm, Algorithm::Maglev);
        assert_eq!(c.workers, Workers::Count(4));
        assert!(!c.pin);
        assert_eq!(c.forward, ForwardMode::Splice);
        assert_eq!(c.service.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.service.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.service.retries, 0);
        assert_eq!(c.max_conns, Some(1000));
        assert_eq!(c.service.health, HealthCheck::Http("/healthz".into()));
        assert_eq!(c.service.health_interval, Duration::from_secs(5));
        assert_eq!(c.service.health_timeout, Duration::from_secs(2));
        assert_eq!((c.service.rise, c.service.fall), (1, 5));
        assert_eq!(c.service.hash_key, HashKey::SourceIpPort);
        assert_eq!(c.service.hash_balance_factor, Some(125));
        assert_eq!(c.service.proxy_protocol, Some(ProxyProtocol::V2));
        assert!(c.service.discovery.is_some());
        assert_eq!(c.service.discovery_interval, Duration::from_secs(30));
        assert_eq!(c.admin, Some("127.0.0.1:9900".parse().unwrap()));
        assert_eq!(c.admin_token.as_ref().map(AdminToken::expose), Some("tok"));
        assert_eq!(c.grace, Duration::ZERO);
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.service.maglev_table_size, 251);
    }

    #[test]
    fn pin_flags_last_one_wins() {
        assert!(!config_of(&["-b", "127.0.0.1:1", "--pin", "--no-pin"]).pin);
        assert!(config_of(&["-b", "127.0.0.1:1", "--no-pin", "--pin"]).pin);
    }

    #[test]
    fn check_and_demo() {
        assert!(matches!(
            parse(&["--check", "-b", "127.0.0.1:1"]),
            Ok(Invocation::Check(_))
        ));
        assert!(matches!(parse(&["demo"]), Ok(Invocation::Demo)));
        error_of(&["-b", "127.0.0.1:1", "demo"]);
    }

    #[test]
    fn help_and_version_exit_zero() {
        for flag in ["--help", "-h", "--version", "-V"] {
            let e = parse(&[flag]).expect_err("help is not an invocation");
            assert_eq!(e.code, 0);
            assert!(e.message.contains("uringlb"), "{}", e.message);
        }
        let help = parse(&["--help"])
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        for flag in [
            "--listen",
            "--backend",
            "--maglev-table-size",
            "--discovery-interval",
        ] {
            assert!(help.contains(flag), "{flag} missing from help");
        }
    }

    #[test]
    fn errors_are_one_line_naming_the_flag() {
        let e = error_of(&["--foo"]);
        assert_eq!(e, "error: unexpected argument '--foo' (see --help)");
        let e = error_of(&["-b", "127.0.0.1:1", "--retries", "x"]);
        assert!(
            e.starts_with("error: invalid value 'x' for '--retries': "),
            "{e}"
        );
        let e = error_of(&["-b", "127.0.0.1:1", "--retries", "101"]);
        assert!(e.contains("0 to 100"), "{e}");
        let e = error_of(&["--listen", "nope", "-b", "127.0.0.1:1"]);
        assert!(e.contains("'--listen'") && e.contains("nope"), "{e}");
        let e = error_of(&["-b", "1.2.3:x"]);
        assert!(
            e.contains("'--backend'") && e.contains("invalid port 'x'"),
            "{e}"
        );
        let e = error_of(&["-b", "1.2.3:80"]);
        assert!(e.contains("invalid IPv4 address '1.2.3'"), "{e}");
        let e = error_of(&["-b", "127.0.0.1:1", "-a", "fastest"]);
        assert!(e.contains("fastest") && e.contains("ring-hash"), "{e}");
        let e = error_of(&["-b", "127.0.0.1:1", "--connect-timeout", "5"]);
        assert!(
            e.contains("'--connect-timeout'") && e.contains("unit"),
            "{e}"
        );
        let e = error_of(&["-b", "127.0.0.1:1", "--listen"]);
        assert!(e.contains("'--listen'"), "{e}");
        let e = error_of(&["--listn", "127.0.0.1:1"]);
        assert!(e.contains("did you mean '--listen'"), "{e}");
        let e = error_of(&["stray"]);
        assert!(e.contains("stray"), "{e}");
    }

    #[test]
    fn config_errors_are_one_line() {
        let e = error_of(&["-b", "127.0.0.1:1,name=a", "-b", "127.0.0.1:2,name=a"]);
        assert!(e.contains("duplicate backend name 'a'"), "{e}");
        let e = error_of(&[]);
        assert!(e.contains("no backends"), "{e}");
        let e = error_of(&["-b", "127.0.0.1:1", "-c", "/nonexistent/uringlb.toml"]);
        assert!(e.contains("/nonexistent/uringlb.toml"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let path =
            std::env::temp_dir().join(format!("uringlb-cli-unit-{}.toml", std::process::id()));
        let toml = "algorithm = \"maglev\"\nretries = 5\n[[backend]]\naddr = \"127.0.0.1:9001\"\n\
                    [[backend]]\naddr = \"127.0.0.1:9002\"\n";
        std::fs::write(&path, toml).expect("write temp file");
        let p = path.to_str().expect("utf-8 temp path");
        let c = config_of(&["-c", p, "-a", "p2c"]);
        assert_eq!(c.service.algorithm, Algorithm::P2c);
        assert_eq!(c.service.retries, 5);
        assert_eq!(c.service.backends.len(), 2);
        let c = config_of(&["-c", p, "-b", "127.0.0.1:9100"]);
        assert_eq!(
            c.service.backends.len(),
            1,
            "--backend replaces the file's list"
        );
        assert_eq!(c.service.algorithm, Algorithm::Maglev);
        assert_eq!(c.config_file.as_deref(), Some(path.as_path()));
        // A reload keeps the command line's override.
        std::fs::write(&path, toml.replace("retries = 5", "retries = 7")).expect("rewrite");
        let r = config::reload(&c).expect("reload");
        assert_eq!((r.service.retries, r.service.backends.len()), (7, 1));
        let _ = std::fs::remove_file(&path);
    }
}
