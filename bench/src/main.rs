//! `uringlb-bench`: load generator and standalone test backends for uringlb.
//!
//! Servers print `listening on ADDR` once bound (so a test passing port 0 can read the real
//! port) and run until killed. Load commands print a table, or JSON with `--json`.

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use uringlb_bench::{
    load, parse_bytes, parse_duration, EchoServer, HttpServer, LoadConfig, NameServer, Report,
    SinkServer, SourceServer,
};

#[derive(Parser)]
#[command(
    name = "uringlb-bench",
    version,
    about = "Load generator and test backends for uringlb"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// HTTP/1.1 keep-alive GET load; counts responses per backend name.
    Http {
        #[command(flatten)]
        load: LoadArgs,
        /// Request target, e.g. `/` or `/big?bytes=1M`.
        #[arg(long, default_value = "/")]
        path: String,
    },
    /// Request/response load over a TCP echo.
    Echo {
        #[command(flatten)]
        load: LoadArgs,
        /// Message size, e.g. 64, 4KiB.
        #[arg(long, default_value = "64", value_parser = parse_bytes)]
        size: u64,
    },
    /// HTTP server answering with its name.
    ServeHttp {
        #[command(flatten)]
        listen: ListenArgs,
        #[arg(long, default_value = "backend")]
        name: String,
    },
    /// Echo server (half-close respected).
    ServeEcho {
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Writes "NAME\n" on accept, then echoes.
    ServeName {
        #[command(flatten)]
        listen: ListenArgs,
        #[arg(long, default_value = "backend")]
        name: String,
    },
    /// Reads and discards; with --never-read accepts but never reads (backpressure).
    ServeSink {
        #[command(flatten)]
        listen: ListenArgs,
        #[arg(long)]
        never_read: bool,
    },
    /// Writes N pattern bytes per connection, then closes its write side.
    ServeSource {
        #[command(flatten)]
        listen: ListenArgs,
        /// Bytes per connection, e.g. 1000000, 64KiB, 1G.
        #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
        bytes: u64,
    },
}

#[derive(Args)]
struct LoadArgs {
    /// Address to load, e.g. 127.0.0.1:8080.
    #[arg(long, short)]
    target: String,
    /// Concurrent connections.
    #[arg(long, short, default_value_t = 16)]
    connections: usize,
    /// How long to run: 500ms, 2s, 1m.
    #[arg(long, short, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many requests (successful or not).
    #[arg(long)]
    requests: Option<u64>,
    /// Load generator worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-request timeout; slower requests count as errors.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct ListenArgs {
    /// Address to bind; port 0 picks a free port (printed on stdout).
    #[arg(long, short, default_value = "127.0.0.1:0")]
    listen: String,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let code = match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uringlb-bench: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

/// Runs a subcommand; the exit code is 1 when a load completed no request at all.
fn run(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Http { load, path } => {
            let cfg = LoadConfig {
                path,
                ..load_config(&load)
            };
            finish_load(
                &load,
                load::http_keepalive_with(resolve(&load.target)?, &cfg)?,
            )
        }
        Cmd::Echo { load, size } => {
            let cfg = LoadConfig {
                msg_size: usize::try_from(size).context("--size too large")?,
                ..load_config(&load)
            };
            finish_load(&load, load::echo_with(resolve(&load.target)?, &cfg)?)
        }
        Cmd::ServeHttp { listen, name } => {
            let server = HttpServer::start(listen.listen.as_str(), &name)?;
            serve(server.addr())
        }
        Cmd::ServeEcho { listen } => {
            let server = EchoServer::start(listen.listen.as_str())?;
            serve(server.addr())
        }
        Cmd::ServeName { listen, name } => {
            let server = NameServer::start(listen.listen.as_str(), &name)?;
            serve(server.addr())
        }
        Cmd::ServeSink { listen, never_read } => {
            let server = SinkServer::start_with(listen.listen.as_str(), never_read)?;
            serve(server.addr())
        }
        Cmd::ServeSource { listen, bytes } => {
            let server = SourceServer::start(listen.listen.as_str(), bytes)?;
            serve(server.addr())
        }
    }
}

fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    target
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {target:?}"))?
        .next()
        .with_context(|| format!("{target:?} resolved to no address"))
}

fn load_config(args: &LoadArgs) -> LoadConfig {
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_ctrl_c(stop.clone());
    let mut cfg = LoadConfig {
        threads: args.threads,
        total_requests: args.requests,
        request_timeout: args.timeout,
        stop: Some(stop),
        ..LoadConfig::new(args.connections, args.duration)
    };
    if !args.quiet {
        cfg = cfg.with_progress(|p| eprintln!("{}", p.line()));
    }
    cfg
}

/// Ctrl-C ends the run early but still prints the report, which is what one wants when
/// watching a long benchmark.
fn stop_on_ctrl_c(stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        });
    if let Err(e) = spawned {
        eprintln!("uringlb-bench: no Ctrl-C handling: {e}");
    }
}

fn finish_load(args: &LoadArgs, report: Report) -> anyhow::Result<i32> {
    if args.json {
        println!("{}", report.to_json());
    } else {
        report.print_table();
    }
    Ok(if report.requests == 0 { 1 } else { 0 })
}

/// Announces the bound address and serves until the process is killed (the caller's
/// server stays alive because this never returns).
fn serve(addr: SocketAddr) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);
    loop {
        std::thread::park();
    }
}
