#!/usr/bin/env bash
# compare.sh: ewgate against HAProxy and nginx as SNI-routing TCP proxies,
# on loopback, one proxy at a time (but in lat, where all take turns), with
# each figure's ratio to the best peer and issue 15's targets checked at
# the end. See bench/README.md.
#
# Environment (defaults in brackets):
#   PROXIES    proxies to measure                     [ewgate haproxy nginx]
#   MODES      modes to run                           [idle throughput rr lat connect tls]
#   IDLE_N     idle connection counts                 [3000 9000]
#   MIB        MiB streamed each way, in all (throughput) [1024]
#   THR_C      throughput connections at once         [4]
#   RR_C       rr connections                         [32]
#   RR_SIZE    rr request (and echo) size in bytes    [128]
#   LAT_RATE   lat: round trips/s of each set, paced, on RR_C
#              connections of RR_SIZE (rr at a fixed load) [10000]
#   LAT_SLICE  lat: each set's turn (a Go duration)   [100ms]
#   LAT_SECS   lat: seconds each set is active: 150,000 round trips at
#              the default rate, 150 beyond its p99.9 [15]
#   LAT_TURNS  lat: keep the turn log, a line per turn (loadgen rr
#              -turns: when each set's turn ran, its p99, largest,
#              sent late), in this file               []
#   CONN_C     connect and tls workers                [16]
#   SECS       seconds of each rr, connect and tls run  [5]
#   DIRECT     1: add a "direct (no proxy)" row       [1]
#   OUT        also write the report to this file     []
#   KEEP       1: keep the work directory (configs, logs) [0]
#   BASE       a git ref: also measure ewgate built from it, as
#              "ewgate@REF" (git archive, read-only)  []
#   EWGATE_ARGS more flags for every ewgate, split on spaces
#              (--admin-pprof, to take a trace)       []
#   EWGATE_ENV  NAME=VALUE words for every ewgate's environment only
#              (GOMAXPROCS=1: the client's stays)     []
set -euo pipefail

PROXIES=${PROXIES:-ewgate haproxy nginx}
MODES=${MODES:-idle throughput rr lat connect tls}
IDLE_N=${IDLE_N:-3000 9000}
MIB=${MIB:-1024}
THR_C=${THR_C:-4}
RR_C=${RR_C:-32}
RR_SIZE=${RR_SIZE:-128}
LAT_RATE=${LAT_RATE:-10000}
LAT_SLICE=${LAT_SLICE:-100ms}
LAT_SECS=${LAT_SECS:-15}
LAT_TURNS=${LAT_TURNS:-}
CONN_C=${CONN_C:-16}
SECS=${SECS:-5}
DIRECT=${DIRECT:-1}
OUT=${OUT:-}
KEEP=${KEEP:-0}
BASE=${BASE:-}

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/ewgate-bench.XXXXXX)
# shellcheck source=lib.sh
source "$repo/bench/lib.sh"

t_start=$(date +%s)
date_start=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
ticks_start=$(cpu_ticks)
lat_steal=

for bin in haproxy nginx go; do
	command -v "$bin" >/dev/null || { log "$bin not found (apt-get install -y haproxy nginx libnginx-mod-stream)"; exit 1; }
done
stream_module=/usr/lib/nginx/modules/ngx_stream_module.so
[[ -f $stream_module ]] || { log "$stream_module missing (apt-get install -y libnginx-mod-stream)"; exit 1; }

# Every process started from here inherits the hard open-file limit as its
# soft one (Go programs raise it themselves; HAProxy and nginx size their
# tables from it). A proxied connection takes 2 descriptors in the proxy
# and 1 in the client and the sink each.
ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
max_n=0
for n in $IDLE_N; do ((n <= max_n)) || max_n=$n; done
if [[ $nofile != unlimited ]] && ((2 * max_n + 500 > nofile)); then
	log "open-file limit $nofile is too low for IDLE_N up to $max_n (2 per proxied connection and some)"
	exit 1
fi
# The peers' limits, sized for the largest N (HAProxy's pipes take 2
# descriptors each, and maxconn counts client connections).
hap_maxconn=$((max_n + 500))
hap_maxpipes=250
ngx_conns=$((2 * max_n + 1000)) # per worker: client and upstream sides, all on one worker at worst

build
lg=$work/bin/loadgen
# What was built, and a hash of the data-plane sources (others may be
# editing them).
built+=", gateway/ and sni/ sources sha256 $(cat "$repo"/gateway/*.go "$repo"/sni/*.go | sha256sum | cut -c1-12)"
command="${BASE:+BASE=$BASE }${EWGATE_ARGS:+EWGATE_ARGS=\"$EWGATE_ARGS\" }${EWGATE_ENV:+EWGATE_ENV=\"$EWGATE_ENV\" }PROXIES=\"$PROXIES\" MODES=\"$MODES\" IDLE_N=\"$IDLE_N\" MIB=$MIB THR_C=$THR_C RR_C=$RR_C RR_SIZE=$RR_SIZE LAT_RATE=$LAT_RATE LAT_SLICE=$LAT_SLICE LAT_SECS=$LAT_SECS CONN_C=$CONN_C SECS=$SECS DIRECT=$DIRECT bench/compare.sh"
[[ -z $BASE ]] || PROXIES="ewgate@$BASE $PROXIES"
# sed, not head: head would exit early, haproxy get SIGPIPE, and pipefail
# end the script.
hap_version=$(haproxy -v | sed -n '1s/^\([^ ]* [^ ]* [^ ]*\).*/\1/p')
ngx_version=$(nginx -v 2>&1 | cut -d' ' -f3)

# Two routes, as Istio names them: port 9080 to the sink's plain listener
# (replayed ClientHello), port 9443 to its TLS 1.3 mTLS listener.
sni=outbound_.9080_._.echo.demo.svc.cluster.local
sni_tls=outbound_.9443_._.echo.demo.svc.cluster.local
# ewgate's development CA and the SVIDs of the tls mode's two ends, as
# Istio names them: the client a sidecar of service account "sleep", the
# sink one of "echo".
"$work/bin/ewgate" ca init --trust-domain cluster.local --out "$work/ca" >/dev/null
"$work/bin/ewgate" ca issue --ca "$work/ca" --spiffe-id spiffe://cluster.local/ns/demo/sa/echo --out "$work/svid/sink" >/dev/null
"$work/bin/ewgate" ca issue --ca "$work/ca" --spiffe-id spiffe://cluster.local/ns/demo/sa/sleep --out "$work/svid/client" >/dev/null
sink_tls_port=$("$lg" freeport)
start_sink "$lg" -tls-listen "127.0.0.1:$sink_tls_port" -tls-svid "$work/svid/sink"

# start_<proxy> writes the proxy's config, starts it in the foreground as
# a child of this script and sets proxy_pid and proxy_port.

# start_ewgate BINARY
start_ewgate() {
	# A directory per binary: with BASE two ewgates run at once in lat.
	local dir=$work/${1##*/} admin
	mkdir -p "$dir"
	proxy_port=$("$lg" freeport)
	admin=$("$lg" freeport)
	cat >"$dir/mesh.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network-gateway, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - port: {number: $proxy_port, name: tls, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: ["*.local"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: demo}
spec:
  hosts: [echo.demo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: tcp-echo, protocol: TCP}
  - {number: 9443, name: tcp-echo-tls, protocol: TCP}
  endpoints:
  - address: 127.0.0.1
    ports: {tcp-echo: $sink_port, tcp-echo-tls: $sink_tls_port}
    network: bench
    labels: {app: echo, security.istio.io/tlsMode: istio}
EOF
	# The sink is on loopback, which ewgate refuses as an endpoint
	# without --endpoint-allow-loopback.
	local args=(run -f "$dir/mesh.yaml" --network bench --node-labels istio=eastwestgateway
		--bind-address 127.0.0.1 --endpoint-allow-loopback --admin-address "127.0.0.1:$admin" --status-address ""
		--log-level warn --drain-timeout 1s)
	local extra env
	read -r -a extra <<<"${EWGATE_ARGS:-}"
	read -r -a env <<<"${EWGATE_ENV:-}"
	args+=("${extra[@]}")
	ewgate_cmd="ewgate ${args[*]}"
	env "${env[@]}" "$1" "${args[@]}" >>"$work/ewgate.log" 2>&1 &
	proxy_pid=$!
	started+=($proxy_pid)
}

# start_haproxy: with option splice-auto, or with splicing forced both
# ways if hap_splice is "forced" (its config is then haproxy-forced.cfg).
start_haproxy() {
	local dir=$work/haproxy cfg=haproxy.cfg splice="option splice-auto"
	if [[ ${hap_splice:-auto} == forced ]]; then
		cfg=haproxy-forced.cfg
		splice=$'option splice-request\n    option splice-response'
	fi
	mkdir -p "$dir"
	proxy_port=$("$lg" freeport)
	cat >"$dir/$cfg" <<EOF
global
    nbthread 2
    # maxconn counts client connections (2 descriptors each) and each
    # pipe takes 2 more: $hap_maxconn and $hap_maxpipes stay under the
    # $nofile open-file limit ($((2 * hap_maxconn + 2 * hap_maxpipes)) plus listeners).
    maxconn $hap_maxconn
    maxpipes $hap_maxpipes

defaults
    mode tcp
    maxconn $hap_maxconn
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    $splice

frontend sni
    bind 127.0.0.1:$proxy_port
    tcp-request inspect-delay 5s
    tcp-request content accept if { req_ssl_hello_type 1 }
    use_backend echo if { req.ssl_sni -i $sni }
    use_backend echo-tls if { req.ssl_sni -i $sni_tls }

backend echo
    server sink 127.0.0.1:$sink_port

backend echo-tls
    server sink-tls 127.0.0.1:$sink_tls_port
EOF
	haproxy -db -f "$dir/$cfg" >>"$work/haproxy.log" 2>&1 &
	proxy_pid=$!
	started+=($proxy_pid)
}

start_nginx() {
	local dir=$work/nginx
	mkdir -p "$dir"
	proxy_port=$("$lg" freeport)
	cat >"$dir/nginx.conf" <<EOF
load_module $stream_module;
daemon off;
worker_processes 2;
worker_rlimit_nofile $nofile;
pid $dir/nginx.pid;
error_log $dir/error.log warn;

events {
    # Per worker, and a proxied connection is two (client and upstream).
    worker_connections $ngx_conns;
}

stream {
    map \$ssl_preread_server_name \$upstream {
        $sni 127.0.0.1:$sink_port;
        $sni_tls 127.0.0.1:$sink_tls_port;
        default 127.0.0.1:9;
    }
    server {
        listen 127.0.0.1:$proxy_port reuseport;
        ssl_preread on;
        proxy_pass \$upstream;
        proxy_timeout 1h;
        proxy_half_close on;
    }
}
EOF
	nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >>"$work/nginx.log" 2>&1 &
	proxy_pid=$!
	started+=($proxy_pid)
}

# start_proxy starts proxy $1 and waits until it accepts.
start_proxy() {
	case $1 in
	ewgate | ewgate@*) start_ewgate "$work/bin/$1" ;;
	haproxy | nginx) "start_$1" ;;
	*) log "unknown proxy $1"; return 1 ;;
	esac
	if ! wait_port "$proxy_port" "$proxy_pid"; then
		log "$1 did not start; its log:"
		cat "$work/${1%@*}.log" "$work/${1%@*}/error.log" 2>/dev/null >&2 || true
		return 1
	fi
}

# stop_proxy stops the running proxy and forgets its PID.
stop_proxy() {
	stop "$proxy_pid"
	local keep=() pid
	for pid in "${started[@]}"; do [[ $pid == "$proxy_pid" ]] || keep+=("$pid"); done
	started=("${keep[@]}")
}

# cpu_figure MODE ROW TICKS: the proxy's CPU per operation from a loadgen
# row and the CPU ticks (proc_ticks) the proxy used during it: s per GB
# moved (per_gb) in throughput, µs per round trip in rr and lat, s per
# 1,000 connections in connect and tls. The operation counts are the
# row's own (all round trips, all connections).
cpu_figure() {
	local s
	s=$(ticks_s "$3")
	if [[ $1 == throughput ]]; then
		per_gb "$s"
		return
	fi
	echo "$2" | awk -F'|' -v m="$1" -v s="$s" '{
		gsub(/ /, "")
		if (m == "rr" && $5 > 0) printf "%.1f", s * 1e6 / $5
		else if (m == "lat" && $6 > 0) printf "%.1f", s * 1e6 / $6
		else if ((m == "connect" || m == "tls") && $4 > 0) printf "%.3f", s * 1000 / $4
		else printf "-"
	}'
}

# record MODE ROW: the figures of a finished row (CPU column last) that the
# summary needs, as "key<TAB>label<TAB>value" lines in $work/figures.
record() {
	echo "$2" | awk -F'|' -v m="$1" 'BEGIN { OFS = "\t" }
	function t(x) { gsub(/^ +| +$/, "", x); return x }
	{
		l = t($2)
		if (t($3) ~ /^failed/ || t($4) ~ /^did not/) { print "errors", l, "failed"; next }
		if (m == "idle") { print "idle_" t($3), l, t($6); print "errors", l, t($12); next }
		print "cpu_" m, l, t($(NF - 1))
		if (m == "throughput") print "errors", l, t($7)
		if (m == "rr") { print "rr_p50", l, t($7); print "rr_p99", l, t($8); print "rr_p999", l, t($9); print "errors", l, t($10) }
		if (m == "lat") { print "lat_n", l, t($6); print "lat_p50", l, t($8); print "lat_p99", l, t($9); print "lat_p999", l, t($10); print "lat_late", l, t($11); print "errors", l, t($12) }
		if (m == "connect" || m == "tls") print "errors", l, t($9)
	}' >>"$work/figures"
}

# loadgen_mode MODE: the loadgen mode that measures MODE: connect for tls
# (with -tls-svid), rr for lat (with -rate).
loadgen_mode() {
	case $1 in
	tls) echo connect ;;
	lat) echo rr ;;
	*) echo "$1" ;;
	esac
}

# measure MODE LABEL ARGS...: loadgen's rows for one measurement (one,
# or with -paired and -set one per set), or a row saying it failed. In the
# traffic modes each row gets the CPU per operation (cpu_figure) of the
# process cpu_of names for its label, over the whole measurement; "-" for
# a label it does not name (direct sets, and the proxies in idle).
# loadgen's error detail goes to stderr and to the report.
declare -A cpu_of
measure() {
	local mode=$1 label=$2 rows row l fig
	local -A c0
	shift 2
	log "$mode $label $*"
	for l in "${!cpu_of[@]}"; do c0[$l]=$(proc_ticks "${cpu_of[$l]}"); done
	rows=$("$lg" "$(loadgen_mode "$mode")" -label "$label" "$@" 2>"$work/last.err") || log "$mode $label: loadgen exited non-zero (rows kept if printed)"
	if [[ -s $work/last.err ]]; then
		cat "$work/last.err" >&2
		sed "s/^/$mode: /" "$work/last.err" >>"$work/errors.log"
	fi
	rows=${rows:-| $label | failed, see stderr |}
	while IFS= read -r row; do
		if [[ $mode != idle ]]; then
			l=$(awk -F'|' '{ gsub(/^ +| +$/, "", $2); print $2 }' <<<"$row")
			fig=-
			[[ -z ${cpu_of[$l]:-} ]] || fig=$(cpu_figure "$mode" "$row" $(($(proc_ticks "${cpu_of[$l]}") - c0[$l])))
			row="$row $fig |"
		fi
		echo "$row" >>"$work/$mode.md"
		record "$mode" "$row"
	done <<<"$rows"
}

# with_ratio MODE: the rows of MODE with a last column, each figure's ratio
# to the best (lowest) figure of haproxy or nginx in the same table (and,
# for idle, the same N): Pss KiB per connection for idle, the proxy CPU
# column otherwise. Lower is better in all of them.
with_ratio() {
	awk -F'|' -v m="$1" '
	function trim(x) { gsub(/^ +| +$/, "", x); return x }
	{ rows[NR] = $0; label = trim($2); key = (m == "idle") ? trim($3) : "all"
	  fig[NR] = (m == "idle") ? trim($6) : trim($(NF - 1)); k[NR] = key
	  if ((label == "haproxy" || label == "nginx") && fig[NR] + 0 > 0 && (!(key in best) || fig[NR] + 0 < best[key] + 0)) { best[key] = fig[NR]; who[key] = label } }
	END { for (i = 1; i <= NR; i++) {
		r = "-"
		if (k[i] in best && fig[i] + 0 > 0) r = sprintf("%.2f× %s", fig[i] / best[k[i]], who[k[i]])
		print rows[i] " " r " |" } }' "$work/$1.md"
}

# has_mode MODE: whether MODE is to run (of MODES, and of only_modes
# while that is set).
has_mode() { [[ " $MODES " == *" $1 "* && (-z ${only_modes:-} || " $only_modes " == *" $1 "*) ]]; }

if has_mode idle; then
	# A fresh proxy for each N, so that each baseline is a warmed-up but
	# otherwise unused process.
	for n in $IDLE_N; do
		for p in $PROXIES; do
			if ! start_proxy "$p"; then
				echo "| $p | $n | did not start |" >>"$work/idle.md"
				record idle "| $p | $n | did not start |"
				continue
			fi
			measure idle "$p" -addr "127.0.0.1:$proxy_port" -pid "$proxy_pid" -n "$n"
			stop_proxy
		done
	done
fi

# run_traffic LABEL HOST PORT TLSPORT: the traffic modes but lat against
# one address (TLSPORT: the port whose connections reach the TLS sink; the
# same as PORT behind a proxy, which routes by SNI). Behind a proxy, with
# DIRECT=1, rr takes turns of 250 ms with as many connections straight to
# the sink ("direct (paired with PROXY)"), each set active SECS: the load
# of the moment (the machine is shared) then weighs on both alike, and
# their difference is the latency the proxy adds. The direct target (run
# only with DIRECT=1) has no rr row of its own, then.
run_traffic() {
	local addr=$2:$3 pair=()
	! has_mode throughput || measure throughput "$1" -addr "$addr" -mib "$MIB" -c "$THR_C"
	[[ $DIRECT != 1 || $3 == "$sink_port" ]] || pair=(-paired "127.0.0.1:$sink_port" -paired-label "direct (paired with $1)")
	[[ $3 == "$sink_port" ]] || ! has_mode rr || measure rr "$1" -addr "$addr" -c "$RR_C" -size "$RR_SIZE" -d "${SECS}s" "${pair[@]}"
	! has_mode connect || measure connect "$1" -addr "$addr" -c "$CONN_C" -d "${SECS}s"
	! has_mode tls || measure tls "$1" -addr "$2:$4" -sni "$sni_tls" -tls-svid "$work/svid/client" -c "$CONN_C" -d "${SECS}s"
	sleep 1 # let TIME_WAIT sockets of connect age before the next target
}

if has_mode throughput || has_mode rr || has_mode connect || has_mode tls; then
	[[ $DIRECT != 1 ]] || run_traffic "direct (no proxy)" 127.0.0.1 "$sink_port" "$sink_tls_port"
	for p in $PROXIES; do
		# HAProxy gets its best setting for each mode: splicing forced
		# both ways (option splice-request, splice-response) for bulk,
		# where splice-auto did not splice these transfers (no pipes in
		# /proc/PID/fd; 0.82 s per GB against 0.61 forced, 2026-12-03),
		# and splice-auto for the rest, where forced splicing cost it
		# half as much again per 128 B round trip (16.3 µs against 10.7).
		runs=("all")
		if [[ $p == haproxy ]] && has_mode throughput; then
			runs=("throughput")
			! { has_mode rr || has_mode connect || has_mode tls; } || runs+=("rr connect tls")
		fi
		for only_modes in "${runs[@]}"; do
			[[ $only_modes != all ]] || only_modes=
			hap_splice=auto
			[[ $only_modes != throughput ]] || hap_splice=forced
			if ! start_proxy "$p"; then
				echo -e "errors\t$p\tfailed" >>"$work/figures"
				continue
			fi
			cpu_of=(["$p"]=$proxy_pid)
			run_traffic "$p" 127.0.0.1 "$proxy_port" "$proxy_port"
			stop_proxy
			cpu_of=()
		done
		only_modes=
	done
fi

# lat, issue 15's latency targets: every proxy runs at once, idle but in
# its turns, and their sets take turns of LAT_SLICE with one set straight
# to the sink (DIRECT=1), each set active LAT_SECS at LAT_RATE. This VM's host
# takes its cores away for milliseconds at a time (steal, counted below),
# and those stalls are the tails at this rate: sets measured one after
# another, or paired two by two, met different stalls and their p99.9s
# changed order from run to run. Taking turns in short slices, all sets
# meet the same stalls alike, and the shared direct set is the one
# baseline every proxy's added latency is measured against.
lat_direct="direct (took turns with the proxies)"
if has_mode lat; then
	lat_args=()
	for p in $PROXIES; do
		hap_splice=auto
		if ! start_proxy "$p"; then
			echo -e "errors\t$p\tfailed" >>"$work/figures"
			continue
		fi
		cpu_of[$p]=$proxy_pid
		lat_args+=(-set "$p=127.0.0.1:$proxy_port")
	done
	[[ $DIRECT != 1 ]] || lat_args+=(-set "$lat_direct=127.0.0.1:$sink_port")
	if ((${#lat_args[@]} > 0)); then
		# The first set is -addr's: the first -set's, whose flag goes.
		first=${lat_args[1]}
		lat_args+=(-turns "${LAT_TURNS:-$work/lat-turns}")
		lat_ticks0=$(cpu_ticks)
		measure lat "${first%%=*}" -addr "${first#*=}" "${lat_args[@]:2}" -c "$RR_C" -size "$RR_SIZE" -rate "$LAT_RATE" -d "${LAT_SECS}s" -slice "$LAT_SLICE"
		lat_steal=$(steal_share "$lat_ticks0" "$(cpu_ticks)")
	fi
	for proxy_pid in "${cpu_of[@]}"; do stop_proxy; done
	cpu_of=()
fi

load_end=$(cut -d' ' -f1-3 /proc/loadavg)
run_steal=$(steal_share "$ticks_start" "$(cpu_ticks)")
date_end=$(date -u '+%H:%M:%S UTC')
took=$(($(date +%s) - t_start))
# The sink logs every connection it could not serve to the end of its
# protocol (a handshake that failed, a reset, an unknown command).
sink_errors=$(grep -c '^loadgen sink' "$work/sink.log" || true)

cpu_unit() {
	case $1 in
	throughput) echo "s/GB" ;;
	rr | lat) echo "µs/round trip" ;;
	connect | tls) echo "s/1000 conns" ;;
	esac
}

# added_latency MODE (rr or lat) prints MODE's percentiles of each proxy
# minus those of the direct set paired with it (rr) or shared by all (lat),
# with the ratio of each to the best peer's.
added_latency() {
	awk -F'\t' -v m="$1" -v shared="$lat_direct" '
	$1 ~ "^" m "_p(50|99|999)$" { p = substr($1, length(m) + 2); v[p, $2] = $3; if ($2 !~ /^direct/ && !($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
	END {
		split("p50 p99 p999", ps, " ")
		for (j = 1; j <= 3; j++) { p = ps[j]; for (i = 1; i <= n; i++) { l = order[i]; d = "direct (paired with " l ")"
			if (!((p, d) in v)) d = shared
			if (!((p, l) in v) || !((p, d) in v)) continue
			add[p, l] = v[p, l] - v[p, d]
			if ((l == "haproxy" || l == "nginx") && (!(p in best) || add[p, l] < best[p])) { best[p] = add[p, l]; who[p] = l } } }
		found = 0
		for (i = 1; i <= n; i++) if (("p99", order[i]) in add) found = 1
		if (!found) { print "No paired direct " m " sets (DIRECT=0): added latency not computed."; exit }
		print "| proxy | added p50 µs | added p99 µs | added p99.9 µs | p99 ratio to best peer | p99.9 ratio to best peer |"
		print "|---|---:|---:|---:|---:|---:|"
		for (i = 1; i <= n; i++) { l = order[i]; if (!(("p99", l) in add)) continue
			r99 = ("p99" in best && best["p99"] > 0) ? sprintf("%.2f× %s", add["p99", l] / best["p99"], who["p99"]) : "-"
			r999 = ("p999" in best && best["p999"] > 0) ? sprintf("%.2f× %s", add["p999", l] / best["p999"], who["p999"]) : "-"
			printf "| %s | %.1f | %.1f | %.1f | %s | %s |\n", l, add["p50", l], add["p99", l], add["p999", l], r99, r999 }
	}' "$work/figures"
}

# turn_table FILE: from lat's turn log, each set's turns compared one by
# one: the median and p90 of its turns' own p99s, and the share of pairs
# of a turn of its and a turn of each peer's in which its p99 was the
# lower (ties count half; 0.50 is level).
turn_table() {
	[[ -s $1 ]] || return 0
	printf '\nTurn by turn (not a target): each set'"'"'s %s turns have a p99 of their own. A set'"'"'s p99 over the whole run counts how many of the host'"'"'s stalls of a few ms fell in its turns, a draw that moves its ratio from run to run; its turns compared with a peer'"'"'s one by one tell which proxy is faster when no stall decides. A share of 0.50 is level, above it the set'"'"'s turns had the lower p99 more often.\n\n' "$LAT_SLICE"
	awk -F'\t' '
	{ if (!($1 in n)) order[++k] = $1; n[$1]++; v[$1, n[$1]] = $6 + 0 }
	# sorted L: the p99s of set L in ascending order, in s[1..n[L]].
	function sorted(l,   i, j, x) {
		for (i = 1; i <= n[l]; i++) s[i] = v[l, i]
		for (i = 2; i <= n[l]; i++) { x = s[i]; for (j = i - 1; j >= 1 && s[j] > x; j--) s[j + 1] = s[j]; s[j + 1] = x }
	}
	function below(a, b,   i, j, w) {
		if (!(b in n) || a == b) return "-"
		w = 0
		for (i = 1; i <= n[a]; i++) for (j = 1; j <= n[b]; j++) w += (v[a, i] < v[b, j]) ? 1 : (v[a, i] == v[b, j]) ? 0.5 : 0
		return sprintf("%.2f", w / (n[a] * n[b]))
	}
	END {
		print "| set | turns | median turn p99 µs | p90 of turn p99s µs | turn p99 below HAProxy'"'"'s | below nginx'"'"'s |"
		print "|---|---:|---:|---:|---:|---:|"
		for (i = 1; i <= k; i++) { l = order[i]; sorted(l)
			printf "| %s | %d | %.0f | %.0f | %s | %s |\n", l, n[l], s[int((n[l] + 1) / 2)], s[int(0.9 * n[l] + 0.5)], below(l, "haproxy"), below(l, "nginx") }
	}' "$1"
}

# direct_tail KEY: the range of figure KEY (rr_p999, say) over the paired
# direct sets, as "A to B µs", or "-" if there were none.
direct_tail() {
	awk -F'\t' -v k="$1" '$1 == k && $2 ~ /^direct \(paired/ { if (n++ == 0 || $3 < lo) lo = $3; if (n == 1 || $3 > hi) hi = $3 }
	END { if (n == 0) print "-"; else printf "%.0f to %.0f µs\n", lo, hi }' "$work/figures"
}

# error_totals prints, for each label that has rows, in the order they
# were recorded, "label<TAB>errors": the sum of its rows' error counts, or
# "failed" if a row of it failed.
error_totals() {
	awk -F'\t' '$1 == "errors" { if ($3 == "failed") f[$2] = 1; else e[$2] += $3; if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
	END { for (i = 1; i <= n; i++) { l = order[i]; print l "\t" ((l in f) ? "failed" : e[l] + 0) } }' "$work/figures"
}

# errors_line: "none", or each label whose rows counted errors.
errors_line() {
	error_totals | awk -F'\t' '
	$2 == "failed" { s = s (s == "" ? "" : ", ") $1 ": a row failed"; next }
	$2 > 0 { s = s (s == "" ? "" : ", ") $1 ": " $2 }
	END { print (s == "" ? "none" : s) }'
}

# summary prints issue 15's targets with ewgate's figure, the reference
# peer's, the ratio and whether the target is met in this run.
summary() {
	awk -F'\t' -v shared="$lat_direct" -v rr_size="$RR_SIZE" -v rr_c="$RR_C" -v lat_rate="$LAT_RATE" -v conn_c="$CONN_C" -v thr_c="$THR_C" -v idle_n="$IDLE_N" -v sink_errors="$sink_errors" '
	# First error_totals, then the figures.
	FNR == NR { errs[$1] = $2; labels[++nl] = $1; next }
	{ v[$1, $2] = $3 }
	function fmt(x, unit) { return (unit == "µs") ? sprintf("%.1f µs", x) : (unit == "KiB") ? sprintf("%.1f KiB", x) : sprintf("%.3f s", x) }
	# row: ewgate figure e against reference ref of peer who; met if
	# e <= goal * ref.
	function row(what, e, ref, who, goal, unit,   ratio, ok) {
		total++
		if (e == "" || ref == "" || e == "-" || ref == "-") { unmeasured++; printf "| %s | %s | %s | - | ≤ %.2f× | not measured |\n", what, (e == "" ? "-" : e), (ref == "" ? "-" : who " " ref), goal; return }
		ok = (e + 0 <= goal * ref)
		met += ok
		ratio = (ref + 0 > 0) ? sprintf("%.2f×", e / ref) : "-"
		printf "| %s | %s | %s %s | %s | ≤ %.2f× | %s |\n", what, fmt(e, unit), who, fmt(ref, unit), ratio, goal, ok ? "met" : "**not met**"
	}
	function added(p, l,   d) { d = shared; return (("lat_" p, l) in v && ("lat_" p, d) in v) ? v["lat_" p, l] - v["lat_" p, d] : "" }
	# late: the share of the lat requests of l that left more than one
	# interval late.
	function late(l) { return (v["lat_n", l] + 0 > 0) ? v["lat_late", l] / v["lat_n", l] : 0 }
	END {
		print "| target (lower is better) | ewgate | reference | ratio | goal | verdict |"
		print "|---|---:|---|---:|---:|---|"
		row("proxy CPU per " rr_size " B request, " rr_c " connections", v["cpu_rr", "ewgate"], v["cpu_rr", "nginx"], "nginx", 0.8, "µs")
		row("proxy CPU per 1,000 new TLS 1.3 mTLS connections (full handshake), " conn_c " workers", v["cpu_tls", "ewgate"], v["cpu_tls", "nginx"], "nginx", 1, "s")
		row("proxy CPU per GB, " thr_c " connections", v["cpu_throughput", "ewgate"], v["cpu_throughput", "haproxy"], "haproxy (splice-request/response)", 1, "s")
		n = split(idle_n, ns, " ")
		for (i = 1; i <= n; i++) row("memory (Pss) per idle connection, " ns[i] " held", v["idle_" ns[i], "ewgate"], v["idle_" ns[i], "haproxy"], "haproxy", 1, "KiB")
		for (j = 1; j <= 2; j++) { p = (j == 1) ? "p99" : "p999"
			bw = ""; bv = ""
			for (k = 1; k <= 2; k++) { l = (k == 1) ? "haproxy" : "nginx"; a = added(p, l); if (a != "" && (bv == "" || a < bv)) { bw = l; bv = a } }
			e = added(p, "ewgate")
			what = sprintf("%s added latency (lat, %d round trips/s, minus the direct set)", (p == "p99" ? "p99" : "p99.9"), lat_rate)
			lw = (bw == "") ? 0 : late(bw); le = late("ewgate")
			# An added latency of 0 or below is noise (a stall in the direct
			# set): no ratio, and no verdict either way. A request sent
			# late (the echo of the last not back in time, or the client
			# stalled) is timed from its write: the wait it had before is
			# left out (coordinated omission), and the set that sends the
			# larger share late has its tail understated the more. All
			# sets take turns in the same slices of the stalls of the
			# machine, so a verdict holds as long as the set of ewgate did
			# not send a larger share late than that of the best peer; if
			# it did, and more than 1 %, ewgate may look better than it
			# is: no verdict.
			if (e != "" && bv != "" && (bv <= 0 || e <= 0)) { total++; inconclusive++
				printf "| %s | %.1f µs | %s %.1f µs | - | ≤ 1.00× | inconclusive (added latency ≤ 0 is noise) |\n", what, e, bw, bv
			} else if (e != "" && bv != "" && le > 0.01 && le > lw) { total++; inconclusive++
				printf "| %s | %.1f µs | %s %.1f µs | - | ≤ 1.00× | inconclusive (ewgate'"'"'s set sent %.1f %% late, %s'"'"'s %.1f %%) |\n", what, e, bw, bv, 100 * le, bw, 100 * lw
			} else row(what, e, bv, bw, 1, "µs") }
		total++
		peers = ""
		direct = 0
		for (i = 1; i <= nl; i++) {
			l = labels[i]
			if (l ~ /^direct/) { direct += (errs[l] == "failed") ? 1 : errs[l]; continue }
			if (l != "ewgate") peers = peers (peers == "" ? "" : ", ") l " " ((errs[l] == "failed") ? "a row failed" : errs[l])
		}
		peers = peers (peers == "" ? "" : ", ") "direct runs " direct
		e = (errs["ewgate"] == "failed") ? "a row failed" : errs["ewgate"] + 0
		ok = (errs["ewgate"] != "failed" && errs["ewgate"] + 0 == 0)
		met += ok
		printf "| errors (failed connections, short reads, wrong bytes, shed idle connections) | %s | %s; sink: %d | - | 0 | %s |\n", e, peers, sink_errors, ok ? "met" : "**not met**"
		print ""
		printf "Targets met in this run: %d of %d%s%s.\n", met, total, unmeasured ? sprintf("; %d not measured", unmeasured) : "", inconclusive ? sprintf("; %d inconclusive", inconclusive) : ""
	}' <(error_totals) "$work/figures"
	if grep -q "^cpu_connect	ewgate	" "$work/figures" 2>/dev/null; then
		awk -F'\t' '$1 == "cpu_connect" { v[$2] = $3 } END {
			if (v["nginx"] + 0 > 0) r = sprintf(", %.2f× nginx (%s s)", v["ewgate"] / v["nginx"], v["nginx"]); else r = ""
			printf "\nNot a target, for the profile: proxy CPU per 1,000 new connections with a replayed ClientHello and no handshake (mode connect) %s s%s.\n", v["ewgate"], r }' "$work/figures"
	fi
}

report() {
	local errs tail
	errs=$(errors_line)
	echo "Date: $date_start to $date_end ($((took / 60)) min $((took % 60)) s)"
	echo "Command: \`$command\`"
	echo "ewgate built from: $built"
	echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), Linux $(uname -r), $(go version | cut -d' ' -f3), open-file limit $nofile"
	echo "Load average (1, 5, 15 min): $load_start at the start, $load_end at the end"
	echo "Host steal (time this VM's host took from its cores): $run_steal of the run${lat_steal:+, $lat_steal during lat}"
	echo "Peers: $hap_version (nbthread 2, option splice-request and splice-response in throughput, option splice-auto otherwise, maxconn $hap_maxconn, maxpipes $hap_maxpipes); nginx $ngx_version (worker_processes 2, listen reuseport, worker_connections $ngx_conns, worker_rlimit_nofile $nofile)"
	if [[ $errs == none && $sink_errors == 0 ]]; then
		echo "Errors: none"
	else
		echo "**Errors in this run**: $errs; sink log: $sink_errors lines (details at the end)"
	fi
	local mode title
	for mode in idle throughput rr lat connect tls; do
		[[ -f $work/$mode.md ]] || continue
		case $mode in
		idle) title="Idle connections: per-connection cost to the proxy process(es)" ;;
		throughput) title="Throughput: $THR_C connections at once, $MIB MiB each way in all" ;;
		rr) title="Request/response: $RR_C connections, $RR_SIZE B ping-pong, ${SECS}s" ;;
		lat) title="Latency at a fixed rate: $RR_C connections, $RR_SIZE B ping-pong, $LAT_RATE round trips/s in all, ${LAT_SECS}s; every proxy and the direct set in turns of $LAT_SLICE" ;;
		connect) title="Connection rate, replayed ClientHello (no handshake), 1-byte answer, close; $CONN_C workers, ${SECS}s" ;;
		tls) title="New TLS connections: full TLS 1.3 mTLS handshake (ECDSA P-256 SVIDs) with the sink through the proxy, 1-byte answer, close; $CONN_C workers, ${SECS}s" ;;
		esac
		printf '\n### %s\n\n' "$title"
		case $mode in
		idle) "$lg" header "$mode" | sed '1s/$/ Pss ratio to best peer |/; 2s/$/---:|/' ;;
		lat) "$lg" header rr-rate | sed "1s#\$# proxy CPU $(cpu_unit "$mode") | ratio to best peer |#; 2s#\$#---:|---:|#" ;;
		*) "$lg" header "$(loadgen_mode "$mode")" | sed "1s#\$# proxy CPU $(cpu_unit "$mode") | ratio to best peer |#; 2s#\$#---:|---:|#" ;;
		esac
		with_ratio "$mode"
		case $mode in
		rr)
			tail="the direct sets, no proxy at all, had a p99.9 of $(direct_tail rr_p999) in this run"
			[[ $tail != *" of - "* ]] || tail="a direct set, no proxy at all, has a p99.9 of several ms"
			printf '\nAdded latency at saturation, **not a target**: each proxy'"'"'s percentiles minus those of the direct set that took turns with it (250 ms each). Both sets run as fast as they go on cores they share with everything else, so their tails are the scheduler'"'"'s: %s, and these differences change sign from run to run. Issue 15'"'"'s latency targets are at a fixed rate (lat).\n\n' "$tail"
			added_latency rr
			;;
		lat)
			printf '\nAdded latency at a fixed rate (issue 15'"'"'s p99 and p99.9 targets): each proxy'"'"'s percentiles minus those of the direct set. All the sets, at %s round trips/s each, took turns of %s, so that the host'"'"'s stalls (steal: %s during lat) weighed on each alike.\n\n' "$LAT_RATE" "$LAT_SLICE" "${lat_steal:-not measured}"
			added_latency lat
			turn_table "${LAT_TURNS:-$work/lat-turns}"
			;;
		esac
	done
	settings
	printf '\n### Issue 15 targets\n\n'
	summary
	if [[ -s $work/errors.log || $sink_errors != 0 ]]; then
		printf '\n### Error detail\n\n```\n'
		cat "$work/errors.log" 2>/dev/null || true
		grep '^loadgen sink' "$work/sink.log" | head -20 || true
		printf '```\n'
	fi
}

# settings prints each measured proxy's configuration as it ran.
settings() {
	printf '\n### Settings\n\n'
	local p
	for p in $PROXIES; do
		case $p in
		ewgate*) printf '%s: `%s`, on\n\n```yaml\n%s\n```\n\n' "$p" "$ewgate_cmd" "$(cat "$work/$p/mesh.yaml")" ;;
		haproxy)
			printf 'haproxy (%s):\n\n```\n%s\n```\n\n' "$hap_version" "$(cat "$work/haproxy/haproxy.cfg")"
			[[ ! -f $work/haproxy/haproxy-forced.cfg ]] || printf 'haproxy in throughput:\n\n```\n%s\n```\n\n' "$(cat "$work/haproxy/haproxy-forced.cfg")"
			;;
		nginx) printf 'nginx (%s):\n\n```\n%s\n```\n\n' "$ngx_version" "$(cat "$work/nginx/nginx.conf")" ;;
		esac
	done
}

if [[ -n $OUT ]]; then
	report | tee "$OUT"
else
	report
fi
