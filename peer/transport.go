package peer

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// countingTransport wraps memberlist's NetTransport to count every gossip
// byte in and out, UDP and TCP, memberlist's own traffic included.
type countingTransport struct {
	inner     *memberlist.NetTransport
	in, out   *atomic.Uint64
	packetCh  chan *memberlist.Packet
	streamCh  chan net.Conn
	done      chan struct{} // closed first by Shutdown: drop what arrives
	innerDone chan struct{} // closed when inner has shut down: stop draining
	stopOnce  sync.Once
	wg        sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*countingTransport)(nil)

func newCountingTransport(inner *memberlist.NetTransport, in, out *atomic.Uint64) *countingTransport {
	t := &countingTransport{
		inner:     inner,
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

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	t.out.Add(uint64(len(b)))
	return t.inner.WriteTo(b, addr)
}

func (t *countingTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	t.out.Add(uint64(len(b)))
	return t.inner.WriteToAddress(b, a)
}

func (t *countingTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := t.inner.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, t: t}, nil
}

func (t *countingTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

func (t *countingTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown stops the forwarders and the inner transport and waits for both.
func (t *countingTransport) Shutdown() error {
	var err error
	t.stopOnce.Do(func() {
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
