//! `uringlb-bench`: load generator and standalone test backends for uringlb.
//!
//! Servers print `listening on ADDR` once bound (so a test passing port 0 can read the real
//! port) and run until killed. Load commands (`http`, `echo`, `bulk`, `download`, `udp`) print a
//! table, or JSON with `--json`. `compare-report` and `plot` serve `bench/compare.sh`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use uringlb_bench::{
    compare, idle_memory, load, parse_bytes, parse_duration, plot, soak, soak::SoakConfig, udp,
    EchoServer, HttpServer, LoadConfig, LoadKind, NameServer, Report, SinkServer, SourceServer,
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
    /// HTTP/1.1 GET load, keep-alive unless --close; counts responses per backend name.
    Http {
        #[command(flatten)]
        load: LoadArgs,
        /// Request target, e.g. `/` or `/big?bytes=1M`.
        #[arg(long, default_value = "/")]
        path: String,
        /// A new connection per request (`Connection: close`); latency includes the connect.
        #[arg(long)]
        close: bool,
        /// Open loop: this many requests per second in all, paced per connection, latency
        /// corrected for coordinated omission (see README). Default: closed loop.
        #[arg(long, value_parser = parse_rate)]
        rate: Option<f64>,
        /// Print one `WRKJSON {...}` line in the form of bench/lab/stats.lua (for
        /// compare.sh) instead of the table.
        #[arg(long, conflicts_with = "json")]
        wrk_json: bool,
    },
    /// Bulk transfer through a TCP echo: each connection streams --bytes each way, every
    /// byte checked; GB/s up and down. Exits 1 on any failed or corrupted transfer.
    Bulk {
        #[command(flatten)]
        transfer: TransferArgs,
        /// Bytes each connection sends and expects back, e.g. 64MiB, 1G.
        #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
        bytes: u64,
    },
    /// HTTP downloads (e.g. an nginx backend's file) through the target; GB/s. Exits 1 on
    /// any failed download.
    Download {
        #[command(flatten)]
        transfer: TransferArgs,
        /// Path to GET.
        #[arg(long, default_value = "/big.bin")]
        download_path: String,
    },
    /// Aggregates the runs `bench/compare.sh` recorded: medians, ratios to HAProxy (NGINX for UDP), a table
    /// on stdout and a results JSON.
    CompareReport {
        /// The runs file: one JSON object per line.
        #[arg(long)]
        runs: PathBuf,
        /// Where to write the results JSON.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Also write the results JSON here (e.g. bench/results/latest.json).
        #[arg(long)]
        latest: Option<PathBuf>,
        /// Baseline for the ratios, or several in order of preference (a workload without
        /// the first, like UDP without HAProxy, takes the next); for the download the best
        /// `NAME*` variant is used.
        #[arg(long, default_value = "haproxy,nginx")]
        baseline: String,
        /// Facts to record with the results, KEY=VALUE (repeatable).
        #[arg(long, value_parser = parse_meta)]
        meta: Vec<(String, String)>,
    },
    /// Plots latency against percentile (a "nines" axis) as SVG, one line per system (from
    /// a compare results file) or per load report (`--json` output).
    Plot {
        /// Results JSON (compare-report) or load report JSON; repeatable.
        #[arg(long, required = true)]
        input: Vec<PathBuf>,
        /// SVG file to write.
        #[arg(long)]
        output: PathBuf,
        /// Which workload of a results file to plot.
        #[arg(long, default_value = "keepalive")]
        workload: String,
        /// Line labels for load report inputs, in order.
        #[arg(long)]
        label: Vec<String>,
        #[arg(long)]
        title: Option<String>,
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
    /// Fault soak of the real uringlb binary: byte-checked load while backends are killed,
    /// the config reloaded, backends drained and re-added, idle bursts hit --max-conns.
    /// Exits 1 on any lost or corrupted byte, unexplained failure or descriptor leak.
    Soak(SoakArgs),
    /// The balancer's memory per idle proxied connection: RSS with N idle connections,
    /// then after each exchanged one small message; kernel TCP memory too.
    IdleMemory {
        /// Connections to open (the balancer holds 2 descriptors per connection).
        #[arg(long, default_value_t = 9000)]
        conns: usize,
        /// Balancer --workers values, one run each, comma-separated.
        #[arg(long, default_value = "1,auto", value_delimiter = ',')]
        workers: Vec<String>,
        /// Bytes of the one message each connection echoes in the second step.
        #[arg(long, default_value_t = 100)]
        message: usize,
        /// The balancer's --forward.
        #[arg(long, default_value = "auto")]
        forward: String,
        /// The uringlb binary (default: $UR_BIN, else `uringlb` next to this binary).
        #[arg(long)]
        uringlb: Option<PathBuf>,
        /// Print the runs as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// UDP request/response load, DNS-like: each flow (a client socket, one source port)
    /// has one small request in flight; unanswered requests count as lost.
    Udp(UdpArgs),
    /// UDP echo: answers each datagram with the same bytes.
    #[command(alias = "udp-echo")]
    ServeUdpEcho {
        #[command(flatten)]
        listen: ListenArgs,
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
struct SoakArgs {
    /// How long to soak (after a warm-up of a few seconds).
    #[arg(long, short, default_value = "5m", value_parser = parse_duration)]
    duration: Duration,
    /// The uringlb binary (default: $UR_BIN, else `uringlb` next to this binary).
    #[arg(long)]
    uringlb: Option<PathBuf>,
    /// Seed of the event schedule and sizes (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// The balancer's --workers.
    #[arg(long, default_value = "auto")]
    workers: String,
    /// Echo backends.
    #[arg(long, default_value_t = 4)]
    backends: usize,
    /// The balancer's --max-conns; each idle burst opens this many connections.
    #[arg(long, default_value_t = 1500)]
    max_conns: usize,
    /// Threads doing new-connection request/response exchanges.
    #[arg(long, default_value_t = 4)]
    exchange_threads: usize,
    /// Threads doing long transfers.
    #[arg(long, default_value_t = 2)]
    long_threads: usize,
    /// Smallest long transfer (each way).
    #[arg(long, default_value = "8MiB", value_parser = parse_bytes)]
    long_min: u64,
    /// Largest long transfer (each way).
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    long_max: u64,
    /// Load without events before the start figures are taken.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct UdpArgs {
    /// Address to load, e.g. 127.0.0.1:5353.
    #[arg(long, short)]
    target: String,
    /// Client sockets (source ports: flows in the balancer), one request in flight each.
    #[arg(long, short, default_value_t = 64)]
    flows: usize,
    /// How long to run: 500ms, 2s, 1m.
    #[arg(long, short, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many requests sent.
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop: this many requests per second in all, paced per flow, latency
    /// corrected for coordinated omission as in `http --rate`. Default: closed loop.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Send every request from a new socket (a new source port, so a new flow), as
    /// resolvers with random source ports do.
    #[arg(long)]
    new_flow_per_request: bool,
    /// Requests are DNS queries (type A) for this name, 36 bytes for the default.
    #[arg(long, default_value = udp::DEFAULT_NAME, conflicts_with = "size")]
    name: String,
    /// Instead of a DNS query, requests of this many bytes (2 to 65507; the first two are
    /// the request's id).
    #[arg(long, value_parser = parse_bytes)]
    size: Option<u64>,
    /// A request not answered within this is counted as lost.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
    /// Load generator worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Print one `WRKJSON {...}` line (for compare.sh) instead of the table.
    #[arg(long, conflicts_with = "json")]
    wrk_json: bool,
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

/// Like [`LoadArgs`], with defaults for a few long transfers instead of many requests.
#[derive(Args)]
struct TransferArgs {
    /// Address to load, e.g. 127.0.0.1:8080.
    #[arg(long, short)]
    target: String,
    /// Concurrent connections.
    #[arg(long, short, default_value_t = 1)]
    connections: usize,
    /// Transfers in all (default: one per connection).
    #[arg(long)]
    requests: Option<u64>,
    /// Upper bound on the whole run.
    #[arg(long, short, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Load generator worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-transfer timeout.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

impl TransferArgs {
    fn as_load(&self) -> LoadArgs {
        LoadArgs {
            target: self.target.clone(),
            connections: self.connections,
            duration: self.duration,
            requests: self.requests,
            threads: self.threads,
            timeout: self.timeout,
            json: self.json,
            quiet: self.quiet,
        }
    }
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
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
        Cmd::Http {
            load,
            path,
            close,
            rate,
            wrk_json,
        } => {
            let cfg = LoadConfig {
                path,
                close,
                rate,
                ..load_config(&load)
            };
            let report = load::http_keepalive_with(resolve(&load.target)?, &cfg)?;
            if wrk_json {
                println!("{}", report.wrk_json());
            }
            finish_load(&load, report, !wrk_json)
        }
        Cmd::Bulk { transfer, bytes } => {
            let load = transfer.as_load();
            let cfg = LoadConfig {
                bulk_bytes: bytes,
                ..load_config(&load)
            };
            finish_load(&load, load::bulk_with(resolve(&load.target)?, &cfg)?, true)
        }
        Cmd::Download {
            transfer,
            download_path,
        } => {
            let load = transfer.as_load();
            let cfg = LoadConfig {
                path: download_path,
                ..load_config(&load)
            };
            finish_load(
                &load,
                load::download_with(resolve(&load.target)?, &cfg)?,
                true,
            )
        }
        Cmd::CompareReport {
            runs,
            output,
            latest,
            baseline,
            meta,
        } => {
            let text = std::fs::read_to_string(&runs)
                .with_context(|| format!("cannot read {}", runs.display()))?;
            let meta: BTreeMap<String, String> = meta.into_iter().collect();
            let results = compare::summarize(compare::parse_runs(&text)?, meta, &baseline);
            let json = results.to_json();
            for path in output.iter().chain(latest.iter()) {
                std::fs::write(path, &json)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            print!("{}", results.table());
            Ok(if results.rows.is_empty() { 1 } else { 0 })
        }
        Cmd::Plot {
            input,
            output,
            workload,
            label,
            title,
        } => {
            let n = plot::plot_files(&input, &label, &workload, title.as_deref(), &output)?;
            eprintln!("wrote {} ({n} series)", output.display());
            Ok(0)
        }
        Cmd::Echo { load, size } => {
            let cfg = LoadConfig {
                msg_size: usize::try_from(size).context("--size too large")?,
                ..load_config(&load)
            };
            finish_load(&load, load::echo_with(resolve(&load.target)?, &cfg)?, true)
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
        Cmd::Soak(args) => soak(args),
        Cmd::IdleMemory {
            conns,
            workers,
            message,
            forward,
            uringlb,
            json,
        } => {
            let cfg = idle_memory::IdleMemoryConfig {
                uringlb: uringlb_binary(uringlb)?,
                bench: std::env::current_exe().context("cannot find this binary")?,
                conns,
                workers,
                message,
                forward,
                settle: Duration::from_secs(2),
            };
            let runs = idle_memory::run(&cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                print!("{}", idle_memory::table(&runs));
            }
            Ok(0)
        }
        Cmd::Udp(args) => udp_load(args),
        Cmd::ServeUdpEcho { listen } => {
            let server = udp::UdpEchoServer::start(listen.listen.as_str())?;
            serve(server.addr())
        }
        Cmd::ServeSource { listen, bytes } => {
            let server = SourceServer::start(listen.listen.as_str(), bytes)?;
            serve(server.addr())
        }
    }
}

/// The `--uringlb` given, or the default; an error when there is no such file.
fn uringlb_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let uringlb = given.unwrap_or_else(soak::balancer::default_binary);
    if !uringlb.is_file() {
        anyhow::bail!(
            "no uringlb binary at {} (build it with cargo build --release, or give --uringlb)",
            uringlb.display()
        );
    }
    Ok(uringlb)
}

fn soak(args: SoakArgs) -> anyhow::Result<i32> {
    let uringlb = uringlb_binary(args.uringlb)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let cfg = SoakConfig {
        seed,
        workers: args.workers,
        backends: args.backends,
        max_conns: args.max_conns,
        exchange_threads: args.exchange_threads,
        long_threads: args.long_threads,
        long_min: args.long_min,
        long_max: args.long_max,
        warmup: args.warmup,
        progress: (!args.quiet).then_some(Duration::from_secs(10)),
        ..SoakConfig::new(uringlb, args.duration)
    };
    if !args.quiet {
        eprintln!(
            "soak: {} for {:?} (seed {seed}), warm-up {:?}",
            cfg.uringlb.display(),
            cfg.duration,
            cfg.warmup
        );
    }
    let report = soak::run(&cfg)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    Ok(if report.passed { 0 } else { 1 })
}

fn udp_load(args: UdpArgs) -> anyhow::Result<i32> {
    let payload = match args.size {
        Some(n) => udp::Payload::Fixed(usize::try_from(n).unwrap_or(usize::MAX)),
        None => udp::Payload::Dns(args.name),
    };
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_ctrl_c(stop.clone());
    let cfg = udp::UdpLoadConfig {
        requests: args.requests,
        rate: args.rate,
        timeout: args.timeout,
        new_flow_per_request: args.new_flow_per_request,
        payload,
        threads: args.threads,
        stop: Some(stop),
        ..udp::UdpLoadConfig::new(resolve(&args.target)?, args.flows, args.duration)
    };
    let report = udp::run(&cfg)?;
    if args.wrk_json {
        println!("{}", report.wrk_json());
    } else if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    Ok(if report.answered == 0 { 1 } else { 0 })
}

fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    target
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {target:?}"))?
        .next()
        .with_context(|| format!("{target:?} resolved to no address"))
}

/// `--rate`: a positive number of requests per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 10_000_000.0 => Ok(r),
        _ => Err(format!(
            "expected requests per second, a number above 0 and at most 10000000, got '{s}'"
        )),
    }
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

fn finish_load(args: &LoadArgs, report: Report, print: bool) -> anyhow::Result<i32> {
    if print && args.json {
        println!("{}", report.to_json());
    } else if print {
        report.print_table();
    }
    // A transfer that failed or came back corrupted fails the run: those modes exist to
    // check the data path, not only to time it.
    let strict = matches!(report.kind, LoadKind::Bulk | LoadKind::Download);
    let failed = report.requests == 0 || report.mismatches > 0 || (strict && report.errors > 0);
    if report.mismatches > 0 {
        eprintln!(
            "uringlb-bench: {} transfer(s) came back with different bytes",
            report.mismatches
        );
    }
    Ok(if failed { 1 } else { 0 })
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
