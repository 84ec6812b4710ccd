#!/usr/bin/env bash
# paths.sh: the throughput of one connection over each path ewgate offers,
# in one run, with real ewgate processes on loopback. See bench/README.md.
#
#   direct                   loadgen -> sink
#   one gateway hop          loadgen -> gateway B (AUTO_PASSTHROUGH, splice) -> sink
#   tunnel, QUIC             loadgen -> gateway A -> QUIC tunnel -> gateway B -> sink
#   tunnel, TCP fallback     the same with A started with --tunnel-transport tcp
#
# Gateway B serves network-b, whose endpoint is the sink. Two gateways of
# network-a, which has the service but no endpoint, gossip with B and
# carry connections to it: one dials tunnels over QUIC, the other over
# TCP + TLS 1.3. The script checks the transport of each A's link.
#
# Environment (defaults in brackets):
#   MIB    MiB streamed each way per path   [1024]
#   OUT    also write the report to this file []
#   KEEP   1: keep the work directory (configs, logs) [0]
set -euo pipefail

MIB=${MIB:-1024}
OUT=${OUT:-}
KEEP=${KEEP:-0}

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/ewgate-paths.XXXXXX)
# shellcheck source=lib.sh
source "$repo/bench/lib.sh"

log "building ewgate and loadgen into $work"
mkdir "$work/bin"
(cd "$repo" && go build -o "$work/bin/ewgate" ./cmd/ewgate && go build -o "$work/bin/loadgen" ./bench/loadgen)
ew=$work/bin/ewgate
lg=$work/bin/loadgen
built="$(cd "$repo" && git rev-parse --short HEAD)$(cd "$repo" && git diff --quiet HEAD -- . ':!bench' ':!docs' || echo ' + uncommitted changes')"

# A development CA and one SVID per gateway; a gossip key.
"$ew" ca init --trust-domain cluster.local --out "$work/ca" >/dev/null
head -c 16 /dev/urandom | base64 >"$work/gossip.key"
chmod 600 "$work/gossip.key"

start_sink "$lg"

# start_gateway NAME NETWORK TRANSPORT [JOIN] starts a gateway of NETWORK
# (network-b's has the sink as its endpoint) and sets port[NAME],
# admin[NAME] and gossip[NAME].
declare -A port admin gossip
start_gateway() {
	local name=$1 network=$2 transport=$3 join=${4:-} dir=$work/$1 endpoints="[]" pid
	mkdir -p "$dir"
	port[$name]=$("$lg" freeport)
	admin[$name]=$("$lg" freeport)
	gossip[$name]=$("$lg" freeport)
	local tunnel_port
	tunnel_port=$("$lg" freeport)
	if [[ $network == network-b ]]; then
		endpoints="[{address: 127.0.0.1, ports: {tcp-echo: $sink_port}, network: network-b, labels: {app: echo, security.istio.io/tlsMode: istio}}]"
	fi
	cat >"$dir/mesh.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network-gateway, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - port: {number: ${port[$name]}, name: tls, protocol: TLS}
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
  endpoints: $endpoints
EOF
	"$ew" ca issue --ca "$work/ca" --spiffe-id "spiffe://cluster.local/ns/istio-system/sa/eastwest-$name" --out "$dir/svid" >/dev/null
	"$ew" run -f "$dir/mesh.yaml" --network "$network" --node-name "$name" --node-labels istio=eastwestgateway \
		--bind-address 127.0.0.1 --admin-address "127.0.0.1:${admin[$name]}" --status-address "" --log-level warn --drain-timeout 1s \
		--endpoint-allow-loopback --peer-ids "$peer_ids" \
		--svid-cert "$dir/svid/cert.pem" --svid-key "$dir/svid/key.pem" --trust-bundle "$dir/svid/bundle.pem" \
		--gossip-address "127.0.0.1:${gossip[$name]}" --gossip-key-file "$work/gossip.key" --gossip-profile local \
		--passthrough-advertise "127.0.0.1:${port[$name]}" --tunnel-address "127.0.0.1:$tunnel_port" \
		--tunnel-transport "$transport" ${join:+--join "$join"} >"$work/$name.log" 2>&1 &
	pid=$!
	started+=($pid)
	wait_port "${port[$name]}" "$pid" || { log "gateway $name did not start"; cat "$work/$name.log" >&2; exit 1; }
}

# Each gateway has its own service account; all three are peers.
peer_ids=spiffe://cluster.local/ns/istio-system/sa/eastwest-b,spiffe://cluster.local/ns/istio-system/sa/eastwest-a-quic,spiffe://cluster.local/ns/istio-system/sa/eastwest-a-tcp
start_gateway b network-b auto
start_gateway a-quic network-a quic "127.0.0.1:${gossip[b]}"
start_gateway a-tcp network-a tcp "127.0.0.1:${gossip[b]}"

# Each gateway of network-a routes through B once gossip has told it about
# network-b's endpoint.
for name in a-quic a-tcp; do
	for ((i = 0; ; i++)); do
		"$lg" throughput -addr "127.0.0.1:${port[$name]}" -mib 1 >/dev/null 2>&1 && break
		((i < 300)) || { log "gateway $name does not reach network-b after 30 s"; cat "$work/$name.log" >&2; exit 1; }
		sleep 0.1
	done
done

load=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/')
when=$(date -u '+%Y-%m-%d %H:%M UTC')
rows=""
measure() { # LABEL ADDRESS; loadgen checks every byte count
	log "streaming $MIB MiB each way: $1"
	rows+=$("$lg" throughput -label "$1" -addr "$2" -mib "$MIB")$'\n' || { log "$1 failed"; exit 1; }
}
measure "direct (no gateway)" "127.0.0.1:$sink_port"
measure "one gateway hop (B)" "127.0.0.1:${port[b]}"
measure "A, QUIC tunnel, B" "127.0.0.1:${port[a-quic]}"
measure "A, TCP fallback tunnel, B" "127.0.0.1:${port[a-tcp]}"

# The links must have run over the transport each row names.
for t in quic tcp; do
	body=$(curl -fsS "http://127.0.0.1:${admin[a-$t]}/debug/tunnels")
	grep -q "\"Transport\": \"$t\"" <<<"$body" || { log "gateway a-$t has no $t link:"; echo "$body" >&2; exit 1; }
done

report=$(
	echo "Command: \`MIB=$MIB bench/paths.sh\`; $when; ewgate at $built;"
	echo "$(nproc) cores, load average before the traffic $load, $(go version | cut -d' ' -f3)."
	echo
	echo "| path | MiB each way | up Gbit/s | down Gbit/s |"
	echo "|---|---:|---:|---:|"
	printf '%s' "$rows"
)
echo "$report"
[[ -z $OUT ]] || echo "$report" >"$OUT"
