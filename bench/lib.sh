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
