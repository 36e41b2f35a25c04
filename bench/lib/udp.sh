# shellcheck shell=bash disable=SC2154,SC2034
# The UDP part of bench/compare.sh (sourced by it; uses its start, cpu_ticks, children,
# die, $work, $here, $bench, $uringlb, $secs, $runs, $log, $hz, $pause, pin_arg, ur_extra).
#
# uringlb (--protocol udp, one worker) and the NGINX stream module (listen ... udp, one
# worker) in front of the same three UDP echo backends (uringlb-bench serve-udp-echo).
# HAProxy (community edition) does not proxy UDP, so it is not in this part.
#
# Each balancer has two addresses: one where a flow (an NGINX session) lasts while its
# client keeps sending (uringlb --udp-idle-timeout 10s; NGINX proxy_timeout 10s), and a
# DNS-like one where each flow ends after one response (uringlb --udp-responses 1; NGINX
# proxy_responses 1). uringlb runs as two processes (one per address) and each workload
# is measured on the process that carries it; NGINX's one worker serves both.
#
# Workloads (uringlb-bench udp, 36-byte DNS queries echoed back):
#   udp           64 steady flows, closed loop: datagrams per second, CPU per request
#   udp-rate      64 steady flows, open loop at $UDP_RATE requests/s: latency
#   udp-new-flow  64 clients, each request from a new source port (a new flow) to the
#                 DNS-like address, closed loop: what setting up a flow costs
# A request is one datagram to the balancer and one back; a request unanswered within
# 1 s counts as lost (the table's errors).
#
# Environment: UDP_RATE (default 20000), UDP_FLOWS (default 64), UDP_SYSTEMS (default
# "uringlb nginx").
# Ports: backends 9011-9013, uringlb 8380 and 8381, NGINX 8382 and 8383 (UDP), or the
# first block 100, 200, ... higher that is free.

udp_rate=${UDP_RATE:-20000}
udp_flows=${UDP_FLOWS:-64}
read -r -a udp_systems <<<"${UDP_SYSTEMS:-uringlb nginx}"
for v in "$udp_rate" "$udp_flows"; do
	[[ $v =~ ^[1-9][0-9]*$ ]] || die "UDP_RATE and UDP_FLOWS must be positive whole numbers, got '$v'"
done
for s in "${udp_systems[@]}"; do
	[[ $s == uringlb || $s == nginx ]] || die "unknown UDP system '$s' (known: uringlb nginx)"
done
declare -A udp_port     # "SYSTEM steady" / "SYSTEM dns" -> port
declare -A udp_cpu_pids # same keys -> the pids whose CPU a run on that address counts
udp_backends=()

udp_port_free() { [[ -z $(ss -Hlun "sport = :$1") ]]; }

# wait_udp NAME PORT: until a query through 127.0.0.1:PORT is answered
wait_udp() {
	local name=$1 p=$2
	for _ in $(seq 100); do
		"$bench" udp -t "127.0.0.1:$p" -f 1 --requests 1 -d 2s --timeout 200ms --json >/dev/null 2>&1 && return 0
		kill -0 "${pid_of[$name]}" 2>/dev/null || {
			cat "$work/$name.log" >&2
			die "$name exited at startup"
		}
		sleep 0.1
	done
	cat "$work/$name.log" >&2
	die "$name does not answer UDP on 127.0.0.1:$p"
}

# udp_start: picks ports, starts the echo backends and the balancers, waits for them.
udp_start() {
	local off free p s i
	local -a ur_udp
	for off in 0 100 200 300 400 500 600 700 800 900; do
		free=1
		for p in 9011 9012 9013 8380 8381 8382 8383; do udp_port_free $((p + off)) || free=0; done
		if ((free)); then break; fi
		off=
	done
	[[ -n $off ]] || die "no free block of UDP ports (9011-9013/8380-8383 and 9 more, 100 apart)"
	udp_backends=($((9011 + off)) $((9012 + off)) $((9013 + off)))
	udp_port[uringlb steady]=$((8380 + off))
	udp_port[uringlb dns]=$((8381 + off))
	udp_port[nginx steady]=$((8382 + off))
	udp_port[nginx dns]=$((8383 + off))
	for i in 0 1 2; do
		start "udp-echo-$i" "$bench" serve-udp-echo --listen "127.0.0.1:${udp_backends[i]}"
		wait_udp "udp-echo-$i" "${udp_backends[i]}"
	done
	for s in "${udp_systems[@]}"; do
		case $s in
		uringlb)
			ur_udp=(--protocol udp --workers 1 --health none --grace 1s "${pin_arg[@]}"
				--backend "127.0.0.1:${udp_backends[0]}" --backend "127.0.0.1:${udp_backends[1]}"
				--backend "127.0.0.1:${udp_backends[2]}" "${ur_extra[@]}")
			start uringlb-udp "$uringlb" --listen "127.0.0.1:${udp_port[uringlb steady]}" \
				--udp-idle-timeout 10s "${ur_udp[@]}"
			start uringlb-udp-dns "$uringlb" --listen "127.0.0.1:${udp_port[uringlb dns]}" \
				--udp-responses 1 --udp-idle-timeout 5s "${ur_udp[@]}"
			wait_udp uringlb-udp "${udp_port[uringlb steady]}"
			wait_udp uringlb-udp-dns "${udp_port[uringlb dns]}"
			udp_cpu_pids[uringlb steady]=${pid_of[uringlb-udp]}
			udp_cpu_pids[uringlb dns]=${pid_of[uringlb-udp-dns]}
			;;
		nginx)
			sed -e "s|@WORK@|$work|g" -e "s|@PORT@|${udp_port[nginx steady]}|g" \
				-e "s|@PORT2@|${udp_port[nginx dns]}|g" -e "s|@U1@|${udp_backends[0]}|g" \
				-e "s|@U2@|${udp_backends[1]}|g" -e "s|@U3@|${udp_backends[2]}|g" \
				"$here/lab/nginx-udp.conf" >"$work/nginx-udp.conf"
			start nginx-udp nginx -e "$work/nginx-udp.err" -c "$work/nginx-udp.conf"
			wait_udp nginx-udp "${udp_port[nginx steady]}"
			wait_udp nginx-udp "${udp_port[nginx dns]}"
			# Its worker does the work (the master only supervises).
			local kids
			kids=$(children "${pid_of[nginx-udp]}")
			[[ -n $kids ]] || die "nginx-udp has no worker process"
			read -r -a kid_arr <<<"$kids"
			extra+=("${kid_arr[@]}")
			udp_cpu_pids[nginx steady]=$kids
			udp_cpu_pids[nginx dns]=$kids
			;;
		esac
	done
	echo "UDP systems: ${udp_systems[*]} (HAProxy has no UDP proxying); backends ${udp_backends[*]}; $udp_flows flows, fixed rate $udp_rate req/s"
}

# udp_run ROUND SYSTEM WORKLOAD ADDRESS [uringlb-bench udp args...]
udp_run() {
	local round=$1 sys=$2 wl=$3 addr=$4 c0 t0 c1 t1 out rc=0 json ticks rate_field=
	shift 4
	local pids=${udp_cpu_pids[$sys $addr]}
	read -r c0 t0 < <(cpu_ticks "$pids")
	out=$("$bench" udp -t "127.0.0.1:${udp_port[$sys $addr]}" -f "$udp_flows" -d "${secs}s" \
		--wrk-json "$@" 2>&1) || rc=$?
	read -r c1 t1 < <(cpu_ticks "$pids")
	ticks=$((c1 - c0))
	printf '### round %s %s %s\n%s\n' "$round" "$sys" "$wl" "$out" >>"$log"
	json=$(sed -n 's/^WRKJSON //p' <<<"$out")
	if ((rc != 0)) || [[ -z $json ]]; then
		printf '{"round":%d,"system":"%s","workload":"%s","ok":false,"error":"uringlb-bench udp exited %d without results"}\n' \
			"$round" "$sys" "$wl" "$rc" >>"$runs"
		printf '%-12s %-15s FAILED (uringlb-bench exit %d; see %s)\n' "$wl" "$sys" "$rc" "$log"
		return 0
	fi
	if [[ $wl == udp-rate ]]; then rate_field=",\"offered_rate\":$udp_rate"; fi
	printf '{"round":%d,"system":"%s","workload":"%s","ok":true,"connections":%d%s,"cpu_ticks":%d,"cpu_ticks_tasks":%d,"clk_tck":%d,"wrk":%s}\n' \
		"$round" "$sys" "$wl" "$udp_flows" "$rate_field" "$ticks" "$((t1 - t0))" "$hz" "$json" >>"$runs"
	sed -E 's/.*"requests":([0-9]+),"duration_us":([0-9]+).*"timeout":([0-9]+).*"percentile":99\.0,"us":([0-9]+).*/\1 \2 \3 \4/' <<<"$json" |
		awk -v wl="$wl" -v sys="$sys" -v ticks="$ticks" -v hz="$hz" -v rate="$udp_rate" '{
			rps = $1 / ($2 / 1e6)
			printf "%-12s %-15s %9.0f req/s  p99 %-8s  %7.2f us CPU/req  lost %d%s\n", wl, sys, rps,
				sprintf("%.2fms", $4 / 1000), ($1 > 0 ? ticks / hz * 1e6 / $1 : 0), $3,
				(wl == "udp-rate" && rps < 0.95 * rate ? "  (short of the offered rate)" : "") }'
}

# udp_round ROUND: every UDP workload against every UDP system, the order rotated by round
udp_round() {
	local r=$1 n=${#udp_systems[@]} i s
	for ((i = 0; i < n; i++)); do
		s=${udp_systems[$(((r - 1 + i) % n))]}
		udp_run "$r" "$s" udp steady
		udp_run "$r" "$s" udp-rate steady --rate "$udp_rate"
		udp_run "$r" "$s" udp-new-flow dns --new-flow-per-request
		sleep "$pause"
	done
}

# udp_warmup: a second of each system, not measured
udp_warmup() {
	local s
	for s in "${udp_systems[@]}"; do
		"$bench" udp -t "127.0.0.1:${udp_port[$s steady]}" -f 16 -d 1s >/dev/null 2>&1 || true
	done
}

# udp_meta: compare-report --meta arguments describing the UDP part
udp_meta=(
	--meta "udp_offered_rate=$udp_rate"
	--meta "udp_flows=$udp_flows"
	--meta "udp=uringlb-bench udp (36-byte DNS queries, 1 s loss timeout) through uringlb --protocol udp (two processes: --udp-idle-timeout 10s, and --udp-responses 1 for udp-new-flow) and NGINX stream listen ... udp (one worker; proxy_timeout 10s, and proxy_responses 1 for udp-new-flow) to three uringlb-bench serve-udp-echo backends; HAProxy has no UDP; a request is a datagram each way, errors are lost requests"
)

# udp_plot TIMESTAMP: the fixed-rate latency plot
udp_plot() {
	"$bench" plot --input "$results/latest.json" --output "$results/latency-udp-rate-$1.svg" \
		--workload udp-rate --title "UDP at $udp_rate req/s, $udp_flows flows: latency (medians of $rounds)"
	cp "$results/latency-udp-rate-$1.svg" "$results/latency-udp-rate.svg"
}
