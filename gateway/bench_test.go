package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/workload"
)

// recordHello returns the bytes of a real Go ClientHello for sni.
func recordHello(b testing.TB, sni string) []byte {
	b.Helper()
	var rec recorder
	c := tls.Client(&rec, &tls.Config{ServerName: sni, NextProtos: []string{"istio"}})
	c.Handshake() // fails once the recorder refuses to read
	if rec.Len() == 0 {
		b.Fatal("no hello recorded")
	}
	return rec.Bytes()
}

type recorder struct {
	bytes.Buffer
	net.Conn
}

func (r *recorder) Write(p []byte) (int, error) { return r.Buffer.Write(p) }
func (r *recorder) Read([]byte) (int, error)    { return 0, errors.New("recorder: no reads") }
func (r *recorder) Close() error                { return nil }

// rawBackend is a plain TCP endpoint for benchmarks: it reads the replayed
// hello, then runs serve on the connection.
type rawBackend struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func newRawBackend(b testing.TB, helloLen int, serve func(net.Conn)) *rawBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	rb := &rawBackend{ln: ln}
	rb.wg.Add(1)
	go func() {
		defer rb.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rb.mu.Lock()
			rb.conns = append(rb.conns, c)
			rb.mu.Unlock()
			if serve == nil {
				continue // hold: no goroutine per connection
			}
			rb.wg.Add(1)
			go func() {
				defer rb.wg.Done()
				defer c.Close()
				if _, err := io.CopyN(io.Discard, c, int64(helloLen)); err != nil {
					return
				}
				serve(c)
			}()
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		rb.mu.Lock()
		for _, c := range rb.conns {
			c.Close()
		}
		rb.mu.Unlock()
		rb.wg.Wait()
	})
	return rb
}

func (rb *rawBackend) count() int {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return len(rb.conns)
}

// benchGateway runs a gateway of network net-a routing echo.demo port
// 9080 to addr, or, with addr "", having the service but no endpoint for
// it; it returns the gateway and its listener address.
func benchGateway(b testing.TB, addr string) (*Gateway, string) {
	b.Helper()
	return benchGatewayConfig(b, addr, Config{})
}

// benchGatewayConfig is benchGateway under cfg.
func benchGatewayConfig(b testing.TB, addr string, cfg Config) (*Gateway, string) {
	b.Helper()
	yaml := workload.IstioConfig("net-a", freePort(b))
	if addr != "" {
		host, port, _ := net.SplitHostPort(addr)
		yaml = strings.Replace(yaml, "  endpoints:\n",
			fmt.Sprintf("  endpoints: [{address: %s, ports: {tcp-echo: %s}, labels: {security.istio.io/tlsMode: istio}}]\n", host, port), 1)
	}
	c, err := discovery.Parse("bench.yaml", []byte(yaml), nil)
	if err != nil {
		b.Fatal(err)
	}
	v, err := c.View(discovery.Node{Network: "net-a", Labels: map[string]string{"istio": "eastwestgateway"}})
	if err != nil {
		b.Fatal(err)
	}
	cfg.BindAddress, cfg.MaxConnections = "127.0.0.1", 100000
	gw := New(cfg)
	if err := gw.Apply(v); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		// Benchmarks leave connections open: cut them at once.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		gw.Shutdown(ctx)
	})
	for _, a := range gw.Addrs() {
		return gw, a.String()
	}
	b.Fatal("no listener")
	return nil, ""
}

// BenchmarkIdleConnections opens b.N proxied connections and leaves them
// idle, then reports what each costs the gateway: file descriptors beyond
// the two sockets of the client and backend ends, and Go stack and heap.
// Run with -benchtime=1000x for 1000 connections.
func BenchmarkIdleConnections(b *testing.B) {
	if b.N > 5000 {
		// Each connection holds four descriptors in this process (client,
		// gateway both sides, backend); the limit here is 20,000.
		b.Skip("run with -benchtime=Nx, N <= 5000")
	}
	hello := recordHello(b, echoSNI)
	be := newRawBackend(b, len(hello), nil)
	_, gwAddr := benchGateway(b, be.ln.Addr().String())
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fds0 := leakcheck.OpenFDs()
	b.ResetTimer()
	holdConns(b, gwAddr, hello)
	await.True(b, 30*time.Second, "every connection to reach the backend", func() bool { return be.count() >= b.N })
	b.StopTimer()
	// Let the gateway's goroutines park, and stacks shrink, as they would
	// on a long-lived idle connection.
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	n := float64(b.N)
	b.ReportMetric(float64(leakcheck.OpenFDs()-fds0)/n-2, "gateway-fds/conn")
	b.ReportMetric(float64(after.StackInuse-before.StackInuse)/n, "stack-B/conn")
	b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n, "heap-B/conn")
}

// BenchmarkRoundTrip measures a 1 KiB request and its echo over one
// established proxied connection.
func BenchmarkRoundTrip(b *testing.B) { benchRoundTrip(b, Config{}) }

// BenchmarkRoundTripLoopAccept is BenchmarkRoundTrip with
// Config.LoopAccept.
func BenchmarkRoundTripLoopAccept(b *testing.B) { benchRoundTrip(b, Config{LoopAccept: true}) }

func benchRoundTrip(b *testing.B, cfg Config) {
	hello := recordHello(b, echoSNI)
	be := newRawBackend(b, len(hello), func(c net.Conn) { io.Copy(c, c) })
	_, gwAddr := benchGatewayConfig(b, be.ln.Addr().String(), cfg)
	c, err := net.Dial("tcp", gwAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.Write(hello)
	msg := make([]byte, 1024)
	buf := make([]byte, 1024)
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkThroughput streams 4 MiB per op one way through the gateway.
func BenchmarkThroughput(b *testing.B) {
	hello := recordHello(b, echoSNI)
	done := make(chan int64, 1)
	be := newRawBackend(b, len(hello), func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		done <- n
	})
	_, gwAddr := benchGateway(b, be.ln.Addr().String())
	c, err := net.Dial("tcp", gwAddr)
	if err != nil {
		b.Fatal(err)
	}
	c.Write(hello)
	chunk := make([]byte, 4<<20)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	if n := <-done; n != int64(b.N)*int64(len(chunk)) {
		b.Fatalf("backend got %d bytes, want %d", n, int64(b.N)*int64(len(chunk)))
	}
	b.StopTimer()
	c.Close()
}

// BenchmarkConnect measures a whole proxied connection: connect, hello,
// route, dial, one byte back, close.
func BenchmarkConnect(b *testing.B) { benchConnect(b, Config{}) }

// BenchmarkConnectLoopAccept is BenchmarkConnect with Config.LoopAccept.
func BenchmarkConnectLoopAccept(b *testing.B) { benchConnect(b, Config{LoopAccept: true}) }

func benchConnect(b *testing.B, cfg Config) {
	hello := recordHello(b, echoSNI)
	be := newRawBackend(b, len(hello), func(c net.Conn) { c.Write([]byte{1}) })
	_, gwAddr := benchGatewayConfig(b, be.ln.Addr().String(), cfg)
	buf := make([]byte, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c, err := net.Dial("tcp", gwAddr)
		if err != nil {
			b.Fatal(err)
		}
		c.Write(hello)
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkHalfSentHellos opens b.N connections that each send the first
// bytes of a ClientHello announcing 60,000 bytes and then stall, as a
// client that proves nothing can, and reports what each costs the gateway
// while it waits: heap in use and the bytes counted against
// Config.HelloMemory. Run with -benchtime=1000x for 1000 connections.
func BenchmarkHalfSentHellos(b *testing.B) {
	for _, sent := range []int{4 << 10, 16 << 10} {
		b.Run(fmt.Sprintf("sent=%d", sent), func(b *testing.B) {
			if b.N > 5000 {
				b.Skip("run with -benchtime=Nx, N <= 5000")
			}
			half := make([]byte, sent)
			copy(half, []byte{22, 3, 1, 0x40, 0x00, 1, 0x00, 0xea, 0x60})
			gw, gwAddr := benchGateway(b, "")
			// What each peek grows to: its 4 KiB doubled past the bytes sent.
			grown := int64(4 << 10)
			for grown <= int64(sent) {
				grown *= 2
			}
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			holdConns(b, gwAddr, half)
			await.True(b, 30*time.Second, "every peek to hold what was sent", func() bool {
				return gw.HelloMemory() == int64(b.N)*grown
			})
			b.StopTimer()
			runtime.GC()
			runtime.ReadMemStats(&after)
			n := float64(b.N)
			b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n, "heap-B/conn")
			b.ReportMetric(float64(gw.HelloMemory())/n, "hello-B/conn")
		})
	}
}

// holdConns opens b.N connections to addr, each sending first, and keeps
// them open until the benchmark ends.
func holdConns(b *testing.B, addr string, first []byte) {
	b.Helper()
	for range b.N {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		if _, err := c.Write(first); err != nil {
			b.Fatal(err)
		}
	}
}
