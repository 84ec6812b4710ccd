package tunnel

import (
	"context"
	"errors"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
)

// TestLinksPerPeer: a member past MaxLinksPerPeer inbound links is
// refused, counted on both sides, and may link again once a link closes.
func TestLinksPerPeer(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		ca := newCA(t, "a.test")
		members := newMemberTable()
		members.announce(Member{Name: "gw-a", Network: "net-a", ID: "spiffe://a.test/gw/a"}, "")
		server := newEndpoint(t, "127.0.0.1:0", Config{Source: newSource(t, ca, "/gw/b"), Members: members, MaxLinksPerPeer: 1, Handler: echo})
		src := newSource(t, ca, "/gw/a")
		first, err := New("127.0.0.1:0", Config{Source: src, Name: "gw-a", Transport: tr, Logger: newTestLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		s, err := first.Dial(ctx, server.Addr().String(), key("x.test"))
		if err != nil {
			t.Fatal(err)
		}
		checkEcho(t, s, 1)
		s.Close()

		// The same member, from a second endpoint: one link too many.
		second := newEndpoint(t, "127.0.0.1:0", Config{Source: src, Name: "gw-a", Transport: tr})
		if _, err := second.Dial(ctx, server.Addr().String(), key("x.test")); !errors.Is(err, ErrRejected) {
			t.Fatalf("second link: %v, want ErrRejected", err)
		}
		if st := peerStats1(t, second.Stats(), Outbound); st.HandshakeFailures[ReasonTooManyLinks] != 1 {
			t.Errorf("second's stats %+v, want one %s", st, ReasonTooManyLinks)
		}
		awaitInboundRejection(t, server, ReasonTooManyLinks)

		if err := first.Close(); err != nil {
			t.Fatal(err)
		}
		await.True(t, testTimeout, "the first link to close", func() bool { return inboundLinks(server) == 0 })
		s, err = second.Dial(ctx, server.Addr().String(), key("x.test"))
		if err != nil {
			t.Fatalf("after the first link closed: %v", err)
		}
		checkEcho(t, s, 2)
		s.Close()
	})
}

// TestStreamsPerLink: a dialer past the streams a link allows waits for
// one to end, over QUIC and over the TCP fallback (where yamux alone
// would reset the extra stream), and needs no second link.
func TestStreamsPerLink(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		server, client := limitedPair(t, tr, Config{MaxIncomingStreams: 2, Handler: echo})
		var open []*Stream
		for i := range 2 {
			s, err := client.Dial(ctx, server.Addr().String(), key("x.test"))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			checkEcho(t, s, byte(i))
			open = append(open, s)
		}
		// The wait is the assertion: a third stream must not open while
		// two are open, however long it is given.
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		s, err := client.Dial(short, server.Addr().String(), key("x.test"))
		cancel()
		if err == nil {
			// Without the limit on the dialing side, yamux resets it.
			_, rerr := s.Write([]byte{3})
			t.Fatalf("third stream opened (write: %v); want Dial to wait for one to end", rerr)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("third stream: %v, want a wait ended by its context", err)
		}
		open[0].Close()
		s, err = client.Dial(ctx, server.Addr().String(), key("x.test"))
		if err != nil {
			t.Fatalf("after a stream ended: %v", err)
		}
		defer s.Close()
		checkEcho(t, s, 4)
		if n := inboundLinks(server); n != 1 {
			t.Errorf("%d inbound links, want 1", n)
		}
	})
}

// TestHandshakeLimit: past MaxHandshakes inbound connections in their
// handshake, new ones on either transport are refused before any TLS
// work and counted; once the held one goes, links are accepted again.
func TestHandshakeLimit(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		server, client := limitedPair(t, tr, Config{MaxHandshakes: 1, Handler: echo})
		// An unauthenticated peer opens a TCP connection and says nothing.
		var d net.Dialer
		held, err := d.DialContext(ctx, "tcp", server.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		await.True(t, testTimeout, "the held handshake", func() bool { return server.Stats().Handshakes == 1 })

		if _, err := client.Dial(ctx, server.Addr().String(), key("x.test")); err == nil {
			t.Fatal("Dial succeeded past the handshake limit")
		} else {
			t.Logf("Dial error: %v", err)
		}
		if n := server.Stats().InboundRejections[ReasonTooManyHandshakes]; n < 1 {
			t.Errorf("InboundRejections %v, want %s", server.Stats().InboundRejections, ReasonTooManyHandshakes)
		}

		held.Close()
		await.True(t, testTimeout, "the held handshake to end", func() bool { return server.Stats().Handshakes == 0 })
		s, err := client.Dial(ctx, server.Addr().String(), key("x.test"))
		if err != nil {
			t.Fatalf("after the held handshake ended: %v", err)
		}
		checkEcho(t, s, 1)
		s.Close()
	})
}

// TestTCPLinkMemory: streams whose upstream reads nothing park at most
// MaxTCPLinkMemory on a TCP link. yamux alone buffers 256 KiB per stream
// for as many streams as the peer opens (400 such streams held 105 MB);
// here 64 are attempted against a 2 MiB budget, and the heap stays within
// a few budgets while the senders are stuck.
func TestTCPLinkMemory(t *testing.T) {
	leakcheck.Check(t)
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	const budget = 2 << 20
	server, client := limitedPair(t, TransportTCP, Config{
		MaxTCPLinkMemory: budget,
		// A silent upstream: the handler never reads.
		Handler: func(ctx context.Context, _ Header, _ *Stream) { <-ctx.Done() },
	})
	warm, err := client.Dial(ctx, server.Addr().String(), key("x.test"))
	if err != nil {
		t.Fatal(err)
	}
	warm.Close()
	before := liveHeap()

	const streams, chunk = 64, 32 << 10
	done := make(chan struct{})
	var opened atomic.Int64
	for range streams {
		go func() {
			defer func() { done <- struct{}{} }()
			s, err := client.Dial(ctx, server.Addr().String(), key("x.test"))
			if err != nil {
				return // waiting for a stream slot when the test ended
			}
			opened.Add(1)
			defer s.Close()
			buf := make([]byte, chunk)
			for ctx.Err() == nil {
				if _, err := s.Write(buf); err != nil {
					return
				}
			}
		}()
	}
	// Each stream opened fills its 256 KiB window, less the chunk that
	// blocks; the budget allows 8 to open, and no more open later.
	allowed := int64(budget / yamuxStreamWindow)
	await.True(t, testTimeout, "the streams opened to fill their windows", func() bool {
		n := opened.Load()
		return (n == allowed || n == streams) && peerStats1(t, client.Stats(), Outbound).BytesSent >= uint64(n*(yamuxStreamWindow-chunk-1024))
	})
	grown := liveHeap() - before
	st := peerStats1(t, client.Stats(), Outbound)
	t.Logf("heap grew %d KiB; %d streams open, %d bytes sent", grown>>10, st.StreamsOpen, st.BytesSent)
	if st.StreamsOpen > allowed {
		t.Errorf("%d streams open on the link, want at most %d", st.StreamsOpen, allowed)
	}
	if limit := int64(4 * budget); grown > limit {
		t.Errorf("heap grew %d bytes with stuck streams, want at most %d", grown, limit)
	}
	cancel()
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	for range streams {
		<-done
	}
}

// liveHeap returns the bytes of live heap objects after a collection.
func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// limitedPair starts a server gateway (spiffe://a.test/gw/b) with the
// limits and handler of server, and a client gateway (.../gw/a) dialing
// over tr.
func limitedPair(t *testing.T, tr Transport, server Config) (*Endpoint, *Endpoint) {
	t.Helper()
	ca := newCA(t, "a.test")
	server.Source = newSource(t, ca, "/gw/b")
	return newEndpoint(t, "127.0.0.1:0", server), newEndpoint(t, "127.0.0.1:0", Config{Source: newSource(t, ca, "/gw/a"), Transport: tr})
}
