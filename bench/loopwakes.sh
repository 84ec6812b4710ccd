#!/usr/bin/env bash
# loopwakes.sh: how ewgate's event loops woke in a Go execution trace,
# the figures of docs/benchmarks.md "The fixed-rate tail on a quiet host".
# A loop is a goroutine that the network woke at least MIN times (only the
# loops are woken that often under load); for their wake-ups it prints
# the distribution of how long each ran (running to waiting again) and
# of how long each waited to run (runnable to running), and how often
# two loops were made runnable within 5 µs of each other, with the
# second's wait then.
#
#   bench/loopwakes.sh TRACE      TRACE: from /debug/pprof/trace of an
#                                 ewgate run with --admin-pprof, e.g.
#                                 EWGATE_ARGS=--admin-pprof bench/compare.sh
#
# Environment: MIN, the wake-ups that make a goroutine a loop [1000].
set -euo pipefail

trace=${1:?usage: bench/loopwakes.sh TRACE}
min=${MIN:-1000}

# -d=parsed prints one event per line; state transitions carry the time
# (ns), the goroutine and the transition, as Time=T GoID=G From->To.
go tool trace -d=parsed "$trace" 2>/dev/null | awk -v min="$min" '
/StateTransition/ && /GoID=/ {
	t = g = tr = ""
	for (i = 1; i <= NF; i++) {
		if ($i ~ /^Time=/) t = substr($i, 6)
		else if ($i ~ /^GoID=/) g = substr($i, 6)
		else if ($i ~ /->/) tr = $i
	}
	n++; T[n] = t; G[n] = g; TR[n] = tr
	if (tr == "Running->Waiting" && /Reason="network"/) woke[g]++
}
END {
	loops = 0
	for (g in woke) if (woke[g] >= min) { loop[g] = 1; loops++ }
	if (loops == 0) { print "no goroutine woken by the network " min " times" > "/dev/stderr"; exit 1 }
	for (i = 1; i <= n; i++) {
		g = G[i]
		if (!(g in loop)) continue
		if (TR[i] == "Waiting->Runnable") {
			ready[g] = T[i]; paired[g] = 0
			for (o in loop) if (o != g && (o in ready) && !(o in running) && T[i] - ready[o] < 5000) paired[g] = 1
			delete running[g]
		} else if (TR[i] == "Runnable->Running" && (g in ready)) {
			w = (T[i] - ready[g]) / 1000
			print "d2 waited to run\t" w
			if (paired[g]) { print "d3 readied within 5 µs of another loop, waited to run\t" w; np++ }
			start[g] = T[i]; running[g] = 1
		} else if (TR[i] == "Running->Waiting" && (g in start)) {
			print "d1 ran per wake-up\t" (T[i] - start[g]) / 1000
			delete start[g]
		}
	}
	printf "c0 loops (goroutines woken by the network at least %d times)\t%d\n", min, loops
	if (np == 0) print "c3 readied within 5 µs of another loop\t0"
}' | sort -t $'\t' -k1,1 -k2,2g | awk -F '\t' '
# Keys are cN (a count) or dN (a distribution, printed as its count and
# percentiles in µs from the sorted values); N orders the lines.
function flush(   what) {
	if (name == "") return
	what = substr(name, 4)
	if (name ~ /^c/) { print what ": " v[1]; return }
	printf "%s: %d, p50 %.2f µs, p99 %.2f µs, p99.9 %.2f µs, max %.2f µs\n", what, k, v[at(.5)], v[at(.99)], v[at(.999)], v[k]
}
function at(p) { return int(k * p) > 0 ? int(k * p) : 1 }
$1 != name { flush(); name = $1; k = 0 }
{ v[++k] = $2 }
END { flush() }'
