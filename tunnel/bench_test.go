package tunnel

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"testing"

	"github.com/ewgate/ewgate/internal/await"
)

// quiet keeps benchmark output free of the endpoints' debug logs.
func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// benchPair is newPair with silent endpoints.
func benchPair(b *testing.B, tr Transport, handler Handler) *pair {
	b.Helper()
	p := &pair{caA: newCA(b, "a.test")}
	p.server = newEndpoint(b, "127.0.0.1:0", Config{Source: newSource(b, p.caA, "/gw/server"), Handler: handler, Logger: quiet()})
	p.client = newEndpoint(b, "127.0.0.1:0", Config{Source: newSource(b, p.caA, "/gw/client"), Transport: tr, Logger: quiet()})
	return p
}

// forBenchTransports runs f as a sub-benchmark for each transport a link
// can use.
func forBenchTransports(b *testing.B, f func(b *testing.B, tr Transport)) {
	for _, tr := range []Transport{TransportQUIC, TransportTCP} {
		b.Run(string(tr), func(b *testing.B) { f(b, tr) })
	}
}

// benchDial opens a stream and checks that it runs over tr.
func benchDial(b *testing.B, ctx context.Context, p *pair, tr Transport) *Stream {
	b.Helper()
	s, err := p.client.Dial(ctx, p.addr(), key("bench.example"))
	if err != nil {
		b.Fatal(err)
	}
	if got := s.Transport(); got != tr {
		s.Close()
		b.Fatalf("stream runs over %s, want %s", got, tr)
	}
	return s
}

// BenchmarkStreamThroughput streams 4 MiB per op one way over one stream
// of an established link.
func BenchmarkStreamThroughput(b *testing.B) {
	forBenchTransports(b, func(b *testing.B, tr Transport) {
		done := make(chan int64, 1)
		p := benchPair(b, tr, func(_ context.Context, _ Header, s *Stream) {
			n, _ := io.Copy(io.Discard, s)
			done <- n
		})
		s := benchDial(b, testContext(b), p, tr)
		defer s.Close()
		chunk := make([]byte, 4<<20)
		b.SetBytes(int64(len(chunk)))
		b.ResetTimer()
		for range b.N {
			if _, err := s.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		// The timer runs until the handler has read everything.
		s.CloseWrite()
		if n, want := <-done, int64(b.N)*int64(len(chunk)); n != want {
			b.Fatalf("handler read %d bytes, want %d", n, want)
		}
		b.StopTimer()
	})
}

// BenchmarkOpenStream measures a stream on an established link: open,
// header, one byte echoed, close.
func BenchmarkOpenStream(b *testing.B) {
	forBenchTransports(b, func(b *testing.B, tr Transport) {
		p := benchPair(b, tr, echo)
		ctx := testContext(b)
		benchDial(b, ctx, p, tr).Close() // sets up the link
		buf := make([]byte, 1)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			s, err := p.client.Dial(ctx, p.addr(), key("bench.example"))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(s, buf); err != nil {
				b.Fatal(err)
			}
			s.Close()
		}
	})
}

// openStreams returns the number of streams open on e's links.
func openStreams(e *Endpoint) int64 {
	var n int64
	for _, p := range e.Stats().Peers {
		n += p.StreamsOpen
	}
	return n
}

// echoByte is a Handler that echoes one byte, then waits for the stream
// to end. Unlike echo, it holds no 32 KiB io.Copy buffer while idle, so
// that BenchmarkIdleStreams measures the tunnel rather than the handler.
func echoByte(_ context.Context, _ Header, s *Stream) {
	var b [1]byte
	if _, err := io.ReadFull(s, b[:]); err != nil {
		return
	}
	if _, err := s.Write(b[:]); err != nil {
		return
	}
	for {
		if _, err := s.Read(b[:]); err != nil {
			return
		}
	}
}

// BenchmarkIdleStreams opens b.N streams on one established link, each
// having sent its header and one byte and read the byte back, and leaves
// them open and idle. It reports what each costs both ends together (the
// dialing and the accepting Endpoint are in this process): live Go heap
// and stack in use after collection, and goroutines. The accepting side runs
// echoByte, which waits in Read in the goroutine the Endpoint starts for
// the stream; the dialing side holds its streams without a goroutine. Run with -benchtime=1000x for 1000 streams.
func BenchmarkIdleStreams(b *testing.B) {
	forBenchTransports(b, func(b *testing.B, tr Transport) {
		if b.N > 5000 {
			b.Skip("run with -benchtime=Nx, N <= 5000")
		}
		p := benchPair(b, tr, echoByte)
		ctx := testContext(b)
		benchDial(b, ctx, p, tr).Close() // sets up the link
		await.True(b, testTimeout, "the warm-up stream to end on the accepting side", func() bool {
			return openStreams(p.server) == 0
		})
		streams := make([]*Stream, 0, b.N)
		defer func() {
			for _, s := range streams {
				s.Close()
			}
		}()
		buf := make([]byte, 1)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&before)
		g0 := runtime.NumGoroutine()
		b.ResetTimer()
		for range b.N {
			s := benchDial(b, ctx, p, tr)
			streams = append(streams, s)
			buf[0] = 'x'
			if _, err := s.Write(buf); err != nil {
				b.Fatal(err)
			}
			buf[0] = 0
			if _, err := io.ReadFull(s, buf); err != nil || buf[0] != 'x' {
				b.Fatalf("echo: read %q, %v", buf, err)
			}
		}
		b.StopTimer()
		if got := openStreams(p.server); got != int64(b.N) {
			b.Fatalf("accepting side has %d streams open, want %d", got, b.N)
		}
		// Let goroutines park and stacks shrink, as on long-lived idle
		// streams.
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&after)
		n := float64(b.N)
		// HeapAlloc (live objects), not HeapInuse: HeapInuse counts whole
		// spans and so depends on how much earlier runs of this process
		// left partly free.
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/stream")
		b.ReportMetric(float64(after.StackInuse-before.StackInuse)/n, "stack-B/stream")
		b.ReportMetric(float64(runtime.NumGoroutine()-g0)/n, "goroutines/stream")
		runtime.KeepAlive(streams)
	})
}
