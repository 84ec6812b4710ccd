# lib.sh: building, process and work-directory handling, and CPU
# accounting, shared by the benchmark scripts. Source it after setting
# $repo (the repository's root), $work (the scratch directory), $KEEP (1:
# keep $work at exit), for build, $BASE and, for per_gb, $MIB; record
# every PID you start in the array "started", and they are all stopped on
# exit, Ctrl-C included.

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

# build builds ewgate and loadgen from $repo into $work/bin and, if $BASE
# (a git ref) is set, ewgate from it as $work/bin/ewgate@$BASE (git
# archive, read-only). It sets built: the commit, and whether the tree
# differs from it outside bench/ and docs/.
build() {
	log "building ewgate and loadgen into $work"
	mkdir "$work/bin"
	(cd "$repo" && go build -o "$work/bin/ewgate" ./cmd/ewgate && go build -o "$work/bin/loadgen" ./bench/loadgen)
	if [[ -n $BASE ]]; then
		log "building ewgate@$BASE"
		mkdir "$work/base"
		(cd "$repo" && git archive "$BASE") | tar -x -C "$work/base"
		(cd "$work/base" && go build -o "$work/bin/ewgate@$BASE" ./cmd/ewgate)
	fi
	built="$(cd "$repo" && git rev-parse --short HEAD)$(cd "$repo" && git diff --quiet HEAD -- . ':!bench' ':!docs' || echo ' + uncommitted changes')"
}

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

# proc_ticks PID...: the CPU ticks (user + system, in CLK_TCK units) the
# processes and their children (nginx's workers) used so far. Empty
# arguments and processes that have gone count 0.
proc_ticks() {
	local p c f t=0
	for p in "$@"; do
		[[ -n $p ]] || continue
		for c in "$p" $(pgrep -P "$p" || true); do
			f=$(cut -d')' -f2- "/proc/$c/stat" 2>/dev/null) || continue
			# Fields after "(comm)": state is 1, utime 12, stime 13.
			t=$((t + $(awk '{print $12 + $13}' <<<"$f")))
		done
	done
	echo "$t"
}

# ticks_s TICKS: proc_ticks' ticks in seconds.
ticks_s() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.6f", t / hz}'; }

# per_gb SECONDS: CPU seconds per GB moved, MIB MiB each way (both
# directions count).
per_gb() { awk -v s="$1" -v mib="$MIB" 'BEGIN {printf "%.3f", s / (2 * mib * 1048576 / 1e9)}'; }

# cpu_ticks: "STEAL TOTAL", the CPU ticks of all cores so far that this
# VM's host took from it (steal, /proc/stat's 8th figure) and in all.
cpu_ticks() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, t; exit }' /proc/stat; }

# steal_share "STEAL0 TOTAL0" "STEAL1 TOTAL1": the share of the machine's
# time between two cpu_ticks that the host took, as "N.N %".
steal_share() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; printf "%.1f %%", (t > 0) ? 100 * (y[1] - x[1]) / t : 0 }'; }

# compare_in_background PATTERN NAME=VALUE...: starts compare.sh with
# those variables, its log in $work/log, as $runner (in "started"), and
# returns once the log has a line matching PATTERN (the start of the mode
# to observe); it exits the script with the log if compare.sh ends, or
# 4 minutes pass, first.
compare_in_background() {
	local pattern=$1 i
	shift
	env "$@" "$repo/bench/compare.sh" >"$work/log" 2>&1 &
	runner=$!
	started+=("$runner")
	for ((i = 0; i < 1200; i++)); do
		grep -q -- "$pattern" "$work/log" 2>/dev/null && return 0
		kill -0 "$runner" 2>/dev/null || break
		sleep 0.2
	done
	log "compare.sh did not reach \"$pattern\""
	cat "$work/log" >&2
	exit 1
}
