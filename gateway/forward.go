package gateway

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// errIdle ends a connection on which nothing moved for the idle timeout.
var errIdle = errors.New("idle timeout")

// flow is one client connection and, once dialed, its upstream.
type flow struct {
	g      *Gateway
	client *net.TCPConn
	up     atomic.Pointer[net.TCPConn]
	// remote is the tunnel stream of a connection carried to another
	// network, set instead of up.
	remote atomic.Pointer[HalfConn]
	// upstream is the endpoint's shared state, set before forwarding.
	upstream *upstream
	running  atomic.Int32 // directions still copying
	ended    atomic.Bool  // both directions must stop
	failed   atomic.Bool  // ended by an error: reset both sides
	toUp     direction    // client to upstream
	toDown   direction    // upstream to client
}

// direction is one half of a flow. Its fields are reused for every chunk
// so that forwarding allocates nothing.
type direction struct {
	idle  atomic.Bool // saw a whole idle period without bytes, or ended
	pool  *sync.Pool  // of *[]byte chunk buffers, shared by the gateway
	src   syscall.RawConn
	ready func(fd uintptr) bool // d.poll, bound once
	buf   *[]byte               // chunk read by poll
	n     int                   // bytes in buf; 0 at EOF
	err   error                 // socket error seen by poll
	lr    io.LimitedReader
}

// forward copies bytes both ways between the client and upstream, one
// goroutine per direction, and returns at once; the direction that ends
// last closes both sockets and releases the flow. Fresh goroutines start
// with small stacks, where the caller's grew while dialing: an idle
// connection costs less. A direction that reads EOF half-closes its
// destination; an error in either direction resets both connections, so a
// reset on one side is seen as a reset on the other.
func (f *flow) forward(up *net.TCPConn) {
	f.running.Store(2)
	go f.run(f.client, up, &f.toDown, &f.toUp, f.g.m.BytesDown)
	go f.run(up, f.client, &f.toUp, &f.toDown, f.g.m.BytesUp)
}

func (f *flow) run(dst, src *net.TCPConn, d, other *direction, bytes counter) {
	f.pipe(dst, src, d, other, bytes)
	if f.running.Add(-1) > 0 {
		return
	}
	if f.failed.Load() {
		dst.SetLinger(0)
		src.SetLinger(0)
	}
	dst.Close()
	src.Close()
	f.g.release(f)
}

type counter interface{ Add(uint64) }

// pipe copies src to dst. With an idle timeout, deadlines bound the wait:
// a period in which bytes moved arms the next one; a period without bytes
// marks this direction idle, and the connection ends once the other
// direction is idle too.
func (f *flow) pipe(dst, src *net.TCPConn, d, other *direction, bytes counter) {
	rc, err := src.SyscallConn()
	if err != nil {
		f.abort(dst, src, err)
		return
	}
	d.src, d.ready, d.pool = rc, d.poll, &f.g.chunks
	idle := f.g.cfg.IdleTimeout
	var moved int64 // since the deadline was armed
	arm := func() {
		if idle > 0 {
			t := time.Now().Add(idle)
			src.SetReadDeadline(t)
			dst.SetWriteDeadline(t)
		}
		moved = 0
	}
	arm()
	for {
		n, eof, err := d.copyAvailable(dst, src)
		moved += n
		bytes.Add(uint64(n))
		if f.ended.Load() {
			return
		}
		switch {
		case eof:
			d.idle.Store(true)
			dst.CloseWrite()
			return
		case err == nil:
			d.idle.Store(false)
		case idle > 0 && errors.Is(err, os.ErrDeadlineExceeded):
			if moved == 0 {
				d.idle.Store(true)
				if other.idle.Load() {
					f.abort(dst, src, errIdle)
					return
				}
			}
			arm()
		default:
			f.abort(dst, src, err)
			return
		}
	}
}

// copyAvailable waits until src is readable and moves what is there to
// dst. A chunk that fits a buffer is read and written (two system calls, as
// small messages want); a full buffer means a stream, whose backlog is then
// spliced without entering user space. While it waits it holds no buffer and
// no splice pipe: an idle connection costs its two sockets and its
// goroutines, where a plain io.Copy would keep a pipe (two more descriptors
// and kernel buffers) per direction.
func (d *direction) copyAvailable(dst, src *net.TCPConn) (n int64, eof bool, err error) {
	if err := d.src.Read(d.ready); err != nil {
		return 0, false, err
	}
	bp, got, rerr := d.buf, d.n, d.err
	d.buf = nil
	if rerr != nil || got == 0 {
		d.pool.Put(bp)
		if rerr != nil {
			return 0, false, os.NewSyscallError("read", rerr)
		}
		return 0, true, nil
	}
	_, err = dst.Write((*bp)[:got])
	d.pool.Put(bp)
	if err != nil {
		return 0, false, err
	}
	n = int64(got)
	if got < len(*bp) {
		return n, false, nil
	}
	var avail int
	d.src.Control(func(fd uintptr) {
		avail, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	if avail == 0 {
		return n, false, nil
	}
	d.lr.R, d.lr.N = src, int64(avail)
	m, err := io.Copy(dst, &d.lr)
	return n + m, false, err
}

// poll is the RawConn.Read callback: it reads a chunk into a pooled buffer,
// reporting false (keep waiting, buffer returned) until the socket has
// data, EOF or an error.
func (d *direction) poll(fd uintptr) bool {
	bp := d.pool.Get().(*[]byte)
	n, err := unix.Read(int(fd), *bp)
	if err == unix.EAGAIN || err == unix.EINTR {
		d.pool.Put(bp)
		return false
	}
	d.buf, d.n, d.err = bp, max(n, 0), err
	return true
}

// abort ends both directions at once: deadlines in the past unblock the
// other direction's wait without closing the sockets under it.
func (f *flow) abort(dst, src *net.TCPConn, err error) {
	if !f.ended.CompareAndSwap(false, true) {
		return
	}
	if err == errIdle {
		f.g.m.IdleClosed.Inc()
	} else {
		f.failed.Store(true)
	}
	past := time.Unix(1, 0)
	dst.SetDeadline(past)
	src.SetDeadline(past)
}

// cut closes the flow's sockets at once, for a drain that ran out of time.
func (f *flow) cut() {
	f.client.Close()
	if up := f.up.Load(); up != nil {
		up.Close()
	}
	// A relay whose client half-closed waits on the remote side alone.
	if r := f.remote.Load(); r != nil {
		(*r).Close()
	}
}
