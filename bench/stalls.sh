#!/usr/bin/env bash
# stalls.sh: which threads waited more than 1 ms for a CPU during
# compare.sh's lat, in whose turn, and who had the CPU: the figures of
# docs/benchmarks.md "ewgate's threads preempt each other". Runs
# bench/stalls.bt (bpftrace; it writes a line only per such wait, so it
# makes no stalls of its own, as perf's writes do) for the whole of a lat
# run with the proxies taking turns, then prints, per proxy, the waits of
# its threads in its own turns (woken or preempted, by whom, and how
# often the other CPU was idle through most of the wait), the waits of
# the client's and the sink's threads (loadgen) in its turns, and
# compare.sh's lat tables (rows, added latency, turn by turn).
#
#   bench/stalls.sh                 PROXIES as compare.sh [ewgate haproxy nginx]
#
# Environment: PROXIES, LAT_SECS (compare.sh's, [15]), EWGATE_ENV
# (compare.sh's), KEEP=1 keeps the work directory (the waits, the turn
# log and the report). Needs bpftrace (Debian's bpftrace) and root; the
# script assumes two CPUs.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/stalls.XXXXXX)
KEEP=${KEEP:-0}
# shellcheck source=lib.sh
source "$repo/bench/lib.sh"
PROXIES=${PROXIES:-ewgate haproxy nginx}
LAT_SECS=${LAT_SECS:-15}

bpftrace "$repo/bench/stalls.bt" >"$work/stalls" 2>"$work/bpftrace.log" &
tracer=$!
started+=("$tracer")
for ((i = 0; i < 100; i++)); do
	grep -q "^Attaching" "$work/stalls" 2>/dev/null && break
	kill -0 "$tracer" 2>/dev/null || { cat "$work/bpftrace.log" >&2; exit 1; }
	sleep 0.1
done
PROXIES=$PROXIES MODES=lat LAT_SECS=$LAT_SECS LAT_TURNS=$work/turns OUT=$work/report.md \
	"$repo/bench/compare.sh" >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
kill -INT "$tracer"
wait "$tracer" || true
started=()

# stalls: "stall" ns cpu wait_µs task tid before_it before_ran_µs
# other_cpu_idle_µs woken|preempted by. turns: label, start, end (s), ...
awk -v procs="$PROXIES" '
	FNR == NR { split($0, f, "\t"); nt++; label[nt] = f[1]; ts[nt] = f[2] + 0; te[nt] = f[3] + 0; next }
	# turn T: the index of the turn under time T (s), 0 for none.
	function turn(t,   lo, hi, mid) {
		lo = 1; hi = nt
		while (lo <= hi) { mid = int((lo + hi) / 2); if (te[mid] < t) lo = mid + 1; else if (ts[mid] > t) hi = mid - 1; else return mid }
		return 0
	}
	$1 == "stall" && NF == 11 {
		i = turn($2 / 1e9)
		if (i == 0) next
		l = label[i]; who = $5
		if (who == "loadgen") { client[l]++; next }
		if (who != l) next
		n[l]++; k[l, $10]++
		if ($10 == "preempted") by[l, $11]++
		if ($9 * 2 > $4) idle[l]++
		w[l, n[l]] = $4
	}
	/^@preempted_by\[/ { line[++nl] = $0 }
	END {
		np = split(procs, ps, " ")
		for (j = 1; j <= np; j++) {
			p = ps[j]
			m = n[p] + 0
			for (a = 2; a <= m; a++) { x = w[p, a]; for (b = a - 1; b >= 1 && w[p, b] > x; b--) w[p, b + 1] = w[p, b]; w[p, b + 1] = x }
			top = ""
			for (c = 1; c <= 3; c++) {
				best = ""
				for (key in by) { split(key, kk, SUBSEP); if (kk[1] == p && (best == "" || by[key] > by[p, best])) best = kk[2] }
				if (best == "") break
				top = top sprintf("%s%s %d", c > 1 ? ", " : "", best, by[p, best]); delete by[p, best]
			}
			printf "%s: %d waits over 1 ms by its threads in its turns (%d woken, %d preempted; preempted by %s); the other CPU idle through most of the wait in %d; wait p50 %s µs, max %s; waits of the client'"'"'s and the sink'"'"'s threads in its turns: %d\n",
				p, m, k[p, "woken"], k[p, "preempted"], top == "" ? "-" : top, idle[p], m ? w[p, int((m + 1) / 2)] : "-", m ? w[p, m] : "-", client[p]
		}
		for (j = 1; j <= nl; j++) print line[j]
	}' "$work/turns" "$work/stalls"
awk '/^### Latency at a fixed rate/ { on = 1 } on && /^#/ && !/^### Latency at a fixed rate/ { on = 0 } on && /^\|/' "$work/report.md"
