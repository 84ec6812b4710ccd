package main

import (
	"fmt"
	"slices"
	"time"
)

// Latencies are kept as every sample, sorted once at the end: a 5 s rr run
// is a few hundred thousand samples, and exact order statistics need no
// bucket resolution argument (a histogram's would be its error).

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted samples: the smallest sample at or above which p % of all lie.
// It returns 0 for no samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	// The rank is ceil(p/100 * n), computed in parts per million so that
	// p = 99.9 over 1,000 samples is rank 999, not 999.0000000000001.
	rank := (int64(p*1e4+0.5)*int64(n) + 1e6 - 1) / 1e6
	rank = max(1, min(rank, int64(n)))
	return sorted[rank-1]
}

// latencies merges per-worker samples into one sorted slice.
func latencies(parts [][]time.Duration) []time.Duration {
	all := slices.Concat(parts...)
	slices.Sort(all)
	return all
}

// micros formats d in microseconds with one decimal.
func micros(d time.Duration) string {
	return fmt.Sprintf("%.1f", float64(d)/1e3)
}
