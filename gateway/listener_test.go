package gateway

import (
	"errors"
	"net"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"golang.org/x/sys/unix"
)

// sockopts reads the integer options of c's socket.
func sockopts(t *testing.T, c syscall.Conn, opts ...[2]int) []int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var vals []int
	var optErr error
	if err := rc.Control(func(fd uintptr) { vals, optErr = fdopts(int(fd), opts...) }); err != nil {
		t.Fatal(err)
	}
	if optErr != nil {
		t.Fatal(optErr)
	}
	return vals
}

// fdopts reads the integer options of socket fd: sockopts for a loop's
// raw socket, and safe off the test's goroutine.
func fdopts(fd int, opts ...[2]int) ([]int, error) {
	vals := make([]int, len(opts))
	errs := make([]error, len(opts))
	for i, o := range opts {
		vals[i], errs[i] = unix.GetsockoptInt(fd, o[0], o[1])
	}
	return vals, errors.Join(errs...)
}

// clientSocket returns the gateway's socket to the client of its one
// forwarded flow.
func clientSocket(t *testing.T, g *Gateway) *net.TCPConn {
	t.Helper()
	upstreamSocket(t, g) // the flow is forwarding
	g.mu.Lock()
	defer g.mu.Unlock()
	for f := range g.flows {
		return f.client.tcp
	}
	t.Fatal("no flow")
	return nil
}

// TestClientSocketOptions: a client's socket has the keep-alive the
// listener set once (Go's values, which Go no longer sets on each
// accepted socket), TCP_NODELAY, and the listener defers accepts.
func TestClientSocketOptions(t *testing.T) {
	m := newMesh(t)
	m.startEcho()
	m.mustDial(t, echoSNI, "istio")

	got := sockopts(t, clientSocket(t, m.gw),
		[2]int{unix.SOL_SOCKET, unix.SO_KEEPALIVE}, [2]int{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
		[2]int{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL}, [2]int{unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
		[2]int{unix.IPPROTO_TCP, unix.TCP_NODELAY})
	if want := []int{1, 15, 15, 9, 1}; !slices.Equal(got, want) {
		t.Errorf("client socket SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_NODELAY = %v, want %v", got, want)
	}

	m.gw.mu.Lock()
	var ln *net.TCPListener
	for _, l := range m.gw.listeners {
		ln = l.ln
	}
	m.gw.mu.Unlock()
	// The kernel reports the deferral it rounded the seconds to: at
	// least the 1 s asked for.
	if d := sockopts(t, ln, [2]int{unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT})[0]; d < 1 {
		t.Errorf("listener TCP_DEFER_ACCEPT %d, want at least 1", d)
	}
}

// slowStart holds a connection's first write until the gateway has
// accepted it: with TCP_DEFER_ACCEPT, until the kernel stopped waiting
// for data and handed the connection over without any.
type slowStart struct {
	net.Conn
	t        *testing.T
	accepted func() bool
	waited   bool
}

func (c *slowStart) Write(p []byte) (int, error) {
	if !c.waited {
		c.waited = true
		await.True(c.t, 10*time.Second, "the gateway to accept a connection that sent nothing", c.accepted)
	}
	return c.Conn.Write(p)
}

// TestDeferredAcceptSlowClient: a client whose hello comes only after the
// kernel's deferral ran out (the gateway accepted the connection without
// data) is still routed, its hello read within the hello timeout from
// then.
func TestDeferredAcceptSlowClient(t *testing.T) {
	m := newMesh(t)
	m.startEcho()
	before := m.gw.m.Accepted.Value()
	c, err := m.dialVia(func(c net.Conn) net.Conn {
		return &slowStart{Conn: c, t: t, accepted: func() bool { return m.gw.m.Accepted.Value() > before }}
	}, echoSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Server != "v1" {
		t.Fatalf("reached %s, want v1", c.Server)
	}
	if err := c.Exchange(1 << 10); err != nil {
		t.Fatal(err)
	}
}
