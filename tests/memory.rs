//! Idle connections give their buffer memory back: after a quiet second a proxied
//! connection costs its slot and kernel socket memory, not two 32 KiB buffers, and it
//! forwards byte-exact when it wakes up.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::*;

const CONNS: usize = 2000;

fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write");
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).expect("read echo");
    assert_eq!(got, msg, "echo differs");
}

#[test]
fn idle_connections_release_their_buffers_and_still_forward_exactly() {
    let (_echo, lb) = echo_behind_lb(&["--workers", "1", "--forward", "copy"]);
    let base = rss_kib(lb.pid());
    let mut conns = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let mut s = TcpStream::connect(lb.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // 40 KiB each way: more than one buffer, so every page of both is written.
        echo_once(&mut s, &pattern(i as u64, 40 * 1024));
        conns.push(s);
    }
    let busy = rss_kib(lb.pid());
    let busy_per_conn = (busy.saturating_sub(base)) * 1024 / CONNS as u64;
    // Buffers are reclaimed after a quiet second; poll for it.
    let per_conn = |rss: u64| rss.saturating_sub(base) * 1024 / CONNS as u64;
    let idle = poll(Duration::from_secs(10), || {
        let rss = rss_kib(lb.pid());
        (per_conn(rss) < 2048).then_some(rss)
    })
    .unwrap_or_else(|| rss_kib(lb.pid()));
    let idle_per_conn = idle.saturating_sub(base) * 1024 / CONNS as u64;
    eprintln!(
        "RSS per connection: {busy_per_conn} B after 40 KiB each way, {idle_per_conn} B idle"
    );
    // Setting up takes over a second, so the first connections may be reclaimed already.
    assert!(
        busy_per_conn > 16 * 1024,
        "the buffers were in use ({busy_per_conn} B per connection)"
    );
    assert!(
        idle_per_conn < 2048,
        "idle connections keep {idle_per_conn} B each (busy: {busy_per_conn} B)"
    );
    // Woken up, every connection forwards byte-exact again, in both directions.
    for (i, s) in conns.iter_mut().enumerate() {
        echo_once(s, &pattern(1_000_000 + i as u64, 40 * 1024));
    }
}

/// Many short connections leave nothing behind: the balancer's memory after 150 000 of them
/// is what it was after the first 10 000 (each closed connection used to leave its idle
/// timer in the wheel until the idle timeout, 16+ bytes each: memory grew with the
/// connection rate times the timeout).
#[test]
fn short_connections_leave_no_memory_behind() {
    let (_echo, lb) = echo_behind_lb(&["--workers", "1", "--idle-timeout", "10m"]);
    let addr = lb.addr;
    let run = |total: usize| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..total / 4 {
                        let mut s = TcpStream::connect(addr).expect("connect");
                        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        echo_once(&mut s, &pattern((t * total + i) as u64, 16));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("client thread");
        }
    };
    run(10_000);
    let warm = rss_kib(lb.pid());
    let start = Instant::now();
    run(150_000);
    let after = rss_kib(lb.pid());
    eprintln!(
        "VmRSS {warm} KiB after 10 000 connections, {after} KiB after 150 000 more ({:?})",
        start.elapsed()
    );
    assert!(
        after <= warm + 512,
        "memory grew by {} KiB over 150 000 short connections",
        after - warm
    );
}
