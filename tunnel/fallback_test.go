package tunnel

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
)

// firewall stands between a client and a server endpoint on its own
// address: it relays TCP connections and UDP datagrams to the server,
// drops UDP while blocked, as a firewall that blocks UDP does, and holds
// TCP bytes while paused, as a path that stopped delivering does. (The e2e
// suite blocks UDP with nftables between network namespaces; this keeps the
// unit test free of root.)
type firewall struct {
	blocked atomic.Bool
	udp     *net.UDPConn
	up      *net.UDPConn // connected to the server's UDP port
	tcp     net.Listener
	client  atomic.Pointer[net.UDPAddr]
	wg      sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn    // relayed TCP connections, both sides
	open  chan struct{} // closed while TCP passes
	done  chan struct{} // closed by close
}

// pauseTCP holds (true) or lets through (false) the relayed TCP bytes.
func (fw *firewall) pauseTCP(paused bool) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	select {
	case <-fw.open:
		if paused {
			fw.open = make(chan struct{})
		}
	default:
		if !paused {
			close(fw.open)
		}
	}
}

// waitTCP waits until TCP passes; false means the firewall is closing.
func (fw *firewall) waitTCP() bool {
	fw.mu.Lock()
	open := fw.open
	fw.mu.Unlock()
	select {
	case <-open:
		return true
	case <-fw.done:
		return false
	}
}

func newFirewall(t *testing.T, server string) *firewall {
	t.Helper()
	fw := &firewall{open: make(chan struct{}), done: make(chan struct{})}
	close(fw.open)
	var err error
	// The Endpoint's own listen: it picks a port free on both UDP and TCP.
	if fw.udp, fw.tcp, err = listen("127.0.0.1:0", true); err != nil {
		t.Fatal(err)
	}
	serverAddr, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	if fw.up, err = net.DialUDP("udp", nil, serverAddr); err != nil {
		t.Fatal(err)
	}
	fw.wg.Add(3)
	go fw.relayUDPIn()
	go fw.relayUDPOut()
	go fw.relayTCP(server)
	t.Cleanup(fw.close)
	return fw
}

func (fw *firewall) addr() string { return fw.udp.LocalAddr().String() }

func (fw *firewall) relayUDPIn() {
	defer fw.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := fw.udp.ReadFromUDP(buf)
		if err != nil {
			return
		}
		if fw.blocked.Load() {
			continue
		}
		fw.client.Store(from)
		_, _ = fw.up.Write(buf[:n])
	}
}

func (fw *firewall) relayUDPOut() {
	defer fw.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := fw.up.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ICMP errors from a closed port
		}
		if to := fw.client.Load(); to != nil && !fw.blocked.Load() {
			_, _ = fw.udp.WriteToUDP(buf[:n], to)
		}
	}
}

func (fw *firewall) relayTCP(server string) {
	defer fw.wg.Done()
	for {
		c, err := fw.tcp.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", server)
		if err != nil {
			c.Close()
			continue
		}
		fw.mu.Lock()
		fw.conns = append(fw.conns, c, up)
		fw.mu.Unlock()
		fw.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer fw.wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				if n > 0 {
					if !fw.waitTCP() {
						return
					}
					if _, err := dst.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					_ = dst.(*net.TCPConn).CloseWrite()
					return
				}
			}
		}
		go pipe(up, c)
		go pipe(c, up)
	}
}

func (fw *firewall) close() {
	close(fw.done)
	fw.udp.Close()
	fw.up.Close()
	fw.tcp.Close()
	fw.mu.Lock()
	for _, c := range fw.conns {
		c.Close()
	}
	fw.mu.Unlock()
	fw.wg.Wait()
}

// TestFallback: with UDP to the peer blocked, an auto link comes up over
// TCP and carries streams byte-exact; once UDP passes again, new streams
// move to QUIC and the TCP link closes when its last stream ends.
func TestFallback(t *testing.T) {
	leakcheck.Check(t)
	ctx := testContext(t)
	p := newPair(t, TransportQUIC, echo)
	fw := newFirewall(t, p.addr())
	fw.blocked.Store(true)
	client := newEndpoint(t, "127.0.0.1:0", Config{
		Source:            newSource(t, p.caA, "/gw/auto"),
		FallbackAfter:     300 * time.Millisecond,
		QUICRetryInterval: 100 * time.Millisecond,
	})
	roundTrip := func(s *Stream, seed uint64) {
		t.Helper()
		// Send while reading: the echo comes back before the upload ends,
		// and would otherwise fill the receive window and stall both.
		sent := make(chan error, 1)
		go func() { sent <- sendAndClose(s, seed, 1<<20) }()
		if digest(t, s) != digest(t, data(seed, 1<<20)) {
			t.Error("echo differs")
		}
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
	}

	held := dialOn(t, ctx, client, fw.addr(), "fallback.test", TransportTCP)
	st := peerStats1(t, client.Stats(), Outbound)
	if st.Transport != TransportTCP || st.Fallbacks != 1 || st.HandshakeFailures[ReasonTimeout] != 0 {
		t.Errorf("client stats %+v, want one fallback link on tcp", st)
	}

	// Streams keep flowing over TCP while UDP stays blocked, and QUIC
	// attempts made meanwhile fail in the background.
	for i := range 3 {
		s, err := client.Dial(ctx, fw.addr(), key("fallback.test"))
		if err != nil {
			t.Fatal(err)
		}
		if s.Transport() != TransportTCP {
			t.Errorf("stream %d on %s, want tcp", i, s.Transport())
		}
		roundTrip(s, uint64(i))
		s.Close()
	}

	fw.blocked.Store(false)
	var moved *Stream
	await.True(t, testTimeout, "streams moving back to QUIC", func() bool {
		s, err := client.Dial(ctx, fw.addr(), key("fallback.test"))
		if err != nil {
			t.Fatal(err)
		}
		if s.Transport() == TransportQUIC {
			moved = s
			return true
		}
		roundTrip(s, 7)
		s.Close()
		return false
	})
	roundTrip(moved, 8)
	moved.Close()

	// The stream held on the TCP link is still served; when it ends, the
	// TCP link is retired.
	roundTrip(held, 9)
	held.Close()
	await.True(t, testTimeout, "the TCP link to retire", func() bool {
		for _, ps := range p.server.Stats().Peers {
			if ps.Transport == TransportTCP {
				return false
			}
		}
		return true
	})
	if st := peerStats1(t, client.Stats(), Outbound); st.Transport != TransportQUIC || st.Dials != 2 {
		t.Errorf("client stats %+v, want back on quic after 2 links", st)
	}
}

// TestUDPBlockedMidLink: when UDP stops passing under an established QUIC
// link, the link hears nothing and closes after MaxIdleTimeout, so that
// its open streams fail rather than hang and the next Dial falls back to
// TCP.
func TestUDPBlockedMidLink(t *testing.T) {
	leakcheck.Check(t)
	ctx := testContext(t)
	p := newPair(t, TransportQUIC, echo)
	fw := newFirewall(t, p.addr())
	client := newEndpoint(t, "127.0.0.1:0", Config{
		Source:         newSource(t, p.caA, "/gw/auto"),
		MaxIdleTimeout: time.Second,
		FallbackAfter:  300 * time.Millisecond,
	})
	held := dialOn(t, ctx, client, fw.addr(), "blocked.test", TransportQUIC)
	checkEcho(t, held, 'a')

	fw.blocked.Store(true)
	// The deadline only keeps a regression from hanging the test.
	_ = held.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := held.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on a link whose UDP is blocked: %v, want the link's idle timeout", err)
	}
	checkEcho(t, dialOn(t, ctx, client, fw.addr(), "blocked.test", TransportTCP), 'b')
	if st := peerStats1(t, client.Stats(), Outbound); st.Dials != 2 || st.Fallbacks != 1 {
		t.Errorf("client stats %+v, want a second link, on the fallback", st)
	}
}

// dialOn opens a stream to addr for host and fails the test unless it
// runs over want. The test closes it at the end.
func dialOn(t *testing.T, ctx context.Context, e *Endpoint, addr, host string, want Transport) *Stream {
	t.Helper()
	s, err := e.Dial(ctx, addr, key(host))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if s.Transport() != want {
		t.Fatalf("stream for %s on %s, want %s", host, s.Transport(), want)
	}
	return s
}

// linkBehindFirewall starts an echo server behind a firewall and a client
// dialing over tr with 100 ms keep-alives, an idle timeout too long to
// matter in a test, and (for TransportAuto) a 300 ms QUIC attempt; it
// returns them once a link is up and has echoed.
func linkBehindFirewall(t *testing.T, ctx context.Context, tr Transport) (*firewall, *Endpoint) {
	t.Helper()
	p := newPair(t, TransportQUIC, echo)
	fw := newFirewall(t, p.addr())
	client := newEndpoint(t, "127.0.0.1:0", Config{
		Source:          newSource(t, p.caA, "/gw/watched"),
		Transport:       tr,
		KeepAlivePeriod: 100 * time.Millisecond,
		FallbackAfter:   300 * time.Millisecond,
		MaxIdleTimeout:  2 * testTimeout,
	})
	s, err := client.Dial(ctx, fw.addr(), key("silent.test"))
	if err != nil {
		t.Fatal(err)
	}
	checkEcho(t, s, 'a')
	s.Close()
	return fw, client
}

// TestSilentLink: once a link has heard nothing from its peer for two
// keep-alive periods, Dial fails at once with ErrSilent, so the gateway
// can try another peer, instead of opening a stream nobody may answer;
// when the path works again, streams flow again (on the same link, heard
// again, or on the replacement set up meanwhile).
func TestSilentLink(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		leakcheck.Check(t)
		ctx := testContext(t)
		fw, client := linkBehindFirewall(t, ctx, tr)

		cut := func(on bool) {
			if tr == TransportQUIC {
				fw.blocked.Store(on)
			} else {
				fw.pauseTCP(on)
			}
		}
		cut(true)
		var silentErr error
		await.True(t, testTimeout, "Dial to fail with ErrSilent", func() bool {
			s, err := client.Dial(ctx, fw.addr(), key("silent.test"))
			if err == nil {
				s.Close()
				return false
			}
			silentErr = err
			return true
		})
		if !errors.Is(silentErr, ErrSilent) {
			t.Fatalf("Dial on a silent link: %v, want ErrSilent", silentErr)
		}
		if st := peerStats1(t, client.Stats(), Outbound); st.Silences != 1 || !st.Connected {
			t.Errorf("client stats %+v, want one silence on a link still up", st)
		}

		cut(false)
		await.True(t, testTimeout, "streams to flow again", func() bool {
			s, err := client.Dial(ctx, fw.addr(), key("silent.test"))
			if err != nil {
				return false
			}
			defer s.Close()
			checkEcho(t, s, 'b')
			return true
		})
	})
}

// TestSilentLinkReplaced: with TransportAuto, a QUIC link that turns silent
// because UDP stopped passing is replaced in the background by a link on
// the TCP fallback, long before its idle timeout would have closed it,
// even while nobody dials.
func TestSilentLinkReplaced(t *testing.T) {
	leakcheck.Check(t)
	ctx := testContext(t)
	fw, client := linkBehindFirewall(t, ctx, TransportAuto)

	// Nobody dials meanwhile: the link is watched, not only looked at
	// when used.
	fw.blocked.Store(true)
	await.True(t, testTimeout, "the link to be replaced on the TCP fallback", func() bool {
		st := peerStats1(t, client.Stats(), Outbound)
		return st.Transport == TransportTCP && st.Connected
	})
	if st := peerStats1(t, client.Stats(), Outbound); st.Dials != 2 || st.Fallbacks != 1 || st.Silences != 1 {
		t.Errorf("client stats %+v, want one silence and a second link, on the fallback", st)
	}
	checkEcho(t, dialOn(t, ctx, client, fw.addr(), "silent.test", TransportTCP), 'b')
}

// TestIdleFallbackMovesBack: a link on the TCP fallback that nobody uses
// still tries QUIC on schedule and moves back once UDP passes again.
func TestIdleFallbackMovesBack(t *testing.T) {
	leakcheck.Check(t)
	ctx := testContext(t)
	p := newPair(t, TransportQUIC, echo)
	fw := newFirewall(t, p.addr())
	fw.blocked.Store(true)
	client := newEndpoint(t, "127.0.0.1:0", Config{
		Source:            newSource(t, p.caA, "/gw/idle"),
		FallbackAfter:     300 * time.Millisecond,
		QUICRetryInterval: 100 * time.Millisecond,
		KeepAlivePeriod:   100 * time.Millisecond,
	})
	s := dialOn(t, ctx, client, fw.addr(), "idle.test", TransportTCP)
	checkEcho(t, s, 'a')
	s.Close()

	fw.blocked.Store(false)
	await.True(t, testTimeout, "the idle link to move back to QUIC", func() bool {
		return peerStats1(t, client.Stats(), Outbound).Transport == TransportQUIC
	})
}
