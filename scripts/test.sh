#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests (the real binary over
# loopback). Installs what the tests need from Debian's packages when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
cargo test --workspace --release "$@"
