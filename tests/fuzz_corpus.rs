//! Replays the fuzzers' saved corpora (`fuzz/corpus/<target>/`) through the same checks
//! the fuzz targets run (`uringlb::fuzzing`), so a stable `cargo test` catches a
//! regression on any input the fuzzer once found interesting, without nightly.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // A panic names the input, to reproduce it with `cargo fuzz run <target> <file>`.
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{target}: {} failed", path.display());
        n += 1;
    }
    assert!(n > 0, "{}: empty corpus", dir.display());
    println!("{target}: replayed {n} inputs");
}

#[test]
fn proxy_header() {
    replay("proxy_header", uringlb::fuzzing::proxy_header);
}

#[test]
fn config_toml() {
    replay("config_toml", uringlb::fuzzing::config_toml);
}

#[test]
fn backend_spec() {
    replay("backend_spec", uringlb::fuzzing::backend_spec);
}

#[test]
fn duration() {
    replay("duration", uringlb::fuzzing::duration);
}

#[test]
fn admin_body() {
    replay("admin_body", uringlb::fuzzing::admin_body);
}

#[test]
fn tls_hello() {
    replay("tls_hello", uringlb::fuzzing::tls_hello);
}
