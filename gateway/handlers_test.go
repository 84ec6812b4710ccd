package gateway

import (
	"net"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
)

// TestHandlersServeOneConnectionAfterAnother: connections that come one
// at a time are handled by a goroutine that waits for the next, not by a
// new goroutine each.
func TestHandlersServeOneConnectionAfterAnother(t *testing.T) {
	m := newMesh(t)
	m.startEcho()
	h := m.gw.handlers
	const n = 20
	for i := range n {
		c := m.mustDial(t, echoSNI, "istio")
		c.Close()
		await.True(t, 5*time.Second, "the handler to wait for the next connection", func() bool { return h.idle.Load() >= 1 })
		if i == 0 && handlerGoroutines() != 1 {
			t.Fatalf("%d handlers after one connection, want 1", handlerGoroutines())
		}
	}
	// A connection may come before the last handler waits (between its
	// count and its receive): then a second one starts. Not one per
	// connection.
	if l := handlerGoroutines(); l > 2 {
		t.Fatalf("%d handlers for %d connections one after another, want 1 (2 at most)", l, n)
	}
}

// TestHandlersIdleBound: after a burst of connections that each held a
// handler, only maxIdleHandlers handlers stay waiting; Shutdown ends them.
func TestHandlersIdleBound(t *testing.T) {
	m := newMesh(t)
	m.startEcho()
	h := m.gw.handlers
	const n = maxIdleHandlers + 10
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", m.addr())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		// The start of a large hello: its handler waits in the peek.
		if _, err := c.Write(halfHello()[:100]); err != nil {
			t.Fatal(err)
		}
	}
	await.True(t, 10*time.Second, "a handler per connection in its peek", func() bool { return handlerGoroutines() == n })
	for _, c := range clients {
		c.Close()
	}
	await.True(t, 10*time.Second, "the handlers beyond the bound to exit", func() bool {
		return handlerGoroutines() == maxIdleHandlers && h.idle.Load() == maxIdleHandlers
	})
	if got := m.gw.m.Rejected("hello_truncated"); got != n {
		t.Fatalf("%d connections refused as hello_truncated, want %d", got, n)
	}
	shutdown(m.gw)
	// A waiting handler leaves idle before it returns: Shutdown waited
	// for them all. Their goroutines are gone a moment later, past the
	// deferred Done.
	if n := h.idle.Load(); n != 0 {
		t.Fatalf("%d handlers waiting after Shutdown, want 0", n)
	}
	await.True(t, 5*time.Second, "the handler goroutines to end", func() bool { return handlerGoroutines() == 0 })
}
