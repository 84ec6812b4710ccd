package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ewgate/ewgate/internal/await"
)

// The tests of this file are about Config.LoopAccept: what the loops
// take from accept to forwarding themselves, what they hand to a
// handler, and that the rules of the goroutine path hold on theirs.

func loopAcceptMesh(t *testing.T, path string) *mesh {
	t.Helper()
	m := newMeshPath(t, path)
	m.cfg.LoopAccept = true
	return m
}

// onLoops runs fn on each of g's loops, from the loop's goroutine.
func onLoops(t *testing.T, g *Gateway, fn func(l *loop)) {
	t.Helper()
	for _, l := range g.loops.all {
		done := make(chan struct{})
		l.send(command{fn: func() { defer close(done); fn(l) }})
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Fatal("a loop did not answer for a minute")
		}
	}
}

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
			b := m.backend("v1")
			m.start(echoYAML(freePort(t), b))
			wrap := func(c net.Conn) net.Conn { return c }
			if tt.split {
				wrap = func(c net.Conn) net.Conn {
					return &splitConn{Conn: c, head: 5, between: func() {
						await.True(t, 5*time.Second, "the loop to hand the connection off", func() bool { return m.gw.handlers.live.Load() == 1 })
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
			if got := m.gw.handlers.live.Load() == 1; got != tt.handler {
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

// Refusals the loops make themselves are counted under the same reasons
// and answered with the same alerts as the handlers'.
func TestLoopAcceptRefusals(t *testing.T) {
	m := loopAcceptMesh(t, pathLocal)
	b := m.backend("v1")
	m.start(echoYAML(freePort(t), b))
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
			if n := m.gw.handlers.live.Load(); n != 0 {
				t.Errorf("%d handlers: the loop should refuse itself", n)
			}
			await.True(t, 5*time.Second, "the connection's count released", func() bool { return m.gw.Active() == 0 })
		})
	}
	if n := b.Accepted(); n != 0 {
		t.Fatalf("backend accepted %d connections; refusals must not dial", n)
	}
}

// The loops keep MaxConnections: a connection over it is reset and
// counted; one under it, once another closed, is forwarded.
func TestLoopAcceptConnectionLimit(t *testing.T) {
	m := loopAcceptMesh(t, pathLocal)
	m.cfg.MaxConnections = 1
	b := m.backend("v1")
	m.start(echoYAML(freePort(t), b))
	first, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.dial(echoSNI, "istio"); err == nil {
		t.Fatal("second connection forwarded over the limit of 1")
	}
	await.True(t, 5*time.Second, "over_limit counted", func() bool { return m.gw.m.Rejected(RejectOverLimit) == 1 })
	first.Close()
	await.True(t, 5*time.Second, "the first connection to be released", func() bool { return m.gw.Active() == 0 })
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatalf("under the limit again: %v", err)
	}
	c.Close()
}

// The loops' dial follows dialCluster's rule: a failed connect is
// counted and the next member tried, a connect that does not complete
// within the route's connectTimeout fails, and a connection none of
// whose tries connects is refused with an internal error alert.
func TestLoopAcceptDial(t *testing.T) {
	tests := []struct {
		name string
		// endpoints builds the route's: its policy, and the addresses
		// replacing the backends' (nil keeps them).
		policy      string
		dead, black bool // a second endpoint that refuses, or one that never answers
		attempts    int
		conns       int
		refused     bool
		connectErrs func(n uint64) bool
	}{
		{name: "dead endpoint: the next is tried", policy: "loadBalancer: {simple: ROUND_ROBIN}", dead: true, conns: 10,
			connectErrs: func(n uint64) bool { return n >= 1 }},
		{name: "connect timeout in the loop", policy: "connectionPool: {tcp: {connectTimeout: 0.05s}}", black: true, attempts: 1, conns: 1, refused: true,
			connectErrs: func(n uint64) bool { return n == 1 }},
		{name: "all down", policy: "loadBalancer: {simple: ROUND_ROBIN}", dead: true, attempts: 1, conns: 1, refused: true,
			connectErrs: func(n uint64) bool { return n == 1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := loopAcceptMesh(t, pathLocal)
			m.cfg.DialTimeout = time.Hour
			m.cfg.DialAttempts = tt.attempts
			live := m.backend("v1")
			other := m.backend("v2")
			yaml := policyYAML(freePort(t), tt.policy, live, other)
			switch {
			case tt.black:
				yaml = withAddress(policyYAML(freePort(t), tt.policy, live), live, blackHole(t))
			case tt.refused:
				other.Close()
				live.Close()
			default:
				other.Close()
			}
			m.start(yaml)
			for range tt.conns {
				if tt.refused {
					refusedWith(t, m, m.gw, RejectUnavailable, "internal error")
					continue
				}
				c, err := m.dial(echoSNI, "istio")
				if err != nil {
					t.Fatalf("connection failed although a live endpoint exists: %v", err)
				}
				if c.Server != "v1" {
					t.Fatalf("routed to %s", c.Server)
				}
				c.Close()
			}
			if n := m.gw.m.ConnectErrors.Value(); !tt.connectErrs(n) {
				t.Errorf("%d connect errors", n)
			}
			await.True(t, 5*time.Second, "every connection released", func() bool { return m.gw.Active() == 0 })
		})
	}
}

// A connect that fails and a socket that closes free descriptor numbers
// that the next sockets reuse at once, within one batch of events: no
// stale event is taken for the new socket's (side.gen), so every
// connection of many at once over a route half of whose endpoints
// refuse reaches the live one.
func TestLoopAcceptDescriptorReuse(t *testing.T) {
	m := loopAcceptMesh(t, pathLocal)
	m.cfg.EjectAfter = 1 << 30 // the dead endpoint stays in the rotation
	live, dead := m.backend("v1"), m.backend("v2")
	dead.Close()
	m.start(policyYAML(freePort(t), "loadBalancer: {simple: ROUND_ROBIN}", live, dead))
	const conns = 24
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for range conns {
		wg.Go(func() {
			c, err := m.dial(echoSNI, "istio")
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if _, err := c.Write([]byte("reused\n")); err != nil {
				errs <- err
				return
			}
			if line, err := c.ReadLine(); err != nil || line != "reused" {
				errs <- errors.Join(errors.New("echo "+line), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := m.gw.m.ConnectErrors.Value(); n == 0 {
		t.Error("no connect failed: the test did not reuse descriptors")
	}
}

// A listener a reload removes is let go by every loop and closed before
// Apply returns: its port refuses connections at once, and a new one
// serves. Shutdown with listeners in the loops leaks no descriptor (the
// mesh's leak check).
func TestLoopAcceptListenerReload(t *testing.T) {
	m := loopAcceptMesh(t, pathLocal)
	b := m.backend("v1")
	old := freePort(t)
	m.start(echoYAML(old, b))
	oldAddr := m.addr()
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	m.apply(echoYAML(freePort(t), b))
	if c, err := net.Dial("tcp", oldAddr); err == nil {
		c.Close()
		t.Fatal("the removed listener's port still accepts")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial the removed port: %v, want connection refused", err)
	}
	onLoops(t, m.gw, func(l *loop) {
		if len(l.lns) != 1 {
			t.Errorf("a loop polls %d listeners, want 1", len(l.lns))
		}
	})
	c, err = m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatalf("the new listener: %v", err)
	}
	c.Close()
}

// The loops' upstream sockets get the route's tcpKeepalive, as
// net.Dialer's do.
func TestLoopAcceptKeepalive(t *testing.T) {
	m := loopAcceptMesh(t, pathLocal)
	b := m.backend("v1")
	m.start(policyYAML(freePort(t), "connectionPool: {tcp: {tcpKeepalive: {time: 7s, interval: 3s, probes: 4}}}", b))
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got []int
	onLoops(t, m.gw, func(l *loop) {
		for _, lf := range l.flows {
			fd := lf.side[1].fd
			for _, o := range [][2]int{{unix.SOL_SOCKET, unix.SO_KEEPALIVE}, {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
				{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL}, {unix.IPPROTO_TCP, unix.TCP_KEEPCNT}, {unix.IPPROTO_TCP, unix.TCP_NODELAY}} {
				v, err := unix.GetsockoptInt(fd, o[0], o[1])
				if err != nil {
					t.Error(err)
				}
				got = append(got, v)
			}
			// The client's socket: no delay, inherited from the
			// listening socket (nothing is set per connection).
			v, err := unix.GetsockoptInt(lf.side[0].fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
			if err != nil {
				t.Error(err)
			}
			got = append(got, v)
		}
	})
	want := []int{1, 7, 3, 4, 1, 1}
	if len(got) != len(want) {
		t.Fatalf("options %v of %d flows, want one flow's %v", got, len(got)/len(want), want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("upstream's SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_NODELAY and client's TCP_NODELAY = %v, want %v", got, want)
		}
	}
}

// Each loop accepts on a socket of its own (SO_REUSEPORT), between
// which the kernel spreads connections by hash: a burst of connections,
// which one socket polled by every loop would give to the loop that
// happens to be awake, is spread over the loops, and each is forwarded
// byte for byte.
func TestLoopAcceptSpread(t *testing.T) {
	m, _, hello := loopMesh(t, Config{LoopAccept: true}, echo)
	const conns = 32
	var wg sync.WaitGroup
	cs := make(chan *net.TCPConn, conns)
	for range conns {
		wg.Go(func() { cs <- m.rawConn(hello) })
	}
	wg.Wait()
	close(cs)
	await.True(t, 5*time.Second, "every flow in a loop", func() bool { return loopsState(t, m.gw).flows == conns })
	fds := map[int]bool{}
	onLoops(t, m.gw, func(l *loop) {
		if len(l.flows) == 0 {
			t.Errorf("a loop holds none of %d flows", conns)
		}
		for _, ln := range l.lns {
			fds[ln.fd] = true
		}
	})
	if want := len(m.gw.loops.all); len(fds) != want {
		t.Errorf("%d listening sockets for %d loops", len(fds), want)
	}
	for c := range cs {
		msg := []byte("spread\n")
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
			t.Fatalf("echo %q, %v", got, err)
		}
	}
}

// A drain that runs out of time cuts the flows in the loops, those
// still connecting their upstream too: Shutdown returns, the client is
// reset, and nothing the dial held is left (the counts, and the
// descriptors: the mesh's leak check).
func TestLoopAcceptDrainCutsDials(t *testing.T) {
	m := loopAcceptMesh(t, pathLocal)
	m.cfg.DialTimeout = time.Hour
	b := m.backend("v1")
	m.start(withAddress(echoYAML(freePort(t), b), b, blackHole(t)))
	hello := recordHello(t, echoSNI)
	c := m.rawConn(hello)
	dialing := func() (n int) {
		onLoops(t, m.gw, func(l *loop) { n += len(l.dials) })
		return n
	}
	await.True(t, 5*time.Second, "the loop to be connecting", func() bool { return dialing() == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.gw.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown cut a connecting flow without saying so")
	}
	if n := m.gw.Active(); n != 0 {
		t.Errorf("%d connections counted after Shutdown", n)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c); !isReset(err) {
		t.Errorf("client read %v, want a reset", err)
	}
}
