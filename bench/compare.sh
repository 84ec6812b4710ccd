#!/usr/bin/env bash
# compare.sh: ewgate against HAProxy and nginx as SNI-routing TCP proxies,
# on loopback, one proxy at a time. See bench/README.md.
#
# Environment (defaults in brackets):
#   PROXIES    proxies to measure                     [ewgate haproxy nginx]
#   MODES      loadgen modes to run                   [idle throughput rr connect]
#   IDLE_N     idle connection counts                 [1000 3000]
#   MIB        MiB streamed each way (throughput)     [1024]
#   RR_C       rr connections                         [32]
#   RR_SIZE    rr request (and echo) size in bytes    [128]
#   CONN_C     connect workers                        [16]
#   SECS       seconds of each rr and connect run     [5]
#   DIRECT     1: add a "direct (no proxy)" row       [1]
#   OUT        also write the report to this file     []
#   KEEP       1: keep the work directory (configs, logs) [0]
#   BASE       a git ref: also measure ewgate built from it, as
#              "ewgate@REF" (git archive, read-only)  []
set -euo pipefail

PROXIES=${PROXIES:-ewgate haproxy nginx}
MODES=${MODES:-idle throughput rr connect}
IDLE_N=${IDLE_N:-1000 3000}
MIB=${MIB:-1024}
RR_C=${RR_C:-32}
RR_SIZE=${RR_SIZE:-128}
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

for bin in haproxy nginx go; do
	command -v "$bin" >/dev/null || { log "$bin not found (apt-get install -y haproxy nginx libnginx-mod-stream)"; exit 1; }
done
stream_module=/usr/lib/nginx/modules/ngx_stream_module.so
[[ -f $stream_module ]] || { log "$stream_module missing (apt-get install -y libnginx-mod-stream)"; exit 1; }

log "building ewgate and loadgen into $work"
mkdir "$work/bin"
(cd "$repo" && go build -o "$work/bin/ewgate" ./cmd/ewgate && go build -o "$work/bin/loadgen" ./bench/loadgen)
lg=$work/bin/loadgen
# What was built: the commit, whether the tree differs from it, and a hash
# of the data-plane sources (others may be editing them).
built="$(cd "$repo" && git rev-parse --short HEAD)$(cd "$repo" && git diff --quiet HEAD -- . ':!bench' ':!docs' || echo ' + uncommitted changes'), gateway/ and sni/ sources sha256 $(cat "$repo"/gateway/*.go "$repo"/sni/*.go | sha256sum | cut -c1-12)"
command="${BASE:+BASE=$BASE }PROXIES=\"$PROXIES\" MODES=\"$MODES\" IDLE_N=\"$IDLE_N\" MIB=$MIB RR_C=$RR_C RR_SIZE=$RR_SIZE CONN_C=$CONN_C SECS=$SECS bench/compare.sh"
if [[ -n $BASE ]]; then
	log "building ewgate@$BASE"
	mkdir "$work/base"
	(cd "$repo" && git archive "$BASE") | tar -x -C "$work/base"
	(cd "$work/base" && go build -o "$work/bin/ewgate@$BASE" ./cmd/ewgate)
	PROXIES="ewgate@$BASE $PROXIES"
fi
sni=outbound_.9080_._.echo.demo.svc.cluster.local

start_sink "$lg"

# start_<proxy> writes the proxy's config, starts it in the foreground as
# a child of this script and sets proxy_pid and proxy_port.

# start_ewgate BINARY
start_ewgate() {
	local dir=$work/ewgate admin
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
  ports: [{number: 9080, name: tcp-echo, protocol: TCP}]
  endpoints:
  - address: 127.0.0.1
    ports: {tcp-echo: $sink_port}
    network: bench
    labels: {app: echo, security.istio.io/tlsMode: istio}
EOF
	# The sink is on loopback, which ewgate refuses as an endpoint
	# without --endpoint-allow-loopback.
	local args=(run -f "$dir/mesh.yaml" --network bench --node-labels istio=eastwestgateway
		--bind-address 127.0.0.1 --endpoint-allow-loopback --admin-address "127.0.0.1:$admin" --status-address ""
		--log-level warn --drain-timeout 1s)
	ewgate_cmd="ewgate ${args[*]}"
	"$1" "${args[@]}" >>"$work/ewgate.log" 2>&1 &
	proxy_pid=$!
	started+=($proxy_pid)
}

start_haproxy() {
	local dir=$work/haproxy
	mkdir -p "$dir"
	proxy_port=$("$lg" freeport)
	cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 9000
    # splice-auto reserves maxpipes (default maxconn/4) pipes of two
    # descriptors: 500 keeps the total under the 20,000 open-file limit.
    maxpipes 500

defaults
    mode tcp
    maxconn 9000
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    option splice-auto

frontend sni
    bind 127.0.0.1:$proxy_port
    tcp-request inspect-delay 5s
    tcp-request content accept if { req_ssl_hello_type 1 }
    use_backend echo if { req.ssl_sni -i $sni }

backend echo
    server sink 127.0.0.1:$sink_port
EOF
	haproxy -db -f "$dir/haproxy.cfg" >>"$work/haproxy.log" 2>&1 &
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
worker_rlimit_nofile 19000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;

events {
    worker_connections 9000;
}

stream {
    map \$ssl_preread_server_name \$upstream {
        $sni 127.0.0.1:$sink_port;
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

# proc_cpu PID: CPU ticks (user + system) used so far by PID and its
# children (nginx's workers), 0 for no PID.
proc_cpu() {
	local pid t=0 f
	[[ -n $1 ]] || { echo 0; return; }
	for pid in "$1" $(pgrep -P "$1" || true); do
		f=$(cut -d')' -f2- "/proc/$pid/stat" 2>/dev/null) || continue
		# Fields after "(comm)": state is 1, utime 12, stime 13.
		t=$((t + $(echo "$f" | awk '{print $12 + $13}')))
	done
	echo "$t"
}

# cpu_figure MODE ROW TICKS: the proxy's CPU per operation from a loadgen
# row and the CPU ticks the proxy used during it: s per GB moved (both
# ways) in throughput, µs per round trip in rr, s per 1,000 connections in
# connect. The operation counts are the row's rates times SECS.
cpu_figure() {
	local s
	s=$(echo "$3 / $(getconf CLK_TCK)" | bc -l)
	echo "$2" | awk -F'|' -v m="$1" -v s="$s" -v mib="$MIB" -v secs="$SECS" '{
		gsub(/ /, "")
		if (m == "throughput") printf "%.3f", s / (2 * mib * 1048576 / 1e9)
		else if (m == "rr" && $5 > 0) printf "%.1f", s * 1e6 / ($5 * secs)
		else if (m == "connect" && $4 > 0) printf "%.3f", s * 1000 / ($4 * secs)
		else printf "-"
	}'
}

# measure MODE LABEL ARGS...: one loadgen row, or a row saying it failed.
# In the traffic modes the row gets the proxy's CPU per operation
# (cpu_figure), for the proxy started last (cpu_pid; "-" for none).
measure() {
	local mode=$1 label=$2 row c0 c1 fig
	shift 2
	log "$mode $label $*"
	c0=$(proc_cpu "$cpu_pid")
	row=$("$lg" "$mode" -label "$label" "$@") || log "$mode $label failed (row kept if printed)"
	c1=$(proc_cpu "$cpu_pid")
	row=${row:-| $label | failed, see stderr |}
	if [[ $mode != idle ]]; then
		fig=-
		[[ -z $cpu_pid ]] || fig=$(cpu_figure "$mode" "$row" $((c1 - c0)))
		row="$row $fig |"
	fi
	echo "$row" >>"$work/$mode.md"
}

# with_ratio MODE: the rows of MODE with a last column, each figure's ratio
# to the best (lowest) figure of haproxy or nginx in the same table (and,
# for idle, the same N): RSS KiB per connection for idle, the proxy CPU
# column otherwise. Lower is better in all of them.
with_ratio() {
	awk -F'|' -v m="$1" '
	function trim(x) { gsub(/^ +| +$/, "", x); return x }
	{ rows[NR] = $0; label = trim($2); key = (m == "idle") ? trim($3) : "all"
	  fig[NR] = (m == "idle") ? trim($5) : trim($(NF - 1)); k[NR] = key
	  if ((label == "haproxy" || label == "nginx") && fig[NR] + 0 > 0 && (!(key in best) || fig[NR] + 0 < best[key] + 0)) { best[key] = fig[NR]; who[key] = label } }
	END { for (i = 1; i <= NR; i++) {
		r = "-"
		if (k[i] in best && fig[i] + 0 > 0) r = sprintf("%.2f× %s", fig[i] / best[k[i]], who[k[i]])
		print rows[i] " " r " |" } }' "$work/$1.md"
}

has_mode() { [[ " $MODES " == *" $1 "* ]]; }

cpu_pid= # the proxy whose CPU measure counts; none for idle and direct

has_mode() { [[ " $MODES " == *" $1 "* ]]; }

if has_mode idle; then
	# A fresh proxy for each N, so that each baseline is a warmed-up but
	# otherwise unused process.
	for n in $IDLE_N; do
		for p in $PROXIES; do
			start_proxy "$p" || { echo "| $p | $n | did not start |" >>"$work/idle.md"; continue; }
			measure idle "$p" -addr "127.0.0.1:$proxy_port" -pid "$proxy_pid" -n "$n"
			stop_proxy
		done
	done
fi

# run_traffic LABEL ADDR: the traffic modes against one address.
run_traffic() {
	! has_mode throughput || measure throughput "$1" -addr "$2" -mib "$MIB"
	! has_mode rr || measure rr "$1" -addr "$2" -c "$RR_C" -size "$RR_SIZE" -d "${SECS}s"
	! has_mode connect || measure connect "$1" -addr "$2" -c "$CONN_C" -d "${SECS}s"
	sleep 1 # let TIME_WAIT sockets of connect age before the next target
}

if has_mode throughput || has_mode rr || has_mode connect; then
	cpu_pid=
	[[ $DIRECT != 1 ]] || run_traffic "direct (no proxy)" "127.0.0.1:$sink_port"
	for p in $PROXIES; do
		start_proxy "$p" || continue
		cpu_pid=$proxy_pid
		run_traffic "$p" "127.0.0.1:$proxy_port"
		stop_proxy
		cpu_pid=
	done
fi

report() {
	echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "Command: $command"
	echo "ewgate built from: $built"
	echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), Linux $(uname -r), $(go version | cut -d' ' -f3-), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(nginx -v 2>&1 | cut -d' ' -f3)"
	local mode title
	for mode in idle throughput rr connect; do
		[[ -f $work/$mode.md ]] || continue
		case $mode in
		idle) title="Idle connections: per-connection cost to the proxy process(es)" ;;
		throughput) title="Throughput: one connection, $MIB MiB each way" ;;
		rr) title="Request/response: $RR_C connections, $RR_SIZE B ping-pong, ${SECS}s" ;;
		connect) title="Connection rate: hello, 1-byte answer, close; $CONN_C workers, ${SECS}s" ;;
		esac
		printf '\n### %s\n\n' "$title"
		case $mode in
		idle) "$lg" header "$mode" | sed '1s/$/ RSS ratio to best peer |/; 2s/$/---:|/' ;;
		*) "$lg" header "$mode" | sed "1s#\$# proxy CPU $(cpu_unit "$mode") | ratio to best peer |#; 2s#\$#---:|---:|#" ;;
		esac
		with_ratio "$mode"
	done
	settings
}

cpu_unit() {
	case $1 in
	throughput) echo "s/GB" ;;
	rr) echo "µs/round trip" ;;
	connect) echo "s/1000 conns" ;;
	esac
}

# settings prints each measured proxy's configuration as it ran.
settings() {
	printf '\n### Settings\n\n'
	local p
	for p in $PROXIES; do
		case $p in
		ewgate*) printf '%s: `%s`, on\n\n```yaml\n%s\n```\n\n' "$p" "$ewgate_cmd" "$(cat "$work/ewgate/mesh.yaml")" ;;
		haproxy) printf 'haproxy (%s):\n\n```\n%s\n```\n\n' "$(haproxy -v | head -1 | cut -d' ' -f1-3)" "$(cat "$work/haproxy/haproxy.cfg")" ;;
		nginx) printf 'nginx (%s):\n\n```\n%s\n```\n\n' "$(nginx -v 2>&1 | cut -d' ' -f3)" "$(cat "$work/nginx/nginx.conf")" ;;
		esac
	done
}

if [[ -n $OUT ]]; then
	report | tee "$OUT"
else
	report
fi
