#!/usr/bin/env bash
# fuzz.sh: run every fuzz target of the repository for a while each and
# report the executions, so that fuzzing is measured, not only seeded
# (go test runs the seed corpora). Not for CI: it takes TIME per target.
#
# Environment (defaults in brackets):
#   TIME     fuzz time per target, a Go duration or Nx  [60s]
#   TARGETS  "pkg:Func ..." to run instead of all        []
# New failing inputs land in the package's testdata/fuzz; the script exits
# non-zero if any target fails.
set -euo pipefail
cd "$(dirname "$0")/.."
TIME=${TIME:-60s}
if [ -z "${TARGETS:-}" ]; then
	TARGETS=$(grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r f; do
		pkg=./$(dirname "${f#./}")
		grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | sed "s|^func |$pkg:|"
	done)
fi
echo "# fuzzing, $TIME per target ($(date -u +'%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD), $(nproc) cores)"
echo
echo "| package | target | executions | new interesting | result |"
echo "|---|---|---:|---:|---|"
status=0
for t in $TARGETS; do
	pkg=${t%%:*} fn=${t#*:}
	log=$(mktemp)
	if go test -run '^$' -fuzz "^${fn}\$" -fuzztime "$TIME" "$pkg" >"$log" 2>&1; then res=ok; else res=FAIL; status=1; fi
	last=$(grep -E '^fuzz: elapsed' "$log" | tail -1)
	execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
	interesting=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
	echo "| $pkg | $fn | ${execs:-?} | ${interesting:-?} | $res |"
	if [ "$res" = FAIL ]; then sed 's/^/    /' "$log" >&2; fi
	rm -f "$log"
done
exit $status
