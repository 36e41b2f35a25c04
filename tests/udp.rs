//! UDP services (`--protocol udp`) through the real binary: real dnsmasq servers behind
//! the balancer, a UDP echo backend for large datagrams, clients from many loopback
//! addresses. Every wait is on a condition (an answer, a metric), never a fixed sleep.

mod util;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use util::*;

const ANSWER: Duration = Duration::from_secs(2);

/// Three dnsmasq servers answering with 10.0.0.1, .2 and .3.
fn three_servers() -> Vec<Dnsmasq> {
    (1..=3)
        .map(|i| Dnsmasq::start(Ipv4Addr::new(10, 0, 0, i), false))
        .collect()
}

fn backend_flags(servers: &[Dnsmasq]) -> Vec<String> {
    servers
        .iter()
        .flat_map(|s| {
            [
                "--backend".to_string(),
                format!("{},name=dns{}", s.addr, s.answer.octets()[3]),
            ]
        })
        .collect()
}

fn start_udp(servers: &[Dnsmasq], extra: &[&str]) -> (Lb, Admin) {
    let flags = backend_flags(servers);
    let mut args: Vec<&str> = vec!["--protocol", "udp"];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(extra);
    start_with_admin(&args)
}

fn udp_metric(admin: &Admin, name: &str, labels: &[(&str, &str)]) -> f64 {
    admin.metrics().get(name, labels).unwrap_or(0.0)
}

/// Waits (at most 10 s) until the metric's value satisfies `ok`; returns it.
fn wait_metric(
    admin: &Admin,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let mut last = None;
    poll(Duration::from_secs(10), || {
        let v = admin.metrics().get(name, labels);
        last = v;
        v.filter(|v| ok(*v))
    })
    .unwrap_or_else(|| panic!("{name}{labels:?} never as wanted; last {last:?}"))
}

#[test]
fn every_query_is_answered_and_spread_and_one_response_ends_each_flow() {
    let servers = three_servers();
    let (lb, admin) = start_udp(
        &servers,
        &[
            "--algorithm",
            "round-robin",
            "--udp-responses",
            "1",
            "--health",
            "none",
        ],
    );
    // One client socket asking again and again: each answer ends its flow, so each query
    // is a new flow and round-robin moves on.
    let client = client_on(Ipv4Addr::LOCALHOST.into());
    let mut answers: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for id in 0..60u16 {
        let ip = ask(&client, lb.addr, id + 100, ANSWER)
            .unwrap_or_else(|| panic!("query {id} unanswered\n{}", lb.log_text()));
        *answers.entry(ip).or_default() += 1;
    }
    let want: Vec<Ipv4Addr> = servers.iter().map(|s| s.answer).collect();
    assert_eq!(
        answers.keys().copied().collect::<Vec<_>>(),
        want,
        "{answers:?}"
    );
    for (ip, n) in &answers {
        assert!(*n >= 10, "{ip} answered only {n} of 60: {answers:?}");
    }
    // Workers publish their counts on their tick: wait for them.
    let svc = [("service", "default")];
    wait_metric(&admin, "uringlb_udp_flows_total", &svc, |v| v == 60.0);
    wait_metric(&admin, "uringlb_udp_flows_active", &svc, |v| v == 0.0);
    for dir in ["client_to_backend", "backend_to_client"] {
        let labels = [("service", "default"), ("direction", dir)];
        wait_metric(&admin, "uringlb_udp_datagrams_total", &labels, |v| {
            v == 60.0
        });
        // Each backend's bytes: what its flows forwarded, together the service's bytes.
        let m = admin.metrics();
        let service_bytes = m.value("uringlb_udp_bytes_total", &labels);
        let per_backend = m.all("uringlb_backend_bytes_total");
        let ours: Vec<f64> = per_backend
            .iter()
            .filter(|(l, _)| l["direction"] == dir)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(ours.len(), 3, "{per_backend:?}");
        assert!(ours.iter().all(|v| *v > 0.0), "{dir}: {per_backend:?}");
        assert!(service_bytes > 0.0);
        assert_eq!(
            ours.iter().sum::<f64>(),
            service_bytes,
            "{dir}: {per_backend:?}"
        );
        // The process's totals count them too (the metric and the status page's).
        assert_eq!(
            m.value("uringlb_bytes_total", &[("direction", dir)]),
            service_bytes
        );
        let totals = admin.get("/status").json()["totals"].clone();
        let key = format!("bytes_{dir}");
        assert_eq!(totals[&key].as_f64(), Some(service_bytes), "{totals}");
    }
    let services = admin.get("/services").json();
    assert_eq!(services[0]["protocol"], "udp", "{services}");
}

#[test]
fn without_a_response_limit_a_client_sticks_to_its_backend() {
    let servers = three_servers();
    let (lb, admin) = start_udp(
        &servers,
        &["--algorithm", "round-robin", "--health", "none"],
    );
    let client = client_on(Ipv4Addr::LOCALHOST.into());
    let first = ask(&client, lb.addr, 1, ANSWER).expect("answer");
    for id in 2..20 {
        assert_eq!(ask(&client, lb.addr, id, ANSWER), Some(first));
    }
    wait_metric(
        &admin,
        "uringlb_udp_flows_active",
        &[("service", "default")],
        |v| v == 1.0,
    );
    // The open flow's bytes reach its backend's counts without it ending (once a second).
    for dir in ["client_to_backend", "backend_to_client"] {
        let labels = [("service", "default"), ("direction", dir)];
        poll(Duration::from_secs(10), || {
            let m = admin.metrics();
            let backends: f64 = m
                .all("uringlb_backend_bytes_total")
                .iter()
                .filter(|(l, _)| l["direction"] == dir)
                .map(|(_, v)| *v)
                .sum();
            let service = m.value("uringlb_udp_bytes_total", &labels);
            (service > 0.0 && backends == service).then_some(())
        })
        .unwrap_or_else(|| panic!("{dir}: the backends' bytes never reached the flow's"));
    }
    let flows = admin
        .metrics()
        .value("uringlb_udp_flows_active", &[("service", "default")]);
    assert_eq!(flows, 1.0, "the flow ended before its bytes were counted");
}

/// Asks `n` fresh flows (one query each, with `--udp-responses 1`) from one client
/// socket; returns the answers, `None` for an unanswered query.
fn ask_many(lb: &Lb, n: u16, timeout: Duration) -> Vec<Option<Ipv4Addr>> {
    let client = client_on(Ipv4Addr::LOCALHOST.into());
    (0..n)
        .map(|id| ask(&client, lb.addr, id, timeout))
        .collect()
}

fn backend_up(admin: &Admin, name: &str) -> f64 {
    udp_metric(
        admin,
        "uringlb_backend_up",
        &[("service", "default"), ("backend", name)],
    )
}

/// [`start_udp`] with `dns:` checks every 200 ms, down after 2 failures, and no passive
/// ejection: a backend goes down by its checks alone, within a second.
fn start_checked(servers: &[Dnsmasq], extra: &[&str]) -> (Lb, Admin) {
    let health = format!("dns:{DNS_NAME}");
    let mut args = vec![
        "--health",
        health.as_str(),
        "--health-interval",
        "200ms",
        "--health-timeout",
        "200ms",
        "--fall",
        "2",
        "--eject-after",
        "0",
    ];
    args.extend_from_slice(extra);
    start_udp(servers, &args)
}

#[test]
fn a_killed_server_gets_no_query_once_its_dns_check_fails() {
    let mut servers = three_servers();
    let (lb, admin) = start_checked(
        &servers,
        &["--algorithm", "round-robin", "--udp-responses", "1"],
    );
    assert!(ask_many(&lb, 9, ANSWER).iter().all(Option::is_some));
    servers[1].kill();
    wait_until(
        "the DNS check to take dns2 down",
        Duration::from_secs(10),
        || backend_up(&admin, "dns2") == 0.0,
    );
    admin.wait_settled();
    let answers = ask_many(&lb, 60, ANSWER);
    assert!(
        answers.iter().all(Option::is_some),
        "{answers:?}\n{}",
        lb.log_text()
    );
    assert!(!answers.contains(&Some(servers[1].answer)));
    assert_eq!(backend_up(&admin, "dns1"), 1.0);
    assert_eq!(backend_up(&admin, "dns3"), 1.0);
}

/// A flow leaves a backend that goes down: its client keeps asking a server that hangs
/// (no answer, no ICMP error), the `dns:` check takes that backend down, the flow ends,
/// and the client's next query goes to the backend that is up.
#[test]
fn a_flow_leaves_a_backend_that_goes_down() {
    let servers = [
        Dnsmasq::start(Ipv4Addr::new(10, 0, 4, 1), false),
        Dnsmasq::start(Ipv4Addr::new(10, 0, 4, 2), false),
    ];
    let (lb, _admin) = start_checked(&servers, &[]);
    let client = client_on(Ipv4Addr::LOCALHOST.into());
    let first = ask(&client, lb.addr, 1, ANSWER).expect("an answer");
    let hung = usize::from(first != servers[0].answer);
    servers[hung].pause();
    let mut id = 1;
    poll(Duration::from_secs(15), || {
        id += 1;
        let got = ask(&client, lb.addr, id, Duration::from_millis(300));
        (got == Some(servers[1 - hung].answer)).then_some(())
    })
    .unwrap_or_else(|| panic!("the flow stayed on the hung server\n{}", lb.log_text()));
}

#[test]
fn without_checks_passive_ejection_stops_a_killed_server() {
    let mut servers = three_servers();
    let (lb, admin) = start_udp(
        &servers,
        &[
            "--algorithm",
            "round-robin",
            "--udp-responses",
            "1",
            "--health",
            "none",
            "--eject-after",
            "2",
        ],
    );
    servers[1].kill();
    // Queries to it are refused (ICMP port unreachable): each refusal counts.
    let client = client_on(Ipv4Addr::LOCALHOST.into());
    let mut id = 0;
    wait_until("passive ejection of dns2", Duration::from_secs(20), || {
        id += 1;
        let _ = ask(&client, lb.addr, id, Duration::from_millis(300));
        backend_up(&admin, "dns2") == 0.0
    });
    admin.wait_settled();
    let answers = ask_many(&lb, 60, ANSWER);
    assert!(
        answers.iter().all(Option::is_some),
        "{answers:?}\n{}",
        lb.log_text()
    );
    assert!(!answers.contains(&Some(servers[1].answer)));
    assert!(
        udp_metric(
            &admin,
            "uringlb_connect_failures_total",
            &[("service", "default"), ("backend", "dns2")]
        ) >= 2.0
    );
}

#[test]
fn a_flood_from_25000_sources_keeps_the_table_within_max_flows() {
    let echo = UdpEcho::start("127.0.0.1:0".parse().unwrap());
    let b = echo.addr.to_string();
    let (lb, admin) = start_with_admin(&[
        "--protocol",
        "udp",
        "--backend",
        &b,
        "--max-flows",
        "1000",
        "--workers",
        "2",
        "--udp-idle-timeout",
        "60s",
    ]);
    let fds_before = lb.fd_count();
    let svc = [("service", "default")];
    let mut most = 0.0f64;
    for i in 0..25_000u32 {
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + i);
        let sock = client_on(src.into());
        let _ = sock.send_to(b"flood", lb.addr);
        if i % 2500 == 0 {
            most = most.max(udp_metric(&admin, "uringlb_udp_flows_active", &svc));
        }
    }
    // Every datagram the kernel queued for the balancer (all but those it dropped for a
    // full receive queue) is counted as a flow or a drop once handled.
    wait_until("the flood to be handled", Duration::from_secs(30), || {
        let (queued, kernel_drops) = udp_socket_queues(lb.addr.port());
        let m = admin.metrics();
        let handled = m.value("uringlb_udp_flows_total", &svc)
            + m.all("uringlb_udp_drops_total")
                .iter()
                .map(|(_, v)| v)
                .sum::<f64>();
        queued == 0 && handled == 25_000.0 - kernel_drops as f64
    });
    let m = admin.metrics();
    let active = m.value("uringlb_udp_flows_active", &svc);
    most = most.max(active);
    assert!(most <= 1000.0, "{most} flows open at once");
    assert!(
        active >= 900.0,
        "the table should be (nearly) full: {active}"
    );
    let opened = m.value("uringlb_udp_flows_total", &svc);
    assert!(opened > 20_000.0, "{opened} flows opened of 25 000 sources");
    assert_eq!(
        m.value("uringlb_udp_evictions_total", &svc),
        opened - active
    );
    // One socket per flow and nothing else left behind (the ring closes evicted flows'
    // sockets asynchronously).
    wait_until(
        "at most one descriptor per open flow",
        Duration::from_secs(10),
        || lb.fd_count() <= fds_before + 1000,
    );
    // The service goes on.
    let c = client_on(Ipv4Addr::LOCALHOST.into());
    c.set_read_timeout(Some(ANSWER)).unwrap();
    c.send_to(b"still there?", lb.addr).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = c.recv_from(&mut buf).expect("an echo after the flood");
    assert_eq!(&buf[..n], b"still there?");
}

/// Sends `payload` to `to` and returns the reply and where it came from.
fn echo_through(client: &UdpSocket, to: SocketAddr, payload: &[u8]) -> (Vec<u8>, SocketAddr) {
    client.set_read_timeout(Some(ANSWER)).unwrap();
    client.send_to(payload, to).expect("send");
    let mut buf = vec![0u8; 70_000];
    let (n, from) = client.recv_from(&mut buf).expect("echo");
    buf.truncate(n);
    (buf, from)
}

#[test]
fn the_largest_datagrams_pass_intact_both_ways_over_ipv4_and_ipv6() {
    for (bind, max) in [("127.0.0.1", 65_507usize), ("::1", 65_527)] {
        let ip: IpAddr = bind.parse().unwrap();
        let echo = UdpEcho::start(SocketAddr::new(ip, 0));
        let listen = SocketAddr::new(ip, fixed_port());
        let b = echo.addr.to_string();
        let admin = free_addr();
        let a = admin.to_string();
        let lb = Lb::start_on(
            listen,
            &["--protocol", "udp", "--backend", &b, "--admin", &a],
        );
        wait_admin(admin);
        let client = client_on(ip);
        for (seed, len) in [(1u64, max), (2, 1), (3, 40_000), (4, max)] {
            let data = pattern(seed, len);
            let (back, from) = echo_through(&client, lb.addr, &data);
            assert_eq!(back.len(), len, "{bind}: {len} bytes sent");
            assert!(back == data, "{bind}: {len} bytes came back changed");
            assert_eq!(from, listen, "{bind}: the reply's source");
        }
        let svc = [("service", "default"), ("direction", "backend_to_client")];
        let want = (2 * max + 40_001) as f64;
        wait_metric(&Admin::new(admin), "uringlb_udp_bytes_total", &svc, |v| {
            v == want
        });
    }
}

#[test]
fn a_dns_service_over_ipv6() {
    let dns = Dnsmasq::start(Ipv4Addr::new(10, 0, 0, 6), true);
    let listen: SocketAddr = format!("[::1]:{}", fixed_port()).parse().unwrap();
    let b = dns.addr.to_string();
    let lb = Lb::start_on(
        listen,
        &["--protocol", "udp", "--backend", &b, "--udp-responses", "1"],
    );
    let client = client_on("::1".parse().unwrap());
    for id in 0..10 {
        assert_eq!(ask(&client, lb.addr, id, ANSWER), Some(dns.answer));
    }
}

#[test]
fn a_wildcard_listener_replies_from_the_address_the_client_sent_to() {
    let echo = UdpEcho::start("127.0.0.1:0".parse().unwrap());
    let port = fixed_port();
    let b = echo.addr.to_string();
    let _lb = Lb::start_on(
        SocketAddr::from(([0, 0, 0, 0], port)),
        &["--protocol", "udp", "--backend", &b],
    );
    let client = client_on(Ipv4Addr::LOCALHOST.into());
    for dst in ["127.0.0.2", "127.0.0.1", "127.3.4.5"] {
        let to = SocketAddr::new(dst.parse().unwrap(), port);
        let (back, from) = echo_through(&client, to, dst.as_bytes());
        assert_eq!(back, dst.as_bytes());
        assert_eq!(
            from, to,
            "the reply to a datagram sent to {to} came from {from}"
        );
    }
}

#[test]
fn two_instances_send_the_same_clients_to_the_same_backends_with_maglev() {
    let servers = three_servers();
    let flags = backend_flags(&servers);
    let lbs: Vec<Lb> = (0..2)
        .map(|_| {
            let mut args: Vec<&str> = vec!["--protocol", "udp", "--algorithm", "maglev"];
            args.extend(flags.iter().map(String::as_str));
            Lb::start(&args)
        })
        .collect();
    let mut seen = BTreeMap::new();
    for i in 1..=64u8 {
        let client = client_on(Ipv4Addr::new(127, 0, 9, i).into());
        let a = ask(&client, lbs[0].addr, 1, ANSWER).expect("answer from the first");
        let b = ask(&client, lbs[1].addr, 2, ANSWER).expect("answer from the second");
        assert_eq!(a, b, "client 127.0.9.{i} went to different backends");
        // A new source port of the same client IP goes to the same backend too.
        let again = client_on(Ipv4Addr::new(127, 0, 9, i).into());
        assert_eq!(ask(&again, lbs[1].addr, 3, ANSWER), Some(a));
        *seen.entry(a).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "64 clients over 3 backends: {seen:?}");
}

fn config_file(tag: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("uringlb-udp-{tag}-{}.toml", std::process::id()));
    write_atomic(&p, text);
    p
}

#[test]
fn a_tcp_and_a_udp_service_share_a_listen_address() {
    let dns = Dnsmasq::start(Ipv4Addr::new(10, 0, 0, 7), false);
    let tcp = uringlb_bench::NameServer::start("127.0.0.1:0", "web").expect("name server");
    let addr = free_addr();
    let text = format!(
        "[[service]]\nname = \"web\"\nlisten = \"{addr}\"\n[[service.backend]]\naddr = \"{}\"\n\n\
         [[service]]\nname = \"dns\"\nprotocol = \"udp\"\nlisten = \"{addr}\"\nudp_responses = 1\n\
         [[service.backend]]\naddr = \"{}\"\n",
        tcp.addr(),
        dns.addr
    );
    let path = config_file("shared", &text);
    let (lb, admin) = start_services_with_admin(addr, &["-c", path.to_str().unwrap()]);
    // The UDP service's series are there before its first datagram, the TCP one has none.
    let udp_series = |admin: &Admin| -> Vec<(String, String, f64)> {
        let m = admin.metrics();
        let mut all = Vec::new();
        for name in [
            "uringlb_udp_flows_active",
            "uringlb_udp_flows_total",
            "uringlb_udp_datagrams_total",
            "uringlb_udp_bytes_total",
            "uringlb_udp_evictions_total",
            "uringlb_udp_drops_total",
        ] {
            for (labels, v) in m.all(name) {
                all.push((name.to_string(), labels["service"].clone(), v));
            }
        }
        all
    };
    let before = udp_series(&admin);
    assert_eq!(before.len(), 1 + 1 + 2 + 2 + 1 + 7, "{before:?}");
    assert!(
        before.iter().all(|(_, s, v)| s == "dns" && *v == 0.0),
        "{before:?}"
    );
    assert_eq!(greet_once(lb.addr).as_deref(), Ok("web"));
    let client = client_on(Ipv4Addr::LOCALHOST.into());
    assert_eq!(ask(&client, lb.addr, 9, ANSWER), Some(dns.answer));
    wait_metric(
        &admin,
        "uringlb_udp_datagrams_total",
        &[("service", "dns"), ("direction", "backend_to_client")],
        |v| v == 1.0,
    );
    let after = udp_series(&admin);
    assert_eq!(after.len(), before.len(), "{after:?}");
    assert!(after.iter().all(|(_, s, _)| s == "dns"), "{after:?}");
    let services = admin.get("/services").json();
    let protocols: Vec<(String, String)> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["protocol"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        protocols,
        vec![("web".into(), "tcp".into()), ("dns".into(), "udp".into())]
    );
}

/// A listen address loops back only for backends of its own protocol: a UDP backend at a
/// TCP service's listen address (and the other way round) is another socket, accepted by
/// the file and by the admin API; the same address and protocol is still refused. A UDP
/// backend takes no PROXY header from the admin API, as from the file.
#[test]
fn own_listen_addresses_loop_only_within_their_protocol() {
    let (web, dns) = (free_addr(), free_addr());
    let text = format!(
        "[[service]]\nname = \"web\"\nlisten = \"{web}\"\nbackend = [{{ addr = \"{dns}\" }}]\n\n\
         [[service]]\nname = \"dns\"\nprotocol = \"udp\"\nlisten = \"{dns}\"\n\
         backend = [{{ addr = \"{web}\" }}]\n"
    );
    let path = config_file("own-listen", &text);
    let (st, out, err) = run_bin(&["--check", "-c", path.to_str().unwrap()]);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    let (_lb, admin) = start_services_with_admin(web, &["-c", path.to_str().unwrap()]);
    let add = |service: &str, body: String| {
        admin.req(
            "POST",
            &format!("/services/{service}/backends"),
            Some(&body),
        )
    };
    let r = add("dns", format!(r#"{{"addr": "{web}", "name": "again"}}"#));
    assert_eq!(r.status, 201, "{r:?}");
    let r = add("web", format!(r#"{{"addr": "{dns}", "name": "again"}}"#));
    assert_eq!(r.status, 201, "{r:?}");
    for (service, addr) in [("dns", dns), ("web", web)] {
        let r = add(service, format!(r#"{{"addr": "{addr}", "name": "self"}}"#));
        assert_eq!(r.status, 400, "{service}: {r:?}");
        assert!(r.body.contains("own listen address"), "{service}: {r:?}");
    }
    let r = add(
        "dns",
        r#"{"addr": "127.0.0.1:53", "proxy_protocol": "v2"}"#.to_string(),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("cannot send PROXY headers"), "{r:?}");
    let names = |service: &str| -> Vec<String> {
        let r = admin.get(&format!("/services/{service}/backends"));
        let all = r.json();
        let list = all.as_array().expect("an array");
        list.iter()
            .map(|b| b["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("dns"), vec![web.to_string(), "again".to_string()]);
    assert_eq!(names("web"), vec![dns.to_string(), "again".to_string()]);
}

#[test]
fn settings_a_udp_service_cannot_honour_are_refused() {
    let check =
        |args: &[&str]| run_bin(&[&["--check", "--backend", "127.0.0.1:53"], args].concat());
    let (st, _, err) = check(&["--protocol", "udp", "--health", "http:/up"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains("an HTTP check cannot test a UDP service"),
        "{err}"
    );
    let (st, _, err) = check(&["--health", "dns:example.com"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("dns:NAME checks UDP services"), "{err}");
    let (st, _, err) = check(&["--protocol", "udp", "--proxy-protocol", "v2"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("cannot send PROXY headers"), "{err}");
    let (st, _, err) = check(&["--protocol", "sctp"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("expected tcp or udp"), "{err}");
    let (st, _, err) = check(&["--protocol", "udp", "--max-flows", "0"]);
    assert_eq!(st.code(), Some(2), "{err}");
    let (st, _, err) = check(&["--protocol", "udp", "--health", "dns:"]);
    assert_eq!(st.code(), Some(2), "{err}");
    let (st, out, err) = check(&[
        "--protocol",
        "udp",
        "--health",
        "dns:svc.test",
        "--udp-responses",
        "1",
    ]);
    assert_eq!(st.code(), Some(0), "{out}{err}");
}

/// Starts a balancer on the file `file(a)` makes, opens a flow to `a` (answered), then
/// rewrites the file as `file(b)` and reloads it, until every worker routes with it.
fn open_then_reload(
    addr: SocketAddr,
    tag: &str,
    file: &dyn Fn(SocketAddr) -> String,
    a: &Dnsmasq,
    b: &Dnsmasq,
) -> (Lb, Admin, UdpSocket) {
    let path = config_file(tag, &file(a.addr));
    let (lb, admin) = start_services_with_admin(addr, &["-c", path.to_str().unwrap()]);
    let client = client_on(Ipv4Addr::LOCALHOST.into());
    assert_eq!(ask(&client, lb.addr, 1, ANSWER), Some(a.answer));
    write_atomic(&path, &file(b.addr));
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.status, 200, "{r:?}");
    admin.wait_settled();
    (lb, admin, client)
}

#[test]
fn reload_sends_new_flows_to_the_new_backends_while_open_flows_finish() {
    let a = Dnsmasq::start(Ipv4Addr::new(10, 0, 1, 1), false);
    let b = Dnsmasq::start(Ipv4Addr::new(10, 0, 1, 2), false);
    let addr = free_addr();
    let file = |backend: SocketAddr| {
        format!(
            "[[service]]\nname = \"dns\"\nprotocol = \"udp\"\nlisten = \"{addr}\"\nhealth = \"none\"\n\
             [[service.backend]]\naddr = \"{backend}\"\n"
        )
    };
    let (lb, _admin, open) = open_then_reload(addr, "reload", &file, &a, &b);
    // The open flow keeps its backend; a new client gets the new one.
    assert_eq!(ask(&open, lb.addr, 2, ANSWER), Some(a.answer));
    let new = client_on(Ipv4Addr::LOCALHOST.into());
    assert_eq!(ask(&new, lb.addr, 3, ANSWER), Some(b.answer));
}

/// A flow that keeps sending does not keep a removed backend: at the backend's drain
/// deadline (`grace`) the flow is cut, and the client's next query opens a flow to the
/// backend that stays; the removed one then leaves the table.
#[test]
fn a_removed_backends_flows_end_at_its_drain_deadline() {
    let a = Dnsmasq::start(Ipv4Addr::new(10, 0, 3, 1), false);
    let b = Dnsmasq::start(Ipv4Addr::new(10, 0, 3, 2), false);
    let addr = free_addr();
    let file = |backend: SocketAddr| {
        format!(
            "grace = \"1s\"\n[[service]]\nname = \"dns\"\nprotocol = \"udp\"\nlisten = \"{addr}\"\n\
             health = \"none\"\n[[service.backend]]\nname = \"{}\"\naddr = \"{backend}\"\n",
            backend.port()
        )
    };
    let (lb, admin, client) = open_then_reload(addr, "drain-deadline", &file, &a, &b);
    let mut id = 2;
    assert_eq!(ask(&client, lb.addr, id, ANSWER), Some(a.answer));
    // The client never stops sending; within the deadline (and a tick) it moves to b.
    poll(Duration::from_secs(10), || {
        id += 1;
        (ask(&client, lb.addr, id, ANSWER) == Some(b.answer)).then_some(())
    })
    .unwrap_or_else(|| panic!("the flow stayed on the removed backend\n{}", lb.log_text()));
    let gone = a.addr.port().to_string();
    poll(Duration::from_secs(10), || {
        let names: Vec<String> = admin
            .get("/services/dns/backends")
            .json()
            .as_array()
            .expect("an array")
            .iter()
            .map(|b| b["name"].as_str().unwrap_or_default().to_string())
            .collect();
        (!names.contains(&gone)).then_some(())
    })
    .expect("the removed backend left the table");
}

/// One access-log line per ended flow, each ending by a real cause: answered (`closed`),
/// idle (`idle_timeout`), pushed out by a newer flow at `max_flows` (`evicted`), refused by
/// the backend's ICMP error (`reset`), cut at the end of the grace period (`drained`);
/// with the client, the listen address, the backend and the payload bytes each way.
#[test]
fn every_ended_flow_is_one_access_log_line_with_its_cause() {
    let echo = UdpEcho::start("127.0.0.1:0".parse().unwrap());
    let refusing = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let service = |name: &str, listen: SocketAddr, backend: SocketAddr, extra: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nprotocol = \"udp\"\nlisten = \"{listen}\"\n\
             health = \"none\"\n{extra}\n[[service.backend]]\nname = \"b\"\naddr = \"{backend}\"\n\n"
        )
    };
    let text = [
        "grace = \"1s\"\n".to_string(),
        service("answered", addrs[0], echo.addr, "udp_responses = 1"),
        service("idle", addrs[1], echo.addr, "udp_idle_timeout = \"300ms\""),
        service("full", addrs[2], echo.addr, "max_flows = 1"),
        service("refused", addrs[3], refusing, ""),
    ]
    .concat();
    let path = config_file("access-log", &text);
    let log = TempLog::new("udp-flows");
    let mut lb = Lb::start_services(
        addrs[0],
        &[
            "-c",
            path.to_str().unwrap(),
            "--workers",
            "1",
            "--access-log",
            &log.arg(),
        ],
    );
    let clients: Vec<UdpSocket> = (0..5)
        .map(|_| client_on(Ipv4Addr::LOCALHOST.into()))
        .collect();
    let payload = b"twelve bytes";
    let echoes = |c: &UdpSocket, to: SocketAddr| {
        let (back, from) = echo_through(c, to, payload);
        assert_eq!((back.as_slice(), from), (&payload[..], to));
    };
    echoes(&clients[0], addrs[0]);
    echoes(&clients[1], addrs[1]);
    echoes(&clients[1], addrs[1]);
    echoes(&clients[2], addrs[2]);
    echoes(&clients[3], addrs[2]); // the service's one flow is now this one
    clients[4].send_to(payload, addrs[3]).unwrap();
    let lines = wait_json_lines(&log.0, 4);
    assert_eq!(lines.len(), 4, "{lines:?}");
    lb.signal(libc::SIGTERM);
    let st = lb
        .wait_exit(Duration::from_secs(20))
        .expect("exits after grace");
    assert!(st.success(), "{st}\n{}", lb.log_text());
    let lines = wait_json_lines(&log.0, 5);
    let by_client: BTreeMap<String, LogLine> = lines
        .into_iter()
        .map(|l| (l.client.clone().expect("client"), l))
        .collect();
    let n = payload.len() as u64;
    let want = [
        (0, "answered", addrs[0], echo.addr, n, n, "closed"),
        (1, "idle", addrs[1], echo.addr, 2 * n, 2 * n, "idle_timeout"),
        (2, "full", addrs[2], echo.addr, n, n, "evicted"),
        (3, "full", addrs[2], echo.addr, n, n, "drained"),
        (4, "refused", addrs[3], refusing, n, 0, "reset"),
    ];
    for (i, service, listen, backend, bytes_in, bytes_out, result) in want {
        let client = clients[i].local_addr().unwrap().to_string();
        let l = by_client
            .get(&client)
            .unwrap_or_else(|| panic!("no line for client {i} ({client}): {by_client:?}"));
        let got = (
            l.service.as_str(),
            l.listen.clone(),
            l.backend.as_deref(),
            l.backend_addr.clone(),
            (l.bytes_in, l.bytes_out),
            l.result.as_str(),
        );
        let expected = (
            service,
            listen.to_string(),
            Some("b"),
            Some(backend.to_string()),
            (bytes_in, bytes_out),
            result,
        );
        assert_eq!(got, expected, "client {i}: {l:?}");
        assert_eq!((l.sni.as_deref(), l.connect_ms, l.retries), (None, None, 0));
        check_ts(&l.ts);
    }
    assert_eq!(by_client.len(), 5, "{by_client:?}");
}

#[test]
fn a_graceful_stop_serves_open_flows_and_takes_no_new_ones() {
    let dns = Dnsmasq::start(Ipv4Addr::new(10, 0, 2, 1), false);
    let b = dns.addr.to_string();
    let mut lb = Lb::start(&[
        "--protocol",
        "udp",
        "--backend",
        &b,
        "--udp-idle-timeout",
        "2s",
        "--grace",
        "30s",
        "--workers",
        "1",
    ]);
    let open = client_on(Ipv4Addr::LOCALHOST.into());
    assert_eq!(ask(&open, lb.addr, 1, ANSWER), Some(dns.answer));
    lb.signal(libc::SIGTERM);
    lb.wait_log(&["stopping"], 1, Duration::from_secs(10));
    // The open flow is still served while it stays active.
    assert_eq!(ask(&open, lb.addr, 2, ANSWER), Some(dns.answer));
    // A new client is not.
    let new = client_on(Ipv4Addr::LOCALHOST.into());
    assert_eq!(ask(&new, lb.addr, 3, Duration::from_millis(500)), None);
    // Once the flow has been idle for its timeout the balancer exits, well within grace.
    let st = lb
        .wait_exit(Duration::from_secs(20))
        .expect("exit after the last flow");
    assert!(st.success(), "{st}\n{}", lb.log_text());
}

#[test]
fn a_reload_can_turn_a_tcp_service_into_a_udp_one() {
    let dns = Dnsmasq::start(Ipv4Addr::new(10, 0, 3, 1), false);
    let tcp = uringlb_bench::NameServer::start("127.0.0.1:0", "web").expect("name server");
    let addr = free_addr();
    let file = |protocol: &str, backend: SocketAddr| {
        format!(
            "[[service]]\nname = \"svc\"\nprotocol = \"{protocol}\"\nlisten = \"{addr}\"\nhealth = \"none\"\n\
             [[service.backend]]\naddr = \"{backend}\"\n"
        )
    };
    let path = config_file("switch", &file("tcp", tcp.addr()));
    let (lb, admin) = start_services_with_admin(addr, &["-c", path.to_str().unwrap()]);
    assert_eq!(greet_once(lb.addr).as_deref(), Ok("web"));
    write_atomic(&path, &file("udp", dns.addr));
    assert_eq!(admin.req("POST", "/reload", None).status, 200);
    admin.wait_settled();
    let client = client_on(Ipv4Addr::LOCALHOST.into());
    assert_eq!(ask(&client, lb.addr, 1, ANSWER), Some(dns.answer));
    // The TCP listeners of the service are closed.
    wait_until(
        "the TCP listeners to close",
        Duration::from_secs(10),
        || std::net::TcpStream::connect(lb.addr).is_err(),
    );
    assert_eq!(admin.get("/services").json()[0]["protocol"], "udp");
}

#[test]
fn a_denied_client_gets_no_answer() {
    let dns = Dnsmasq::start(Ipv4Addr::new(10, 0, 4, 1), false);
    let b = dns.addr.to_string();
    let (lb, admin) =
        start_with_admin(&["--protocol", "udp", "--backend", &b, "--deny", "127.0.0.5"]);
    let denied = client_on("127.0.0.5".parse().unwrap());
    assert_eq!(ask(&denied, lb.addr, 1, Duration::from_millis(500)), None);
    let allowed = client_on(Ipv4Addr::LOCALHOST.into());
    assert_eq!(ask(&allowed, lb.addr, 2, ANSWER), Some(dns.answer));
    let labels = [("service", "default"), ("reason", "denied")];
    wait_metric(&admin, "uringlb_udp_drops_total", &labels, |v| v == 1.0);
}

/// A UDP service of one worker, without health checks, in front of one echo backend.
fn behind_one_echo(extra: &[&str]) -> (UdpEcho, Lb, Admin) {
    let echo = UdpEcho::start("127.0.0.1:0".parse().unwrap());
    let b = echo.addr.to_string();
    let mut args = vec!["--protocol", "udp", "--backend", &b, "--health", "none"];
    args.extend(["--workers", "1"]);
    args.extend_from_slice(extra);
    let (lb, admin) = start_with_admin(&args);
    (echo, lb, admin)
}

/// `max_conns_per_source` counts a source's open flows, whatever their ports: the flow one
/// over is dropped and counted, and pushes no other flow out; another source is not held
/// back; flows that end give their places back.
#[test]
fn per_source_limits_count_a_sources_flows() {
    let (_echo, lb, admin) =
        behind_one_echo(&["--max-conns-per-source", "2", "--udp-idle-timeout", "3s"]);
    let payload = b"limit me";
    let one: Vec<UdpSocket> = (0..3)
        .map(|_| client_on(Ipv4Addr::LOCALHOST.into()))
        .collect();
    assert!(echoed(&one[0], lb.addr, payload, ANSWER));
    assert!(echoed(&one[1], lb.addr, payload, ANSWER));
    assert!(!echoed(
        &one[2],
        lb.addr,
        payload,
        Duration::from_millis(300)
    ));
    let other = client_on(Ipv4Addr::new(127, 0, 0, 2).into());
    assert!(echoed(&other, lb.addr, payload, ANSWER));
    let svc = [("service", "default")];
    let refused = [("service", "default"), ("reason", "max_conns_per_source")];
    wait_metric(&admin, "uringlb_udp_drops_total", &refused, |v| v == 1.0);
    wait_metric(&admin, "uringlb_udp_flows_active", &svc, |v| v == 3.0);
    assert_eq!(udp_metric(&admin, "uringlb_udp_evictions_total", &svc), 0.0);
    // The flows end idle: the source may open new ones.
    wait_metric(&admin, "uringlb_udp_flows_active", &svc, |v| v == 0.0);
    assert!(echoed(&one[2], lb.addr, payload, ANSWER));
    assert_eq!(udp_metric(&admin, "uringlb_udp_drops_total", &refused), 1.0);
}

/// `max_conn_rate_per_source` counts a source's new flows per second: of new flows sent
/// back to back, those over the rate are dropped and counted.
#[test]
fn the_per_source_rate_counts_new_flows() {
    let (_echo, lb, admin) = behind_one_echo(&["--max-conn-rate-per-source", "2"]);
    let clients: Vec<UdpSocket> = (0..6)
        .map(|_| client_on(Ipv4Addr::new(127, 0, 0, 3).into()))
        .collect();
    for c in &clients {
        c.send_to(b"quick", lb.addr).unwrap();
    }
    let refused = [
        ("service", "default"),
        ("reason", "max_conn_rate_per_source"),
    ];
    // Every datagram either opened a flow or was dropped; a few were dropped (2 a second
    // let through, 6 sent well within one).
    let (flows, dropped) = poll(Duration::from_secs(10), || {
        let m = admin.metrics();
        let flows = m.value("uringlb_udp_flows_total", &[("service", "default")]);
        let dropped = m.value("uringlb_udp_drops_total", &refused);
        (flows + dropped == 6.0).then_some((flows, dropped))
    })
    .expect("every datagram counted as a flow or a drop");
    assert!(
        dropped >= 1.0 && flows >= 2.0,
        "{flows} flows, {dropped} dropped"
    );
}

/// Sends `payload` to `to` and waits at most `timeout` for it to come back (echoes of
/// earlier tries are skipped).
fn echoed(client: &UdpSocket, to: SocketAddr, payload: &[u8], timeout: Duration) -> bool {
    client.set_read_timeout(Some(timeout)).unwrap();
    if client.send_to(payload, to).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    while let Ok(n) = client.recv(&mut buf) {
        if &buf[..n] == payload {
            return true;
        }
    }
    false
}

#[test]
fn a_replaced_worker_carries_on_the_udp_counts() {
    let echo = UdpEcho::start("127.0.0.1:0".parse().unwrap());
    let b = echo.addr.to_string();
    let admin_addr = free_addr();
    let a = admin_addr.to_string();
    let args = [
        "--protocol",
        "udp",
        "--backend",
        &b,
        "--workers",
        "1",
        "--health",
        "none",
        "--admin",
        &a,
    ];
    let lb = Lb::start_with_env(&args, &[("URINGLB_TEST_FAIL_WORKER", "0:30")]);
    wait_admin(admin_addr);
    let admin = Admin::new(admin_addr);
    let client = client_on(Ipv4Addr::LOCALHOST.into());
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut exchange = |timeout| {
        sent += 1;
        let ok = echoed(&client, lb.addr, &sent.to_be_bytes(), timeout);
        answered += u64::from(ok);
        ok
    };
    wait_until("the worker replaced", Duration::from_secs(30), || {
        exchange(Duration::from_millis(200));
        admin.metrics().value("uringlb_worker_restarts_total", &[]) >= 1.0
    });
    for _ in 0..20 {
        assert!(exchange(ANSWER), "the new worker forwards");
    }
    assert!(lb.log_text().contains("worker failed"), "{}", lb.log_text());
    // Every answer the client got was counted once each way, before and after the
    // replacement: the counters went on, they did not start again from 0.
    for dir in ["client_to_backend", "backend_to_client"] {
        let labels = [("service", "default"), ("direction", dir)];
        let v = wait_metric(&admin, "uringlb_udp_datagrams_total", &labels, |v| {
            v >= answered as f64
        });
        assert!(
            v <= sent as f64,
            "{dir}: {v} datagrams counted, {sent} sent"
        );
    }
    println!("{sent} sent, {answered} answered across the replacement");
}
