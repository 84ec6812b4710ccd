package tunnel

import (
	"context"
	"io"
	"log/slog"
	"testing"
)

// quiet keeps benchmark output free of the endpoints' debug logs.
func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// benchPair is newPair with silent endpoints.
func benchPair(b *testing.B, handler Handler) *pair {
	b.Helper()
	p := &pair{caA: newCA(b, "a.test")}
	p.server = newEndpoint(b, "127.0.0.1:0", Config{Source: newSource(b, p.caA, "/gw/server"), Handler: handler, Logger: quiet()})
	p.client = newEndpoint(b, "127.0.0.1:0", Config{Source: newSource(b, p.caA, "/gw/client"), Logger: quiet()})
	return p
}

// BenchmarkStreamThroughput streams 4 MiB per op one way over one stream
// of an established link.
func BenchmarkStreamThroughput(b *testing.B) {
	done := make(chan int64, 1)
	p := benchPair(b, func(_ context.Context, _ Header, s *Stream) {
		n, _ := io.Copy(io.Discard, s)
		done <- n
	})
	s, err := p.client.Dial(testContext(b), p.addr(), key("bench.example"))
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 4<<20)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for range b.N {
		if _, err := s.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	s.CloseWrite()
	if n := <-done; n != int64(b.N)*int64(len(chunk)) {
		b.Fatalf("handler read %d bytes, want %d", n, int64(b.N)*int64(len(chunk)))
	}
	b.StopTimer()
	s.Close()
}

// BenchmarkOpenStream measures a stream on an established link: open,
// header, one byte echoed, close.
func BenchmarkOpenStream(b *testing.B) {
	p := benchPair(b, echo)
	ctx := testContext(b)
	warm, err := p.client.Dial(ctx, p.addr(), key("bench.example"))
	if err != nil {
		b.Fatal(err)
	}
	warm.Close()
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
}
