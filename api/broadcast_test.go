package api

import (
	"testing"

	"github.com/ewgate/ewgate/internal/leakcheck"
)

// TestRelayLives runs while any listener holds it: a listener that stops
// leaves the others' watchers woken, and a server serving again after all
// stopped relays again.
func TestRelayLives(t *testing.T) {
	leakcheck.Check(t)
	changed := make(chan struct{}, 1)
	r := relay{changed: changed, out: newBroadcast()}
	relayed := func(what string) {
		t.Helper()
		woken := r.out.wait()
		changed <- struct{}{}
		receive(t, what, woken)
	}

	a := r.acquire()
	b := r.acquire()
	relayed("a change with two listeners")
	a()
	a() // releasing twice counts once
	relayed("a change after one listener stopped")
	b()

	c := r.acquire()
	defer c()
	relayed("a change after serving again")
}
