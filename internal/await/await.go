// Package await polls a condition in tests until it holds or a deadline
// passes, instead of sleeping for a guessed time.
package await

import (
	"runtime"
	"testing"
	"time"
)

// True polls cond every few milliseconds until it returns true. If it has
// not within d, it fails the test with what it waited for and every
// goroutine's stack, which usually shows what is stuck.
func True(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("timed out after %v waiting for %s\n%s", d, what, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
}
