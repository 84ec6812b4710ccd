package gateway

import (
	"context"
	"sync"
	"time"
)

// dialContext bounds the dials of one handler goroutine, one dial at a
// time, by a deadline, reusing its channel and timer from one dial to
// the next: a dial bounded by net.Dialer.Timeout makes a
// context.WithDeadline (a context, a timer, a closure) every time, and
// net's connect registers with it through context.AfterFunc, about 10
// allocations per dial; with this context, which implements AfterFunc
// itself, 4. It is a complete context: Done closes at the deadline, Err
// then reports context.DeadlineExceeded, and functions registered with
// AfterFunc run then. Between dials (after end) nothing may use it.
type dialContext struct {
	timer  *time.Timer
	stop0  func() bool // stopAfter(0), bound once
	mu     sync.Mutex
	when   time.Time
	done   chan struct{}
	err    error
	afters []func() // registered by AfterFunc; nil once stopped or run
}

func newDialContext() *dialContext {
	c := &dialContext{done: make(chan struct{})}
	c.timer = time.AfterFunc(time.Hour, c.expire)
	c.timer.Stop()
	c.stop0 = func() bool { return c.stopAfter(0) }
	return c
}

// begin arms c for a dial of at most timeout.
func (c *dialContext) begin(timeout time.Duration) {
	c.mu.Lock()
	if c.err != nil {
		// The last dial timed out: its channel is closed.
		c.done, c.err = make(chan struct{}), nil
	}
	c.when = time.Now().Add(timeout)
	c.afters = c.afters[:0]
	c.mu.Unlock()
	c.timer.Reset(timeout)
}

// end disarms c once the dial returned.
func (c *dialContext) end() { c.timer.Stop() }

// expire is the timer's: it ends the dial in progress, unless the timer
// was a stale one, fired for a dial that ended before its deadline and
// caught up only after the next began.
func (c *dialContext) expire() {
	c.mu.Lock()
	if c.err != nil || time.Now().Before(c.when) {
		c.mu.Unlock()
		return
	}
	c.err = context.DeadlineExceeded
	close(c.done)
	afters := c.afters
	c.afters = nil
	c.mu.Unlock()
	for _, f := range afters {
		if f != nil {
			f()
		}
	}
}

func (c *dialContext) Deadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.when, true
}

func (c *dialContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

func (c *dialContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *dialContext) Value(any) any { return nil }

// AfterFunc arranges for f to run once c's deadline passes, as
// context.AfterFunc does, which calls it instead of starting a goroutine
// to wait for Done; stop unregisters f and reports whether it did.
func (c *dialContext) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		go f()
		return func() bool { return false }
	}
	c.afters = append(c.afters, f)
	if i := len(c.afters) - 1; i > 0 {
		// Several at once only for a name with several addresses.
		return func() bool { return c.stopAfter(i) }
	}
	return c.stop0
}

func (c *dialContext) stopAfter(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i >= len(c.afters) || c.afters[i] == nil {
		return false
	}
	c.afters[i] = nil
	return true
}
