#!/usr/bin/env bash
# schedlat.sh: how long the kernel kept each proxy's threads waiting to
# run in compare.sh's lat mode, the figures of docs/benchmarks.md "The
# kernel's wake-up". Runs lat with the given proxies taking turns, as
# compare.sh does, records the scheduler's events of the whole machine
# for SECS seconds of it (perf sched record -a), and prints per proxy
# the distribution of the scheduling delay of its threads (from woken
# to running, µs), how often they were switched out while still
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

PROXIES=$PROXIES MODES=lat LAT_SECS=$LAT_SECS OUT=$work/report.md "$repo/bench/compare.sh" >"$work/log" 2>&1 &
runner=$!
started+=("$runner")
for ((i = 0; i < 1200; i++)); do
	grep -q "compare.sh: lat " "$work/log" 2>/dev/null && break
	kill -0 "$runner" 2>/dev/null || { cat "$work/log" >&2; exit 1; }
	sleep 0.2
done
# The first turns open the connections; 2 s in, every set is warm.
sleep 2
perf sched record -a -o "$work/sched.data" -- sleep "$SECS" >"$work/perf.log" 2>&1 || { cat "$work/perf.log" >&2; exit 1; }
wait "$runner" || { cat "$work/log" >&2; exit 1; }
started=()
# timehist: time, cpu, task[tid/pid], wait, sch delay, run time (ms),
# state at the switch-out (S asleep, R preempted).
perf sched timehist --state -i "$work/sched.data" 2>/dev/null | awk 'NR > 3 { n = $3; sub(/\[.*/, "", n); print n, $5 * 1000, $NF }' >"$work/delays"
for p in $PROXIES; do
	awk -v p="$p" '$1 == p { print $2 }' "$work/delays" | sort -n | awk -v p="$p" '
		{ d[NR] = $1 }
		function q(f) { i = int(NR * f); return d[i < 1 ? 1 : i] }
		END { if (NR > 0) printf "%s: %d runs, scheduling delay µs p50 %.0f, p90 %.0f, p99 %.0f, p99.9 %.0f, max %.0f", p, NR, q(0.5), q(0.9), q(0.99), q(0.999), d[NR] }'
	awk -v p="$p" '$1 == p { n++; if ($3 == "R") r++ } END { if (n > 0) printf "; preempted %d of %d switch-outs (%.1f %%)\n", r, n, 100 * r / n }' "$work/delays"
done
awk '/^### Latency at a fixed rate/ { on = 1 } on && /^#/ && !/^### Latency at a fixed rate/ { on = 0 } on && /^\|/' "$work/report.md"
