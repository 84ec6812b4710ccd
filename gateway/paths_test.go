package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/workload"
)

// The tests of this file run over every path a connection can take (see
// mesh): to an endpoint of this network, and through a tunnel, over QUIC
// and over the TCP fallback, to another network's gateway. One engine
// forwards them all, so each rule must hold on each.

func TestForwardByteExact(t *testing.T) {
	forPaths(t, func(t *testing.T, m *mesh) {
		m.startEcho()
		c := m.mustDial(t, echoSNI, "istio")
		if err := c.Exchange(8 << 20); err != nil {
			t.Fatal(err)
		}
		c.Close()
		for _, g := range m.gateways() {
			await.True(t, 5*time.Second, "connection to finish", func() bool { return g.Active() == 0 })
			if got := g.m.Forwarded.Value(); got != 1 {
				t.Errorf("forwarded = %d, want 1", got)
			}
			if up, down := g.m.BytesUp.Value(), g.m.BytesDown.Value(); up < 8<<20 || down < 8<<20 {
				t.Errorf("byte counters up=%d down=%d, want >= 8 MiB each", up, down)
			}
		}
	})
}

// gateways returns the mesh's gateways: the one clients dial first.
func (m *mesh) gateways() []*Gateway {
	if m.far != nil {
		return []*Gateway{m.gw, m.far}
	}
	return []*Gateway{m.gw}
}

// rawYAML is echoYAML with one plain TCP endpoint at addr.
func rawYAML(port int, addr string) string {
	host, p, _ := net.SplitHostPort(addr)
	return strings.Replace(workload.IstioConfig("net-a", port), "  endpoints:\n",
		fmt.Sprintf("  endpoints: [{address: %s, ports: {tcp-echo: %s}, network: net-a, labels: {security.istio.io/tlsMode: istio}}]\n", host, p), 1)
}

// rawConn connects to the mesh's gateway and sends a real ClientHello
// for echoSNI.
func (m *mesh) rawConn(hello []byte) *net.TCPConn {
	m.t.Helper()
	c, err := net.Dial("tcp", m.addr())
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { c.Close() })
	if _, err := c.Write(hello); err != nil {
		m.t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// A half-close carries across: the client's FIN reaches the endpoint
// after every byte, and the endpoint's answer still reaches the client.
func TestHalfClose(t *testing.T) {
	forPaths(t, func(t *testing.T, m *mesh) {
		hello := recordHello(t, echoSNI)
		payload := bytes.Repeat([]byte("0123456789abcdef"), 64<<10)
		got := make(chan []byte, 1)
		b := newRawBackend(t, len(hello), func(c net.Conn) {
			in, _ := io.ReadAll(c) // until the client's FIN
			got <- in
			c.Write([]byte(fmt.Sprintf("got %d bytes", len(in))))
		})
		m.start(rawYAML(freePort(t), b.ln.Addr().String()))
		c := m.rawConn(hello)
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		c.SetReadDeadline(time.Now().Add(time.Minute))
		answer, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("reading after half-close: %v", err)
		}
		if want := fmt.Sprintf("got %d bytes", len(payload)); string(answer) != want {
			t.Errorf("answer %q, want %q", answer, want)
		}
		if in := <-got; !bytes.Equal(in, payload) {
			t.Errorf("endpoint read %d bytes, not the %d sent", len(in), len(payload))
		}
	})
}

// A reset on one side is a reset on the other, both ways.
func TestResetPropagates(t *testing.T) {
	for _, resetter := range []string{"endpoint", "client"} {
		t.Run(resetter, func(t *testing.T) {
			forPaths(t, func(t *testing.T, m *mesh) {
				hello := recordHello(t, echoSNI)
				conns := make(chan *net.TCPConn, 1)
				read := make(chan error, 1) // what the endpoint read
				b := newRawBackend(t, len(hello), func(c net.Conn) {
					conns <- c.(*net.TCPConn)
					_, err := io.Copy(io.Discard, c)
					read <- err
				})
				m.start(rawYAML(freePort(t), b.ln.Addr().String()))
				c := m.rawConn(hello)
				var up *net.TCPConn
				select {
				case up = <-conns:
				case <-time.After(time.Minute):
					t.Fatal("the connection did not reach the endpoint")
				}
				var err error
				if resetter == "client" {
					c.SetLinger(0)
					c.Close()
					err = <-read
				} else {
					up.SetLinger(0)
					up.Close()
					c.SetReadDeadline(time.Now().Add(time.Minute))
					_, err = io.Copy(io.Discard, c)
				}
				if !isReset(err) {
					t.Fatalf("the other side read %v, want a reset", err)
				}
			})
		})
	}
}

// The idle timeout closes a connection on which nothing moves, on
// whichever gateway it is set: a tunneled flow is idle on both.
func TestIdleTimeout(t *testing.T) {
	forSides(t, func(t *testing.T, m *mesh, far bool) {
		idle := Config{IdleTimeout: 200 * time.Millisecond}
		if far {
			m.farCfg = &idle
		} else {
			m.cfg, m.farCfg = idle, &Config{}
		}
		m.startEcho()
		c := m.mustDial(t, echoSNI, "istio")
		c.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
			t.Fatalf("idle connection: %v, want closed by the gateway", err)
		}
		if got := m.side(far).m.IdleClosed.Value(); got != 1 {
			t.Fatalf("idle closes = %d, want 1", got)
		}
		// An idle close is a close, not a reset: over QUIC the far
		// gateway's close is a FIN, which the client's own close answers.
		c.Close()
		for _, g := range m.gateways() {
			await.True(t, 5*time.Second, "flows to end", func() bool { return g.Active() == 0 })
		}
	})
}

// MaxConnections refuses what is over it, on whichever gateway it is
// set: the far gateway counts the streams other networks carry to it.
func TestConnectionLimit(t *testing.T) {
	forPaths(t, func(t *testing.T, m *mesh) {
		limited := func() *Gateway { return m.gw }
		if m.path == pathLocal {
			m.cfg.MaxConnections = 1
		} else {
			m.farCfg = &Config{MaxConnections: 1}
			limited = func() *Gateway { return m.far }
		}
		b := m.startEcho()
		c := m.mustDial(t, echoSNI, "istio")
		if _, err := m.dial(echoSNI, "istio"); err == nil {
			t.Fatal("second connection accepted over a limit of 1")
		}
		await.True(t, 5*time.Second, "over_limit count", func() bool { return limited().m.Rejected(RejectOverLimit) == 1 })
		if n := b.Accepted(); n != 1 {
			t.Errorf("backend accepted %d connections, want 1", n)
		}
		// The first connection still works.
		if err := c.Exchange(1 << 10); err != nil {
			t.Error(err)
		}
	})
}

// A drain lets open connections finish, on either gateway of a tunneled
// connection, and returns once the last one closed.
func TestDrain(t *testing.T) {
	forSides(t, func(t *testing.T, m *mesh, far bool) {
		m.startEcho()
		g := m.side(far)
		var addr string
		for _, a := range g.Addrs() {
			addr = a.String()
		}
		c := m.mustDial(t, echoSNI, "istio")
		shut := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			shut <- g.Shutdown(ctx)
		}()
		await.True(t, 5*time.Second, "listener to close", func() bool {
			probe, err := net.Dial("tcp", addr)
			if err == nil {
				probe.Close()
			}
			return err != nil
		})
		if g.Ready() {
			t.Error("draining gateway reports ready")
		}
		// The open connection keeps working while draining.
		c.Write([]byte("draining\n"))
		if line, err := c.ReadLine(); err != nil || line != "draining" {
			t.Fatalf("open connection during drain: %q, %v", line, err)
		}
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned %v with a connection open", err)
		default:
		}
		c.Close()
		if err := <-shut; err != nil {
			t.Fatalf("Shutdown after the last connection closed: %v", err)
		}
	})
}

// shutdownCuts runs a Shutdown whose deadline passes while connections
// are open, and checks that it cuts them all and returns.
func shutdownCuts(t *testing.T, gw *Gateway) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- gw.Shutdown(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want deadline exceeded", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Shutdown still waiting for its connections a minute after its deadline")
	}
	if gw.Active() != 0 {
		t.Fatalf("%d connections still active after a cut drain", gw.Active())
	}
}

// A drain that times out must cut every flow, on either gateway of a
// tunneled one, including a flow whose client half-closed while the
// other side stays silent: nothing else would wake it.
func TestDrainTimeoutCutsConnections(t *testing.T) {
	for _, halfClosed := range []bool{false, true} {
		t.Run(fmt.Sprintf("half-closed=%v", halfClosed), func(t *testing.T) {
			forSides(t, func(t *testing.T, m *mesh, far bool) {
				hello := recordHello(t, echoSNI)
				b := newRawBackend(t, len(hello), nil)
				m.start(rawYAML(freePort(t), b.ln.Addr().String()))
				c := m.rawConn(hello)
				if halfClosed {
					c.CloseWrite()
				}
				await.True(t, 5*time.Second, "connection to reach the endpoint", func() bool { return b.count() == 1 })
				shutdownCuts(t, m.side(far))
				c.SetReadDeadline(time.Now().Add(time.Minute))
				if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
					t.Fatalf("cut connection: %v, want closed", err)
				}
			})
		})
	}
}
