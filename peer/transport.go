package peer

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// errBlocked is what a dial to an address blocked by a test's cut returns.
var errBlocked = errors.New("peer: address blocked (test partition)")

// countingTransport wraps memberlist's NetTransport to count every gossip
// byte in and out, UDP and TCP, memberlist's own traffic included. Its
// dials are cancelled by Shutdown, so a join to an unreachable address
// (a reconnect during a partition) does not hold up Shutdown for
// memberlist's TCPTimeout.
type countingTransport struct {
	inner   *memberlist.NetTransport
	in, out *atomic.Uint64
	dialCtx context.Context
	cancel  context.CancelFunc
	// block, set by tests only, emulates a network cut: packets to
	// addresses it reports are dropped and dials to them fail.
	block     atomic.Pointer[func(addr string) bool]
	packetCh  chan *memberlist.Packet
	streamCh  chan net.Conn
	done      chan struct{} // closed first by Shutdown: drop what arrives
	innerDone chan struct{} // closed when inner has shut down: stop draining
	stopOnce  sync.Once
	wg        sync.WaitGroup
	// sendMu orders packet sends before Shutdown closes the socket:
	// memberlist shuts its transport down before it stops its gossip and
	// probe timers (Memberlist.Shutdown), so a tick in flight would write
	// to the closed socket, and memberlist log an error, on a clean
	// shutdown. Once closed, packets are dropped, as those of a node that
	// is gone.
	sendMu sync.RWMutex
	closed bool
}

var _ memberlist.NodeAwareTransport = (*countingTransport)(nil)

func newCountingTransport(inner *memberlist.NetTransport, in, out *atomic.Uint64) *countingTransport {
	ctx, cancel := context.WithCancel(context.Background())
	t := &countingTransport{
		inner:     inner,
		dialCtx:   ctx,
		cancel:    cancel,
		in:        in,
		out:       out,
		packetCh:  make(chan *memberlist.Packet),
		streamCh:  make(chan net.Conn),
		done:      make(chan struct{}),
		innerDone: make(chan struct{}),
	}
	t.wg.Add(2)
	go t.forwardPackets()
	go t.forwardStreams()
	return t
}

// The forwarders keep draining the inner transport until it has shut
// down, or its listeners would block forever handing over a packet or a
// connection nobody takes.

func (t *countingTransport) forwardPackets() {
	defer t.wg.Done()
	for {
		select {
		case p := <-t.inner.PacketCh():
			t.in.Add(uint64(len(p.Buf)))
			select {
			case t.packetCh <- p:
			case <-t.done: // shutting down: drop
			}
		case <-t.innerDone:
			return
		}
	}
}

func (t *countingTransport) forwardStreams() {
	defer t.wg.Done()
	for {
		select {
		case c := <-t.inner.StreamCh():
			select {
			case t.streamCh <- &countingConn{Conn: c, t: t}:
			case <-t.done: // shutting down: refuse
				c.Close()
			}
		case <-t.innerDone:
			return
		}
	}
}

func (t *countingTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

// setBlock installs (nil: lifts) a test's network cut: outgoing packets
// to addresses f reports are dropped, dials to them fail. Only outgoing
// traffic is filtered (a TCP peer's source port says nothing of its gossip
// address), so a cut is symmetric when both sides install one.
func (t *countingTransport) setBlock(f func(addr string) bool) {
	if f == nil {
		t.block.Store(nil)
		return
	}
	t.block.Store(&f)
}

func (t *countingTransport) blocked(addr string) bool {
	f := t.block.Load()
	return f != nil && (*f)(addr)
}

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress sends a packet; after Shutdown it drops it, without an
// error (see sendMu).
func (t *countingTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.blocked(a.Addr) {
		return time.Now(), nil // lost on the way, as on a cut link
	}
	t.sendMu.RLock()
	defer t.sendMu.RUnlock()
	if t.closed {
		return time.Now(), nil
	}
	t.out.Add(uint64(len(b)))
	return t.inner.WriteToAddress(b, a)
}

func (t *countingTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// DialTimeout dials as NetTransport does, but cancelled by Shutdown.
func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.blocked(addr) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errBlocked}
	}
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(t.dialCtx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, t: t}, nil
}

func (t *countingTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

func (t *countingTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown stops sending, the forwarders and the inner transport, and
// waits for the forwarders and the sends in flight.
func (t *countingTransport) Shutdown() error {
	var err error
	t.stopOnce.Do(func() {
		t.sendMu.Lock()
		t.closed = true
		t.sendMu.Unlock()
		t.cancel()
		close(t.done)
		err = t.inner.Shutdown()
		close(t.innerDone)
		t.wg.Wait()
	})
	return err
}

// countingConn counts a stream's bytes into its transport's counters.
type countingConn struct {
	net.Conn
	t *countingTransport
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.t.in.Add(uint64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.t.out.Add(uint64(n))
	return n, err
}
