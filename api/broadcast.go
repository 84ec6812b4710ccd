package api

import "sync"

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
