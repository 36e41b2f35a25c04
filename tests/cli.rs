//! The command line through the real binary: `--check`, bad input, config files.
//!
//! Every failure must be exit status 2 and exactly one line on stderr that names the
//! flag or the file:line:column (README "Flags").

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

fn uringlb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_uringlb"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the uringlb binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `args`, asserts status 0, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = uringlb(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "uringlb {args:?} failed; stderr: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `args`, asserts status 2 and one non-empty line on stderr, returns that line.
fn fails(args: &[&str]) -> String {
    let out = uringlb(args);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "uringlb {args:?}; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "uringlb {args:?}: want one line, got {stderr:?}"
    );
    assert!(
        !lines[0].trim().is_empty(),
        "uringlb {args:?}: empty error line"
    );
    assert!(
        !stderr.contains("panicked"),
        "uringlb {args:?} panicked: {stderr}"
    );
    lines[0].to_string()
}

fn assert_mentions(line: &str, needles: &[&str]) {
    for n in needles {
        assert!(line.contains(n), "{line:?} should mention {n:?}");
    }
}

/// A temporary TOML file, removed on drop.
struct TempToml(PathBuf);

impl TempToml {
    fn new(contents: &str) -> TempToml {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "uringlb-cli-test-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).expect("write temp config");
        TempToml(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempToml {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

const B: &str = "127.0.0.1:9001";

#[test]
fn unknown_flag() {
    let line = fails(&["--check", "--foo"]);
    assert_mentions(&line, &["'--foo'"]);
}

#[test]
fn bad_listen_address() {
    let line = fails(&["--check", "--listen", "nope", "-b", B]);
    assert_mentions(&line, &["--listen", "nope"]);
}

#[test]
fn bad_backend_address() {
    let line = fails(&["--check", "--backend", "1.2.3:x"]);
    assert_mentions(&line, &["--backend", "1.2.3:x", "port"]);
    let line = fails(&["--check", "--backend", "1.2.3:80"]);
    assert_mentions(&line, &["--backend", "1.2.3"]);
}

#[test]
fn weight_zero() {
    let line = fails(&["--check", "-b", "127.0.0.1:9001,weight=0"]);
    assert_mentions(&line, &["--backend", "weight"]);
}

#[test]
fn negative_weight() {
    let line = fails(&["--check", "-b", "127.0.0.1:9001,weight=-3"]);
    assert_mentions(&line, &["--backend", "weight", "-3"]);
}

#[test]
fn duplicate_backend_name() {
    let line = fails(&[
        "--check",
        "-b",
        "127.0.0.1:9001,name=web",
        "-b",
        "127.0.0.1:9002,name=web",
    ]);
    assert_mentions(&line, &["duplicate backend name", "'web'"]);
    // The default name is the address, so the same address twice is a duplicate too...
    let line = fails(&["--check", "-b", B, "-b", B]);
    assert_mentions(&line, &["duplicate backend name", B]);
    // ...but allowed under distinct names.
    ok(&["--check", "-b", B, "-b", "127.0.0.1:9001,name=again"]);
}

#[test]
fn unknown_algorithm() {
    let line = fails(&["--check", "-b", B, "--algorithm", "fastest"]);
    assert_mentions(
        &line,
        &[
            "--algorithm",
            "fastest",
            "round-robin",
            "maglev",
            "ring-hash",
        ],
    );
}

#[test]
fn bad_duration() {
    let line = fails(&["--check", "-b", B, "--connect-timeout", "5"]);
    assert_mentions(&line, &["--connect-timeout", "unit"]);
    let line = fails(&["--check", "-b", B, "--idle-timeout", "5 minutes"]);
    assert_mentions(&line, &["--idle-timeout"]);
}

#[test]
fn out_of_range_values() {
    for (flag, value) in [
        ("--retries", "101"),
        ("--workers", "0"),
        ("--rise", "0"),
        ("--fall", "0"),
        ("--max-conns", "0"),
        ("--health-timeout", "0s"),
        ("--hash-balance-factor", "50"),
        ("--health", "http:healthz"),
        ("--log-level", "loud"),
        ("--maglev-table-size", "65536"),
        ("--forward", "teleport"),
    ] {
        let line = fails(&["--check", "-b", B, flag, value]);
        assert_mentions(&line, &[flag, value]);
    }
}

#[test]
fn no_backends() {
    let line = fails(&["--check"]);
    assert_mentions(&line, &["no backends"]);
}

#[test]
fn malformed_toml_names_file_line_and_column() {
    let f = TempToml::new("listen = \"127.0.0.1:8080\"\n\nretries = = 2\n");
    let line = fails(&["--check", "-c", f.path()]);
    assert_mentions(&line, &[&format!("{}:3:", f.path())]);
}

#[test]
fn unknown_toml_key() {
    let f = TempToml::new(
        "listen = \"127.0.0.1:8080\"\n[[backend]]\naddr = \"127.0.0.1:9001\"\nport = 80\n",
    );
    let line = fails(&["--check", "-c", f.path()]);
    assert_mentions(&line, &[&format!("{}:4:1:", f.path()), "`port`"]);
}

#[test]
fn bad_toml_values_have_positions() {
    let f = TempToml::new("connect_timeout = \"5\"\n[[backend]]\naddr = \"127.0.0.1:9001\"\n");
    let line = fails(&["--check", "-c", f.path()]);
    assert_mentions(
        &line,
        &[&format!("{}:1:19:", f.path()), "connect_timeout", "unit"],
    );

    let f = TempToml::new("[[backend]]\naddr = \"127.0.0.1:9001\"\nweight = 0\n");
    let line = fails(&["--check", "-c", f.path()]);
    assert_mentions(&line, &[&format!("{}:3:10:", f.path()), "weight"]);

    let f = TempToml::new(
        "[[backend]]\naddr = \"127.0.0.1:9001\"\nname = \"x\"\n\
         [[backend]]\naddr = \"127.0.0.1:9002\"\nname = \"x\"\n",
    );
    let line = fails(&["--check", "-c", f.path()]);
    assert_mentions(
        &line,
        &[&format!("{}:4:", f.path()), "duplicate backend name 'x'"],
    );
}

#[test]
fn backup_backends_on_the_command_line() {
    let out = ok(&["--check", "-b", B, "--backend", "127.0.0.1:1,backup"]);
    assert_mentions(&out, &["2 backend(s) (1 backup) [", "127.0.0.1:1 backup]"]);
    let out = ok(&["--check", "-b", "127.0.0.1:1,name=spare,backup,weight=2"]);
    assert_mentions(&out, &["1 backend(s) (1 backup)"]);
    let line = fails(&["--check", "-b", B, "--backend", "127.0.0.1:1,backup=x"]);
    assert_mentions(
        &line,
        &[
            "--backend",
            "'backup' takes no value",
            "backup=x",
            "',backup'",
        ],
    );
    let line = fails(&["--check", "-b", "127.0.0.1:1,backup,backup"]);
    assert_mentions(&line, &["--backend", "'backup' given twice"]);
}

#[test]
fn backup_backends_in_the_config_file() {
    let f = TempToml::new(
        "[[backend]]\naddr = \"127.0.0.1:9001\"\n\
         [[backend]]\naddr = \"127.0.0.1:9002\"\nbackup = true\n\
         [[backend]]\naddr = \"127.0.0.1:9003\"\nbackup = false\n",
    );
    let out = ok(&["--check", "-c", f.path()]);
    assert_mentions(
        &out,
        &["3 backend(s) (1 backup) [", "127.0.0.1:9002 backup,"],
    );

    let f = TempToml::new("[[backend]]\naddr = \"127.0.0.1:9001\"\nbackup = \"yes\"\n");
    let line = fails(&["--check", "-c", f.path()]);
    assert_mentions(&line, &[&format!("{}:3:10:", f.path()), "boolean"]);
}

#[test]
fn missing_config_file() {
    let line = fails(&["--check", "-c", "/nonexistent/uringlb.toml"]);
    assert_mentions(&line, &["/nonexistent/uringlb.toml"]);
}

#[test]
fn every_example_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("read configs/") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let stdout = ok(&["--check", "-c", path.to_str().expect("utf-8 path")]);
        assert!(stdout.starts_with("ok: "), "{}: {stdout}", path.display());
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected at least 3 example configs, found {seen}"
    );
}

#[test]
fn check_prints_the_effective_configuration() {
    let out = ok(&["--check", "-c", &example("basic.toml")]);
    assert_mentions(
        &out,
        &[
            "ok: 1 service(s)",
            "service default: listen 127.0.0.1:8080; 3 backend(s)",
            "algorithm round-robin",
            "workers auto",
        ],
    );
}

#[test]
fn flags_override_the_file() {
    let basic = example("basic.toml");
    let out = ok(&[
        "--check",
        "--algorithm",
        "weighted-round-robin",
        "-c",
        &basic,
    ]);
    assert_mentions(
        &out,
        &[
            "3 backend(s)",
            "algorithm weighted-round-robin",
            "workers auto",
        ],
    );
    let out = ok(&["--check", "-c", &basic, "-w", "2", "--health", "none"]);
    assert_mentions(&out, &["algorithm round-robin", "workers 2", "health none"]);
    // A --backend / --listen on the command line replaces the file's list.
    let out = ok(&["--check", "-c", &basic, "-b", "127.0.0.1:9100"]);
    assert_mentions(
        &out,
        &["listen 127.0.0.1:8080; 1 backend(s) [127.0.0.1:9100]"],
    );
    let out = ok(&[
        "--check",
        "-c",
        &basic,
        "-l",
        "127.0.0.1:8081",
        "-l",
        "127.0.0.1:8082",
    ]);
    assert_mentions(
        &out,
        &["listen 127.0.0.1:8081, 127.0.0.1:8082; 3 backend(s)"],
    );
}

#[test]
fn help_and_version_go_to_stdout_with_status_zero() {
    let out = ok(&["--help"]);
    for flag in [
        "--listen",
        "--backend",
        "--algorithm",
        "--check",
        "--config",
        "demo",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
    let out = ok(&["--version"]);
    assert!(out.starts_with("uringlb "), "{out}");
}

/// `[[backend]]` tables for `n` backends.
fn many_backends(n: usize) -> String {
    let mut toml = String::from("health = \"none\"\nworkers = 1\n");
    for i in 0..n {
        toml += &format!(
            "[[backend]]\naddr = \"127.0.0.1:{}\"\nname = \"b{i}\"\n",
            1024 + i % 60_000
        );
    }
    toml
}

/// Runs the balancer for real (`--listen` on a free port); returns its one stderr line
/// once it has exited 2. Fails if it is still running after 30 s (it started).
fn start_fails(args: &[&str]) -> String {
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_uringlb"))
        .args(["--listen", &listen])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("uringlb {args:?} started; expected it to refuse");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert_eq!(status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err.trim_end().to_string()
}

#[test]
fn check_refuses_what_a_start_refuses() {
    let too_many = TempToml::new(&many_backends(10_000));
    let check = fails(&["--check", "--config", too_many.path()]);
    let start = start_fails(&["--config", too_many.path()]);
    assert_eq!(check, start, "--check and a start give the same error");
    assert_mentions(&check, &["too many backends", "10000", "4096"]);
    // The limit itself is fine.
    let at_limit = TempToml::new(&many_backends(4096));
    let out = ok(&["--check", "--config", at_limit.path()]);
    assert!(out.contains("4096 backend(s)"), "{out}");
}

/// Every long flag `--help` lists.
fn long_flags() -> Vec<String> {
    let help = ok(&["--help"]);
    let mut flags: Vec<String> = help
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
        .collect();
    flags.sort();
    flags.dedup();
    assert!(flags.len() > 30, "{flags:?}");
    flags
}

#[test]
fn bash_completion_completes_every_flag_and_the_subcommands() {
    let script = ok(&["completions", "bash"]);
    let dir = std::env::temp_dir().join(format!("uringlb-completion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("uringlb.bash");
    std::fs::write(&file, &script).unwrap();
    // What bash offers after `uringlb --` and after `uringlb `, as a user's TAB would.
    let complete = |words: &str| -> Vec<String> {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
                 COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
                 _uringlb uringlb \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                file.display()
            ))
            .output()
            .expect("run bash");
        assert!(out.status.success(), "bash: {}", text(&out.stderr));
        text(&out.stdout).lines().map(String::from).collect()
    };
    let offered = complete("uringlb --");
    for flag in long_flags() {
        assert!(offered.contains(&flag), "{flag} not offered: {offered:?}");
    }
    let offered = complete("uringlb ''");
    for sub in ["demo", "completions", "man"] {
        assert!(offered.iter().any(|o| o == sub), "{sub}: {offered:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zsh_and_fish_completions_name_every_flag() {
    let flags = long_flags();
    let zsh = ok(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef uringlb"), "{}", &zsh[..80]);
    let fish = ok(&["completions", "fish"]);
    for flag in &flags {
        let zsh_has = zsh.contains(&format!("{flag}[")) || zsh.contains(&format!("{flag}=["));
        assert!(zsh_has, "zsh lacks {flag}");
        let name = flag.trim_start_matches("--");
        assert!(fish.contains(&format!("-l {name}")), "fish lacks {flag}");
    }
    let line = fails(&["completions", "tcsh"]);
    assert_mentions(&line, &["tcsh"]);
}

#[test]
fn the_man_page_renders_and_documents_every_flag() {
    let page = ok(&["man"]);
    assert!(page.contains(".TH uringlb 1"), "{}", &page[..200]);
    // groff with every warning on: the roff must be clean, and the text must hold each flag.
    let mut groff = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-rLL=200n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run groff");
    std::io::Write::write_all(&mut groff.stdin.take().unwrap(), page.as_bytes()).unwrap();
    let out = groff.wait_with_output().unwrap();
    assert!(out.status.success(), "groff: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "groff warnings");
    // Plain text: drop the overstrike (bold, underline) the tty device writes.
    let rendered: String = {
        let raw = text(&out.stdout);
        let mut s = String::new();
        for c in raw.chars() {
            if c == '\u{8}' {
                s.pop();
            } else {
                s.push(c);
            }
        }
        s.replace(['\u{2010}', '\u{2212}'], "-")
    };
    for flag in long_flags() {
        assert!(rendered.contains(&flag), "the man page lacks {flag}");
    }
    for sub in ["demo", "completions", "man"] {
        assert!(rendered.contains(sub), "the man page lacks {sub}");
    }
}
