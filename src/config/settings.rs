//! Every setting of uringlb, declared once: its scope, type, default, parser, flag and
//! example. Adding a setting is one entry here plus its use (and, if a value can also be
//! built by hand, its rule in [`super::validate`]). The doc comment of an entry is its
//! `--help` text. Entries are in the order of `--help` and of the TOML keys an
//! unknown-key error lists. The entry syntax is described in [`super::declare`].

use std::net::SocketAddr;
use std::time::Duration;

use super::address::{parse_accept_proxy, parse_cidr, parse_client_networks, parse_listen};
use super::admin_token::{parse_admin_token, AdminToken};
use super::backend_spec::parse_backend;
use super::consul::{parse_consul_token, ConsulToken};
use super::declare::settings;
use super::duration::{parse_duration, parse_positive_duration};
use super::file::{backend_tables, each_string, joined_strings};
use super::flags::PinFlags;
use super::udp::*;
use super::values::*;
use super::{Algorithm, BackendSpec, ForwardMode, HashKey, HealthCheck, ProxyProtocol};

/// `--listen` when none is given.
fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 8080))]
}

settings! {
    /// Address to accept clients on (repeatable) [default: 127.0.0.1:8080]
    service listen: SocketAddr {
        list = default_listen(), parse = parse_listen, file = each_string(parse_listen),
        arg(short = 'l', long, value_name = "ADDR"),
        example "127.0.0.1:1",
    }

    /// Backend server (repeatable): ADDR[,weight=N][,name=S][,max-conns=N][,proxy-protocol=v1|v2][,backup]
    service backends: BackendSpec {
        list = Vec::new(), key = "backend", parse = parse_backend, file = backend_tables,
        arg(short = 'b', long = "backend", value_name = "SPEC"),
        example "127.0.0.1:9", toml "[{ addr = \"127.0.0.1:9\" }]",
    }

    /// Balancing algorithm: round-robin, weighted-round-robin, random, weighted-random,
    /// least-conn, p2c, least-time, source-hash, maglev, ring-hash [default: round-robin]
    service algorithm: Algorithm {
        one = Algorithm::RoundRobin, parse = parse_algorithm,
        arg(short = 'a', long, value_name = "NAME"),
        example "maglev",
    }

    /// Worker threads; auto = CPUs in this process's affinity mask [default: auto]
    process workers: Workers {
        one = Workers::Auto, parse = parse_workers,
        arg(short = 'w', long, value_name = "N|auto"),
        example "3",
    }

    /// Pin each worker to one CPU (`--pin`, the default, or `--no-pin`)
    process pin: bool {
        switch = true, flags = PinFlags,
        example "false", toml "false", args ["--no-pin"],
    }

    /// How bytes are forwarded: copy, splice or auto [default: auto]
    process forward: ForwardMode {
        one = ForwardMode::Auto, parse = parse_forward,
        arg(long, value_name = "MODE"),
        example "splice",
    }

    /// Backend connect timeout [default: 2s]
    service connect_timeout: Duration {
        one = Duration::from_secs(2), parse = parse_positive_duration,
        arg(long, value_name = "DUR"),
        example "7s",
    }

    /// Close a connection idle in both directions this long [default: 5m]
    service idle_timeout: Duration {
        one = Duration::from_secs(300), parse = parse_positive_duration,
        arg(long, value_name = "DUR"),
        example "7m",
    }

    /// Other backends tried after a failed connect, 0-100 [default: 2]
    service retries: u32 {
        one = 2, parse = parse_retries,
        arg(long, value_name = "N"),
        example "7",
    }

    /// Client connections for the whole balancer [default: derived from RLIMIT_NOFILE]
    process max_conns: usize {
        maybe, parse = parse_max_conns,
        arg(long, value_name = "N"),
        example "77",
    }

    /// Active health check: tcp, http:PATH or none [default: tcp]
    service health: HealthCheck {
        one = HealthCheck::Tcp, parse = parse_health,
        arg(long, value_name = "CHECK"),
        example "http:/up",
    }

    /// Time between health checks of one backend [default: 2s]
    service health_interval: Duration {
        one = Duration::from_secs(2), parse = parse_positive_duration,
        arg(long, value_name = "DUR"),
        example "7s",
    }

    /// Health check timeout [default: 1s]
    service health_timeout: Duration {
        one = Duration::from_secs(1), parse = parse_positive_duration,
        arg(long, value_name = "DUR"),
        example "7s",
    }

    /// Consecutive passed checks that bring a backend up [default: 2]
    service rise: u32 {
        one = 2, parse = parse_rise_fall,
        arg(long, value_name = "N"),
        example "7",
    }

    /// Consecutive failed checks that take a backend down [default: 3]
    service fall: u32 {
        one = 3, parse = parse_rise_fall,
        arg(long, value_name = "N"),
        example "7",
    }

    /// Consecutive connect failures that eject a backend; 0 = never [default: 5]
    service eject_after: u32 {
        one = 5, parse = parse_eject_after,
        arg(long, value_name = "N"),
        example "7",
    }

    /// First ejection's length; doubles with each further one [default: 30s]
    service eject_base: Duration {
        one = Duration::from_secs(30), parse = parse_positive_duration,
        arg(long, value_name = "DUR"),
        example "7s",
    }

    /// Longest ejection [default: 300s]
    service eject_max: Duration {
        one = Duration::from_secs(300), parse = parse_positive_duration,
        arg(long, value_name = "DUR"),
        example "7m",
    }

    /// Ramp a recovered backend's weight from 10% to 100% over DUR; 0s = off [default: 0s]
    service slow_start: Duration {
        one = Duration::ZERO, parse = parse_duration,
        arg(long, value_name = "DUR"),
        example "7s",
    }

    /// Key for the hashing algorithms: source-ip or source-ip-port [default: source-ip]
    service hash_key: HashKey {
        one = HashKey::SourceIp, parse = parse_hash_key,
        arg(long, value_name = "KEY"),
        example "source-ip-port",
    }

    /// Bounded loads for the hashing algorithms: skip a backend above PERCENT of the mean
    /// (at least 100) [default: unbounded]
    service hash_balance_factor: u32 {
        maybe, parse = parse_hash_balance_factor,
        arg(long, value_name = "PERCENT"),
        example "170",
    }

    /// Send a PROXY protocol header to backends: v1 or v2 [default: off]
    service proxy_protocol: ProxyProtocol {
        maybe, parse = parse_proxy_protocol,
        arg(long, value_name = "VERSION"),
        example "v2",
    }

    /// Discover backends: dns-srv:NAME[@RESOLVER] or consul:SERVICE[@HOST:PORT]
    service discovery: String {
        maybe, parse = parse_discovery,
        arg(long, value_name = "SOURCE"),
        example "dns-srv:_web._tcp.example",
    }

    /// How often discovery re-resolves (DNS), the longest pause between retries (Consul)
    /// [default: 5s]
    service discovery_interval: Duration {
        one = Duration::from_secs(5), parse = parse_positive_duration,
        arg(long, value_name = "DUR"),
        example "7s",
    }

    /// ACL token sent to Consul by consul: discovery (visible in `ps`: prefer consul_token
    /// in a config file readable only by its owner, or CONSUL_HTTP_TOKEN) [default:
    /// CONSUL_HTTP_TOKEN, else none]
    service consul_token: ConsulToken {
        maybe, parse = parse_consul_token,
        arg(long, value_name = "TOKEN"),
        example "t0ken",
    }

    /// Admin and metrics HTTP endpoint [default: off]
    process admin: SocketAddr {
        maybe, parse = parse_listen,
        arg(long, value_name = "ADDR"),
        example "127.0.0.1:7",
    }

    /// Bearer token the admin endpoint requires for everything but GET /health
    /// (visible in `ps`: prefer admin_token in a config file readable only by its owner)
    /// [default: none]
    process admin_token: AdminToken {
        maybe, parse = parse_admin_token,
        arg(long, value_name = "TOKEN"),
        example "t0ken",
    }

    /// Drain time on SIGTERM/SIGINT [default: 30s]
    process grace: Duration {
        one = Duration::from_secs(30), parse = parse_duration,
        arg(long, value_name = "DUR"),
        example "7s",
    }

    /// error, warn, info, debug or trace [default: info]
    process log_level: String {
        one = "info".to_string(), parse = parse_log_level,
        arg(long, value_name = "LEVEL"),
        example "debug",
    }

    /// One line per finished connection: off, stderr or a file path (appended to;
    /// SIGUSR1 reopens it) [default: off]
    process access_log: crate::access_log::Target {
        one = crate::access_log::Target::Off, parse = crate::access_log::parse_target,
        arg(long, value_name = "off|stderr|PATH"),
        example "/tmp/uringlb-access.log",
    }

    /// Access log lines: json or logfmt (the same keys) [default: json]
    process access_log_format: crate::access_log::Format {
        one = crate::access_log::Format::Json, parse = crate::access_log::parse_format,
        arg(long, value_name = "json|logfmt"),
        example "logfmt",
    }

    /// Unix socket a running balancer hands its listeners over on: a new process
    /// started with the same path takes them and the old one drains (a binary upgrade
    /// that refuses no client) [default: off]
    process upgrade_socket: std::path::PathBuf {
        maybe, parse = parse_upgrade_socket,
        arg(long, value_name = "PATH"),
        example "/tmp/uringlb-upgrade.sock",
    }

    /// Maglev lookup table size, a prime [default: 65537]
    service maglev_table_size: u64 {
        one = 65537, parse = parse_maglev_table_size,
        arg(long, value_name = "N"),
        example "251",
    }

    /// Read a PROXY protocol header (v1 or v2) from clients in these networks and use the
    /// address it carries; from anywhere else a header is data [default: none]
    service accept_proxy: ipnet::IpNet {
        list = Vec::new(), parse = parse_cidr, file = joined_strings(parse_accept_proxy),
        arg(long, value_name = "CIDR[,CIDR...]", value_delimiter = ','),
        example "10.0.0.0/8",
    }

    /// Serve only clients in these networks (a bare IP is one address); others are reset
    /// at accept. Behind a trusted proxy (--accept-proxy) the address its header carries
    /// is checked [default: everyone]
    service allow: ipnet::IpNet {
        list = Vec::new(), parse = parse_cidr, file = joined_strings(parse_client_networks),
        arg(long, value_name = "CIDR[,CIDR...]", value_delimiter = ','),
        example "10.0.0.0/8",
    }

    /// Never serve clients in these networks, even if --allow lists them; they are reset
    /// at accept [default: none]
    service deny: ipnet::IpNet {
        list = Vec::new(), parse = parse_cidr, file = joined_strings(parse_client_networks),
        arg(long, value_name = "CIDR[,CIDR...]", value_delimiter = ','),
        example "192.0.2.0/24",
    }

    /// Open connections per client IP, across workers; more are refused [default: unlimited]
    service max_conns_per_source: u32 {
        maybe, parse = parse_max_conns_per_source,
        arg(long, value_name = "N"),
        example "7",
    }

    /// New connections per second per client IP; more are refused [default: unlimited]
    service max_conn_rate_per_source: u32 {
        maybe, parse = parse_max_conn_rate_per_source,
        arg(long, value_name = "N"),
        example "7",
    }

    /// TCP keepalive on both sides of a connection, probing after DUR idle, so long idle
    /// flows survive NAT and firewall timeouts: DUR or off [default: off]
    service tcp_keepalive: TcpKeepalive {
        one = TcpKeepalive(None), parse = parse_tcp_keepalive,
        arg(long, value_name = "DUR|off"),
        example "61s",
    }

    /// TLS server names (SNI) this service takes on its listen addresses, which services
    /// with names may share: a.example.com, *.example.org (one label) or * (the address's
    /// default); other clients are closed [default: none: every client, TLS or not]
    service sni: crate::sni::Pattern {
        list = Vec::new(), parse = crate::sni::Pattern::parse,
        file = each_string(crate::sni::Pattern::parse),
        arg(long, value_name = "NAME[,NAME...]", value_delimiter = ','),
        example "a.example.com",
    }

    /// How long a client of a service with `sni` has, from its accept, to send its TLS
    /// ClientHello (and a trusted peer's PROXY header before it) [default: 5s]
    service sni_timeout: Duration {
        one = Duration::from_secs(5), parse = parse_positive_duration,
        arg(long, value_name = "DUR"),
        example "7s",
    }

    /// What the service balances: tcp (connections) or udp (datagrams, in flows keyed by
    /// the client's address) [default: tcp]
    service protocol: Protocol {
        one = Protocol::Tcp, parse = parse_protocol,
        arg(long, value_name = "tcp|udp"),
        example "udp",
    }

    /// UDP services: end a flow with no datagram either way for this long [default: 30s]
    service udp_idle_timeout: Duration {
        one = Duration::from_secs(30), parse = parse_positive_duration,
        arg(long, value_name = "DUR"),
        example "7s",
    }

    /// UDP services: end a flow after this many replies (1 for DNS); 0 = unlimited
    /// [default: 0]
    service udp_responses: u32 {
        one = 0, parse = parse_udp_responses,
        arg(long, value_name = "N"),
        example "1",
    }

    /// UDP services: flows of the service at once; when full, the flow idle longest is
    /// ended for a new one [default: 16384]
    service max_flows: u32 {
        one = DEFAULT_MAX_FLOWS, parse = parse_max_flows,
        arg(long, value_name = "N"),
        example "77",
    }

    /// Splice pipes per worker; when all are busy a chunk is copied; 0 = never splice
    /// [default: 256]
    process splice_pipes: usize {
        one = DEFAULT_SPLICE_PIPES, parse = parse_splice_pipes,
        arg(long, value_name = "N"),
        example "7",
    }
}
