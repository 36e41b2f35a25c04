#!/usr/bin/env bash
# Side-by-side comparison of uringlb with HAProxy and the NGINX stream module on this
# machine, interleaved in one run, one worker each, in front of three nginx backends.
#
# usage: bench/compare.sh [--quick] [ROUNDS] [SECONDS]
#   ROUNDS   rounds of every workload against every system (default 2)
#   SECONDS  length of each wrk run (default 6)
#   --quick  smoke run: 1 round of 3 s, one download per system
#
# Workload sets (WORKLOADS, default all of them: "tcp,tls,udp"):
#   tcp  systems: uringlb --forward copy, splice and auto (three processes), HAProxy mode tcp
#        with and without `option splice-auto` (two processes), NGINX stream (one worker).
#        Workloads: keep-alive requests (wrk, 64 connections), a new connection per request
#        (wrk, 32 connections, Connection: close), the 1 GiB download /big.bin (curl), and
#        keep-alive requests at a fixed offered rate (uringlb-bench http --rate, 64
#        connections): the same load for every system, so that latencies compare.
#   tls  a new TLS connection per request (full handshake, wrk https, 32 connections,
#        Connection: close) through uringlb routing by SNI (uringlb-sni), uringlb as plain
#        TCP (uringlb-tcp), HAProxy req.ssl_sni (haproxy-sni) and NGINX ssl_preread
#        (nginx-sni), in front of three nginx HTTPS backends; see bench/lib/tls.sh.
#   udp  uringlb --protocol udp and NGINX stream `listen ... udp` in front of three UDP echo
#        backends (HAProxy has no UDP): steady flows at the maximum rate, at a fixed rate,
#        and a new flow per request (DNS-like); ratios to NGINX; see bench/lib/udp.sh.
# Prints a table of medians and ratios to HAProxy (to NGINX for UDP); writes
# bench/results/compare-TIME.json, latest.json, runs-TIME.jsonl, compare-TIME.log and the
# plots latency.svg, latency-rate.svg (tcp) and latency-udp-rate.svg (udp).
#
# Environment (all optional):
#   RESULTS_DIR   where results go (default bench/results)
#   WWW_DIR       where the 1 GiB big.bin is made and served from (default /tmp/uringlb-bench-www)
#   WORKLOADS     workload sets to run, comma or space separated: tcp, tls, udp (default
#                 all three); bench/lib/udp.sh lists its own settings (UDP_RATE, UDP_FLOWS,
#                 UDP_SYSTEMS)
#   SYSTEMS       subset to run, e.g. "uringlb-auto haproxy haproxy-sni" (default: all);
#                 a selected workload set with none of its systems named is skipped
#   TLS_CONNS     wrk connections of the tls workload (default 32)
#   DOWNLOADS     downloads per download run (default 2; 1 with --quick)
#   RATE          offered requests per second of the fixed-rate workload (default 20000)
#   PAUSE         seconds of rest between systems (default 2; 1 with --quick)
#   UR_PIN=1      let uringlb pin its worker (its default); otherwise --no-pin, as nothing
#                 else here is pinned
#   UR_ARGS       extra uringlb arguments
#   NO_BUILD=1    skip `cargo build --release`
#
# Ports: backends 9001-9003, balancers 8280-8282 and 8290-8292; tls: backends 9021-9023,
# balancers 8270-8273, uringlb admin 9270-9271; or the first block 100, 200, ... higher
# that is free (when another run or the lab holds them); udp: see bench/lib/udp.sh.
#
# Needs root only to install missing Debian packages (haproxy, nginx, libnginx-mod-stream,
# wrk, curl, openssl) with apt-get. Every process it starts is stopped when it exits.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() {
	echo "compare.sh: $*" >&2
	exit 1
}

quick=0
pos=()
for a in "$@"; do
	case $a in
	--quick) quick=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	-*) die "unknown option $a (try --help)" ;;
	*) pos+=("$a") ;;
	esac
done
((${#pos[@]} <= 2)) || die "too many arguments (try --help)"
rounds=${pos[0]:-2}
secs=${pos[1]:-6}
downloads=${DOWNLOADS:-2}
rate=${RATE:-20000}
pause=${PAUSE:-2}
if ((quick)); then
	rounds=${pos[0]:-1}
	secs=${pos[1]:-3}
	downloads=${DOWNLOADS:-1}
	pause=${PAUSE:-1}
fi
for v in "$rounds" "$secs" "$downloads" "$pause" "$rate"; do
	[[ $v =~ ^[0-9]+$ ]] || die "expected a whole number, got '$v'"
done
((rounds >= 1 && secs >= 1 && downloads >= 1)) || die "ROUNDS, SECONDS and DOWNLOADS must be at least 1"

# Workload sets: tcp (the original four workloads), tls (bench/lib/tls.sh) and udp
# (bench/lib/udp.sh).
known_workloads=(tcp tls udp)
declare -A wanted=()
read -r -a wl_names <<<"${WORKLOADS:-${known_workloads[*]}}"
set -f # split "tcp,tls" on commas too, expanding no pattern
# shellcheck disable=SC2206
wl_names=(${wl_names[@]//,/ })
set +f
((${#wl_names[@]})) || die "WORKLOADS is empty (known: ${known_workloads[*]})"
for w in "${wl_names[@]}"; do
	[[ " ${known_workloads[*]} " == *" $w "* ]] || die "unknown workload '$w' in WORKLOADS (known: ${known_workloads[*]})"
	wanted[$w]=1
done
want() { [[ -n ${wanted[$1]:-} ]]; }
# shellcheck source-path=SCRIPTDIR source=lib/tls.sh
source "$here/lib/tls.sh"

results=${RESULTS_DIR:-$here/results}
www=${WWW_DIR:-/tmp/uringlb-bench-www}
big_size=$((1 << 30))
keepalive_conns=64
close_conns=32
all_systems=(uringlb-copy uringlb-splice uringlb-auto haproxy haproxy-splice nginx)
# Ports at offset 0: backends 9001-9003, balancers 8280-8282 and 8290-8292. When any is
# taken (another run, the lab), the next block 100 higher is used, and so on.
declare -A port0=(
	[haproxy]=8280 [haproxy-splice]=8281 [nginx]=8282
	[uringlb-copy]=8290 [uringlb-splice]=8291 [uringlb-auto]=8292
)
declare -A port
systems=()
if [[ -n ${SYSTEMS:-} ]]; then
	read -r -a named <<<"$SYSTEMS"
	for s in "${named[@]}"; do
		if [[ -n ${port0[$s]:-} ]]; then
			systems+=("$s")
		elif [[ -z ${tls_port0[$s]:-} ]]; then
			die "unknown system '$s' (known: ${all_systems[*]} ${tls_all_systems[*]})"
		fi
	done
	tls_pick_systems "${named[@]}"
else
	systems=("${all_systems[@]}")
	tls_pick_systems
fi
if ! want tcp; then systems=(); fi
if ! want tls; then tls_systems=(); fi
((${#systems[@]} + ${#tls_systems[@]})) || want udp || die "no system of the selected workloads (WORKLOADS=${wl_names[*]}) in SYSTEMS"

# --- what it needs ------------------------------------------------------------------------
missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v nginx >/dev/null || missing+=(nginx)
[[ -f /usr/lib/nginx/modules/ngx_stream_module.so ]] || missing+=(libnginx-mod-stream)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if ((${#tls_systems[@]})); then command -v openssl >/dev/null || missing+=(openssl); fi
if ((${#missing[@]})); then
	[[ $(id -u) == 0 ]] || die "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
	echo "installing ${missing[*]} ..."
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || die "cargo is needed to build uringlb"

if [[ -z ${NO_BUILD:-} ]]; then
	echo "building uringlb and uringlb-bench (release) ..."
	(cd "$root" && cargo build --release --quiet -p uringlb -p uringlb-bench) || die "cargo build --release failed"
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
uringlb=$target_dir/release/uringlb
bench=$target_dir/release/uringlb-bench
[[ -x $uringlb && -x $bench ]] || die "no $uringlb or $bench: build first"

mkdir -p "$www" "$results"
if ((${#systems[@]})) && [[ $(stat -c %s "$www/big.bin" 2>/dev/null || echo 0) != "$big_size" ]]; then
	echo "making $www/big.bin (1 GiB) ..."
	head -c "$big_size" /dev/urandom >"$www/big.bin.tmp"
	mv "$www/big.bin.tmp" "$www/big.bin"
fi
chmod a+rx "$www"
chmod a+r "$www/big.bin"

# --- processes and cleanup ----------------------------------------------------------------
work=$(mktemp -d /tmp/uringlb-bench-compare.XXXXXX)
pids=()    # every process started here, in start order
extra=()   # nginx workers: their master stops them, but make sure
cleanup() {
	local rc=$? p i
	trap - EXIT INT TERM
	# Stop the balancers before the backends: reverse start order.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
	for p in "${pids[@]}" "${extra[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, output in $work/NAME.log
declare -A pid_of
start() {
	local name=$1
	shift
	"$@" >"$work/$name.log" 2>&1 &
	pids+=($!)
	pid_of[$name]=$!
}

# wait_http NAME PORT: until GET / answers through PORT, or fail with NAME's log
wait_http() {
	local name=$1 p=$2
	for _ in $(seq 100); do
		curl -sf -m 1 -o /dev/null "http://127.0.0.1:$p/" && return 0
		kill -0 "${pid_of[$name]}" 2>/dev/null || {
			cat "$work/$name.log" >&2
			die "$name exited at startup"
		}
		sleep 0.1
	done
	cat "$work/$name.log" >&2
	die "$name does not answer on 127.0.0.1:$p"
}

# Children of a process (nginx workers of their master).
children() { pgrep -P "$1" | tr '\n' ' ' || true; }

render() { # render TEMPLATE PORT > file
	sed -e "s|@WORK@|$work|g" -e "s|@WWW@|$www|g" -e "s|@PORT@|$2|g" \
		-e "s|@B1@|${backend_ports[0]}|g" -e "s|@B2@|${backend_ports[1]}|g" \
		-e "s|@B3@|${backend_ports[2]}|g" "$1"
}

port_free() { [[ -z $(ss -Hltn "sport = :$1") ]]; }
offset=
for off in 0 100 200 300 400 500 600 700 800 900; do
	free=1
	if ((${#systems[@]})); then
		for p in $((9001 + off)) $((9002 + off)) $((9003 + off)); do port_free "$p" || free=0; done
	fi
	for s in "${systems[@]}"; do port_free $((port0[$s] + off)) || free=0; done
	if ((${#tls_systems[@]})); then tls_ports_free "$off" || free=0; fi
	if ((free)); then
		offset=$off
		break
	fi
done
[[ -n $offset ]] || die "no free block of ports (9001-9003/8280-8292 and 9 more, 100 apart)"
backend_ports=($((9001 + offset)) $((9002 + offset)) $((9003 + offset)))
for s in "${systems[@]}"; do port[$s]=$((port0[$s] + offset)); done
tls_set_ports "$offset"
if ((offset)); then echo "ports 9001-9003/8280-8292 are taken: using backends ${backend_ports[*]}, offset $offset"; fi

if ((${#systems[@]})); then
	render "$here/lab/backend-nginx.conf" 0 >"$work/backend-nginx.conf"
	start backends nginx -e "$work/backend-nginx.err" -c "$work/backend-nginx.conf"
	for p in "${backend_ports[@]}"; do wait_http backends "$p"; done
fi

declare -A lbpids
pin_arg=(--no-pin)
if [[ -n ${UR_PIN:-} ]]; then pin_arg=(); fi
read -r -a ur_extra <<<"${UR_ARGS:-}"
for s in "${systems[@]}"; do
	case $s in
	uringlb-*)
		start "$s" "$uringlb" --listen "127.0.0.1:${port[$s]}" \
			--backend "127.0.0.1:${backend_ports[0]}" --backend "127.0.0.1:${backend_ports[1]}" \
			--backend "127.0.0.1:${backend_ports[2]}" \
			--workers 1 --health none --forward "${s#uringlb-}" --grace 1s "${pin_arg[@]}" "${ur_extra[@]}"
		;;
	haproxy) render "$here/lab/haproxy.cfg" "${port[$s]}" >"$work/$s.cfg" && start "$s" haproxy -f "$work/$s.cfg" ;;
	haproxy-splice) render "$here/lab/haproxy-splice.cfg" "${port[$s]}" >"$work/$s.cfg" && start "$s" haproxy -f "$work/$s.cfg" ;;
	nginx)
		render "$here/lab/nginx-stream.conf" "${port[$s]}" >"$work/$s.conf"
		start "$s" nginx -e "$work/nginx-stream.err" -c "$work/$s.conf"
		;;
	esac
done
for s in "${systems[@]}"; do
	wait_http "$s" "${port[$s]}"
	lbpids[$s]=${pid_of[$s]}
done
# nginx: measure its worker (the master only supervises), as the lab does.
for name in backends nginx; do
	[[ -n ${pid_of[$name]:-} ]] || continue
	kids=$(children "${pid_of[$name]}")
	[[ -n $kids ]] || die "$name has no worker process"
	read -r -a kid_arr <<<"$kids"
	extra+=("${kid_arr[@]}")
	if [[ $name == nginx ]]; then lbpids[nginx]=$kids; fi
done
if ((${#tls_systems[@]})); then
	tls_start
	tls_check
fi
# shellcheck source-path=SCRIPTDIR source=lib/udp.sh
source "$here/lib/udp.sh"
if want udp; then udp_start; fi

# --- measuring ----------------------------------------------------------------------------
hz=$(getconf CLK_TCK)
# cpu_ticks "PID...": user+sys clock ticks (fields 14 and 15, counted after the parenthesised
# name) of the processes, printed twice: from /proc/PID/stat, the whole thread group including
# threads that already exited (io_uring's iou-wrk-* helpers come and go), and summed over
# /proc/PID/task/*/stat, the live threads only. The first is the figure used; the two agree
# while no thread exits.
stat_ticks() {
	local s
	local -a v
	{ s=$(<"$1"); } 2>/dev/null || {
		echo 0
		return
	}
	s=${s##*) }
	read -r -a v <<<"$s"
	echo $((v[11] + v[12]))
}
cpu_ticks() {
	local proc=0 tasks=0 p f
	for p in $1; do
		proc=$((proc + $(stat_ticks "/proc/$p/stat")))
		for f in /proc/"$p"/task/*/stat; do tasks=$((tasks + $(stat_ticks "$f"))); done
	done
	echo "$proc $tasks"
}

ts=$(date -u +%Y%m%dT%H%M%SZ)
runs=$results/runs-$ts.jsonl
log=$results/compare-$ts.log
: >"$runs"
: >"$log"

# wrk_run ROUND SYSTEM WORKLOAD CONNS [wrk args...]
wrk_run() {
	local round=$1 sys=$2 wl=$3 conns=$4 c0 t0 c1 t1 out rc=0 json ticks
	shift 4
	read -r c0 t0 < <(cpu_ticks "${lbpids[$sys]}")
	out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$here/lab/stats.lua" "$@" \
		"http://127.0.0.1:${port[$sys]}/" 2>&1) || rc=$?
	read -r c1 t1 < <(cpu_ticks "${lbpids[$sys]}")
	ticks=$((c1 - c0))
	printf '### round %s %s %s\n%s\n' "$round" "$sys" "$wl" "$out" >>"$log"
	json=$(sed -n 's/^WRKJSON //p' <<<"$out")
	if ((rc != 0)) || [[ -z $json ]]; then
		printf '{"round":%d,"system":"%s","workload":"%s","ok":false,"error":"wrk exited %d without results"}\n' \
			"$round" "$sys" "$wl" "$rc" >>"$runs"
		printf '%-9s %-15s FAILED (wrk exit %d; see %s)\n' "$wl" "$sys" "$rc" "$log"
		return 0
	fi
	printf '{"round":%d,"system":"%s","workload":"%s","ok":true,"connections":%d,"cpu_ticks":%d,"cpu_ticks_tasks":%d,"clk_tck":%d,"wrk":%s}\n' \
		"$round" "$sys" "$wl" "$conns" "$ticks" "$((t1 - t0))" "$hz" "$json" >>"$runs"
	awk -v wl="$wl" -v sys="$sys" -v ticks="$ticks" -v hz="$hz" '
		/Requests\/sec/ { rps = $2 }
		/requests in/ { reqs = $1 }
		$1 == "99%" { p99 = $2 }
		/Socket errors|Non-2xx/ { err = err " " $0 }
		END { printf "%-9s %-15s %9.0f req/s  p99 %-8s  %7.2f us CPU/req%s\n", wl, sys, rps, p99,
			(reqs > 0 ? ticks / hz * 1e6 / reqs : 0), err }' <<<"$out"
}

# rate_run ROUND SYSTEM: keep-alive requests at $rate req/s with uringlb-bench's open loop;
# recorded like a wrk run (the tool prints the same WRKJSON line as stats.lua)
rate_run() {
	local round=$1 sys=$2 c0 t0 c1 t1 out rc=0 json ticks
	read -r c0 t0 < <(cpu_ticks "${lbpids[$sys]}")
	out=$("$bench" http -t "127.0.0.1:${port[$sys]}" -c "$keepalive_conns" -d "${secs}s" \
		--rate "$rate" --wrk-json --quiet 2>&1) || rc=$?
	read -r c1 t1 < <(cpu_ticks "${lbpids[$sys]}")
	ticks=$((c1 - c0))
	printf '### round %s %s rate\n%s\n' "$round" "$sys" "$out" >>"$log"
	json=$(sed -n 's/^WRKJSON //p' <<<"$out")
	if ((rc != 0)) || [[ -z $json ]]; then
		printf '{"round":%d,"system":"%s","workload":"rate","ok":false,"error":"uringlb-bench exited %d without results"}\n' \
			"$round" "$sys" "$rc" >>"$runs"
		printf '%-9s %-15s FAILED (uringlb-bench exit %d; see %s)\n' rate "$sys" "$rc" "$log"
		return 0
	fi
	printf '{"round":%d,"system":"%s","workload":"rate","ok":true,"connections":%d,"offered_rate":%s,"cpu_ticks":%d,"cpu_ticks_tasks":%d,"clk_tck":%d,"wrk":%s}\n' \
		"$round" "$sys" "$keepalive_conns" "$rate" "$ticks" "$((t1 - t0))" "$hz" "$json" >>"$runs"
	sed -E 's/.*"requests":([0-9]+),"duration_us":([0-9]+).*"percentile":99,"us":([0-9]+).*/\1 \2 \3/' <<<"$json" |
		awk -v sys="$sys" -v ticks="$ticks" -v hz="$hz" -v rate="$rate" '{
			printf "%-9s %-15s %9.0f req/s  p99 %-8s  %7.2f us CPU/req%s\n", "rate", sys, $1 / ($2 / 1e6),
				sprintf("%.2fms", $3 / 1000), ($1 > 0 ? ticks / hz * 1e6 / $1 : 0),
				($1 / ($2 / 1e6) < 0.95 * rate ? "  (short of the offered rate)" : "") }'
}

# download_run ROUND SYSTEM: DOWNLOADS GETs of /big.bin through the system, with curl
download_run() {
	local round=$1 sys=$2 c0 t0 c1 t1 out bytes=0 total=0 ok=1 size secs code i
	read -r c0 t0 < <(cpu_ticks "${lbpids[$sys]}")
	for ((i = 0; i < downloads; i++)); do
		if out=$(curl -sS -o /dev/null --max-time 300 -w '%{size_download} %{time_total} %{http_code}' \
			"http://127.0.0.1:${port[$sys]}/big.bin" 2>&1); then
			read -r size secs code <<<"$out"
			[[ $code == 200 && $size == "$big_size" ]] || ok=0
			bytes=$((bytes + size))
			total=$(awk -v a="$total" -v b="$secs" 'BEGIN { printf "%.6f", a + b }')
		else
			ok=0
		fi
		printf '### round %s %s download %d: %s\n' "$round" "$sys" "$i" "$out" >>"$log"
	done
	read -r c1 t1 < <(cpu_ticks "${lbpids[$sys]}")
	if ((!ok)); then
		printf '{"round":%d,"system":"%s","workload":"download","ok":false,"error":"a download failed or was short"}\n' \
			"$round" "$sys" >>"$runs"
		printf '%-9s %-15s FAILED (see %s)\n' download "$sys" "$log"
		return 0
	fi
	printf '{"round":%d,"system":"%s","workload":"download","ok":true,"cpu_ticks":%d,"cpu_ticks_tasks":%d,"clk_tck":%d,"bytes":%d,"secs":%s}\n' \
		"$round" "$sys" "$((c1 - c0))" "$((t1 - t0))" "$hz" "$bytes" "$total" >>"$runs"
	awk -v sys="$sys" -v b="$bytes" -v t="$total" -v c="$((c1 - c0))" -v hz="$hz" 'BEGIN {
		printf "%-9s %-15s %9.2f GB/s   %.3f CPU s/GiB\n", "download", sys, b / t / 1e9, c / hz / (b / 1073741824) }'
}

if ((${#systems[@]})); then
	echo "systems: ${systems[*]}; $rounds round(s), wrk ${secs}s, $downloads download(s) of 1 GiB per run, fixed rate $rate req/s; nothing pinned"
fi
if ((${#tls_systems[@]})); then
	echo "tls systems: ${tls_systems[*]}; $rounds round(s), wrk ${secs}s, $tls_conns connections, a new TLS connection per request; nothing pinned"
fi
# Warm-up, not measured: the first 1 GiB download after the backends start is several times
# slower whichever system carries it (page cache, nginx), and each system's first requests
# allocate its buffers.
echo "--- warm-up (not measured)"
for s in "${systems[@]}"; do
	curl -s -o /dev/null --max-time 300 "http://127.0.0.1:${port[$s]}/big.bin" || true
	wrk -t1 -c16 -d1s "http://127.0.0.1:${port[$s]}/" >/dev/null 2>&1 || true
done
tls_warmup
if want udp; then udp_warmup; fi
n=${#systems[@]}
for ((r = 1; r <= rounds; r++)); do
	echo "--- round $r/$rounds"
	# Rotate the order each round so no system always runs first (or right after another).
	for ((i = 0; i < n; i++)); do
		s=${systems[$(((r - 1 + i) % n))]}
		wrk_run "$r" "$s" keepalive "$keepalive_conns"
		wrk_run "$r" "$s" close "$close_conns" -H "Connection: close"
		download_run "$r" "$s"
		rate_run "$r" "$s"
		sleep "$pause"
	done
	if ((${#tls_systems[@]})); then tls_round "$r"; fi
	if want udp; then udp_round "$r"; fi
done

# --- report -------------------------------------------------------------------------------
# First line of a command's output; never fails (no `head`: SIGPIPE under pipefail).
first_line() { { "$@" 2>&1 || true; } | sed -n 1p; }
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$root" status --porcelain 2>/dev/null || true) ]]; then commit="$commit+dirty"; fi
meta=(
	--meta "started=$ts"
	--meta "host=$(uname -n)"
	--meta "kernel=$(uname -r)"
	--meta "cpus=$(nproc)"
	--meta "workloads=${wl_names[*]}"
	--meta "backends=${backend_ports[*]}"
	--meta "rounds=$rounds"
	--meta "seconds=$secs"
	--meta "downloads_per_run=$downloads"
	--meta "offered_rate=$rate"
	--meta "uringlb_commit=$commit"
	--meta "uringlb_args=$(echo --workers 1 --health none --grace 1s "${pin_arg[@]}" "${ur_extra[@]}")"
	--meta "haproxy=$(first_line haproxy -v)"
	--meta "nginx=$(first_line nginx -v)"
	--meta "wrk=$(first_line wrk -v)"
	--meta "pinning=none: load generator, balancers and backends share all CPUs, as in the lab"
	--meta "latency_rate=uringlb-bench http --rate (open loop, 64 connections paced evenly; a request held back by a late response counts from its scheduled time, one sent late by the generator's own timer from its send)"
	--meta "latency=wrk -t1 --latency; p50/p99/p99.9 and the plot from wrk's histogram via bench/lab/stats.lua (done callback), max = latency.max; wrk times from request write to response end, so close-mode latency excludes the connect"
	--meta "openssl=$(first_line openssl version)"
	--meta "tls=a new TLS connection per request: wrk -t1 -c$tls_conns -H 'Connection: close' https://localhost:PORT/ (SNI localhost); backends nginx (one worker, ports ${tls_backend_ports[*]}) with an ECDSA P-256 certificate, ssl_session_cache off and ssl_session_tickets off (every handshake full), TLS 1.3; uringlb-sni: 4 services on one address routed by sni (lab/uringlb-sni.toml), uringlb-tcp: the same backends without sni, haproxy-sni: req.ssl_sni (lab/haproxy-sni.cfg), nginx-sni: ssl_preread (lab/nginx-sni.conf)"
	--meta "workloads=${wl_names[*]}"
	--meta "cpu=user+sys ticks of the balancer's pids from /proc/PID/stat (thread group, exited threads included; the sum over /proc/PID/task/*/stat is kept as cpu_ticks_tasks), delta over the run (nginx: its worker)"
)
if want udp; then meta+=("${udp_meta[@]}"); fi
echo
"$bench" compare-report --runs "$runs" --output "$results/compare-$ts.json" \
	--latest "$results/latest.json" "${meta[@]}"
plots=()
if ((${#systems[@]})); then
	"$bench" plot --input "$results/latest.json" --output "$results/latency-$ts.svg" \
		--workload keepalive --title "keep-alive, $keepalive_conns conns, closed loop: latency (medians of $rounds)"
	cp "$results/latency-$ts.svg" "$results/latency.svg"
	"$bench" plot --input "$results/latest.json" --output "$results/latency-rate-$ts.svg" \
		--workload rate --title "keep-alive at $rate req/s, $keepalive_conns conns: latency (medians of $rounds)"
	cp "$results/latency-rate-$ts.svg" "$results/latency-rate.svg"
	plots+=("$results/latency.svg" "$results/latency-rate.svg")
fi
if want udp; then
	udp_plot "$ts"
	plots+=("$results/latency-udp-rate.svg")
fi
echo
if ((${#plots[@]})); then
	echo "results: $results/compare-$ts.json (also latest.json), plots: ${plots[*]}, load output: $log"
else
	echo "results: $results/compare-$ts.json (also latest.json), load output: $log"
fi
