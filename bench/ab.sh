#!/usr/bin/env bash
# A/B test of two uringlb builds (or two sets of flags) on this machine: both run at once
# in front of the same nginx backends and take turns under wrk, A B B A A B ..., so that
# drift on the shared cores hits both alike. Prints the median req/s and balancer CPU
# microseconds per request of each, and B's ratio to A.
#
# usage: bench/ab.sh A_BIN B_BIN [ROUNDS] [SECONDS]
#   A_BIN, B_BIN  uringlb binaries (the same path twice to compare flags)
#   ROUNDS        runs of each workload per side (default 6)
#   SECONDS       length of each wrk run (default 5)
#
# Environment (all optional):
#   WORKLOADS   "keepalive close" (default): 64 keep-alive connections; 32 connections
#               with Connection: close (a new connection per request); "download": one
#               GET of the 1 GiB /big.bin with curl (rate in GB/s, CPU in s per GiB; needs
#               $WWW_DIR/big.bin, which bench/compare.sh makes)
#               "mid": 16 keep-alive connections GETting a $MID_KIB KiB file (default
#               1024), made in $WWW_DIR if missing: where a direction streams for a while
#   WWW_DIR     where big.bin is (default /tmp/uringlb-bench-www)
#   ARGS        uringlb arguments for both (default: --workers 1 --health none --no-pin
#               --forward copy)
#   A_ARGS, B_ARGS  extra arguments for one side; @WORK@ in them is the run's scratch
#               directory (removed at the end), e.g. B_ARGS="--access-log @WORK@/access.log"
#
# Ports: backends 9101-9103, A on 8390, B on 8391. Needs nginx and wrk (bench/compare.sh
# installs them).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
die() {
	echo "ab.sh: $*" >&2
	exit 1
}
(($# >= 2 && $# <= 4)) || die "usage: bench/ab.sh A_BIN B_BIN [ROUNDS] [SECONDS]"
bins=("$1" "$2")
rounds=${3:-6}
secs=${4:-5}
for v in "$rounds" "$secs"; do [[ $v =~ ^[1-9][0-9]*$ ]] || die "expected a positive whole number, got '$v'"; done
for b in "${bins[@]}"; do [[ -x $b ]] || die "$b is not an executable"; done
for c in nginx wrk curl; do command -v "$c" >/dev/null || die "needs $c"; done
read -r -a workloads <<<"${WORKLOADS:-keepalive close}"
read -r -a common <<<"${ARGS:---workers 1 --health none --no-pin --forward copy}"
read -r -a a_args <<<"${A_ARGS:-}"
read -r -a b_args <<<"${B_ARGS:-}"
backends=(9101 9102 9103)
ports=(8390 8391)

work=$(mktemp -d /tmp/uringlb-ab.XXXXXX)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

www=${WWW_DIR:-/tmp/uringlb-bench-www}
[[ " ${workloads[*]} " != *" download "* || -r $www/big.bin ]] || die "no $www/big.bin (run bench/compare.sh --quick once)"
mid_kib=${MID_KIB:-1024}
[[ $mid_kib =~ ^[1-9][0-9]*$ ]] || die "MID_KIB: expected a positive whole number"
if [[ " ${workloads[*]} " == *" mid "* && ! -r $www/mid-$mid_kib.bin ]]; then
	mkdir -p "$www" && head -c $((mid_kib * 1024)) /dev/urandom >"$www/mid-$mid_kib.bin"
fi
sed -e "s|@WORK@|$work|g" -e "s|@WWW@|$www|g" -e "s|@B1@|${backends[0]}|g" \
	-e "s|@B2@|${backends[1]}|g" -e "s|@B3@|${backends[2]}|g" \
	"$here/lab/backend-nginx.conf" >"$work/backends.conf"
nginx -e "$work/nginx.err" -c "$work/backends.conf" >"$work/nginx.log" 2>&1 &
pids+=($!)
for side in 0 1; do
	extra=("${a_args[@]}")
	((side == 0)) || extra=("${b_args[@]}")
	extra=("${extra[@]//@WORK@/$work}")
	"${bins[side]}" --listen "127.0.0.1:${ports[side]}" --backend "127.0.0.1:${backends[0]}" \
		--backend "127.0.0.1:${backends[1]}" --backend "127.0.0.1:${backends[2]}" \
		"${common[@]}" "${extra[@]}" >"$work/ur$side.log" 2>&1 &
	pids+=($!)
	lb[side]=$!
done
for p in "${ports[@]}" "${backends[@]}"; do
	for _ in $(seq 50); do
		curl -sf -m 1 -o /dev/null "http://127.0.0.1:$p/" && break
		sleep 0.1
	done
	curl -sf -m 1 -o /dev/null "http://127.0.0.1:$p/" || {
		cat "$work"/*.log "$work/nginx.err" >&2 || true
		die "nothing answers on port $p"
	}
done

# ticks PID: user+sys clock ticks of the whole process.
ticks() {
	local s
	s=$(<"/proc/$1/stat")
	s=${s##*) }
	read -r -a v <<<"$s"
	echo $((v[11] + v[12]))
}
hz=$(getconf CLK_TCK)
# measure SIDE WORKLOAD: prints "req/s cpu_us_per_req" ("GB/s cpu_s_per_GiB" for download)
measure() {
	local side=$1 wl=$2 before after out reqs rps conns=64 hdr=()
	if [[ $wl == download ]]; then
		before=$(ticks "${lb[side]}")
		out=$(curl -sS -o /dev/null -w '%{size_download} %{time_total}' "http://127.0.0.1:${ports[side]}/big.bin")
		after=$(ticks "${lb[side]}")
		read -r size took <<<"$out"
		awk -v s="$size" -v d="$took" -v t=$((after - before)) -v hz="$hz" \
			'BEGIN{printf "%.3f %.3f\n", s / d / 1e9, t / hz / (s / 2^30)}'
		return
	fi
	local path=/
	[[ $wl == close ]] && conns=32 hdr=(-H "Connection: close")
	[[ $wl == mid ]] && conns=16 path=/mid-$mid_kib.bin
	before=$(ticks "${lb[side]}")
	out=$(wrk -t1 -c"$conns" -d"${secs}s" "${hdr[@]}" "http://127.0.0.1:${ports[side]}$path")
	after=$(ticks "${lb[side]}")
	reqs=$(awk '/requests in/{print $1}' <<<"$out")
	rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
	awk -v r="$reqs" -v t=$((after - before)) -v hz="$hz" -v rps="$rps" \
		'BEGIN{printf "%.0f %.2f\n", rps, t * 1e6 / hz / r}'
}
unit() { # unit WORKLOAD 0|1: what the rate and CPU columns hold
	local u=("req/s" "us CPU/req")
	[[ $1 == download ]] && u=("GB/s" "CPU s/GiB")
	echo "${u[$2]}"
}
median() { sort -g | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

echo "A: ${bins[0]} ${A_ARGS:-}"
echo "B: ${bins[1]} ${B_ARGS:-}"
echo "common: ${common[*]}; $rounds rounds of ${secs}s per side and workload"
for wl in "${workloads[@]}"; do
	: >"$work/$wl.0" && : >"$work/$wl.1"
	for ((r = 0; r < rounds; r++)); do
		order=(0 1)
		((r % 2)) && order=(1 0)
		for side in "${order[@]}"; do
			m=$(measure "$side" "$wl")
			echo "$m" >>"$work/$wl.$side"
			printf '%-9s round %d %s: %s %s, %s %s\n' "$wl" $((r + 1)) "$(tr 01 AB <<<"$side")" \
				"${m% *}" "$(unit "$wl" 0)" "${m#* }" "$(unit "$wl" 1)"
		done
	done
done
echo
echo "medians; rate = req/s (GB/s for download), CPU = us per request (s per GiB for download)"
printf '%-9s %10s %10s %12s %12s %8s %8s\n' workload "A rate" "B rate" "A CPU" "B CPU" "B/A rate" "B/A CPU"
for wl in "${workloads[@]}"; do
	ra=$(cut -d' ' -f1 "$work/$wl.0" | median) rb=$(cut -d' ' -f1 "$work/$wl.1" | median)
	ca=$(cut -d' ' -f2 "$work/$wl.0" | median) cb=$(cut -d' ' -f2 "$work/$wl.1" | median)
	awk -v w="$wl" -v ra="$ra" -v rb="$rb" -v ca="$ca" -v cb="$cb" \
		'function f(x) { return x >= 100 ? sprintf("%.0f", x) : sprintf("%.3f", x) }
		BEGIN{printf "%-9s %10s %10s %12s %12s %8.3f %8.3f\n", w, f(ra), f(rb), f(ca), f(cb), rb/ra, cb/ca}'
done
