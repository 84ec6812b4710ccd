package main

import (
	"errors"
	"strings"
	"sync"
	"testing"
)

func TestErrorCount(t *testing.T) {
	type failure struct {
		kind errKind
		err  string
	}
	tests := []struct {
		name     string
		failures []failure
		total    int
		want     string // String(), exactly
	}{
		{"nothing failed", nil, 0, "none"},
		{"one kind keeps its first error", []failure{{errConnect, "refused"}, {errConnect, "reset"}}, 2,
			"connect 2 (first: refused)"},
		{"kinds in a fixed order", []failure{{errMismatch, "echo differs"}, {errRead, "EOF"}, {errConnect, "refused"}, {errClosed, "ended"}, {errWrite, "broken pipe"}}, 5,
			"connect 1 (first: refused); write 1 (first: broken pipe); read 1 (first: EOF); mismatch 1 (first: echo differs); closed 1 (first: ended)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e errorCount
			for _, f := range tt.failures {
				e.add(f.kind, errors.New(f.err))
			}
			if got := e.total(); got != tt.total {
				t.Errorf("total = %d, want %d", got, tt.total)
			}
			if got := e.String(); got != tt.want {
				t.Errorf("String = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestErrorCountConcurrent(t *testing.T) {
	var e errorCount
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				e.add(errRead, errors.New("short read"))
			}
		})
	}
	wg.Wait()
	if got := e.total(); got != 8000 {
		t.Fatalf("total = %d, want 8000", got)
	}
	if !strings.HasPrefix(e.String(), "read 8000 ") {
		t.Fatalf("String = %q", e.String())
	}
}
