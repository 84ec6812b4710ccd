// Package leakcheck fails a test that leaves goroutines or file
// descriptors behind.
package leakcheck

import (
	"os"
	"runtime"
	"testing"
	"time"
)

// Timeout bounds how long Check waits for goroutines and descriptors to
// go away before it reports a leak.
const Timeout = 10 * time.Second

// Check records the number of goroutines and open file descriptors now and,
// when the test ends, after every cleanup registered later has run, polls
// until both are back to at most that, failing the test with all goroutine
// stacks if they are not within Timeout. Call it first in a test so that
// its cleanup runs last. Tests that use it must not run in parallel.
func Check(t testing.TB) {
	t.Helper()
	g0, f0 := runtime.NumGoroutine(), OpenFDs()
	t.Cleanup(func() {
		deadline := time.Now().Add(Timeout)
		for {
			// Go keeps splice pipes in a sync.Pool and closes them from a
			// cleanup: collecting twice keeps pooled pipes from counting.
			runtime.GC()
			runtime.GC()
			g, f := runtime.NumGoroutine(), OpenFDs()
			if g <= g0 && f <= f0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("leak: goroutines %d -> %d, file descriptors %d -> %d\n%s", g0, g, f0, f, Stacks())
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// OpenFDs counts this process's open file descriptors, or returns 0 where
// /proc is missing.
func OpenFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

// Stacks returns the stacks of all goroutines, whole, as runtime.Stack
// formats them: tests count the goroutines parked in a function by them.
func Stacks() []byte {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return buf[:n]
		}
		buf = make([]byte, 2*len(buf))
	}
}
