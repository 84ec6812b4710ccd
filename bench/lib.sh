# lib.sh: process and work-directory handling shared by the benchmark
# scripts. Source it after setting $work (the scratch directory) and $KEEP
# (1: keep $work at exit); record every PID you start in the array
# "started", and they are all stopped on exit, Ctrl-C included.

started=() # PIDs of every process the script started

log() { echo "$(basename "$0"): $*" >&2; }

# stop ends one process the script started: SIGTERM, then SIGKILL after 5 s.
stop() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local pid
	for pid in "${started[@]}"; do stop "$pid"; done
	if [[ $KEEP == 1 ]]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_port waits up to 10 s for 127.0.0.1:$1 to accept, while $2 lives.
wait_port() {
	local i
	for ((i = 0; i < 100; i++)); do
		kill -0 "$2" 2>/dev/null || return 1
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# start_sink starts "loadgen sink" ($1 is the loadgen binary, any further
# arguments are the sink's) on a free loopback port, in its own process so
# that its sockets do not count against the client's open-file limit, and
# sets sink_port.
start_sink() {
	local lg=$1
	shift
	sink_port=$("$lg" freeport)
	"$lg" sink -listen "127.0.0.1:$sink_port" "$@" >"$work/sink.log" 2>&1 &
	started+=($!)
	wait_port "$sink_port" "$!" || { log "sink did not start"; cat "$work/sink.log" >&2; exit 1; }
}
