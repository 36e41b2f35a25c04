//! A `--config` path that is not a sane file, through the real binary: a FIFO, a directory,
//! a file over the size bound and a symlink to `/dev/zero`. On reload (SIGHUP and
//! `POST /reload`) each fails at once with a clear logged error, changes nothing, and the
//! balancer keeps serving and stops on SIGTERM; at start-up each is exit 2 with one line.
//! A host name in a reloaded file is resolved (off the control thread) as at start.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use uringlb::config_file::MAX_CONFIG_BYTES;
use uringlb_bench::NameServer;

use util::*;

/// A fresh directory for this test's files.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("uringlb-reload-files-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// The bad things a config path can name, each with the words its error must contain.
/// The FIFO comes first: before the fix it hung the reader, so a run of the old code stops
/// there rather than reading `/dev/zero` without limit.
const CASES: [(&str, &str); 4] = [
    ("fifo", "it is a FIFO, not a regular file"),
    ("dir", "it is a directory, not a regular file"),
    (
        "huge",
        "it is larger than 4194304 bytes, the most a config file may be",
    ),
    ("zero", "it is a character device, not a regular file"),
];

/// Makes `path` (which does not exist) the bad thing `case` names.
fn make(case: &str, path: &Path) {
    match case {
        "fifo" => nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo"),
        "dir" => std::fs::create_dir(path).expect("mkdir"),
        // Sparse: no disk space, but its size is over the bound.
        "huge" => std::fs::File::create(path)
            .and_then(|f| f.set_len(MAX_CONFIG_BYTES + 1))
            .expect("huge file"),
        "zero" => std::os::unix::fs::symlink("/dev/zero", path).expect("symlink"),
        other => panic!("unknown case {other}"),
    }
}

fn remove(path: &Path) {
    if path.is_dir() && !path.is_symlink() {
        std::fs::remove_dir(path).expect("rmdir");
    } else {
        std::fs::remove_file(path).expect("rm");
    }
}

fn error_lines(lb: &Lb, needle: &str) -> usize {
    lb.log_text()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains(needle))
        .count()
}

#[test]
fn reload_refuses_what_is_not_a_bounded_regular_file() {
    let a = NameServer::start("127.0.0.1:0", "a").unwrap();
    let b = NameServer::start("127.0.0.1:0", "b").unwrap();
    let dir = temp_dir("reload");
    let path = dir.join("lb.toml");
    let good = format!(
        "health = \"none\"\nworkers = 1\n[[backend]]\naddr = \"{}\"\nname = \"a\"\n",
        a.addr()
    );
    std::fs::write(&path, &good).unwrap();
    let p = path.to_str().unwrap();
    let (mut lb, admin) = start_with_admin(&["--config", p]);
    assert_eq!(greet_once(lb.addr).as_deref(), Ok("a"));

    for (i, (case, what)) in CASES.iter().enumerate() {
        remove(&path);
        make(case, &path);
        let needle = format!("SIGHUP: configuration not reloaded, nothing changed: {p}: cannot read config file: {what}");
        lb.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        while error_lines(&lb, &needle) < 1 {
            assert!(
                Instant::now() < deadline,
                "{case}: no '{needle}' logged: {}",
                lb.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = Instant::now();
        let r = admin.req("POST", "/reload", None);
        assert_eq!(r.status, 422, "{case}: {r:?}");
        assert!(r.error().contains(what), "{case}: {r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{case}: {:?}",
            started.elapsed()
        );
        // Nothing changed, and everything still works.
        assert!(admin.backends().keys().eq(["a"]), "{case}");
        assert_eq!(admin.get("/health").status, 200);
        assert_eq!(greet_once(lb.addr).as_deref(), Ok("a"));
        let m = admin.metrics();
        assert_eq!(
            m.value("uringlb_config_reloads_total", &[("result", "error")]),
            2.0 * (i + 1) as f64
        );
    }
    assert!(
        rss_kib(lb.pid()) < 512 * 1024,
        "RSS {} KiB",
        rss_kib(lb.pid())
    );

    // A good file again, with a host name: resolved and applied.
    remove(&path);
    let with_b = format!(
        "{good}[[backend]]\naddr = \"localhost:{}\"\nname = \"b\"\n",
        b.addr().port()
    );
    std::fs::write(&path, with_b).unwrap();
    let r = admin.req("POST", "/reload", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["added"], serde_json::json!(["b"]), "{r:?}");
    let seen: Vec<String> = (0..6)
        .map(|_| greet_once(lb.addr).expect("served"))
        .collect();
    assert!(seen.iter().any(|n| n == "b"), "{seen:?}");

    lb.signal(libc::SIGTERM);
    let st = lb
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit after SIGTERM: {}", lb.log_text()));
    assert!(st.success(), "{st}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn start_refuses_what_is_not_a_bounded_regular_file() {
    let dir = temp_dir("start");
    for (case, what) in CASES {
        let path = dir.join(format!("{case}.toml"));
        make(case, &path);
        let p = path.to_str().unwrap();
        let listen = free_addr().to_string();
        let mut child = Command::new(BIN)
            .args([
                "--listen",
                &listen,
                "--backend",
                "127.0.0.1:9",
                "--config",
                p,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{case}: still running after 10 s with --config {p}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(2), "{case}: {err}");
        assert_eq!(err.lines().count(), 1, "{case}: {err}");
        assert!(
            err.contains(&format!("{p}: cannot read config file: {what}")),
            "{case}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
