package main

import (
	"slices"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	// seq returns the samples 1..n µs, sorted.
	seq := func(n int) []time.Duration {
		s := make([]time.Duration, n)
		for i := range s {
			s[i] = time.Duration(i+1) * time.Microsecond
		}
		return s
	}
	tests := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"none", nil, 99, 0},
		{"one sample is every percentile", seq(1), 99.9, 1 * time.Microsecond},
		{"median of 1000", seq(1000), 50, 500 * time.Microsecond},
		{"p99 of 1000", seq(1000), 99, 990 * time.Microsecond},
		{"p99.9 of 1000", seq(1000), 99.9, 999 * time.Microsecond},
		{"p100 is the maximum", seq(1000), 100, 1000 * time.Microsecond},
		// With fewer than 1,000 samples p99.9 is the maximum: the rank
		// rounds up, never down to a sample below the 99.9 % mark.
		{"p99.9 of 100", seq(100), 99.9, 100 * time.Microsecond},
		{"p99 of 101", seq(101), 99, 100 * time.Microsecond},
		{"p99 of 100000", seq(100000), 99, 99000 * time.Microsecond},
		{"p99.9 of 100001", seq(100001), 99.9, 99901 * time.Microsecond},
		{"tiny p is the minimum", seq(10), 0.001, 1 * time.Microsecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.samples, tt.p); got != tt.want {
				t.Errorf("percentile(%d samples, %v) = %v, want %v", len(tt.samples), tt.p, got, tt.want)
			}
		})
	}
}

func TestLatenciesMergesAndSorts(t *testing.T) {
	us := time.Microsecond
	got := latencies([][]time.Duration{{5 * us, 1 * us}, nil, {3 * us}, {2 * us, 4 * us}})
	want := []time.Duration{1 * us, 2 * us, 3 * us, 4 * us, 5 * us}
	if !slices.Equal(got, want) {
		t.Fatalf("latencies = %v, want %v", got, want)
	}
}

func TestMicros(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0.0"},
		{1500 * time.Nanosecond, "1.5"},
		{2080 * time.Microsecond, "2080.0"},
		{149 * time.Nanosecond, "0.1"},
	}
	for _, tt := range tests {
		if got := micros(tt.d); got != tt.want {
			t.Errorf("micros(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}
