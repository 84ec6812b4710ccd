#!/usr/bin/env bash
# compare.sh: ewgate against HAProxy and nginx as SNI-routing TCP proxies,
# on loopback, one proxy at a time. See bench/README.md.
#
# Environment (defaults in brackets):
#   PROXIES    proxies to measure                     [ewgate haproxy nginx]
#   MODES      loadgen modes to run                   [idle throughput rr connect]
#   IDLE_N     idle connection counts                 [1000 3000]
#   MIB        MiB streamed each way (throughput)     [1024]
#   RR_C       rr connections                         [50]
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
RR_C=${RR_C:-50}
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
command="${BASE:+BASE=$BASE }PROXIES=\"$PROXIES\" MODES=\"$MODES\" IDLE_N=\"$IDLE_N\" MIB=$MIB RR_C=$RR_C CONN_C=$CONN_C SECS=$SECS bench/compare.sh"
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
	"$1" run -f "$dir/mesh.yaml" --network bench --node-labels istio=eastwestgateway \
		--bind-address 127.0.0.1 --admin-address "127.0.0.1:$admin" --status-address "" \
		--log-level warn --drain-timeout 1s >>"$work/ewgate.log" 2>&1 &
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

defaults
    mode tcp
    maxconn 9000
    timeout connect 5s
    timeout client 1h
    timeout server 1h

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
        listen 127.0.0.1:$proxy_port;
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

# measure MODE LABEL ARGS...: one loadgen row, or a row saying it failed.
measure() {
	local mode=$1 label=$2 row
	shift 2
	log "$mode $label $*"
	row=$("$lg" "$mode" -label "$label" "$@") || log "$mode $label failed (row kept if printed)"
	echo "${row:-| $label | failed, see stderr |}" >>"$work/$mode.md"
}

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
	! has_mode rr || measure rr "$1" -addr "$2" -c "$RR_C" -d "${SECS}s"
	! has_mode connect || measure connect "$1" -addr "$2" -c "$CONN_C" -d "${SECS}s"
	sleep 1 # let TIME_WAIT sockets of connect age before the next target
}

if has_mode throughput || has_mode rr || has_mode connect; then
	[[ $DIRECT != 1 ]] || run_traffic "direct (no proxy)" "127.0.0.1:$sink_port"
	for p in $PROXIES; do
		start_proxy "$p" || continue
		run_traffic "$p" "127.0.0.1:$proxy_port"
		stop_proxy
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
		rr) title="Request/response: $RR_C connections, 1 KiB ping-pong, ${SECS}s" ;;
		connect) title="Connection rate: hello, 1-byte answer, close; $CONN_C workers, ${SECS}s" ;;
		esac
		printf '\n### %s\n\n' "$title"
		"$lg" header "$mode"
		cat "$work/$mode.md"
	done
}

if [[ -n $OUT ]]; then
	report | tee "$OUT"
else
	report
fi
