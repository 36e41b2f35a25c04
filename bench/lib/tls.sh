# shellcheck shell=bash
# Run alone, shellcheck sees neither compare.sh's variables (here, work, secs, ...) nor that
# port, pid_of and lbpids are associative arrays (`shellcheck -x bench/compare.sh` does):
# shellcheck disable=SC2154,SC2004
# The TLS workload of compare.sh (WORKLOADS=tls): a new TLS connection per request, full
# handshake plus one small HTTP request (wrk, https://localhost:PORT/, Connection: close),
# through balancers that route by the ClientHello's server name (SNI) without decrypting:
#
#   uringlb-sni  uringlb, four services sharing the listen address, routed by `sni`
#                (lab/uringlb-sni.toml: api.example.test, www.example.test, localhost,
#                *.example.test)
#   uringlb-tcp  uringlb forwarding the same traffic as plain TCP (no sni): the difference
#                to uringlb-sni is the cost of SNI routing per connection
#   haproxy-sni  HAProxy mode tcp, req.ssl_sni (lab/haproxy-sni.cfg), one thread
#   nginx-sni    NGINX stream, ssl_preread and a map (lab/nginx-sni.conf), one worker
#
# all in front of three nginx HTTPS backends (lab/tls-backend-nginx.conf, one worker, no
# session cache or tickets, TLS 1.3) with an ECDSA P-256 certificate made by openssl in the
# run's scratch directory. wrk sends the URL's host, localhost, as SNI.
#
# Sourced by compare.sh after its helpers (start, children, cpu_ticks, port_free, die, ...)
# are defined; every name here starts with tls_.

tls_all_systems=(uringlb-sni uringlb-tcp haproxy-sni nginx-sni)
# Ports at offset 0 (compare.sh moves them with its own block): backends 9021-9023,
# balancers 8270-8273, the admin API of the two uringlb processes 9270-9271.
declare -A tls_port0=([uringlb-sni]=8270 [uringlb-tcp]=8271 [haproxy-sni]=8272 [nginx-sni]=8273)
declare -A tls_admin0=([uringlb-sni]=9270 [uringlb-tcp]=9271)
tls_backend_port0=(9021 9022 9023)
tls_conns=${TLS_CONNS:-32}
[[ $tls_conns =~ ^[1-9][0-9]*$ ]] || die "TLS_CONNS: expected a whole number above 0, got '$tls_conns'"
tls_systems=()
declare -A tls_admin
tls_backend_ports=()

# tls_pick_systems NAME...: the TLS systems among the names (SYSTEMS), all when none given
tls_pick_systems() {
	local s
	tls_systems=()
	if (($# == 0)); then
		tls_systems=("${tls_all_systems[@]}")
		return
	fi
	for s in "$@"; do
		if [[ -n ${tls_port0[$s]:-} ]]; then tls_systems+=("$s"); fi
	done
}

# tls_ports_free OFFSET: whether every port the TLS workload needs is free at OFFSET
tls_ports_free() {
	local off=$1 p s
	for p in "${tls_backend_port0[@]}"; do port_free $((p + off)) || return 1; done
	for s in "${tls_systems[@]}"; do
		port_free $((tls_port0[$s] + off)) || return 1
		if [[ -n ${tls_admin0[$s]:-} ]]; then port_free $((tls_admin0[$s] + off)) || return 1; fi
	done
	return 0
}

# tls_set_ports OFFSET: fills port[SYSTEM], tls_admin[SYSTEM] and tls_backend_ports
tls_set_ports() {
	local off=$1 p s
	tls_backend_ports=()
	for p in "${tls_backend_port0[@]}"; do tls_backend_ports+=($((p + off))); done
	for s in "${tls_systems[@]}"; do
		port[$s]=$((tls_port0[$s] + off))
		if [[ -n ${tls_admin0[$s]:-} ]]; then tls_admin[$s]=$((tls_admin0[$s] + off)); fi
	done
}

tls_render() { # tls_render TEMPLATE PORT > file
	sed -e "s|@WORK@|$work|g" -e "s|@PORT@|$2|g" \
		-e "s|@CERT@|$work/tls-cert.pem|g" -e "s|@KEY@|$work/tls-key.pem|g" \
		-e "s|@B1@|${tls_backend_ports[0]}|g" -e "s|@B2@|${tls_backend_ports[1]}|g" \
		-e "s|@B3@|${tls_backend_ports[2]}|g" "$1"
}

# tls_get NAME PORT [curl args]: GET https://NAME:PORT/ resolved to 127.0.0.1 (no
# verification: routing is what is checked, not trust); prints the body
tls_get() {
	local name=$1 p=$2
	shift 2
	curl -sSk -m 5 --resolve "$name:$p:127.0.0.1" "$@" "https://$name:$p/"
}

# tls_wait NAME PORT: until GET https://localhost:PORT/ answers, or fail with NAME's log
tls_wait() {
	local name=$1 p=$2
	for _ in $(seq 100); do
		tls_get localhost "$p" -f -o /dev/null 2>/dev/null && return 0
		kill -0 "${pid_of[$name]}" 2>/dev/null || {
			cat "$work/$name.log" >&2
			die "$name exited at startup"
		}
		sleep 0.1
	done
	cat "$work/$name.log" >&2
	die "$name does not answer https on 127.0.0.1:$p"
}

# tls_metric SYSTEM PATTERN: the sum of the uringlb metric lines matching PATTERN (an awk
# regular expression), from the system's /metrics
tls_metric() {
	curl -sf -m 5 "http://127.0.0.1:${tls_admin[$1]}/metrics" |
		awk -v pat="$2" '$0 ~ pat { s += $NF } END { printf "%d\n", s }'
}
tls_accepted() { tls_metric "$1" '^uringlb_accepted_total'; }

# tls_start: the certificate, the TLS backends and the TLS systems; fills lbpids
tls_start() {
	local s kids
	local -a kid_arr
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
		-subj /CN=localhost -addext "subjectAltName=DNS:localhost,DNS:*.example.test" \
		-keyout "$work/tls-key.pem" -out "$work/tls-cert.pem" >"$work/openssl.log" 2>&1 ||
		die "openssl could not make the certificate: $(cat "$work/openssl.log")"
	tls_render "$here/lab/tls-backend-nginx.conf" 0 >"$work/tls-backend-nginx.conf"
	start tls-backends nginx -e "$work/tls-backend-nginx.err" -c "$work/tls-backend-nginx.conf"
	for p in "${tls_backend_ports[@]}"; do tls_wait tls-backends "$p"; done
	for s in "${tls_systems[@]}"; do
		case $s in
		uringlb-sni)
			tls_render "$here/lab/uringlb-sni.toml" "${port[$s]}" >"$work/$s.toml"
			start "$s" "$uringlb" --config "$work/$s.toml" --admin "127.0.0.1:${tls_admin[$s]}" \
				--workers 1 --health none --grace 1s "${pin_arg[@]}" "${ur_extra[@]}"
			;;
		uringlb-tcp)
			start "$s" "$uringlb" --listen "127.0.0.1:${port[$s]}" --admin "127.0.0.1:${tls_admin[$s]}" \
				--backend "127.0.0.1:${tls_backend_ports[0]}" --backend "127.0.0.1:${tls_backend_ports[1]}" \
				--backend "127.0.0.1:${tls_backend_ports[2]}" \
				--workers 1 --health none --grace 1s "${pin_arg[@]}" "${ur_extra[@]}"
			;;
		haproxy-sni) tls_render "$here/lab/haproxy-sni.cfg" "${port[$s]}" >"$work/$s.cfg" && start "$s" haproxy -f "$work/$s.cfg" ;;
		nginx-sni)
			tls_render "$here/lab/nginx-sni.conf" "${port[$s]}" >"$work/$s.conf"
			start "$s" nginx -e "$work/nginx-sni.err" -c "$work/$s.conf"
			;;
		esac
	done
	for s in "${tls_systems[@]}"; do
		tls_wait "$s" "${port[$s]}"
		lbpids[$s]=${pid_of[$s]}
	done
	for name in tls-backends nginx-sni; do
		[[ -n ${pid_of[$name]:-} ]] || continue
		kids=$(children "${pid_of[$name]}")
		[[ -n $kids ]] || die "$name has no worker process"
		read -r -a kid_arr <<<"$kids"
		extra+=("${kid_arr[@]}")
		if [[ $name == nginx-sni ]]; then lbpids[$name]=$kids; fi
	done
}

# tls_handshake [s_client args]: one HTTP request over TLS to the first backend; prints how
# the handshake went ("New, TLSv1.3", or "Reused, ..." when a session was resumed)
tls_handshake() {
	printf 'GET / HTTP/1.0\r\n\r\n' | timeout 10 openssl s_client -connect "127.0.0.1:${tls_backend_ports[0]}" \
		-servername localhost -ign_eof "$@" 2>/dev/null | sed -n 's/^\(New\|Reused\), \(TLSv[0-9.]*\),.*/\1, \2/p'
}

# tls_check: before measuring, that routing works as configured: every name a service takes
# reaches a backend through each system, and a name none takes does not (uringlb counts it
# as no_route)
tls_check() {
	local s name body before after hs
	# A client that kept the session of one connection offers it on the next: the backends
	# must refuse it (no session cache, no tickets) and speak TLS 1.3.
	hs=$(tls_handshake -sess_out "$work/tls-session.pem")
	hs+=$'\n'$(tls_handshake -sess_in "$work/tls-session.pem")
	[[ $hs == $'New, TLSv1.3\nNew, TLSv1.3' ]] ||
		die "TLS backend: expected two new TLS 1.3 handshakes, the second offering the first's session, got: ${hs//$'\n'/; }"
	for s in "${tls_systems[@]}"; do
		for name in localhost api.example.test www.example.test a.example.test; do
			body=$(tls_get "$name" "${port[$s]}" 2>&1) || die "$s: https://$name/ failed: $body"
			[[ $body == backend-[123] ]] || die "$s: https://$name/ answered '$body', not a backend's name"
		done
		[[ $s == uringlb-tcp ]] && continue
		if [[ $s == uringlb-sni ]]; then before=$(tls_metric "$s" '^uringlb_rejected_total.*reason="no_route"'); fi
		if body=$(tls_get a.b.example.test "${port[$s]}" 2>&1); then
			die "$s: https://a.b.example.test/ (a name no service takes) answered '$body'"
		fi
		if [[ $s == uringlb-sni ]]; then
			for _ in $(seq 50); do
				after=$(tls_metric "$s" '^uringlb_rejected_total.*reason="no_route"')
				((after == before + 1)) && break
				sleep 0.1
			done
			((after == before + 1)) || die "$s: a name no service takes was not counted as no_route ($before, then $after)"
		fi
	done
	echo "tls: backends make a full TLS 1.3 handshake each time; every name routes through ${tls_systems[*]}; a.b.example.test is refused (uringlb: no_route)"
}

# tls_warmup: a second of load through each TLS system, not measured
tls_warmup() {
	local s
	for s in "${tls_systems[@]}"; do
		wrk -t1 -c8 -d1s -H "Connection: close" "https://localhost:${port[$s]}/" >/dev/null 2>&1 || true
	done
}

# tls_run ROUND SYSTEM: wrk with a new TLS connection per request through SYSTEM. For
# uringlb the connections it accepted are counted too and must be at least the requests
# (otherwise wrk was reusing connections, and the figures would not be per connection).
tls_run() {
	local round=$1 sys=$2 c0 t0 c1 t1 out rc=0 json ticks acc0='' acc1='' accepted='' reqs
	if [[ -n ${tls_admin[$sys]:-} ]]; then acc0=$(tls_accepted "$sys"); fi
	read -r c0 t0 < <(cpu_ticks "${lbpids[$sys]}")
	out=$(wrk -t1 -c"$tls_conns" -d"${secs}s" --latency -s "$here/lab/stats.lua" \
		-H "Connection: close" "https://localhost:${port[$sys]}/" 2>&1) || rc=$?
	read -r c1 t1 < <(cpu_ticks "${lbpids[$sys]}")
	if [[ -n $acc0 ]]; then
		acc1=$(tls_accepted "$sys")
		accepted=$((acc1 - acc0))
	fi
	ticks=$((c1 - c0))
	printf '### round %s %s tls\n%s\n' "$round" "$sys" "$out" >>"$log"
	json=$(sed -n 's/^WRKJSON //p' <<<"$out")
	if ((rc != 0)) || [[ -z $json ]]; then
		printf '{"round":%d,"system":"%s","workload":"tls","ok":false,"error":"wrk exited %d without results"}\n' \
			"$round" "$sys" "$rc" >>"$runs"
		printf '%-9s %-15s FAILED (wrk exit %d; see %s)\n' tls "$sys" "$rc" "$log"
		return 0
	fi
	reqs=$(sed -E 's/^\{"requests":([0-9]+),.*/\1/' <<<"$json")
	if [[ -n $accepted ]] && ((accepted < reqs)); then
		printf '{"round":%d,"system":"%s","workload":"tls","ok":false,"error":"%d requests over %d accepted connections: wrk reused connections"}\n' \
			"$round" "$sys" "$reqs" "$accepted" >>"$runs"
		printf '%-9s %-15s FAILED (%d requests but only %d connections accepted)\n' tls "$sys" "$reqs" "$accepted"
		return 0
	fi
	printf '{"round":%d,"system":"%s","workload":"tls","ok":true,"connections":%d,%s"cpu_ticks":%d,"cpu_ticks_tasks":%d,"clk_tck":%d,"wrk":%s}\n' \
		"$round" "$sys" "$tls_conns" "${accepted:+\"accepted\":$accepted,}" "$ticks" "$((t1 - t0))" "$hz" "$json" >>"$runs"
	awk -v sys="$sys" -v ticks="$ticks" -v hz="$hz" -v acc="$accepted" '
		/Requests\/sec/ { rps = $2 }
		/requests in/ { reqs = $1 }
		$1 == "99%" { p99 = $2 }
		/Socket errors|Non-2xx/ { err = err " " $0 }
		END { printf "%-9s %-15s %9.0f conn/s p99 %-8s  %7.2f us CPU/conn%s%s\n", "tls", sys, rps, p99,
			(reqs > 0 ? ticks / hz * 1e6 / reqs : 0), (acc != "" ? "  accepted " acc : ""), err }' <<<"$out"
}

# tls_round ROUND: the TLS workload through every TLS system, the order rotating by round
tls_round() {
	local r=$1 n=${#tls_systems[@]} i s
	for ((i = 0; i < n; i++)); do
		s=${tls_systems[$(((r - 1 + i) % n))]}
		tls_run "$r" "$s"
		sleep "$pause"
	done
}
