package gateway

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/workload"
	"golang.org/x/sys/unix"
)

// splitConn writes its first Write in two parts: head bytes, then,
// once between returns, the rest.
type splitConn struct {
	net.Conn
	head    int
	between func()
	once    sync.Once
}

func (c *splitConn) Write(p []byte) (int, error) {
	n := 0
	var err error
	split := false
	c.once.Do(func() {
		split = true
		if n, err = c.Conn.Write(p[:c.head]); err != nil {
			return
		}
		c.between()
		var m int
		m, err = c.Conn.Write(p[c.head:])
		n += m
	})
	if split {
		return n, err
	}
	return c.Conn.Write(p)
}

// Which connections the loops dial themselves and which they hand to a
// handler (with what they read), each forwarded byte for byte.
func TestLoopAcceptPaths(t *testing.T) {
	tests := []struct {
		name    string
		path    string
		split   bool // the hello comes in two reads
		handler bool // handed to a handler
	}{
		{"hello in one read: the loop dials", pathLocal, false, false},
		{"hello in two reads: handed off with its first bytes", pathLocal, true, true},
		{"tunneled route: handed off with the parsed hello", pathQUIC, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := loopAcceptMesh(t, tt.path)
			m.startEcho()
			wrap := func(c net.Conn) net.Conn { return c }
			if tt.split {
				wrap = func(c net.Conn) net.Conn {
					return &splitConn{Conn: c, head: 5, between: func() {
						await.True(t, 5*time.Second, "the loop to hand the connection off", func() bool { return handlerGoroutines() == 1 })
					}}
				}
			}
			c, err := m.dialVia(wrap, echoSNI, "istio")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Server != "v1" {
				t.Fatalf("routed to %q", c.Server)
			}
			if _, err := c.Write([]byte("over the loop's path\n")); err != nil {
				t.Fatal(err)
			}
			if line, err := c.ReadLine(); err != nil || line != "over the loop's path" {
				t.Fatalf("echo %q, %v", line, err)
			}
			if got := handlerGoroutines() == 1; got != tt.handler {
				t.Errorf("handed to a handler: %v, want %v", got, tt.handler)
			}
			if !tt.handler {
				if n := loopsState(t, m.gw).flows; n != 1 {
					t.Errorf("%d flows in the loops, want 1", n)
				}
			}
		})
	}
}

// A connection the loop routed and hands to a handler (here, to an
// endpoint named by DNS, which only net's dialer resolves) is dialed by
// the loop's plan, not routed again: a table swapped in between the
// loop's routing and the handler's dial does not move it.
func TestLoopHandOffRoutedOnce(t *testing.T) {
	m := loopAcceptMesh(t, pathLocal)
	v1, v2 := m.backend("v1"), m.backend("v2")
	port := freePort(t)
	byName := func(b *workload.EchoServer) string {
		return strings.ReplaceAll(echoYAML(port, b), "address: 127.0.0.1", "address: localhost")
	}
	m.start(byName(v1))
	g := m.gw
	addr := m.addr()
	cl := workload.Client{Source: m.source("spiffe://cluster.local/ns/demo/sa/client"), ALPN: []string{"istio"}}
	// After routing, the loop registers the handed-off flow (track)
	// under g.mu, held here until the table routes to v2 instead.
	g.mu.Lock()
	locked := true
	defer func() {
		if locked {
			g.mu.Unlock()
		}
	}()
	type dialed struct {
		c   *workload.Conn
		err error
	}
	res := make(chan dialed, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := cl.DialName(ctx, addr, echoSNI)
		res <- dialed{c, err}
	}()
	await.True(t, 10*time.Second, "the loop to hand the connection off", func() bool { return parked("gateway.(*loop).handOff(") > 0 })
	g.table.Store(g.buildTable(m.view("net-a", byName(v2))))
	g.mu.Unlock()
	locked = false
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.c.Close()
	if r.c.Server != "v1" {
		t.Fatalf("routed to %q, by the table of after the loop's routing: the handler routed it again", r.c.Server)
	}
	if n := handlerGoroutines(); n != 1 {
		t.Errorf("%d handlers: the connection should have been handed off", n)
	}
}

// Refusals the loops make themselves are counted under the same reasons
// and answered with the same alerts as the handlers'.
func TestLoopAcceptRefusals(t *testing.T) {
	m := loopAcceptMesh(t, pathLocal)
	b := m.startEcho()
	tests := []struct {
		name   string
		sni    string // a TLS client's; "" sends raw
		send   []byte
		reason string
		alert  string
	}{
		{"not an Istio name", "echo.demo.svc.cluster.local", nil, RejectBadSNI, "unrecognized name"},
		{"unknown service", "outbound_.9080_._.nope.demo.svc.cluster.local", nil, "unknown_service", "unrecognized name"},
		{"garbage", "", []byte("\x00\x01garbage\xff"), "hello_not_tls", ""},
		{"SSLv2 hello", "", []byte{0x80, 0x2e, 0x01, 0x00, 0x02}, "hello_sslv2", ""},
		{"health check: connect and close", "", nil, RejectNoData, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := m.gw.m.Rejected(tt.reason)
			if tt.sni != "" {
				c, err := m.dial(tt.sni, "istio")
				if err == nil {
					c.Close()
					t.Fatal("handshake succeeded; want refusal")
				}
				if !strings.Contains(err.Error(), tt.alert) {
					t.Errorf("client error %q, want TLS alert %q", err, tt.alert)
				}
			} else {
				c, err := net.Dial("tcp", m.addr())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.Write(tt.send)
				c.(*net.TCPConn).CloseWrite()
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
					t.Fatalf("want the gateway to close the connection, got %v", err)
				}
			}
			await.True(t, 5*time.Second, "reject counter "+tt.reason, func() bool { return m.gw.m.Rejected(tt.reason) == before+1 })
			if n := handlerGoroutines(); n != 0 {
				t.Errorf("%d handlers: the loop should refuse itself", n)
			}
			await.True(t, 5*time.Second, "the connection's count released", func() bool { return m.gw.Active() == 0 })
		})
	}
	if n := b.Accepted(); n != 0 {
		t.Fatalf("backend accepted %d connections; refusals must not dial", n)
	}
}

// A quiet refusal (a health check: connect and close) is counted
// without formatting the client's address, which only its log would
// show: neither the loop's answer nor handle's allocates.
func TestQuietRefusalAllocatesNothing(t *testing.T) {
	g := New(Config{})
	ref := &healthCheck
	const runs = 100
	t.Run("loop", func(t *testing.T) {
		l := &loop{g: g}
		// AllocsPerRun calls its function runs+1 times, each answer
		// closing a socket of its own.
		fds := make([]int, runs+1)
		for i := range fds {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds[i] = fd
		}
		sa := netip.MustParseAddrPort("192.0.2.1:40000")
		next := 0
		allocs := testing.AllocsPerRun(runs, func() {
			l.answer(fds[next], sa, ref)
			next++
		})
		if allocs != 0 {
			t.Errorf("%v allocations per quiet refusal", allocs)
		}
	})
	t.Run("handle", func(t *testing.T) {
		_, s := tcpPair(t)
		allocs := testing.AllocsPerRun(runs, func() { g.answer(s, ref) })
		if allocs != 0 {
			t.Errorf("%v allocations per quiet refusal", allocs)
		}
	})
	if n := g.m.Rejected(RejectNoData); n != 2*(runs+1) {
		t.Errorf("%d refusals counted, want %d", n, 2*(runs+1))
	}
}

// A health check (connect and close) that a loop accepted is refused,
// from its read to its close, without an allocation: no error and no
// refusal of its own, the commonest refusal being the cheapest.
func TestLoopHealthCheckAllocatesNothing(t *testing.T) {
	g := New(Config{})
	l := &loop{g: g}
	const runs = 100
	// AllocsPerRun calls its function runs+1 times, each serving a
	// socket of its own whose peer has closed.
	fds := make([]int, runs+1)
	for i := range fds {
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(pair[1])
		fds[i] = pair[0]
	}
	sa := netip.MustParseAddrPort("192.0.2.1:40000")
	next := 0
	allocs := testing.AllocsPerRun(runs, func() {
		l.serve(15443, fds[next], sa)
		next++
	})
	if allocs != 0 {
		t.Errorf("%v allocations per health check", allocs)
	}
	if n := g.m.Rejected(RejectNoData); n != runs+1 {
		t.Errorf("%d refusals counted as %s, want %d", n, RejectNoData, runs+1)
	}
	if n := g.Active(); n != 0 {
		t.Errorf("%d connections still counted", n)
	}
}

// refuseStream adds its "via tunnel" to a copy of the refusal: a shared
// one (healthCheck) must come out as it went in, even when its args have
// room to grow in place.
func TestRefuseStreamLeavesRefusal(t *testing.T) {
	g := New(Config{})
	c, s := tcpPair(t)
	c.Close() // the far side gone: refuseStream's wait ends at once
	args := make([]any, 2, 8)
	args[0], args[1] = "route", "r"
	ref := &refusal{reason: RejectUnavailable, alert: alertInternalError, args: args}
	g.refuseStream(s, ref)
	if len(ref.args) != 2 {
		t.Errorf("refusal's args %v after refuseStream, want the 2 it had", ref.args)
	}
	if extra := args[:4]; extra[2] != nil || extra[3] != nil {
		t.Errorf("refuseStream wrote %v into the refusal's backing array", extra[2:])
	}
}

// tcpPair returns the two ends of a loopback TCP connection, closed when
// the test ends.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}
