//! `uringlb`: parse the command line, then run the balancer (or `--check`, or the demo).
//!
//! The data path from here: [`uringlb::control::run`] -> [`uringlb::server::Server::start`]
//! -> one [`uringlb::worker::Worker`] per CPU -> [`uringlb::worker::conn::Conn`].

use std::process::ExitCode;

use uringlb::cli::{self, Invocation};
use uringlb::{config, control, demo, server};

fn main() -> ExitCode {
    match cli::parse_or_exit() {
        // Everything a start would build, short of binding and spawning: what a start
        // would refuse, `--check` refuses with the same line.
        Invocation::Check(cfg) => match server::check(&cfg) {
            Ok(()) => {
                println!("{}", config::summary(&cfg));
                ExitCode::SUCCESS
            }
            Err(e) => exit_on_error(Err(control::StartFailed(e).into())),
        },
        Invocation::Demo => exit_on_error(demo::run()),
        Invocation::Print(text) => {
            // A closed pipe (`uringlb man | head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), &text);
            ExitCode::SUCCESS
        }
        Invocation::Run(cfg) => {
            init_logging(&cfg.log_level);
            exit_on_error(control::run(&cfg))
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("uringlb={level},warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Start-up errors exit 2 with one line; anything later exits 1.
fn exit_on_error(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if e.downcast_ref::<control::StartFailed>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
