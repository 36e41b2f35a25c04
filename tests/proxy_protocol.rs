//! The PROXY protocol end to end, against real peers: the balancer's headers are read by a
//! real NGINX (`listen ... proxy_protocol`), a real HAProxy's `send-proxy` / `send-proxy-v2`
//! headers are read by the balancer (`--accept-proxy`), and the address they carry is the
//! one hashing, the next header and the backend see. Malformed, truncated, stalled, split,
//! untrusted and LOCAL headers, byte by byte, with a backend that records what it got.
//!
//! NGINX and HAProxy come from Debian's packages (`./scripts/install-test-deps.sh`); they run
//! as children of the test with their own config in a temp dir (tests/util/peers.rs).

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use uringlb_bench::{EchoServer, NameServer};

use util::*;

/// One record from a recording backend, waited for.
fn next_record(rx: &Receiver<Vec<u8>>) -> Vec<u8> {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the backend received a connection")
}

/// Sends `data` through an established connection to an echo backend and checks every byte
/// comes back (in a reader thread, so a large transfer cannot deadlock on full buffers).
fn echo_check(s: &mut TcpStream, data: &[u8]) {
    let mut r = s.try_clone().unwrap();
    let len = data.len();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; len];
        r.read_exact(&mut got).map(|_| got)
    });
    s.write_all(data).expect("write");
    let got = reader.join().unwrap().expect("read the echo");
    assert!(got == data, "echo differs ({len} bytes)");
}

fn rejected(admin: &Admin, reason: &str) -> f64 {
    admin
        .metrics()
        .value("uringlb_rejected_total", &[("reason", reason)])
}

// ---- a. the balancer's header, read by NGINX -----------------------------------------------

#[test]
fn nginx_sees_the_client_address_in_v1_and_v2_headers() {
    let nginx = nginx(
        "proxy_protocol",
        &[
            r#"return 200 "one $proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port\n";"#,
            r#"return 200 "two $proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port\n";"#,
        ],
    );
    for (version, server, tag, src) in
        [("v1", 0, "one", "127.0.0.7"), ("v2", 1, "two", "127.0.0.8")]
    {
        let backend = nginx.addr(server).to_string();
        let lb = Lb::start(&[
            "--backend",
            &backend,
            "--proxy-protocol",
            version,
            "--workers",
            "2",
            "--health",
            "none",
        ]);
        for _ in 0..3 {
            let s = connect_from(src, lb.addr);
            let client = s.local_addr().unwrap();
            assert_eq!(client.ip().to_string(), src);
            let (status, body) = http_get(s);
            assert_eq!(status, 200, "{version}: {body}\n{}", nginx.logs());
            assert_eq!(
                body,
                format!(
                    "{tag} {} {} {} {}\n",
                    client.ip(),
                    client.port(),
                    lb.addr.ip(),
                    lb.addr.port()
                ),
                "{version}: NGINX read the client's address and the balancer's listen address"
            );
        }
    }
}

// ---- b. per-backend proxy-protocol ----------------------------------------------------------

#[test]
fn per_backend_header_only_to_the_backend_that_asked() {
    let (with_addr, with_rx) = recorder();
    let (plain_addr, plain_rx) = recorder();
    let lb = Lb::start(&[
        "--backend",
        &format!("{with_addr},name=with,proxy-protocol=v2"),
        "--backend",
        &format!("{plain_addr},name=plain"),
        "--workers",
        "1",
        "--health",
        "none",
    ]);
    // Four connections, one at a time: round robin gives each backend two.
    let mut clients = BTreeMap::new();
    for i in 0..4 {
        let s = connect_from("127.0.0.1", lb.addr);
        let payload = format!("payload-{i}-").repeat(100).into_bytes();
        clients.insert(payload.clone(), s.local_addr().unwrap());
        send_and_finish(s, &payload);
    }
    let mut with = 0;
    while let Ok(rec) = with_rx.recv_timeout(Duration::from_millis(500)) {
        let (src, dst, rest) = parse_v2(&rec);
        let client = clients
            .get(rest)
            .unwrap_or_else(|| panic!("unknown payload after the header: {rest:?}"));
        assert_eq!(src, *client, "the header carries the client's address");
        assert_eq!(dst, lb.addr, "and the address it connected to");
        with += 1;
    }
    let mut plain = 0;
    while let Ok(rec) = plain_rx.recv_timeout(Duration::from_millis(100)) {
        assert!(
            clients.contains_key(&rec),
            "the other backend gets exactly the client's bytes, no header: {:?}",
            &rec[..rec.len().min(40)]
        );
        plain += 1;
    }
    assert_eq!((with, plain), (2, 2));
}

#[test]
fn backend_added_by_the_admin_api_gets_its_header() {
    let (plain_addr, plain_rx) = recorder();
    let (with_addr, with_rx) = recorder();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &format!("{plain_addr},name=plain"),
        "--workers",
        "1",
        "--health",
        "none",
    ]);
    let bad = admin.req(
        "POST",
        "/backends",
        Some(&format!(
            r#"{{"addr": "{with_addr}", "name": "with", "proxy_protocol": "v3"}}"#
        )),
    );
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.body.contains("v1 or v2"), "{bad:?}");
    let added = admin.req(
        "POST",
        "/backends",
        Some(&format!(
            r#"{{"addr": "{with_addr}", "name": "with", "proxy_protocol": "v2"}}"#
        )),
    );
    assert!(added.status / 100 == 2, "{added:?}");
    let maint = admin.req("PATCH", "/backends/plain", Some(r#"{"state": "maint"}"#));
    assert_eq!(maint.status, 200, "{maint:?}");
    let s = connect_from("127.0.0.1", lb.addr);
    let client = s.local_addr().unwrap();
    send_and_finish(s, b"after the header");
    let rec = next_record(&with_rx);
    let (src, dst, rest) = parse_v2(&rec);
    assert_eq!(
        (src, dst, rest),
        (client, lb.addr, &b"after the header"[..])
    );
    assert!(
        plain_rx.try_recv().is_err(),
        "nothing went to the backend in maint"
    );
}

// ---- c. HAProxy -> uringlb -> NGINX ---------------------------------------------------------

#[test]
fn haproxy_header_is_read_and_passed_on_to_nginx() {
    let nginx = nginx(
        "proxy_protocol",
        &[
            r#"return 200 "$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port\n";"#,
        ],
    );
    let backend = nginx.addr(0).to_string();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &backend,
        "--accept-proxy",
        "127.0.0.1/32",
        "--proxy-protocol",
        "v1",
        "--workers",
        "2",
        "--health",
        "none",
    ]);
    let haproxy = haproxy(lb.addr, &["send-proxy-v2", "send-proxy"]);
    for (i, how) in ["send-proxy-v2", "send-proxy"].iter().enumerate() {
        let front = haproxy.addr(i);
        for _ in 0..3 {
            let s = connect_from("127.0.0.9", front);
            let client = s.local_addr().unwrap();
            let (status, body) = http_get(s);
            assert_eq!(
                status,
                200,
                "{how}: {body}\n{}\n{}\n{}",
                haproxy.logs(),
                nginx.logs(),
                lb.log_text()
            );
            assert_eq!(
                body,
                format!("127.0.0.9 {} 127.0.0.1 {}\n", client.port(), front.port()),
                "{how}: NGINX saw the client HAProxy saw (and the address it connected to)"
            );
        }
    }
    assert_eq!(rejected(&admin, "bad_proxy_header"), 0.0);
}

// ---- d. hashing uses the header's address ----------------------------------------------------

#[test]
fn hashing_uses_the_address_in_the_header() {
    let names: Vec<NameServer> = (0..3)
        .map(|i| NameServer::start("127.0.0.1:0", &format!("n{i}")).unwrap())
        .collect();
    for algorithm in ["source-hash", "maglev"] {
        let mut args: Vec<String> = names
            .iter()
            .flat_map(|n| {
                [
                    "--backend".to_string(),
                    format!("{},name={}", n.addr(), n.name()),
                ]
            })
            .collect();
        for a in [
            "--accept-proxy",
            "127.0.0.1",
            "--algorithm",
            algorithm,
            "--workers",
            "2",
            "--health",
            "none",
        ] {
            args.push(a.to_string());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let lb = Lb::start(&a);
        let dst: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for round in 0..3u16 {
            for i in 0..64u16 {
                let ip = format!("10.{}.{}.{}", i % 7, i / 4, 1 + i * 3);
                let src = SocketAddr::new(ip.parse().unwrap(), 1024 + round * 1000 + i);
                // Every connection comes from 127.0.0.1 with a new port; only the header differs.
                let header = if round == 1 {
                    v2(src, dst)
                } else {
                    v1(src, dst)
                };
                let mut s = lb.connect();
                s.write_all(&header).unwrap();
                let name = read_line(&mut s);
                assert!(!name.is_empty(), "{algorithm}: {ip}: no greeting");
                seen.entry(ip).or_default().insert(name);
            }
        }
        let mut spread: BTreeMap<String, usize> = BTreeMap::new();
        for (ip, backends) in &seen {
            assert_eq!(
                backends.len(),
                1,
                "{algorithm}: {ip} reached {backends:?} on different connections"
            );
            *spread
                .entry(backends.iter().next().unwrap().clone())
                .or_default() += 1;
        }
        println!("{algorithm}: 64 header addresses over backends {spread:?}");
        assert_eq!(seen.len(), 64);
        assert_eq!(
            spread.len(),
            3,
            "{algorithm}: the 64 addresses reach all 3 backends: {spread:?}"
        );
    }
}

// ---- e. malformed headers from a trusted source ---------------------------------------------

#[test]
fn malformed_header_closes_only_that_connection_and_is_counted() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let backend = echo.addr().to_string();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &backend,
        "--accept-proxy",
        "127.0.0.1",
        "--workers",
        "2",
        "--health",
        "none",
    ]);
    // A good client first, kept open.
    let mut good = lb.connect();
    let src: SocketAddr = "198.51.100.4:5000".parse().unwrap();
    good.write_all(&v1(src, lb.addr)).unwrap();
    echo_check(&mut good, b"hello");
    wait_until("the good connection", Duration::from_secs(5), || {
        echo.connections() == 1
    });

    let mut v2_version3 = v2(src, lb.addr);
    v2_version3[12] = 0x31;
    let mut v2_bad_command = v2(src, lb.addr);
    v2_bad_command[12] = 0x23;
    let mut too_long = b"PROXY TCP4 ".to_vec();
    too_long.extend_from_slice(&[b'1'; 120]);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("missing fields", b"PROXY TCP4 1.2.3.4\r\n".to_vec()),
        (
            "TLS ClientHello",
            vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
        ),
        ("v2 version 3", v2_version3),
        ("v2 command 3", v2_bad_command),
        ("plain HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("bare LF", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec()),
        (
            "port 99999",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n".to_vec(),
        ),
        ("v1 line too long", too_long),
        ("lowercase", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec()),
    ];
    for (what, bytes) in &bad {
        let mut s = lb.connect();
        s.write_all(bytes).unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(5)).is_some(),
            "{what}: the connection was not closed"
        );
    }
    wait_until("the rejections counted", Duration::from_secs(5), || {
        rejected(&admin, "bad_proxy_header") >= bad.len() as f64
    });
    assert_eq!(rejected(&admin, "bad_proxy_header"), bad.len() as f64);
    // None of them reached the backend; the good one still works, byte-exact.
    echo_check(&mut good, &pattern(7, 1 << 20));
    assert_eq!(
        echo.connections(),
        1,
        "a malformed header reached a backend"
    );
    let m = admin.metrics();
    assert_eq!(m.sum("uringlb_connections_total"), 1.0);
}

// ---- f. truncated and stalled headers -------------------------------------------------------

#[test]
fn truncated_header_is_counted_and_a_stalled_one_times_out() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let backend = echo.addr().to_string();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &backend,
        "--accept-proxy",
        "127.0.0.1",
        "--idle-timeout",
        "1s",
        "--workers",
        "2",
        "--health",
        "none",
    ]);
    let src: SocketAddr = "203.0.113.9:4000".parse().unwrap();
    // Half a header, then the client closes.
    let halves = [v1(src, lb.addr), v2(src, lb.addr)].map(|h| h[..h.len() / 2].to_vec());
    for half in &halves {
        let mut s = lb.connect();
        s.write_all(half).unwrap();
        drop(s);
    }
    wait_until("truncated headers counted", Duration::from_secs(5), || {
        rejected(&admin, "bad_proxy_header") >= 2.0
    });
    assert_eq!(rejected(&admin, "bad_proxy_header"), 2.0);

    // Half a header (v1, v2) or nothing at all, then silence: closed by the idle timeout,
    // all three at once.
    let mut stalled: Vec<(String, TcpStream)> = Vec::new();
    for (i, half) in halves.iter().enumerate() {
        let mut s = lb.connect();
        s.write_all(half).unwrap();
        stalled.push((format!("half header {i}"), s));
    }
    stalled.push(("nothing".to_string(), lb.connect()));
    let start = Instant::now();
    let waiters: Vec<_> = stalled
        .into_iter()
        .map(|(what, mut s)| {
            std::thread::spawn(move || (what, closed_within(&mut s, Duration::from_secs(6))))
        })
        .collect();
    for w in waiters {
        let (what, closed) = w.join().unwrap();
        let after = closed.map(|_| start.elapsed());
        println!("stalled ({what}): closed after {after:?}");
        let after = after.unwrap_or_else(|| panic!("{what}: still open after 6 s"));
        assert!(
            after >= Duration::from_millis(900),
            "{what}: closed after {after:?}, before the 1 s idle timeout"
        );
        assert!(
            after <= Duration::from_secs(3),
            "{what}: closed only after {after:?} (idle timeout 1 s)"
        );
    }
    assert_eq!(echo.connections(), 0, "nothing reached the backend");
    // The three stalls count as bad headers too (HAProxy counts a handshake that times out).
    wait_until("stalled headers counted", Duration::from_secs(5), || {
        rejected(&admin, "bad_proxy_header") >= 5.0
    });
    assert_eq!(rejected(&admin, "bad_proxy_header"), 5.0);
}

// ---- g. split headers, early data -----------------------------------------------------------

#[test]
fn header_in_pieces_and_header_with_payload() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let backend = echo.addr().to_string();
    let lb = Lb::start(&[
        "--backend",
        &backend,
        "--accept-proxy",
        "127.0.0.1",
        "--workers",
        "2",
        "--health",
        "none",
    ]);
    let src: SocketAddr = "203.0.113.5:41000".parse().unwrap();
    let dst: SocketAddr = "198.51.100.1:443".parse().unwrap();
    // In three writes with pauses (TCP_NODELAY: three segments), cut inside the signature
    // or keyword, and inside the addresses. The pauses are the point: each piece arrives
    // on its own, so the balancer must wait for the rest of the header.
    for header in [v1(src, dst), v2(src, dst)] {
        let mut s = connect_from("127.0.0.1", lb.addr);
        let cuts = [4, header.len() - 7];
        s.write_all(&header[..cuts[0]]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(&header[cuts[0]..cuts[1]]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(&header[cuts[1]..]).unwrap();
        echo_check(&mut s, b"after a split header");
    }
    // Header and payload in one write: the payload's first bytes share the header's
    // segment (and, at 256 KiB, go on past the first read).
    for header in [v1(src, dst), v2(src, dst)] {
        let mut s = lb.connect();
        let payload = pattern(header.len() as u64, 256 << 10);
        let mut r = s.try_clone().unwrap();
        let len = payload.len();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; len];
            r.read_exact(&mut got).map(|_| got)
        });
        s.write_all(&[&header[..], &payload].concat()).unwrap();
        let got = reader.join().unwrap().expect("echo");
        assert!(got == payload, "payload after the header differs");
    }

    // Passed on: the backend sees our header, with the original header's addresses, then
    // the client's bytes exactly.
    for (incoming, outgoing) in [("v1", "v2"), ("v2", "v1"), ("v1-ipv6", "v2")] {
        let (rec, rx) = recorder();
        let rec = rec.to_string();
        let lb = Lb::start(&[
            "--backend",
            &rec,
            "--accept-proxy",
            "127.0.0.1",
            "--proxy-protocol",
            outgoing,
            "--workers",
            "1",
            "--health",
            "none",
        ]);
        let (src, dst): (SocketAddr, SocketAddr) = if incoming == "v1-ipv6" {
            (
                "[2001:db8::5]:41000".parse().unwrap(),
                "[2001:db8::1]:443".parse().unwrap(),
            )
        } else {
            (src, dst)
        };
        let header = if incoming == "v2" {
            v2(src, dst)
        } else {
            v1(src, dst)
        };
        let payload = pattern(99, 100_000);
        let s = lb.connect();
        send_and_finish(s, &[&header[..], &payload].concat());
        let got = next_record(&rx);
        let rest = if outgoing == "v2" {
            let (s2, d2, rest) = parse_v2(&got);
            assert_eq!((s2, d2), (src, dst), "{incoming} -> {outgoing}");
            rest
        } else {
            let line = v1(src, dst);
            assert!(
                got.starts_with(&line),
                "{incoming} -> {outgoing}: {:?}",
                String::from_utf8_lossy(&got[..got.len().min(80)])
            );
            &got[line.len()..]
        };
        assert!(
            rest == payload,
            "{incoming} -> {outgoing}: payload after our header differs ({} of {} bytes)",
            rest.len(),
            payload.len()
        );
    }
}

// ---- h. untrusted sources ---------------------------------------------------------------------

#[test]
fn header_from_an_untrusted_source_is_data() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let backend = echo.addr().to_string();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &backend,
        "--accept-proxy",
        "10.0.0.0/8",
        "--workers",
        "2",
        "--health",
        "none",
    ]);
    let src: SocketAddr = "10.1.2.3:1234".parse().unwrap();
    for header in [v1(src, lb.addr), v2(src, lb.addr)] {
        let mut s = connect_from("127.0.0.1", lb.addr);
        let data = [&header[..], b"and then data"].concat();
        echo_check(&mut s, &data);
    }
    assert_eq!(rejected(&admin, "bad_proxy_header"), 0.0);
    assert_eq!(echo.connections(), 2);
}

// ---- i. LOCAL and UNKNOWN --------------------------------------------------------------------

#[test]
fn v2_local_and_v1_unknown_use_the_connections_own_addresses() {
    let (rec, rx) = recorder();
    let rec = rec.to_string();
    let lb = Lb::start(&[
        "--backend",
        &rec,
        "--accept-proxy",
        "127.0.0.0/8",
        "--proxy-protocol",
        "v1",
        "--workers",
        "1",
        "--health",
        "none",
    ]);
    let fake: SocketAddr = "10.9.9.9:999".parse().unwrap();
    let block: Vec<u8> = v2(fake, fake)[16..].to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("v2 LOCAL", v2_local(0x00, &[])),
        ("v2 LOCAL with an address block", v2_local(0x11, &block)),
        ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec()),
        (
            "v1 UNKNOWN with addresses",
            b"PROXY UNKNOWN 10.9.9.9 10.9.9.9 999 999\r\n".to_vec(),
        ),
    ];
    for (what, header) in &cases {
        let s = connect_from("127.0.0.5", lb.addr);
        let client = s.local_addr().unwrap();
        send_and_finish(s, &[&header[..], b"local data"].concat());
        let got = next_record(&rx);
        let expected = [&v1(client, lb.addr)[..], b"local data"].concat();
        assert!(
            got == expected,
            "{what}: backend got {:?}, expected {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected)
        );
    }
}
