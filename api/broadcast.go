package api

import (
	"context"
	"sync"
)

// broadcast wakes any number of waiters at once, and coalesces: waiters
// learn that something changed since they last looked, not how often.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{} // closed by the next notify
}

func newBroadcast() *broadcast {
	return &broadcast{ch: make(chan struct{})}
}

// wait returns a channel that is closed by the next notify.
func (b *broadcast) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch
}

// notify wakes every waiter.
func (b *broadcast) notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.ch)
	b.ch = make(chan struct{})
}

// relay turns a Resolver's change channel, which has one receiver, into
// wake-ups of one broadcast, for as long as any listener of the server
// serves. One relay per server: with a relay per listener, the listeners
// would take turns receiving from the channel, and each change would wake
// the watchers of only one of them.
type relay struct {
	changed <-chan struct{} // nil: no Resolver, nothing to relay
	out     *broadcast

	mu    sync.Mutex
	users int    // serving listeners
	stop  func() // ends the running relay and waits for it
}

// acquire starts the relay if no listener holds it and returns the
// function that releases this listener's hold; the last release stops the
// relay's goroutine and waits for it.
func (r *relay) acquire() (release func()) {
	if r.changed == nil {
		return func() {}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.users++
	if r.users == 1 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.run(ctx)
		}()
		r.stop = func() {
			cancel()
			<-done
		}
	}
	return sync.OnceFunc(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.users--; r.users == 0 {
			r.stop()
			r.stop = nil
		}
	})
}

// run wakes the watchers after each change notification until ctx is done.
func (r *relay) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.changed:
			r.out.notify()
		}
	}
}
