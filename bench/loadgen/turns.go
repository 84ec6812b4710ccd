package main

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// turnLog writes a line per turn of an rr run (rr -turns FILE), so that a
// stall can be found in time: which set's turn it hit, when, and how hard.
// A line is tab-separated: the set's label, the turn's start and end on
// CLOCK_MONOTONIC in seconds (the clock of `perf record -k mono`), its
// round trips, their p50, p99 and largest time in µs, and its requests
// sent late.
type turnLog struct {
	w *bufio.Writer
}

// turnMark is where a set's samples and late count stood when a turn
// began.
type turnMark struct {
	start   float64
	samples []int
	late    int
}

// monotonic is CLOCK_MONOTONIC in seconds.
func monotonic() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

func newTurnLog(w io.Writer) *turnLog { return &turnLog{w: bufio.NewWriter(w)} }

// mark notes where s stands before a turn.
func (t *turnLog) mark(s *rrSet) turnMark {
	m := turnMark{start: monotonic(), samples: make([]int, len(s.pingers))}
	for i, p := range s.pingers {
		m.samples[i] = len(p.samples)
		m.late += p.late
	}
	return m
}

// record writes the line of the turn of s that began at m and has just
// ended.
func (t *turnLog) record(s *rrSet, m turnMark) {
	end := monotonic()
	var lat []time.Duration
	late := -m.late
	for i, p := range s.pingers {
		lat = append(lat, p.samples[m.samples[i]:]...)
		late += p.late
	}
	slices.Sort(lat)
	var largest time.Duration
	if len(lat) > 0 {
		largest = lat[len(lat)-1]
	}
	fmt.Fprintf(t.w, "%s\t%.6f\t%.6f\t%d\t%s\t%s\t%s\t%d\n", s.label, m.start, end, len(lat),
		micros(percentile(lat, 50)), micros(percentile(lat, 99)), micros(largest), late)
}

// flush writes out what is buffered.
func (t *turnLog) flush() error { return t.w.Flush() }
