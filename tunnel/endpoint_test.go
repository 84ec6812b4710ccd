package tunnel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/ewgate/ewgate/sni"
)

// testTimeout bounds each test's waits; it guards against hangs and is
// not a timing assertion.
const testTimeout = 60 * time.Second

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func newCA(t testing.TB, td string) *identity.DevCA {
	t.Helper()
	ca, err := identity.NewDevCA(spiffeid.RequireTrustDomainFromString(td))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func newSource(t testing.TB, ca *identity.DevCA, path string) *identity.MemorySource {
	t.Helper()
	src, err := ca.NewSource(spiffeid.RequireFromPath(ca.TrustDomain(), path), identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// newEndpoint starts an Endpoint on a loopback port and closes it when the
// test ends.
func newEndpoint(t testing.TB, addr string, cfg Config) *Endpoint {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = newTestLogger(t)
	}
	e, err := New(addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return e
}

// echo is a Handler that sends back what it reads, then half-closes.
func echo(_ context.Context, _ Header, s *Stream) {
	if _, err := io.Copy(s, s); err != nil {
		return
	}
	_ = s.CloseWrite()
}

// data returns a deterministic pseudo-random reader of n bytes.
func data(seed uint64, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)}), n)
}

func digest(t testing.TB, r io.Reader) [32]byte {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Errorf("reading: %v", err)
	}
	return [32]byte(h.Sum(nil))
}

// sendAndClose writes n bytes of seed's data to s, then half-closes.
func sendAndClose(s *Stream, seed uint64, n int64) error {
	if _, err := io.Copy(s, data(seed, n)); err != nil {
		return err
	}
	return s.CloseWrite()
}

// pair is a server gateway and a client gateway of trust domain a.test.
type pair struct {
	caA          *identity.DevCA
	server       *Endpoint
	client       *Endpoint
	clientID     string
	serverID     string
	serverConfig Config // to restart the server
}

// newPair starts a server gateway (spiffe://a.test/gw/server) running
// handler and a dial-only client gateway (spiffe://a.test/gw/client)
// dialing over tr.
func newPair(t testing.TB, tr Transport, handler Handler) *pair {
	t.Helper()
	p := &pair{caA: newCA(t, "a.test")}
	p.serverConfig = Config{Source: newSource(t, p.caA, "/gw/server"), Handler: handler}
	p.server = newEndpoint(t, "127.0.0.1:0", p.serverConfig)
	p.client = newEndpoint(t, "127.0.0.1:0", Config{Source: newSource(t, p.caA, "/gw/client"), Transport: tr})
	p.clientID, p.serverID = "spiffe://a.test/gw/client", "spiffe://a.test/gw/server"
	return p
}

// forTransports runs f as a subtest for each transport a link can use.
func forTransports(t *testing.T, f func(t *testing.T, tr Transport)) {
	for _, tr := range []Transport{TransportQUIC, TransportTCP} {
		t.Run(string(tr), func(t *testing.T) { f(t, tr) })
	}
}

func (p *pair) addr() string { return p.server.Addr().String() }

func key(host string) Header {
	return Header{Key: sni.Key{Host: host, Port: 9080, Subset: "v1"}, Hops: 1, ClientAddr: "192.0.2.7:40000"}
}

// TestStreamHalfClose carries several MB each way, byte-exact, with each
// side half-closing first in turn, and checks what the handler sees.
func TestStreamHalfClose(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		const size = 6 << 20

		type seen struct {
			h      Header
			peerID string
			got    [32]byte
		}
		seenc := make(chan seen, 2)
		p := newPair(t, tr, func(ctx context.Context, h Header, s *Stream) {
			switch h.Key.Host {
			case "client-first.test":
				// Read everything (the client closes first), then answer.
				got := digest(t, s)
				seenc <- seen{h, s.PeerID(), got}
				if err := sendAndClose(s, 2, size); err != nil {
					t.Errorf("server send: %v", err)
				}
			case "server-first.test":
				// Send everything and half-close, then read the upload.
				if err := sendAndClose(s, 3, size); err != nil {
					t.Errorf("server send: %v", err)
				}
				seenc <- seen{h, s.PeerID(), digest(t, s)}
			}
		})

		// Client half-closes first; the server still answers afterwards.
		s, err := p.client.Dial(ctx, p.addr(), key("client-first.test"))
		if err != nil {
			t.Fatal(err)
		}
		if err := sendAndClose(s, 1, size); err != nil {
			t.Fatal(err)
		}
		if got, want := digest(t, s), digest(t, data(2, size)); got != want {
			t.Error("client-first: server's bytes differ")
		}
		sv := <-seenc
		if sv.got != digest(t, data(1, size)) {
			t.Error("client-first: client's bytes differ at the server")
		}
		if want := key("client-first.test"); sv.h != want {
			t.Errorf("handler header %+v, want %+v", sv.h, want)
		}
		if sv.peerID != p.clientID {
			t.Errorf("handler PeerID %q, want %q", sv.peerID, p.clientID)
		}
		if s.PeerID() != p.serverID {
			t.Errorf("client PeerID %q, want %q", s.PeerID(), p.serverID)
		}
		_ = s.Close()

		// Server half-closes first; the client can still send afterwards.
		s, err = p.client.Dial(ctx, p.addr(), key("server-first.test"))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := digest(t, s), digest(t, data(3, size)); got != want {
			t.Error("server-first: server's bytes differ")
		}
		if err := sendAndClose(s, 4, size); err != nil {
			t.Fatal(err)
		}
		if sv := <-seenc; sv.got != digest(t, data(4, size)) {
			t.Error("server-first: client's bytes differ at the server")
		}
		_ = s.Close()

		st := peerStats1(t, p.client.Stats(), Outbound)
		if st.StreamsTotal != 2 || st.Dials != 1 || st.BytesSent < 2*size || st.BytesReceived < 2*size || !st.Connected || st.RTT <= 0 {
			t.Errorf("client stats %+v", st)
		}
	})
}

// TestReset checks that an abort on one side is an ErrReset on the other.
func TestReset(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		p := newPair(t, tr, func(_ context.Context, _ Header, s *Stream) {
			var b [1]byte
			if _, err := io.ReadFull(s, b[:]); err != nil {
				t.Errorf("server read: %v", err)
			}
			s.Abort()
		})
		s, err := p.client.Dial(ctx, p.addr(), key("reset.test"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(s); !errors.Is(err, ErrReset) {
			t.Errorf("read after peer's Abort: %v, want ErrReset", err)
		}
	})
}

func peerStats1(t *testing.T, st Stats, dir Direction) PeerStats {
	t.Helper()
	var found []PeerStats
	for _, p := range st.Peers {
		if p.Direction == dir {
			found = append(found, p)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s peer, have %+v", dir, st.Peers)
	}
	return found[0]
}

// TestUnauthorizedClient: a gateway of another trust domain completes its
// QUIC dial (TLS 1.3), but the server refuses its certificate; Dial must
// fail with ErrRejected and count the reason on both sides.
func TestUnauthorizedClient(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		p := newPair(t, tr, func(context.Context, Header, *Stream) { t.Error("handler ran for a rejected peer") })
		caB := newCA(t, "b.test")
		srcB := newSource(t, caB, "/gw/intruder")
		// The intruder trusts the server, so only the server can refuse.
		srcB.SetBundles(caB.Bundle(), p.caA.Bundle())
		az, err := identity.NewAuthorizer(identity.Policy{TrustDomains: []string{"a.test"}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		intruder := newEndpoint(t, "127.0.0.1:0", Config{Source: srcB, Authorizer: az, Transport: tr})

		_, err = intruder.Dial(ctx, p.addr(), key("x.test"))
		if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "refused our certificate") {
			t.Fatalf("Dial error %v, want ErrRejected for our certificate", err)
		}
		t.Logf("Dial error: %v", err)
		if st := peerStats1(t, intruder.Stats(), Outbound); st.HandshakeFailures[ReasonRejectedByPeer] != 1 || st.Connected {
			t.Errorf("intruder stats %+v", st)
		}
		if n := p.server.Stats().InboundRejections[string(identity.ReasonUnknownTrustDomain)]; n != 1 {
			t.Errorf("server InboundRejections %v", p.server.Stats().InboundRejections)
		}
	})
}

// TestConcurrentStreams runs 1,000 concurrent streams over one link.
func TestConcurrentStreams(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		p := newPair(t, tr, echo)
		const streams, size = 1000, 32 << 10
		var wg sync.WaitGroup
		errs := make(chan error, streams)
		for i := range streams {
			wg.Go(func() {
				s, err := p.client.Dial(ctx, p.addr(), key(fmt.Sprintf("s%d.test", i)))
				if err != nil {
					errs <- err
					return
				}
				defer s.Close()
				var werr error
				var wgw sync.WaitGroup
				wgw.Go(func() { werr = sendAndClose(s, uint64(i), size) })
				got, err := io.ReadAll(s)
				wgw.Wait()
				want, _ := io.ReadAll(data(uint64(i), size))
				switch {
				case werr != nil:
					errs <- fmt.Errorf("stream %d write: %w", i, werr)
				case err != nil:
					errs <- fmt.Errorf("stream %d read: %w", i, err)
				case !bytes.Equal(got, want):
					errs <- fmt.Errorf("stream %d: %d bytes differ from the %d sent", i, len(got), len(want))
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		st := peerStats1(t, p.client.Stats(), Outbound)
		if st.Dials != 1 || st.StreamsTotal != streams || st.StreamsOpen != 0 {
			t.Errorf("client stats %+v, want 1 dial, %d streams, none open", st, streams)
		}
		if in := peerStats1(t, p.server.Stats(), Inbound); in.StreamsTotal != streams {
			t.Errorf("server stats %+v", in)
		}
	})
}

// TestPoolRedial: streams share one link; after the server restarts on the
// same address, the next Dial sets up a new link.
func TestPoolRedial(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		p := newPair(t, tr, echo)
		addr := p.addr()
		roundTrip := func(s *Stream, seed uint64) {
			t.Helper()
			if err := sendAndClose(s, seed, 100); err != nil {
				t.Fatal(err)
			}
			if digest(t, s) != digest(t, data(seed, 100)) {
				t.Error("echo differs")
			}
			_ = s.Close()
		}
		for i := range 10 {
			s, err := p.client.Dial(ctx, addr, key("pool.test"))
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(s, uint64(i))
		}
		if st := peerStats1(t, p.client.Stats(), Outbound); st.Dials != 1 || st.StreamsTotal != 10 {
			t.Fatalf("client stats %+v, want 10 streams on 1 link", st)
		}

		// A stream left open sees the link close when the server goes away.
		held, err := p.client.Dial(ctx, addr, key("held.test"))
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		if _, err := held.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := p.server.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(held); err == nil {
			t.Fatal("stream survived its server")
		}
		// The stream can fail a moment before quic-go marks its
		// connection closed.
		await.True(t, testTimeout, "the client to see its link down", func() bool {
			return !peerStats1(t, p.client.Stats(), Outbound).Connected
		})

		newEndpoint(t, addr, p.serverConfig)
		s, err := p.client.Dial(ctx, addr, key("pool.test"))
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(s, 99)
		if st := peerStats1(t, p.client.Stats(), Outbound); st.Dials != 2 || !st.Connected {
			t.Errorf("client stats %+v, want 2 dials", st)
		}
	})
}

// checkEcho writes b on s and checks that the echo server returns it.
func checkEcho(t *testing.T, s *Stream, b byte) {
	t.Helper()
	if _, err := s.Write([]byte{b}); err != nil {
		t.Fatalf("write: %v", err)
	}
	var got [1]byte
	if _, err := io.ReadFull(s, got[:]); err != nil || got[0] != b {
		t.Fatalf("echo: %q, %v; want %q", got[:], err, b)
	}
}

// inboundLinks counts e's inbound links.
func inboundLinks(e *Endpoint) int {
	n := 0
	for _, p := range e.Stats().Peers {
		if p.Direction == Inbound {
			n++
		}
	}
	return n
}

// TestRetireLink: a retired link takes no new streams, keeps serving the
// ones it has, and closes when the last one ends.
func TestRetireLink(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		p := newPair(t, tr, echo)
		if p.client.RetireLink(p.addr(), "no link yet") {
			t.Error("RetireLink reported a link before any was dialed")
		}
		held, err := p.client.Dial(ctx, p.addr(), key("held.test"))
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		checkEcho(t, held, 'a')
		if !p.client.RetireLink(p.addr(), "peer declared dead") {
			t.Fatal("RetireLink found no link to retire")
		}

		s, err := p.client.Dial(ctx, p.addr(), key("new.test"))
		if err != nil {
			t.Fatal(err)
		}
		checkEcho(t, s, 'b')
		s.Close()
		checkEcho(t, held, 'c')
		if st := peerStats1(t, p.client.Stats(), Outbound); st.Dials != 2 {
			t.Errorf("client stats %+v, want a second link for new streams", st)
		}
		if n := inboundLinks(p.server); n != 2 {
			t.Errorf("server has %d inbound links while the retired one has a stream, want 2", n)
		}
		held.Close()
		await.True(t, testTimeout, "the retired link to close after its last stream", func() bool {
			return inboundLinks(p.server) == 1
		})
	})
}

// TestDialClosedEndpoint: Dial on a closed Endpoint fails at once.
func TestDialClosedEndpoint(t *testing.T) {
	leakcheck.Check(t)
	ca := newCA(t, "a.test")
	e, err := New("127.0.0.1:0", Config{Source: newSource(t, ca, "/gw/a")})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Dial(t.Context(), "127.0.0.1:1", key("x.test")); !errors.Is(err, ErrClosed) {
		t.Errorf("Dial error %v, want ErrClosed", err)
	}
}

// TestUntrustedServer: the dialing side refuses a server it cannot verify
// and counts the identity reason; that is not a rejection by the peer.
func TestUntrustedServer(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		caB := newCA(t, "b.test")
		server := newEndpoint(t, "127.0.0.1:0", Config{Source: newSource(t, caB, "/gw/server"), Handler: echo})
		client := newEndpoint(t, "127.0.0.1:0", Config{Source: newSource(t, newCA(t, "a.test"), "/gw/client"), Transport: tr})
		_, err := client.Dial(ctx, server.Addr().String(), key("x.test"))
		var rej *identity.RejectError
		if !errors.As(err, &rej) || rej.Reason != identity.ReasonUnknownTrustDomain || errors.Is(err, ErrRejected) {
			t.Fatalf("Dial error %v, want our own unknown_trust_domain rejection", err)
		}
		st := peerStats1(t, client.Stats(), Outbound)
		if st.HandshakeFailures[string(identity.ReasonUnknownTrustDomain)] != 1 {
			t.Errorf("client stats %+v", st)
		}
	})
}

// TestBadHeader: a stream whose header is malformed is reset without
// reaching the handler.
func TestBadHeader(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		p := newPair(t, tr, func(context.Context, Header, *Stream) { t.Error("handler ran for a bad header") })
		l, err := p.client.link(ctx, p.addr())
		if err != nil {
			t.Fatal(err)
		}
		rs, err := l.conn.openStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		s := newStream(rs, l.conn, l.stats, l.peer)
		defer s.Close()
		if _, err := s.Write([]byte{9, 0, 0, 80, 1, 0, 0, 'h'}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(s); !errors.Is(err, ErrReset) || !strings.Contains(err.Error(), "code 2") {
			t.Errorf("read error %v, want ErrReset with code 2", err)
		}
	})
}
