package gateway

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
)

// closed reports whether ch is closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestDialContextExpires: at its deadline a dialContext is done, says
// why, and runs what context.AfterFunc registered; what was stopped
// does not run, and a later AfterFunc runs at once.
func TestDialContextExpires(t *testing.T) {
	c := newDialContext()
	c.begin(20 * time.Millisecond)
	var ran, stoppedRan atomic.Bool
	context.AfterFunc(c, func() { ran.Store(true) })
	stop := context.AfterFunc(c, func() { stoppedRan.Store(true) })
	if !stop() || stop() {
		t.Fatal("stop: want true once, then false")
	}
	if d, ok := c.Deadline(); !ok || d.IsZero() {
		t.Fatalf("Deadline() = %v, %v", d, ok)
	}
	await.True(t, 5*time.Second, "the deadline to pass", func() bool { return closed(c.Done()) })
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err() = %v, want context.DeadlineExceeded", c.Err())
	}
	await.True(t, 5*time.Second, "the AfterFunc to run", ran.Load)
	var late atomic.Bool
	context.AfterFunc(c, func() { late.Store(true) })
	await.True(t, 5*time.Second, "an AfterFunc after the deadline to run", late.Load)
	if stoppedRan.Load() {
		t.Fatal("a stopped AfterFunc ran")
	}
	c.end()

	// The next dial gets a fresh channel.
	c.begin(time.Hour)
	defer c.end()
	if closed(c.Done()) || c.Err() != nil {
		t.Fatal("the next dial starts done")
	}
}

// TestDialContextReused: a dial that ends before its deadline leaves the
// context as it was, for the next dial, whose deadline a stale timer of
// the last cannot cut short.
func TestDialContextReused(t *testing.T) {
	c := newDialContext()
	c.begin(time.Hour)
	done := c.Done()
	var ran atomic.Bool
	stop := context.AfterFunc(c, func() { ran.Store(true) })
	if !stop() {
		t.Fatal("stop before the deadline: false")
	}
	c.end()

	c.begin(time.Hour)
	defer c.end()
	if c.Done() != done || closed(done) || c.Err() != nil {
		t.Fatal("the next dial did not reuse the open channel")
	}
	c.expire() // a stale timer firing late
	if closed(c.Done()) || c.Err() != nil || ran.Load() {
		t.Fatal("a stale timer ended the dial in progress")
	}
}
