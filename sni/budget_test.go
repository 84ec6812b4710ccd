package sni

import (
	"errors"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
)

// halfHello is the start of a ClientHello that announces a handshake
// message of announced bytes in records of the largest size, cut after
// sent bytes, record and handshake headers included.
func halfHello(announced, sent int) []byte {
	b := make([]byte, sent)
	copy(b, []byte{recordTypeHandshake, 3, 1, maxPlaintext >> 8, maxPlaintext & 0xff,
		typeClientHello, byte(announced >> 16), byte(announced >> 8), byte(announced)})
	return b
}

// halfSent opens n loopback TCP connections that each send data and then
// wait, and returns the server ends.
func halfSent(t *testing.T, n int, data []byte) []net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	servers := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write(data); err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		servers = append(servers, s)
	}
	return servers
}

// TestPeekMemoryGrowsWithBytesReceived: N clients over loopback TCP each
// send 6,000 bytes of a ClientHello that announces 60,000 and stop. What
// the N Peeks allocate is bounded by twice the bytes received plus a
// constant, not by the length announced (the peek used to allocate the
// announced length at once).
func TestPeekMemoryGrowsWithBytesReceived(t *testing.T) {
	leakcheck.Check(t)
	const (
		n         = 50
		announced = 60000
		sent      = 6000
		bufSize   = 4096 // the gateway's pooled buffer
		slack     = 4096 // per connection: goroutine, error values, runtime
	)
	servers := halfSent(t, n, halfHello(announced, sent))
	budget := NewBudget(1 << 30)
	p := &Peeker{Timeout: time.Minute, Budget: budget}
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, bufSize)
	}
	errs := make(chan error, n)

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i, s := range servers {
		go func() {
			_, err := p.Peek(s, bufs[i])
			errs <- err
		}()
	}
	// Each Peek filled its 4 KiB, grew to 8 KiB and waits for the rest.
	await.True(t, 10*time.Second, "every Peek to hold the bytes sent", func() bool {
		return budget.InUse() == n*2*bufSize
	})
	runtime.ReadMemStats(&after)
	perConn := (after.TotalAlloc - before.TotalAlloc) / n
	if limit := uint64(2*sent + slack); perConn > limit {
		t.Errorf("each half-sent hello allocated %d bytes, want at most %d (2 x %d received + %d); the hello announced %d",
			perConn, limit, sent, slack, announced)
	}
	t.Logf("%d bytes allocated per half-sent hello of %d bytes announcing %d", perConn, sent, announced)

	for _, s := range servers {
		s.Close()
	}
	for range n {
		if err := <-errs; !errors.Is(err, ErrTruncated) {
			t.Errorf("Peek of a closed half-sent hello: %v, want ErrTruncated", err)
		}
	}
	if got := budget.InUse(); got != 0 {
		t.Errorf("budget holds %d bytes after every Peek returned, want 0", got)
	}
}

// TestPeekBudget: a Peek that would take the shared budget over its limit
// fails with ErrOverBudget at once, and the budget is whole again after.
func TestPeekBudget(t *testing.T) {
	leakcheck.Check(t)
	const bufSize = 4096
	servers := halfSent(t, 2, halfHello(60000, 6000))
	budget := NewBudget(2 * bufSize) // one grown buffer
	p := &Peeker{Timeout: time.Minute, Budget: budget}
	first := make(chan error, 1)
	go func() {
		_, err := p.Peek(servers[0], make([]byte, bufSize))
		first <- err
	}()
	await.True(t, 10*time.Second, "the first Peek to take the budget", func() bool { return budget.InUse() == 2*bufSize })
	h, err := p.Peek(servers[1], make([]byte, bufSize))
	if !errors.Is(err, ErrOverBudget) || Reason(err) != "over_budget" {
		t.Fatalf("second Peek: %v, want ErrOverBudget", err)
	}
	if len(h.Raw) != bufSize {
		t.Errorf("Raw holds %d bytes, want the %d read", len(h.Raw), bufSize)
	}
	servers[0].Close()
	if err := <-first; !errors.Is(err, ErrTruncated) {
		t.Fatalf("first Peek: %v, want ErrTruncated", err)
	}
	if got := budget.InUse(); got != 0 {
		t.Fatalf("budget holds %d bytes after both Peeks, want 0", got)
	}

	// A complete hello split across records reserves its reassembly too,
	// and releases it.
	hello := captureHello(t, clientConfig(istioSNI, "istio"))
	split := records(handshakeBytes(t, hello), 512)
	small := NewBudget(1 << 20)
	if _, err := (&Peeker{Budget: small}).Peek(newMemConn(split, 0), make([]byte, len(split))); err != nil {
		t.Fatal(err)
	}
	if _, err := (&Peeker{Budget: NewBudget(16)}).Peek(newMemConn(split, 0), make([]byte, len(split))); !errors.Is(err, ErrOverBudget) {
		t.Fatalf("reassembly over budget: %v, want ErrOverBudget", err)
	}
	if small.InUse() != 0 {
		t.Fatalf("budget holds %d bytes after a reassembled hello", small.InUse())
	}
}
