package gateway

import (
	"context"
	"errors"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ewgate/ewgate/internal/await"
)

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

// The loops' upstream sockets get the route's tcpKeepalive, as
// net.Dialer's do.
func TestLoopAcceptKeepalive(t *testing.T) {
	m := loopAcceptMesh(t, pathLocal)
	b := m.backend("v1")
	m.start(policyYAML(freePort(t), "connectionPool: {tcp: {tcpKeepalive: {time: 7s, interval: 3s, probes: 4}}}", b))
	m.mustDial(t, echoSNI, "istio")
	var got []int
	onLoops(t, m.gw, func(l *loop) {
		for _, lf := range l.flows {
			up, err := fdopts(lf.side[1].fd, [2]int{unix.SOL_SOCKET, unix.SO_KEEPALIVE}, [2]int{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
				[2]int{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL}, [2]int{unix.IPPROTO_TCP, unix.TCP_KEEPCNT}, [2]int{unix.IPPROTO_TCP, unix.TCP_NODELAY})
			// The client's socket: no delay, inherited from the
			// listening socket (nothing is set per connection).
			client, cerr := fdopts(lf.side[0].fd, [2]int{unix.IPPROTO_TCP, unix.TCP_NODELAY})
			if err := errors.Join(err, cerr); err != nil {
				t.Error(err)
			}
			got = append(append(got, up...), client...)
		}
	})
	if want := []int{1, 7, 3, 4, 1, 1}; !slices.Equal(got, want) {
		t.Fatalf("upstream's SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_NODELAY and client's TCP_NODELAY of each flow = %v, want one flow's %v", got, want)
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

// A connectTimeout too long to add to the loop's clock (the longest
// time.Duration) bounds no loop dial, as it bounds no net.Dialer: the
// deadline saturates rather than wrapping into the past, which failed
// every connect at the first poll.
func TestLoopAcceptDialTimeoutSaturates(t *testing.T) {
	m := loopAcceptMesh(t, pathLocal)
	b := m.backend("v1")
	m.start(policyYAML(freePort(t), "connectionPool: {tcp: {connectTimeout: 2562047h47m16.854775807s}}", b))
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatalf("connection over a route whose connectTimeout is the longest: %v", err)
	}
	c.Close()
	if n := m.gw.m.ConnectErrors.Value(); n != 0 {
		t.Errorf("%d connect errors", n)
	}
}
