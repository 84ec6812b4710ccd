package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/sni"
)

// HalfConn is a connection whose sending side can be closed alone, as
// TCP connections and tunnel streams can.
type HalfConn interface {
	net.Conn
	CloseWrite() error
}

// RemoteDialer carries connections to other networks: it opens a
// connection for key through a live gateway of a network that has healthy
// endpoints for it (a tunnel), or fails. The gateway writes the client's
// ClientHello to it first.
type RemoteDialer interface {
	DialRemote(ctx context.Context, key sni.Key, client net.Addr) (HalfConn, error)
}

// remoteDialer boxes a RemoteDialer for an atomic pointer.
type remoteDialer struct{ RemoteDialer }

// SetRemote makes r carry connections whose key has no eligible endpoint
// in this network to another network's gateway ("local" mode: clients
// reach only their own network's gateway). It may be called while the
// gateway serves; nil turns it off.
func (g *Gateway) SetRemote(r RemoteDialer) {
	if r == nil {
		g.remote.Store(nil)
		return
	}
	g.remote.Store(&remoteDialer{r})
}

// ServeTunnel routes a connection that another network's gateway carried
// here, for key, to an eligible endpoint of this network, as if the client
// had connected to this gateway's first AUTO_PASSTHROUGH listener: the
// same host, exportTo, port and subset rules apply. It never forwards to
// another network. It copies bytes both ways until both directions end and
// closes conn.
func (g *Gateway) ServeTunnel(key sni.Key, conn HalfConn) error {
	defer conn.Close()
	g.mu.Lock()
	if g.draining.Load() {
		g.mu.Unlock()
		return g.refuseTunneled(conn, RejectUnavailable, alertInternalError, errors.New("tunnel: gateway is draining"))
	}
	g.wg.Add(1)
	g.tunneled[conn] = struct{}{}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.tunneled, conn)
		g.mu.Unlock()
		g.wg.Done()
	}()
	t := g.table.Load()
	if t == nil || len(t.view.Listeners) == 0 {
		return g.refuseTunneled(conn, RejectNoListener, alertUnrecognizedName,
			errors.New("tunnel: this gateway serves no AUTO_PASSTHROUGH listener"))
	}
	r, err := t.view.Route(0, key)
	if err != nil {
		var re *discovery.RouteError
		errors.As(err, &re)
		return g.refuseTunneled(conn, string(re.Reason), alertUnrecognizedName, fmt.Errorf("tunnel: %w", err))
	}
	if !r.Exported {
		// The dialing gateway should not have sent it (this network's
		// summary does not offer it); this gateway never trusts that.
		return g.refuseTunneled(conn, string(discovery.NotExported), alertUnrecognizedName,
			fmt.Errorf("tunnel: %s: not exported from network %s", key, t.view.Node.Network))
	}
	cl := t.clusters[r]
	if len(cl.members) == 0 {
		return g.refuseTunneled(conn, RejectNoEndpoints, alertHandshakeFailure,
			fmt.Errorf("tunnel: %s: no eligible endpoint in network %s", key, t.view.Node.Network))
	}
	up, u, tried := g.dialCluster(cl, key.SNI())
	if up == nil {
		return g.refuseTunneled(conn, RejectUnavailable, alertInternalError,
			fmt.Errorf("tunnel: %s: %d endpoints failed to connect", key, tried))
	}
	defer u.active.Add(-1)
	g.m.Forwarded.Inc()
	g.relay(conn, up)
	return nil
}

// refuseTunneled answers a connection carried here from another network
// as refuse answers a local client, the alert travelling back through the
// tunnel to the client, and returns err. It half-closes, then waits a
// moment for the far gateway to close its side too, so that closing conn
// (ServeTunnel's job) does not reset the stream before the alert has been
// read there.
func (g *Gateway) refuseTunneled(conn HalfConn, reason string, alert byte, err error) error {
	if !g.answerRefused(conn, reason, alert, "via", "tunnel", "err", err) || conn.CloseWrite() != nil {
		return err
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	var b [512]byte
	for {
		if _, rerr := conn.Read(b[:]); rerr != nil {
			return err
		}
	}
}

// relay copies bytes both ways between the client side a and the upstream
// side b through user space (one of them is not a socket splice can use),
// half-closing each destination at its source's EOF; an error in either
// direction closes both at once.
func (g *Gateway) relay(a, b HalfConn) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	copyHalf := func(dst, src HalfConn, bytes interface{ Add(uint64) }) {
		n, err := g.copyBuffered(dst, src)
		bytes.Add(uint64(n))
		if err != nil {
			abort()
			return
		}
		dst.CloseWrite()
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		copyHalf(a, b, g.m.BytesDown)
	}()
	copyHalf(b, a, g.m.BytesUp)
	wg.Wait()
	abort()
}

// copyBuffered copies src to dst until EOF, as io.Copy does, but with
// pooled buffers sized by what the last read returned: a read that filled
// its buffer says more is waiting, so the next one gets a relayChunkSize
// buffer; otherwise the next read, which is likely to block, gets a small
// hello buffer. An idle connection so holds 4 KiB per direction, not
// io.Copy's 32 KiB, and a busy one reads as much as io.Copy would.
func (g *Gateway) copyBuffered(dst io.Writer, src io.Reader) (int64, error) {
	var total int64
	pool := &g.bufs
	for {
		bp := pool.Get().(*[]byte)
		n, rerr := src.Read(*bp)
		if n > 0 {
			w, werr := dst.Write((*bp)[:n])
			total += int64(w)
			if werr != nil {
				pool.Put(bp)
				return total, werr
			}
		}
		full := n == len(*bp)
		pool.Put(bp)
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
		pool = &g.bufs
		if full {
			pool = &g.relays
		}
	}
}
