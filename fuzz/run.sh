#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each, one after another, then
# minimizes each corpus in place. Needs nightly and cargo-fuzz (cargo install cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
targets=(proxy_header config_toml backend_spec duration admin_body)
cargo +nightly fuzz build
for t in "${targets[@]}"; do
    echo "== $t: ${secs}s"
    cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -jobs=1 -print_final_stats=1
done
for t in "${targets[@]}"; do
    cargo +nightly fuzz cmin "$t"
done
