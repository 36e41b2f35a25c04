#!/usr/bin/env bash
# Installs the packages the tests need (Debian), only those missing. Idempotent.
set -euo pipefail
need=()
# (later issues add dnsmasq, haproxy, nginx here)
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "install-test-deps: need root to install ${need[*]}" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
