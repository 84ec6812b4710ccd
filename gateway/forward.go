package gateway

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// errIdle ends a connection on which nothing moved for the idle timeout.
var errIdle = errors.New("idle timeout")

// forward copies bytes both ways between client and upstream until both
// directions end, then closes both. Each direction is an io.Copy between
// two *net.TCPConn, which the runtime turns into splice(2): bytes never
// enter user space. A direction that reads EOF half-closes its destination;
// an error in either direction resets both connections, so a reset on one
// side is seen as a reset on the other.
func (g *Gateway) forward(client, up *net.TCPConn) {
	f := flow{g: g}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f.pipe(client, up, &f.downIdle, &f.upIdle, g.m.BytesDown)
	}()
	f.pipe(up, client, &f.upIdle, &f.downIdle, g.m.BytesUp)
	wg.Wait()
	if f.failed.Load() {
		client.SetLinger(0)
		up.SetLinger(0)
	}
	client.Close()
	up.Close()
}

// flow is the shared state of a connection's two directions.
type flow struct {
	g                *Gateway
	upIdle, downIdle atomic.Bool // direction saw a full idle period, or ended
	ended            atomic.Bool // abort ran: both directions stop
	failed           atomic.Bool // ended by an error: reset both sides
}

type counter interface{ Add(uint64) }

// pipe copies src to dst. With an idle timeout it copies in segments bounded
// by deadlines: a segment that moved bytes starts the next; one that moved
// nothing marks this direction idle, and the connection ends when the other
// direction is idle too.
func (f *flow) pipe(dst, src *net.TCPConn, mine, other *atomic.Bool, bytes counter) {
	idle := f.g.cfg.IdleTimeout
	for {
		if idle > 0 {
			d := time.Now().Add(idle)
			src.SetReadDeadline(d)
			dst.SetWriteDeadline(d)
		}
		n, err := io.Copy(dst, src)
		bytes.Add(uint64(n))
		if f.ended.Load() {
			return
		}
		switch {
		case err == nil:
			mine.Store(true)
			dst.CloseWrite()
			return
		case idle > 0 && errors.Is(err, os.ErrDeadlineExceeded):
			if n > 0 {
				mine.Store(false)
				continue
			}
			mine.Store(true)
			if !other.Load() {
				continue
			}
			f.abort(dst, src, errIdle)
			return
		default:
			f.abort(dst, src, err)
			return
		}
	}
}

// abort ends both directions at once: closing unblocks the other
// direction's copy.
func (f *flow) abort(dst, src *net.TCPConn, err error) {
	if !f.ended.CompareAndSwap(false, true) {
		return
	}
	if err == errIdle {
		f.g.m.IdleClosed.Inc()
	} else {
		f.failed.Store(true)
	}
	// Unblock the other direction without closing the fds under it.
	past := time.Unix(1, 0)
	dst.SetDeadline(past)
	src.SetDeadline(past)
}
