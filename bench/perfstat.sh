#!/usr/bin/env bash
# perfstat.sh: what one proxy's CPU per operation is made of, counted by
# the kernel: runs compare.sh with that proxy and mode alone, and for 3 s
# of the mode's window counts, with perf stat, the proxy's task clock,
# context switches and system calls by kind, printed per operation (per
# round trip for rr and lat: writes, that is write, writev and sendto
# (HAProxy's), / 2; per connection for connect and tls: connects). Counts
# do not depend on the machine's load the way times do.
#
#   bench/perfstat.sh PROXY MODE    PROXY: ewgate, haproxy or nginx;
#                                   MODE: rr, lat (alone, at LAT_RATE),
#                                   connect or tls
#
# With PERF_RECORD=FILE it records a call-graph profile of the same 3 s
# into FILE instead (perf record -e cpu-clock -g: this VM has no hardware
# counters), for `perf report -i FILE`.
#
# ewgate is built from this tree, as compare.sh does. Needs perf (Debian's
# linux-perf) and root.
set -euo pipefail

proxy=${1:?usage: bench/perfstat.sh PROXY MODE}
mode=${2:?usage: bench/perfstat.sh PROXY MODE}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/perfstat.XXXXXX)
KEEP=0
# shellcheck source=lib.sh
source "$repo/bench/lib.sh"

# The mode's window starts when compare.sh logs it; 1.5 s in, the
# connections are open and the proxy warm.
compare_in_background "$mode $proxy" PROXIES="$proxy" MODES="$mode" SECS=6 DIRECT=0 OUT="$work/report.md"
sleep 1.5
case $proxy in
ewgate) pids=$(pgrep -f "ewgate run -f /tmp/ewgate-bench" | head -1) ;;
nginx) pids=$(pgrep -P "$(pgrep -f 'nginx: master' -n)" | paste -sd,) ;;
haproxy) pids=$(pgrep -x haproxy -n) ;;
*) log "unknown proxy $proxy"; exit 2 ;;
esac
events=task-clock,context-switches,raw_syscalls:sys_enter
for s in futex nanosleep epoll_pwait epoll_wait epoll_ctl accept4 connect read recvfrom write writev sendto setsockopt splice; do
	events+=,syscalls:sys_enter_$s
done
if [[ -n ${PERF_RECORD:-} ]]; then
	perf record -q -F 2000 -e cpu-clock -g -o "$PERF_RECORD" -p "$pids" -- sleep 3 2>"$work/stat" || { cat "$work/stat" >&2; exit 1; }
	wait "$runner" || true
	started=()
	echo "$proxy $mode: profile in $PERF_RECORD (perf report -i $PERF_RECORD --no-children --sort sym)"
	exit 0
fi
perf stat -x, -e "$events" -p "$pids" -- sleep 3 2>"$work/stat" || true
wait "$runner" || true
started=()
awk -F, -v mode="$mode" -v proxy="$proxy" '
	{ v[$3] = $1 }
	END {
		w = v["syscalls:sys_enter_write"] + v["syscalls:sys_enter_writev"] + v["syscalls:sys_enter_sendto"]
		rt = (mode == "rr" || mode == "lat")
		n = rt ? w / 2 : v["syscalls:sys_enter_connect"]
		if (n <= 0) { print "perfstat.sh: no operations counted" > "/dev/stderr"; exit 1 }
		printf "%s %s, per %s (%d counted): CPU %.1f µs, context switches %.2f, system calls %.2f", proxy, mode, rt ? "round trip" : "connection", n, v["task-clock"] * 1000 / n, v["context-switches"] / n, v["raw_syscalls:sys_enter"] / n
		for (k in v) if (k ~ /^syscalls:/ && v[k] > 0) { s = k; sub(/^syscalls:sys_enter_/, "", s); printf ", %s %.2f", s, v[k] / n }
		print ""
	}' "$work/stat"
