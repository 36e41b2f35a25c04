//! The balancer links the test backends and load generator (`uringlb-testbed`, for
//! `uringlb demo`) but not the benchmark code: plotting, the soak and the comparison live in
//! `uringlb-bench`, which only the tests use. Checked on the dependency graph cargo itself
//! reports, so a new dependency path back to the benchmark code fails here.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates in a package's normal (non-dev, non-build) dependency tree, by name.
fn normal_deps(package: &str) -> BTreeSet<String> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--offline", "--edges", "normal"])
        .args([
            "--prefix",
            "none",
            "--package",
            package,
            "--manifest-path",
            manifest,
        ])
        .output()
        .expect("cannot run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("cargo tree printed non-UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn balancer_does_not_link_benchmark_code() {
    let balancer = normal_deps("uringlb");
    for banned in ["uringlb-bench", "plotters"] {
        assert!(
            !balancer.contains(banned),
            "the balancer depends on {banned}; `cargo tree -p uringlb -e normal -i {banned}` shows how"
        );
    }
    assert!(balancer.contains("uringlb-testbed"), "{balancer:?}");
}

/// The names checked above are spelled as cargo prints them: the benchmark crate's own tree
/// (its root line first) shows both.
#[test]
fn bench_tree_lists_the_banned_crates() {
    let bench = normal_deps("uringlb-bench");
    assert!(bench.contains("uringlb-bench"), "{bench:?}");
    assert!(bench.contains("plotters"), "{bench:?}");
}
