#!/usr/bin/env bash
# schedlat.sh: how long the kernel kept each proxy's threads waiting to
# run in compare.sh's lat mode, the figures of docs/benchmarks.md "The
# kernel's wake-up". Runs lat with the given proxies taking turns, as
# compare.sh does, records the scheduler's events of the whole machine
# for SECS seconds of it (perf sched record -a), and prints per proxy
# the distribution of the scheduling delay of its threads (runnable to
# running, µs: perf sched timehist's "sch delay"), the p99 of how long
# they ran once running, how often they were switched out while still
# runnable (preempted) against asleep, and compare.sh's lat rows.
# Then, for each proxy, its set's worst turn within the recording (by
# p99, from loadgen rr -turns) beside its median turn: the turn's p99,
# largest and late requests, its threads' longest scheduling delay and
# their CPU time in it, the machine's idle time, and the commands that
# ran longest: what a stall had that an ordinary turn did not.
#
#   bench/schedlat.sh               PROXIES as compare.sh [ewgate haproxy nginx]
#
# Environment: PROXIES, LAT_SECS (compare.sh's, [8]), SECS: seconds
# recorded [6], KEEP=1 keeps the work directory (the perf data, the
# timehist and the report). Needs perf (Debian's linux-perf) and root.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/schedlat.XXXXXX)
KEEP=${KEEP:-0}
# shellcheck source=lib.sh
source "$repo/bench/lib.sh"
PROXIES=${PROXIES:-ewgate haproxy nginx}
LAT_SECS=${LAT_SECS:-8}
SECS=${SECS:-6}

compare_in_background "compare.sh: lat " PROXIES="$PROXIES" MODES=lat LAT_SECS="$LAT_SECS" LAT_TURNS="$work/turns" OUT="$work/report.md"
# The first turns open the connections; 2 s in, every set is warm.
sleep 2
# CLOCK_MONOTONIC, the turn log's clock.
perf sched record -k mono -a -o "$work/sched.data" -- sleep "$SECS" >"$work/perf.log" 2>&1 || { cat "$work/perf.log" >&2; exit 1; }
wait "$runner" || { cat "$work/log" >&2; exit 1; }
started=()
# timehist: time (of the switch-out, s), cpu, task[tid/pid], wait, sch
# delay, run time (ms), state at the switch-out (S asleep, R preempted).
# delays: task, sch delay µs, state, run time µs, time.
perf sched timehist --state -i "$work/sched.data" 2>/dev/null | awk 'NR > 3 { n = $3; sub(/\[.*/, "", n); print n, $5 * 1000, $NF, $6 * 1000, $1 }' >"$work/delays"
# quantiles COLUMN: the count, p50, p90, p99, p99.9 and max of COLUMN of
# proxy $p's lines of $work/delays.
quantiles() {
	awk -v p="$p" -v c="$1" '$1 == p { print $c }' "$work/delays" | sort -n | awk '
		{ d[NR] = $1 }
		function q(f) { i = int(NR * f); return d[i < 1 ? 1 : i] }
		END { if (NR > 0) printf "%d %.0f %.0f %.0f %.0f %.0f\n", NR, q(0.5), q(0.9), q(0.99), q(0.999), d[NR] }'
}
for p in $PROXIES; do
	read -r n d50 d90 d99 d999 dmax <<<"$(quantiles 2)" || continue
	read -r _ _ _ r99 _ _ <<<"$(quantiles 4)"
	preempted=$(awk -v p="$p" '$1 == p && $3 == "R"' "$work/delays" | wc -l)
	printf '%s: %d runs, scheduling delay µs p50 %s, p90 %s, p99 %s, p99.9 %s, max %s; run time p99 %s µs; preempted %d of %d switch-outs (%.1f %%)\n' \
		"$p" "$n" "$d50" "$d90" "$d99" "$d999" "$dmax" "$r99" "$preempted" "$n" "$(awk -v r="$preempted" -v n="$n" 'BEGIN { print 100 * r / n }')"
done
awk '/^### Latency at a fixed rate/ { on = 1 } on && /^#/ && !/^### Latency at a fixed rate/ { on = 0 } on && /^\|/' "$work/report.md"
echo
# The turn log's lines: label, start, end (s), round trips, p50, p99,
# largest (µs), sent late.
awk -v procs="$PROXIES" '
	FNR == NR { label[NR] = $1; ts[NR] = $2; te[NR] = $3; p99[NR] = $6; big[NR] = $7; late[NR] = $8; turns = NR; next }
	{ n++; task[n] = $1; delay[n] = $2; run[n] = $4; at[n] = $5; if (n == 1 || $5 < t0) t0 = $5; if ($5 > t1) t1 = $5 }
	# window I P: the figures of turn I for proxy P.
	function window(i, p,   j, d, r, idle, c, top, k, best, s) {
		d = 0; r = 0; idle = 0; delete c
		for (j = 1; j <= n; j++) {
			if (at[j] < ts[i] || at[j] > te[i]) continue
			if (task[j] == p) { r += run[j]; if (delay[j] > d) d = delay[j] }
			if (task[j] == "<idle>") idle += run[j]; else c[task[j]] += run[j]
		}
		top = ""
		for (k = 1; k <= 3; k++) {
			best = ""
			for (s in c) if (best == "" || c[s] > c[best]) best = s
			if (best == "") break
			top = top sprintf("%s%s %.1f ms", k > 1 ? ", " : "", best, c[best] / 1000); delete c[best]
		}
		return sprintf("p99 %.0f µs, largest %.0f, %d late; %s threads: longest scheduling delay %.0f µs, ran %.1f ms; machine idle %.1f ms of %.0f; ran longest: %s",
			p99[i], big[i], late[i], p, d, r / 1000, idle / 1000, 2 * (te[i] - ts[i]) * 1000, top)
	}
	END {
		np = split(procs, ps, " ")
		for (k = 1; k <= np; k++) {
			p = ps[k]; m = 0; delete in_rec
			for (i = 1; i <= turns; i++) if (label[i] == p && ts[i] >= t0 && te[i] <= t1) in_rec[++m] = i
			if (m == 0) continue
			# Sort the turns by p99 (insertion: a few dozen).
			for (i = 2; i <= m; i++) { v = in_rec[i]; for (j = i - 1; j >= 1 && p99[in_rec[j]] > p99[v]; j--) in_rec[j + 1] = in_rec[j]; in_rec[j + 1] = v }
			printf "%s, %d turns recorded\n  worst:  %s\n  median: %s\n", p, m, window(in_rec[m], p), window(in_rec[int((m + 1) / 2)], p)
		}
	}' "$work/turns" "$work/delays"
