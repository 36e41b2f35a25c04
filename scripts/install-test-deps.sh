#!/usr/bin/env bash
# Installs the programs the integration tests run (from Debian's packages), only those that
# are missing. Idempotent; `./scripts/test.sh` and CI run it before the tests.
#
# Each entry is "COMMAND:PACKAGE": the package is installed when COMMAND is not on PATH.
#   dnsmasq   tests/discovery.rs runs a real DNS server (SRV records) on a loopback port.
#             dnsmasq-base is the binary alone: the `dnsmasq` package would also start a
#             system service listening on port 53.
#   nginx     tests/proxy_protocol.rs runs a real NGINX (`listen ... proxy_protocol`) and
#   haproxy   a real HAProxy (`send-proxy`, `send-proxy-v2`) as children of the test, each
#             with its own config, pid file and logs in a temp dir, on free loopback ports.
#             Both packages would also start a system service from their postinst (nginx on
#             port 80): while installing, a policy-rc.d that forbids starting services is put
#             in place (unless one exists already), so the install works in a container or CI
#             job without an init system, and no test ever depends on those services.
#   iptables  tests/robustness.rs makes a NAT rule (in a network namespace of its own) that
#             leads a backend address back to the balancer.
#   prlimit   tests/robustness.rs lowers the balancer's open-file limit while it runs.
#   groff     tests/cli.rs renders `uringlb man` with every warning on.
#   ip, ss    (iproute2) tests/robustness.rs brings up loopback in its namespace;
#             tests/keepalive.rs reads the kernel's keepalive timers of the balancer's sockets.
#   chromium  tests/status_page.rs renders the admin status page (GET /) in headless
#             Chromium, checks the DOM its script built and takes a screenshot.
#   promtool  (prometheus) tests/prometheus.rs checks configs/prometheus/alerts.yml with
#             `promtool check rules` and runs a real Prometheus server (own config and
#             storage in a temp dir) that scrapes the balancer's /metrics. The package's
#             system service is not started (see policy-rc.d below).
#   systemd-analyze (systemd) tests/systemd.rs checks contrib/uringlb.service with
#             `systemd-analyze verify`; no systemd needs to run for that.
#   runc      tests/containers.rs runs the balancer in an OCI container (own namespaces, no
#             capabilities, user nobody) under contrib/seccomp-io-uring.json, as Docker
#             would with `--security-opt seccomp=...`. No daemon needed.
#
# Extra package names given as arguments are installed as well (when not installed).
set -euo pipefail

DEPS=(
  "dnsmasq:dnsmasq-base"
  "nginx:nginx"
  "haproxy:haproxy"
  "iptables:iptables"
  "prlimit:util-linux"
  "groff:groff-base"
  "ip:iproute2"
  "ss:iproute2"
  "chromium:chromium"
  "promtool:prometheus"
  "systemd-analyze:systemd"
  "runc:runc"
)
# tests/metrics.rs also checks the /metrics text with the official Python parser.
PY_DEPS=(python3-prometheus-client)

need=()
for dep in "${DEPS[@]}"; do
  cmd="${dep%%:*}"
  pkg="${dep#*:}"
  # dnsmasq, nginx, haproxy and iptables live in /usr/sbin, which a non-root PATH may lack.
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    need+=("$pkg")
  fi
done
for pkg in "${PY_DEPS[@]}" "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-test-deps: need root to install: ${need[*]} (apt-get install ${need[*]})" >&2
  exit 1
fi
echo "install-test-deps: installing ${need[*]}" >&2
# Debian's policy-rc.d protocol: exit status 101 = "action forbidden", so invoke-rc.d and
# deb-systemd-invoke do not start nginx's or haproxy's service from the postinst scripts.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# install-test-deps.sh: no service starts while installing\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
