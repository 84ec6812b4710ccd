#!/usr/bin/env bash
# paths.sh: the throughput of one connection over each path ewgate offers,
# in one run, with real ewgate processes on loopback. See bench/README.md.
#
#   direct                   loadgen -> sink
#   one gateway hop          loadgen -> gateway B (AUTO_PASSTHROUGH, splice) -> sink
#   tunnel, QUIC             loadgen -> gateway A -> QUIC tunnel -> gateway B -> sink
#   tunnel, TCP fallback     the same with A started with --tunnel-transport tcp
#   quic-go baseline         loadgen quicbase -> loadgen quicsink: quic-go
#                            alone, one stream, mutual TLS 1.3, two processes
#
# Gateway B serves network-b, whose endpoint is the sink. Two gateways of
# network-a, which has the service but no endpoint, gossip with B and
# carry connections to it: one dials tunnels over QUIC, the other over
# TCP + TLS 1.3. The script checks the transport of each A's link.
#
# Each row also gives CPU seconds per GB moved (both directions): of the
# processes that relay (the gateways on the path; for the baseline, its
# two quic-go processes) and of every process on the path (adding the
# loadgen client and the sink), from utime + stime in /proc/PID/stat and,
# for the client, bash's time. The report ends with the ratios the
# tunnels are judged by: QUIC tunnel / quic-go and TCP fallback / one hop.
#
# Environment (defaults in brackets):
#   MIB      MiB streamed each way per path   [1024]
#   OUT      also write the report to this file []
#   KEEP     1: keep the work directory (configs, logs) [0]
#   BASE     a git ref: also measure both tunnels with ewgate built from it
#            (git archive, read-only), in the same run      []
#   PROFILE  a directory: write CPU profiles of both gateways of each
#            tunnel row there (PROFILE_SECS seconds from the row's start,
#            --admin-pprof)                                   []
#   PROFILE_SECS                                              [10]
#   ROUNDS   measure every path this many times, one after the other;
#            the ratios use the means                        [1]
#   PERF     1: also the relays' system calls and context switches per
#            MiB, from perf stat        [1 where perf stat works, else 0]
#   QUICGO_PROCS  GOMAXPROCS of each quic-go baseline process: its best
#            here, one per core for two processes on two cores (see
#            docs/benchmarks.md, "Why quic-go carries about 2 Gbit/s
#            here, not 3.1")                                  [1]
#   QUICGO_FLAGS  the baseline's quic.Config flags (loadgen quicsink and
#            quicbase), by default the tunnel's flow-control windows;
#            set and empty, none: quic-go's own windows
#            [-stream-window 8388608 -conn-window 67108864]
#   GATEWAY_PROCS GOMAXPROCS of the gateways ([] : Go's default, the cores)
#   ROWS     the rows to measure, of: direct hop quic-go quic-go-default
#            quic tcp (quic-go-default: the baseline as quic-go's defaults
#            leave it, GOMAXPROCS and quic.Config; the tunnel rows include
#            their BASE rows)                   [direct hop quic-go quic tcp]
set -euo pipefail

MIB=${MIB:-1024}
OUT=${OUT:-}
KEEP=${KEEP:-0}
BASE=${BASE:-}
PROFILE=${PROFILE:-}
PROFILE_SECS=${PROFILE_SECS:-10}
ROUNDS=${ROUNDS:-1}
QUICGO_PROCS=${QUICGO_PROCS:-1}
# Unset, not empty: QUICGO_FLAGS= asks for quic-go's own windows.
QUICGO_FLAGS=${QUICGO_FLAGS--stream-window 8388608 -conn-window 67108864}
GATEWAY_PROCS=${GATEWAY_PROCS:-}
rows_given=${ROWS:-} # for the report's command line
ROWS=" ${ROWS:-direct hop quic-go quic tcp} "
# A misspelt row would be left out without a word.
for r in $ROWS; do
	case $r in
	direct | hop | quic-go | quic-go-default | quic | tcp) ;;
	*)
		echo "paths.sh: ROWS: unknown row \"$r\" (rows: direct hop quic-go quic-go-default quic tcp)" >&2
		exit 2
		;;
	esac
done
# PERF=1 (the default where perf works) adds the relays' system calls and
# context switches per MiB (perf stat software events: they count what the
# relays asked of the kernel, whatever else loads the machine).
perf_events=raw_syscalls:sys_enter,context-switches
if [[ -z ${PERF:-} ]]; then
	PERF=0
	perf stat -x, -e "$perf_events" -o /dev/null -- true 2>/dev/null && PERF=1
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/ewgate-paths.XXXXXX)
# shellcheck source=lib.sh
source "$repo/bench/lib.sh"

build
ew=$work/bin/ewgate
lg=$work/bin/loadgen
[[ -z $PROFILE ]] || mkdir -p "$PROFILE"

# A development CA and one SVID per gateway; a gossip key.
"$ew" ca init --trust-domain cluster.local --out "$work/ca" >/dev/null
head -c 16 /dev/urandom | base64 >"$work/gossip.key"
chmod 600 "$work/gossip.key"

start_sink "$lg"
sink_pid=${started[-1]}

# start_gateway NAME NETWORK TRANSPORT [JOIN [BINARY]] starts a gateway of
# NETWORK (network-b's has the sink as its endpoint) and sets port[NAME],
# admin[NAME], gossip[NAME] and pid[NAME].
declare -A port admin gossip pid tport
start_gateway() {
	local name=$1 network=$2 transport=$3 join=${4:-} bin=${5:-$ew} dir=$work/$1 endpoints="[]"
	mkdir -p "$dir"
	port[$name]=$("$lg" freeport)
	admin[$name]=$("$lg" freeport)
	gossip[$name]=$("$lg" freeport)
	tport[$name]=$("$lg" freeport)
	if [[ $network == network-b || $network == network-c ]]; then
		endpoints="[{address: 127.0.0.1, ports: {tcp-echo: $sink_port}, network: $network, labels: {app: echo, security.istio.io/tlsMode: istio}}]"
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
	env ${GATEWAY_PROCS:+GOMAXPROCS=$GATEWAY_PROCS} "$bin" run -f "$dir/mesh.yaml" --network "$network" --node-name "$name" --node-labels istio=eastwestgateway \
		--bind-address 127.0.0.1 --admin-address "127.0.0.1:${admin[$name]}" --status-address "" --log-level warn --drain-timeout 1s \
		--endpoint-allow-loopback --peer-ids "$peer_ids" \
		--svid-cert "$dir/svid/cert.pem" --svid-key "$dir/svid/key.pem" --trust-bundle "$dir/svid/bundle.pem" \
		--gossip-address "127.0.0.1:${gossip[$name]}" --gossip-key-file "$work/gossip.key" --gossip-profile local \
		--passthrough-advertise "127.0.0.1:${port[$name]}" --tunnel-address "127.0.0.1:${tport[$name]}" \
		--tunnel-transport "$transport" ${join:+--join "$join"} ${PROFILE:+--admin-pprof} >"$work/$name.log" 2>&1 &
	pid[$name]=$!
	started+=("${pid[$name]}")
	wait_port "${port[$name]}" "${pid[$name]}" || { log "gateway $name did not start"; cat "$work/$name.log" >&2; exit 1; }
}

# Each gateway has its own service account; all three are peers.
# With BASE, B and two more gateways of network-a run the older binary:
# B@ serves those, so that both ends of each tunnel are the same build.
tunnels="a-quic a-tcp"
peer_ids=spiffe://cluster.local/ns/istio-system/sa/eastwest-b,spiffe://cluster.local/ns/istio-system/sa/eastwest-a-quic,spiffe://cluster.local/ns/istio-system/sa/eastwest-a-tcp
[[ -z $BASE ]] || peer_ids+=,spiffe://cluster.local/ns/istio-system/sa/eastwest-b-base,spiffe://cluster.local/ns/istio-system/sa/eastwest-a-quic-base,spiffe://cluster.local/ns/istio-system/sa/eastwest-a-tcp-base
start_gateway b network-b auto
start_gateway a-quic network-a quic "127.0.0.1:${gossip[b]}"
start_gateway a-tcp network-a tcp "127.0.0.1:${gossip[b]}"
if [[ -n $BASE ]]; then
	# A network of its own (network-c, same endpoint) keeps the old
	# gateways' tunnels between old gateways.
	start_gateway b-base network-c auto "" "$work/bin/ewgate@$BASE"
	start_gateway a-quic-base network-d quic "127.0.0.1:${gossip[b-base]}" "$work/bin/ewgate@$BASE"
	start_gateway a-tcp-base network-d tcp "127.0.0.1:${gossip[b-base]}" "$work/bin/ewgate@$BASE"
	tunnels+=" a-quic-base a-tcp-base"
fi

# The quic-go baseline's server and client, with SVIDs of the same CA.
qb_port=$("$lg" freeport)
"$ew" ca issue --ca "$work/ca" --spiffe-id spiffe://cluster.local/ns/demo/sa/echo --out "$work/svid/quicsink" >/dev/null
"$ew" ca issue --ca "$work/ca" --spiffe-id spiffe://cluster.local/ns/demo/sa/sleep --out "$work/svid/quicbase" >/dev/null
# shellcheck disable=SC2086 # QUICGO_FLAGS are words
GOMAXPROCS=$QUICGO_PROCS "$lg" quicsink -listen "127.0.0.1:$qb_port" -tls-svid "$work/svid/quicsink" $QUICGO_FLAGS >"$work/quicsink.log" 2>&1 &
qb_pid=$!
started+=("$qb_pid")
if [[ $ROWS == *" quic-go-default "* ]]; then
	qd_port=$("$lg" freeport)
	"$lg" quicsink -listen "127.0.0.1:$qd_port" -tls-svid "$work/svid/quicsink" >"$work/quicsink-default.log" 2>&1 &
	qd_pid=$!
	started+=("$qd_pid")
fi

# Each gateway of network-a routes through B once gossip has told it about
# network-b's endpoint.
for name in $tunnels; do
	for ((i = 0; ; i++)); do
		"$lg" throughput -addr "127.0.0.1:${port[$name]}" -mib 1 >/dev/null 2>&1 && break
		((i < 300)) || { log "gateway $name does not reach network-b after 30 s"; cat "$work/$name.log" >&2; exit 1; }
		sleep 0.1
	done
done

load=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/')
when=$(date -u '+%Y-%m-%d %H:%M UTC')
rows=""
declare -A gbps # "LABEL up" and "LABEL down": a row's figures, for the ratios
# measure LABEL "RELAYS" "PROFILED" COMMAND...: one row by the client
# COMMAND (given -label and -mib; it checks every byte count). RELAYS are
# the PIDs of the processes that relay, and the word "client" if the
# client is one of them; every process is the relays, the client and the
# sink. PROFILED names the gateways to profile with PROFILE.
measure() {
	local label=$1 relays=$2 profiled=$3 name pids=() with_client=0 r0 r1 s0 s1 client rel all row curls=()
	shift 3
	for name in $relays; do
		if [[ $name == client ]]; then with_client=1; else pids+=("$name"); fi
	done
	log "streaming $MIB MiB each way: $label"
	if [[ -n $PROFILE ]]; then
		for name in $profiled; do
			curl -fsS -o "$PROFILE/${label//[^A-Za-z0-9@]/_}.$name.pprof" \
				"http://127.0.0.1:${admin[$name]}/debug/pprof/profile?seconds=$PROFILE_SECS" &
			curls+=($!)
		done
	fi
	local perf_pid= wrap=()
	rm -f "$work/relays.perf" "$work/client.perf"
	if [[ $PERF == 1 ]]; then
		if ((${#pids[@]} > 0)); then
			perf stat -x, -e "$perf_events" -o "$work/relays.perf" -p "$(IFS=,; echo "${pids[*]}")" &
			perf_pid=$!
		fi
		((with_client == 0)) || wrap=(perf stat -x, -e "$perf_events" -o "$work/client.perf" --)
	fi
	r0=$(proc_ticks "${pids[@]}")
	s0=$(proc_ticks "$sink_pid")
	local TIMEFORMAT='%3U %3S'
	{ time "${wrap[@]}" "$@" -label "$label" -mib "$MIB" >"$work/row" 2>"$work/client.err"; } 2>"$work/client.time" ||
		{ log "$label failed"; cat "$work/client.err" >&2; dump_logs $profiled; exit 1; }
	r1=$(proc_ticks "${pids[@]}")
	s1=$(proc_ticks "$sink_pid")
	if [[ -n $perf_pid ]]; then
		kill -INT "$perf_pid"
		wait "$perf_pid" || true
	fi
	((${#curls[@]} == 0)) || wait "${curls[@]}"
	client=$(awk '{print $1 + $2}' "$work/client.time")
	rel=$(awk -v d="$(ticks_s $((r1 - r0)))" -v c="$client" -v w=$with_client 'BEGIN {print d + w * c}')
	all=$(awk -v d="$(ticks_s $((r1 - r0 + s1 - s0)))" -v c="$client" 'BEGIN {print d + c}')
	# loadgen's first four columns are this table's; it exits non-zero
	# on any error, which ended the script above.
	row=$(awk -F'|' '{printf "|%s|%s|%s|%s|", $2, $3, $4, $5}' "$work/row")
	[[ $row == "| $label | "* ]] || { log "$label: unexpected row $(cat "$work/row")"; exit 1; }
	if ((${#pids[@]} + with_client > 0)); then rel=$(per_gb "$rel"); else rel=-; fi
	row+=" $rel | $(per_gb "$all") |"
	if [[ $PERF == 1 ]]; then
		# Events per MiB moved (both directions), relays only.
		local counts
		counts=$(cat "$work/relays.perf" "$work/client.perf" 2>/dev/null || true)
		row+=$(awk -F, -v mib="$MIB" -v any=$((${#pids[@]} + with_client)) '
			$3 == "raw_syscalls:sys_enter" { sc += $1 } $3 == "context-switches" { cs += $1 }
			END { if (any) printf " %.0f | %.0f |", sc / (2 * mib), cs / (2 * mib); else printf " - | - |" }' <<<"$counts")
	fi
	rows+="$row"$'\n'
	gbps[$label up]+=" $(awk -F'|' '{gsub(/ /, "", $4); print $4}' <<<"$row")"
	gbps[$label down]+=" $(awk -F'|' '{gsub(/ /, "", $5); print $5}' <<<"$row")"
}

# dump_logs NAME...: the last lines of the named gateways' logs to
# stderr: why a row failed.
dump_logs() {
	local name
	for name in "$@"; do
		log "last lines of gateway $name's log:"
		tail -20 "$work/$name.log" >&2 || true
	done
}

# ratio A B: the mean of A's up and down figures over B's ("not
# measured" if ROWS left either out).
ratio() {
	[[ -n ${gbps[$1 up]:-} && -n ${gbps[$2 up]:-} ]] || { echo "not measured"; return; }
	awk -v a="${gbps[$1 up]}" -v b="${gbps[$2 up]}" -v c="${gbps[$1 down]}" -v d="${gbps[$2 down]}" '
	function mean(s, f, n, i, t) { n = split(s, f, " "); for (i = 1; i <= n; i++) t += f[i]; return t / n }
	BEGIN {printf "up %.2f×, down %.2f×", mean(a) / mean(b), mean(c) / mean(d)}'
}

for ((round = 1; round <= ROUNDS; round++)); do
	[[ $ROWS != *" direct "* ]] || measure "direct (no gateway)" "" "" "$lg" throughput -addr "127.0.0.1:$sink_port"
	[[ $ROWS != *" hop "* ]] || measure "one gateway hop (B)" "${pid[b]}" "" "$lg" throughput -addr "127.0.0.1:${port[b]}"
	[[ $ROWS != *" quic-go "* ]] || measure "quic-go, two processes" "$qb_pid client" "" env GOMAXPROCS="$QUICGO_PROCS" "$lg" quicbase -addr "127.0.0.1:$qb_port" -tls-svid "$work/svid/quicbase" $QUICGO_FLAGS
	[[ $ROWS != *" quic-go-default "* ]] || measure "quic-go, two processes, quic-go's defaults" "$qd_pid client" "" "$lg" quicbase -addr "127.0.0.1:$qd_port" -tls-svid "$work/svid/quicbase"
	[[ $ROWS != *" quic "* ]] || measure "A, QUIC tunnel, B" "${pid[a-quic]} ${pid[b]}" "a-quic b" "$lg" throughput -addr "127.0.0.1:${port[a-quic]}"
	[[ -z $BASE || $ROWS != *" quic "* ]] || measure "A, QUIC tunnel, B (ewgate@$BASE)" "${pid[a-quic-base]} ${pid[b-base]}" "a-quic-base b-base" "$lg" throughput -addr "127.0.0.1:${port[a-quic-base]}"
	[[ $ROWS != *" tcp "* ]] || measure "A, TCP fallback tunnel, B" "${pid[a-tcp]} ${pid[b]}" "a-tcp b" "$lg" throughput -addr "127.0.0.1:${port[a-tcp]}"
	[[ -z $BASE || $ROWS != *" tcp "* ]] || measure "A, TCP fallback tunnel, B (ewgate@$BASE)" "${pid[a-tcp-base]} ${pid[b-base]}" "a-tcp-base b-base" "$lg" throughput -addr "127.0.0.1:${port[a-tcp-base]}"
done

# The links must have run over the transport each row names.
for name in $tunnels; do
	t=${name#a-}
	t=${t%-base}
	body=$(curl -fsS "http://127.0.0.1:${admin[$name]}/debug/tunnels")
	grep -q "\"Transport\": \"$t\"" <<<"$body" || { log "gateway $name has no $t link:"; echo "$body" >&2; exit 1; }
done

# What the kernel gave quic-go for each gateway's tunnel socket.
udp_bufs=""
for name in $tunnels b; do
	udp_bufs+=$(ss -uamn "sport = :${tport[$name]}" 2>/dev/null | awk -v n="$name" '/skmem/ {match($0, /rb[0-9]+/); r = substr($0, RSTART + 2, RLENGTH - 2); match($0, /tb[0-9]+/); printf "%s %s/%s, ", n, r, substr($0, RSTART + 2, RLENGTH - 2)}')
done
udp_bufs=${udp_bufs%, }

qf_words="quic-go's own windows"
[[ -z $QUICGO_FLAGS ]] || qf_words="\`$QUICGO_FLAGS\`"
report=$(
	echo "Command: \`${BASE:+BASE=$BASE }${PROFILE:+PROFILE=$PROFILE PROFILE_SECS=$PROFILE_SECS }$( ((ROUNDS == 1)) || echo "ROUNDS=$ROUNDS ")${rows_given:+ROWS=\"$rows_given\" }MIB=$MIB bench/paths.sh\`; $when; ewgate at $built;"
	echo "$(nproc) cores, load average before the traffic $load, $(go version | cut -d' ' -f3)."
	echo "quic-go baseline: GOMAXPROCS=$QUICGO_PROCS in each process, $qf_words; gateways: GOMAXPROCS=${GATEWAY_PROCS:-the default, $(nproc)}."
	echo
	if [[ $PERF == 1 ]]; then
		echo "| path | MiB each way | up Gbit/s | down Gbit/s | relays' CPU s/GB | all processes' CPU s/GB | relays' syscalls/MiB | relays' context switches/MiB |"
		echo "|---|---:|---:|---:|---:|---:|---:|---:|"
	else
		echo "| path | MiB each way | up Gbit/s | down Gbit/s | relays' CPU s/GB | all processes' CPU s/GB |"
		echo "|---|---:|---:|---:|---:|---:|"
	fi
	printf '%s' "$rows"
	echo
	echo "QUIC tunnel / quic-go: $(ratio "A, QUIC tunnel, B" "quic-go, two processes") (aim: 0.8×)."
	echo "TCP fallback / one hop: $(ratio "A, TCP fallback tunnel, B" "one gateway hop (B)") (aim: 0.5×)."
	if [[ -n $BASE ]]; then
		echo "Before (ewgate@$BASE): QUIC tunnel / quic-go: $(ratio "A, QUIC tunnel, B (ewgate@$BASE)" "quic-go, two processes"); TCP fallback / one hop: $(ratio "A, TCP fallback tunnel, B (ewgate@$BASE)" "one gateway hop (B)")."
	fi
	echo
	echo "Tunnel UDP socket buffers, receive/send bytes (ss -uam; quic-go asks for 7 MiB): $udp_bufs."
)
echo "$report"
[[ -z $OUT ]] || echo "$report" >"$OUT"
