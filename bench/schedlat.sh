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

compare_in_background "compare.sh: lat " PROXIES="$PROXIES" MODES=lat LAT_SECS="$LAT_SECS" OUT="$work/report.md"
# The first turns open the connections; 2 s in, every set is warm.
sleep 2
perf sched record -a -o "$work/sched.data" -- sleep "$SECS" >"$work/perf.log" 2>&1 || { cat "$work/perf.log" >&2; exit 1; }
wait "$runner" || { cat "$work/log" >&2; exit 1; }
started=()
# timehist: time, cpu, task[tid/pid], wait, sch delay, run time (ms),
# state at the switch-out (S asleep, R preempted).
perf sched timehist --state -i "$work/sched.data" 2>/dev/null | awk 'NR > 3 { n = $3; sub(/\[.*/, "", n); print n, $5 * 1000, $NF, $6 * 1000 }' >"$work/delays"
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
