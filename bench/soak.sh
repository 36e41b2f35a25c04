#!/usr/bin/env bash
# Fault soak of uringlb: builds release, then runs `uringlb-bench soak` for DURATION
# (default 5m) against target/release/uringlb over loopback. Extra arguments go to the soak
# (e.g. --seed 42, --json, --workers 1). Exit status: the soak's (0 passed, 1 a fault was
# found, 2 it could not run).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-5m}"
shift || true
if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release -p uringlb -p uringlb-bench
fi
exec target/release/uringlb-bench soak --uringlb target/release/uringlb --duration "$DURATION" "$@"
