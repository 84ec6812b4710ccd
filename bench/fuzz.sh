#!/usr/bin/env bash
# fuzz.sh: run every fuzz target of the repository for a while each and
# report the executions, so that fuzzing is measured, not only seeded
# (go test runs the seed corpora). Not for CI: it takes TIME per target.
#
# Targets are what `go test -list '^Fuzz'` lists in each package whose test
# files declare a Fuzz function, so a new target is picked up without an
# edit here.
#
# Environment (defaults in brackets):
#   TIME      fuzz time per target, a Go duration or Nx          [60s]
#   TARGETS   "pkg:Func ..." to run instead of all                []
#   PARALLEL  fuzzing workers per target (go test -parallel)      [GOMAXPROCS]
#   MINIMIZE  time spent minimizing each new input               [100x]
#             (go test -fuzzminimizetime; Go's default of 60 s lets
#             the minimizing of large inputs, such as FuzzPeek's, take
#             the whole TIME, and executions measure nothing)
# New failing inputs land in the package's testdata/fuzz; the script exits
# non-zero if any target fails.
set -euo pipefail
cd "$(dirname "$0")/.."
TIME=${TIME:-60s}
PARALLEL=${PARALLEL:-}
MINIMIZE=${MINIMIZE:-100x}

# listTargets prints "pkg:Func" for every fuzz target of the module.
listTargets() {
	local pkg dir files f mod
	mod=$(go list -m)
	# Only packages whose test files declare a Fuzz function are compiled
	# to be listed: compiling every test binary would cost minutes.
	go list -f '{{.ImportPath}}|{{.Dir}}|{{join .TestGoFiles " "}} {{join .XTestGoFiles " "}}' ./... |
		while IFS='|' read -r pkg dir files; do
			for f in $files; do
				if grep -q '^func Fuzz' "$dir/$f"; then
					go test -list '^Fuzz' "$pkg" | grep '^Fuzz' | sed "s|^|./${pkg#"$mod"/}:|"
					break
				fi
			done
		done
}

# seconds turns go test's elapsed time ("20s", "1m0s", "1h2m3s") into
# seconds.
seconds() {
	local d=$1 n=0
	[[ $d =~ ([0-9]+)h ]] && n=$((n + BASH_REMATCH[1] * 3600))
	[[ $d =~ ([0-9]+)m ]] && n=$((n + BASH_REMATCH[1] * 60))
	[[ $d =~ ([0-9]+)s ]] && n=$((n + BASH_REMATCH[1]))
	echo $n
}

TARGETS_SET=${TARGETS:+1}
if [ -z "${TARGETS:-}" ]; then
	TARGETS=$(listTargets)
fi
workers=${PARALLEL:-${GOMAXPROCS:-$(nproc)}}
echo "# fuzzing, $TIME per target, workers: $workers ($(date -u +'%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD), $(nproc) cores)"
echo "# command: TIME=$TIME MINIMIZE=$MINIMIZE${PARALLEL:+ PARALLEL=$PARALLEL}${TARGETS_SET:+ TARGETS=\"$TARGETS\"} bench/fuzz.sh"
echo
echo "| package | target | executions | executions/s | new interesting | result |"
echo "|---|---|---:|---:|---:|---|"
status=0
for t in $TARGETS; do
	pkg=${t%%:*} fn=${t#*:}
	log=$(mktemp)
	args=(-run '^$' -fuzz "^${fn}\$" -fuzztime "$TIME" -fuzzminimizetime "$MINIMIZE")
	if [ -n "$PARALLEL" ]; then args+=(-parallel "$PARALLEL"); fi
	if go test "${args[@]}" "$pkg" >"$log" 2>&1; then res=ok; else res=FAIL; status=1; fi
	# The last progress line has the totals: "fuzz: elapsed: 20s, execs:
	# 123456 (6000/sec), new interesting: 7 (total: 40)".
	last=$(grep -E '^fuzz: elapsed' "$log" | tail -1 || true)
	elapsed=$(seconds "$(sed -nE 's/^fuzz: elapsed: ([0-9hms]+),.*/\1/p' <<<"$last")")
	execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
	interesting=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
	rate=?
	if [ -n "$execs" ] && [ "${elapsed:-0}" -gt 0 ]; then rate=$((execs / elapsed)); fi
	echo "| ${pkg#./} | \`$fn\` | ${execs:-?} | $rate | ${interesting:-?} | $res |"
	if [ "$res" = FAIL ]; then sed 's/^/    /' "$log" >&2; fi
	rm -f "$log"
done
exit $status
