package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/ewgate/ewgate/peer"
	"github.com/ewgate/ewgate/tunnel"
)

// Commands a client of pathSink sends after its hello.
const (
	sinkUp   = 'u' // discard what follows, then send the count
	sinkDown = 'd' // send pathChunk-sized writes until the client goes
)

// pathChunk is the size of each write (up) or read (down) of
// BenchmarkPaths: one op.
const pathChunk = 4 << 20

// BenchmarkPaths streams the bytes of one TCP connection, one way, over
// each path a connection can take, in one run:
//
//   - direct: client to sink, no gateway;
//   - gateway: one AUTO_PASSTHROUGH hop (the gateway peeks the ClientHello,
//     routes by its SNI and splices);
//   - tunnel-quic: client to gateway A ("local" mode), which has no
//     endpoint for the service and carries the connection over a QUIC
//     tunnel stream to gateway B, which routes it to the sink;
//   - tunnel-tcp: the same over the TCP + TLS 1.3 fallback.
//
// Each path has sub-benchmarks up (client to sink; the timer runs until
// the sink has counted every byte) and down (sink to client). Every
// connection starts with a real Go ClientHello for
// outbound_.9080_._.echo.demo.svc.cluster.local, ALPN istio; client,
// gateways, tunnel endpoints and sink share this process and 127.0.0.1.
// Run with -benchtime=256x for 1 GiB per connection.
func BenchmarkPaths(b *testing.B) {
	for _, path := range []string{"direct", "gateway", "tunnel-quic", "tunnel-tcp"} {
		b.Run(path, func(b *testing.B) {
			leakcheck.Check(b)
			hello := recordHello(b, echoSNI)
			sink, counts := newPathSink(b, len(hello))
			target, dialer := pathTo(b, path, sink.ln.Addr().String())
			fail := func(b *testing.B, err error) {
				b.Helper()
				if dialer != nil {
					if derr := dialer.lastErr.Load(); derr != nil {
						err = fmt.Errorf("%w (tunnel: %w)", err, *derr)
					}
				}
				b.Fatal(err)
			}
			b.Run("up", func(b *testing.B) {
				c := dialPath(b, target, hello, sinkUp)
				defer c.Close()
				chunk := make([]byte, pathChunk)
				b.SetBytes(pathChunk)
				b.ResetTimer()
				for range b.N {
					if _, err := c.Write(chunk); err != nil {
						fail(b, err)
					}
				}
				c.CloseWrite()
				var n int64
				select {
				case n = <-counts:
				case <-time.After(time.Minute):
					fail(b, errors.New("no count from the sink"))
				}
				b.StopTimer()
				if want := int64(b.N) * pathChunk; n != want {
					fail(b, fmt.Errorf("sink counted %d bytes, want %d", n, want))
				}
			})
			b.Run("down", func(b *testing.B) {
				c := dialPath(b, target, hello, sinkDown)
				defer c.Close()
				buf := make([]byte, pathChunk)
				b.SetBytes(pathChunk)
				b.ResetTimer()
				for range b.N {
					if _, err := io.ReadFull(c, buf); err != nil {
						fail(b, err)
					}
				}
				b.StopTimer()
			})
		})
	}
}

// pathTo sets up path (see BenchmarkPaths) to the sink at addr and
// returns the address clients dial, and the tunnel's RemoteDialer for the
// tunnel paths.
func pathTo(b *testing.B, path, addr string) (string, *tunnelDialer) {
	b.Helper()
	if path == "direct" {
		return addr, nil
	}
	gB, addr := benchGateway(b, addr)
	switch path {
	case "gateway":
		return addr, nil
	case "tunnel-quic":
		return tunnelPath(b, gB, tunnel.TransportQUIC)
	case "tunnel-tcp":
		return tunnelPath(b, gB, tunnel.TransportTCP)
	}
	b.Fatalf("unknown path %q", path)
	return "", nil
}

// BenchmarkPathsIdle opens b.N connections over each gateway path of
// BenchmarkPaths, each having sent its hello, and leaves them idle. It
// reports what each costs the whole process: both gateways and both
// tunnel endpoints where there are, and the sink, which waits in Read in
// one goroutine per connection. Figures are live Go heap and stack in use
// after collection, and goroutines. Run with -benchtime=1000x.
func BenchmarkPathsIdle(b *testing.B) {
	for _, path := range []string{"gateway", "tunnel-quic", "tunnel-tcp"} {
		b.Run(path, func(b *testing.B) {
			if b.N > 3000 {
				// Four descriptors per connection in this process; the
				// limit here is 20,000.
				b.Skip("run with -benchtime=Nx, N <= 3000")
			}
			leakcheck.Check(b)
			hello := recordHello(b, echoSNI)
			var reached atomic.Int64
			sink := newRawBackend(b, len(hello), func(c net.Conn) {
				reached.Add(1)
				var x [1]byte
				for {
					if _, err := c.Read(x[:]); err != nil {
						return // the client closed: closes c
					}
				}
			})
			target, dialer := pathTo(b, path, sink.ln.Addr().String())
			clients := make([]net.Conn, 0, b.N)
			defer func() {
				for _, c := range clients {
					c.Close()
				}
			}()
			var before, after runtime.MemStats
			runtime.GC()
			runtime.GC()
			runtime.ReadMemStats(&before)
			g0 := runtime.NumGoroutine()
			b.ResetTimer()
			for range b.N {
				c, err := net.Dial("tcp", target)
				if err != nil {
					b.Fatal(err)
				}
				clients = append(clients, c)
				if _, err := c.Write(hello); err != nil {
					b.Fatal(err)
				}
			}
			await.True(b, time.Minute, "every hello to reach the sink", func() bool {
				if dialer != nil && dialer.lastErr.Load() != nil {
					b.Fatalf("tunnel: %v", *dialer.lastErr.Load())
				}
				return reached.Load() == int64(b.N)
			})
			b.StopTimer()
			// The gateway in front of a tunnel starts copying just after it
			// has forwarded the hello: wait until goroutines stop changing.
			for last, same := -1, 0; same < 5; time.Sleep(20 * time.Millisecond) {
				if n := runtime.NumGoroutine(); n == last {
					same++
				} else {
					last, same = n, 0
				}
			}
			runtime.GC()
			runtime.GC()
			runtime.ReadMemStats(&after)
			n := float64(b.N)
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/conn")
			b.ReportMetric(float64(after.StackInuse-before.StackInuse)/n, "stack-B/conn")
			b.ReportMetric(float64(runtime.NumGoroutine()-g0)/n, "goroutines/conn")
		})
	}
}

// newPathSink starts the backend of BenchmarkPaths. After the hello it
// reads a command: sinkUp makes it count bytes until EOF and send the
// count on counts; sinkDown makes it write until the connection fails.
func newPathSink(b *testing.B, helloLen int) (*rawBackend, <-chan int64) {
	counts := make(chan int64, 1)
	sink := newRawBackend(b, helloLen, func(c net.Conn) {
		chunk := make([]byte, pathChunk)
		var cmd [1]byte
		if _, err := io.ReadFull(c, cmd[:]); err != nil {
			return
		}
		switch cmd[0] {
		case sinkUp:
			// Large reads: io.Discard would read 8 KiB at a time and make
			// the sink the bottleneck of the fast paths.
			var n int64
			for {
				k, err := c.Read(chunk)
				n += int64(k)
				if err != nil {
					break
				}
			}
			counts <- n
		case sinkDown:
			for {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}
	})
	return sink, counts
}

// dialPath connects to addr and sends hello and the sink command.
func dialPath(b *testing.B, addr string, hello []byte, cmd byte) *net.TCPConn {
	b.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	// Bounds a benchmark that hangs; not a timing assertion.
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	if _, err := c.Write(append(hello[:len(hello):len(hello)], cmd)); err != nil {
		c.Close()
		b.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// tunnelPath sets up the "local" mode of a two-network mesh in front of
// gateway B: gateway A, with the echo service but no
// endpoint for it, carries connections over tunnel transport tr to B's
// tunnel endpoint, whose handler hands them to B. It returns A's listener
// address.
func tunnelPath(b *testing.B, gB *Gateway, tr tunnel.Transport) (string, *tunnelDialer) {
	b.Helper()
	ca, err := identity.NewDevCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		b.Fatal(err)
	}
	source := func(name string) identity.Source {
		src, err := ca.NewSource(spiffeid.RequireFromPath(ca.TrustDomain(), "/ns/istio-system/sa/"+name), identity.IssueOptions{})
		if err != nil {
			b.Fatal(err)
		}
		return src
	}
	epB, err := tunnel.New("127.0.0.1:0", tunnel.Config{
		Source:  source("eastwest-b"),
		Handler: gB.ServeTunnel,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { epB.Close() })
	epA, err := tunnel.New("127.0.0.1:0", tunnel.Config{Source: source("eastwest-a"), Transport: tr})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { epA.Close() })
	gA, addrA := benchGateway(b, "")
	d := &tunnelDialer{ep: epA, want: tr}
	// Both gateways are of net-a in benchGateway: B is announced as the
	// one gateway of net-b, with its own view's summary.
	peers := peersFunc(func() []peer.NodeSummary {
		s := discovery.Summarize(gB.table.Load().view, nil)
		s.Network = "net-b"
		return []peer.NodeSummary{{Node: "gw-b", Meta: peer.Meta{Network: "net-b", TunnelAddr: epB.Addr().String()}, Summary: s}}
	})
	gA.SetTunnelDialer(d, peers)
	return addrA, d
}

// tunnelDialer is the TunnelDialer of tunnelPath's gateway A: it checks
// that each stream runs over the wanted transport.
type tunnelDialer struct {
	ep      *tunnel.Endpoint
	want    tunnel.Transport
	lastErr atomic.Pointer[error]
}

func (d *tunnelDialer) Dial(ctx context.Context, addr string, h tunnel.Header) (*tunnel.Stream, error) {
	st, err := d.ep.Dial(ctx, addr, h)
	if err == nil && st.Transport() != d.want {
		st.Close()
		err = fmt.Errorf("stream runs over %s, want %s", st.Transport(), d.want)
	}
	if err != nil {
		d.lastErr.Store(&err)
		return nil, err
	}
	return st, nil
}
