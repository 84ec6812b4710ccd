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

// errMaxDuration ends a connection as old as its route's
// MaxConnectionDuration.
var errMaxDuration = errors.New("max connection duration")

// halfConn is a connection whose sending side can be closed alone, as
// TCP connections and tunnel streams can.
type halfConn interface {
	net.Conn
	CloseWrite() error
}

// stream is a tunnel stream as the gateway forwards it (a
// *tunnel.Stream): a halfConn that can also be reset.
type stream interface {
	halfConn
	// Abort resets both directions, the tunnel's TCP RST.
	Abort()
	// Wait waits until a read would not block, holding no buffer, and
	// returns the read's error.
	Wait() error
}

// end is one half-connection of a flow: a TCP socket or a tunnel
// stream, or a raw socket that only an event loop uses (c nil, raw set).
type end struct {
	c   halfConn
	tcp *net.TCPConn // c as a socket; nil for a stream
	raw bool         // fd is a socket of the loop's, outside Go's net
	fd  int
}

func tcpEnd(c *net.TCPConn) end { return end{c: c, tcp: c} }
func streamEnd(s stream) end    { return end{c: s} }
func rawEnd(fd int) end         { return end{raw: true, fd: fd} }

// reset makes the end's close a reset: a TCP RST, or a stream reset.
func (e *end) reset() {
	switch {
	case e.raw:
		rawLingerZero(e.fd)
	case e.tcp != nil:
		e.tcp.SetLinger(0)
	default:
		if s, ok := e.c.(stream); ok {
			s.Abort()
		}
	}
}

// close closes the end, if it is one.
func (e *end) close() {
	switch {
	case e.raw:
		rawClose(e.fd)
	case e.c != nil:
		e.c.Close()
	}
}

// flow is one forwarded connection: the client side (a client of this
// gateway, or a stream another network's gateway carried here) and, once
// dialed, the upstream side (an endpoint of this network, or a stream to
// another network's gateway). Every path runs through the same engine, so
// the idle timeout, the connection limit, resets, half-closes and drain
// hold alike for all of them. A flow between two sockets is pumped by an
// event loop (handover); one with a stream end by forward's goroutines.
type flow struct {
	g      *Gateway
	client end
	// up is set under g.mu once dialed, so that Shutdown's cut sees it.
	up end
	// upstream is the endpoint's or peer gateway's shared state, set
	// before forwarding; nil for none.
	upstream *upstream
	// done, if not nil, is closed when the flow is released: ServeTunnel
	// waits on it, since its stream is the tunnel handler's to hold.
	done chan struct{}
	// cl is the route's cluster the flow counts against (its
	// MaxConnections), set by start; nil for a tunnel.
	cl *cluster
	// idle is the flow's idle timeout: its route's, or the gateway's.
	idle time.Duration
	// expiry closes the flow at its route's MaxConnectionDuration; nil
	// without one.
	expiry *time.Timer
	// loop, once set, is the event loop that pumps the flow in place of
	// forward's goroutines; lf is the flow's state there, the loop's
	// alone.
	loop   atomic.Pointer[loop]
	lf     *loopFlow
	ended  atomic.Bool // both directions must stop
	failed atomic.Bool // ended by an error: reset both sides
	// pumps is forward's goroutine state, allocated by forward alone:
	// the flows in a loop, most of them, do not carry it.
	pumps *pumps
}

// pumps are the two directions of a flow that forward copies with
// goroutines.
type pumps struct {
	running atomic.Int32 // directions still copying
	toUp    direction    // client to upstream
	toDown  direction    // upstream to client
}

// direction is one half of a flow. Its fields are reused for every chunk
// so that forwarding allocates nothing. What the direction copies between
// (its ends, the other direction, its byte counter) is kept here too, not
// passed down the calls: each goroutine parks on an idle connection with
// run's and pipe's frames on its stack, and arguments passed by value
// (an end is three words) made those frames, and the stack that holds
// them, twice as large.
type direction struct {
	idle  atomic.Bool // saw a whole idle period without bytes, or ended
	src   *end        // read from: the flow's client or up
	dst   *end        // written to: the flow's other side
	other *direction
	bytes counter
	moved int64      // bytes moved since the deadlines were armed
	pool  *sync.Pool // of *[]byte buffers of the direction's reads
	// raw is the source socket, whose readiness is awaited before a
	// buffer is taken; nil for a stream.
	raw syscall.RawConn
	// wait is the source stream, awaited (stream.Wait) as a socket is
	// before a buffer is taken; nil for a socket.
	wait   stream
	splice bool                  // both ends are sockets: backlogs are spliced
	ready  func(fd uintptr) bool // d.poll, bound once
	buf    *[]byte               // chunk read and not yet all written
	off, n int                   // (*buf)[off:n] is still to write
	err    error                 // read error seen with the last chunk
	lr     io.LimitedReader
}

// forward copies bytes both ways between the client and upstream sides,
// one goroutine per direction, and returns at once: the pump of a flow
// with a stream end, or of any flow if the loops are unavailable; the direction that
// ends last closes both sides and releases the flow. Fresh goroutines
// start with small stacks, where the caller's grew while dialing: an idle
// connection costs less. A direction that reads EOF half-closes its
// destination; an error in either direction resets both sides, so a
// reset on one side is seen as a reset on the other.
func (f *flow) forward() {
	p := new(pumps)
	f.pumps = p
	p.toUp.src, p.toUp.dst, p.toUp.other, p.toUp.bytes = &f.client, &f.up, &p.toDown, f.g.m.BytesUp
	p.toDown.src, p.toDown.dst, p.toDown.other, p.toDown.bytes = &f.up, &f.client, &p.toUp, f.g.m.BytesDown
	p.running.Store(2)
	go f.run(&p.toDown)
	go f.run(&p.toUp)
}

// run is a direction's goroutine. Its frame, with pipe's, is what an idle
// connection keeps on each of its two stacks: both are kept small, so
// that the parked stack fits the 2 KiB a goroutine starts with (the
// runtime's frames under RawConn.Read and the stack guard take the rest).
func (f *flow) run(d *direction) {
	f.pipe(d)
	d.drop()
	if f.pumps.running.Add(-1) > 0 {
		return
	}
	f.close()
}

// close ends a flow whose pump has stopped: it stops the expiry, resets
// both sides if the flow failed, closes them and releases the flow.
func (f *flow) close() {
	if f.expiry != nil {
		f.expiry.Stop()
	}
	if f.failed.Load() {
		f.client.reset()
		f.up.reset()
	}
	f.client.close()
	f.up.close()
	f.g.release(f)
}

type counter interface{ Add(uint64) }

// pipe copies d.src to d.dst. With an idle timeout, deadlines bound the
// wait: a period in which bytes moved arms the next one; a period without
// bytes marks this direction idle, and the connection ends once the other
// direction is idle too.
func (f *flow) pipe(d *direction) {
	// Readiness is awaited without a buffer, so the read may take a
	// large one: a chunk size for splicing, relay's where a stream is an
	// end.
	d.pool = &f.g.relays
	if src := d.src.tcp; src != nil {
		rc, err := src.SyscallConn()
		if err != nil {
			f.abort(err)
			return
		}
		d.raw, d.ready = rc, d.poll
		d.splice = d.dst.tcp != nil
		if d.splice {
			d.pool = &f.g.chunks
		}
	} else if s, ok := d.src.c.(stream); ok {
		d.wait = s
	}
	d.arm(f.idle)
	if f.ended.Load() {
		// Ended (expire) before the deadlines were armed, which armed
		// over abort's.
		return
	}
	for {
		var n int64
		var eof bool
		var err error
		if d.raw != nil && d.buf == nil {
			// The wait on a socket is called from here, not from move,
			// so that a parked direction holds no frame but run's and
			// pipe's: move's and read's would double its stack.
			if err = d.raw.Read(d.ready); err == nil {
				eof, err = d.took()
			}
		} else if d.wait != nil && d.buf == nil && d.err == nil {
			// A stream is awaited as a socket is: a direction parked on
			// an idle stream holds no buffer.
			if err = d.wait.Wait(); err == io.EOF {
				eof, err = true, nil
			}
		}
		if !eof && err == nil {
			n, eof, err = d.move()
		}
		d.moved += n
		d.bytes.Add(uint64(n))
		if f.ended.Load() {
			return
		}
		switch {
		case eof:
			d.idle.Store(true)
			d.dst.c.CloseWrite()
			return
		case err == nil:
			d.idle.Store(false)
		case f.idle > 0 && isTimeout(err):
			if d.moved == 0 {
				d.idle.Store(true)
				if d.other.idle.Load() {
					f.abort(errIdle)
					return
				}
			}
			d.arm(f.idle)
		default:
			f.abort(err)
			return
		}
	}
}

// arm starts an idle period: with an idle timeout, the deadlines of the
// next read and write are set that far ahead.
func (d *direction) arm(idle time.Duration) {
	if idle > 0 {
		t := time.Now().Add(idle)
		d.src.c.SetReadDeadline(t)
		d.dst.c.SetWriteDeadline(t)
	}
	d.moved = 0
}

// isTimeout reports whether err is a deadline's: os.ErrDeadlineExceeded
// from sockets and QUIC streams, a timeout net.Error from yamux.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// move moves one chunk from src to dst: what is left of the last one, if
// a deadline cut its write short, or a new one. From a socket it waits
// until src is readable before it takes a buffer; a chunk that fits a
// buffer is read and written (two system calls, as small messages want);
// a full buffer between two sockets means a stream, whose backlog is then
// spliced without entering user space. While it waits on a socket or a
// stream it holds no buffer and no splice pipe: an idle connection costs
// its two sockets or streams and its goroutines, where a plain io.Copy
// would keep a pipe (two more descriptors and kernel buffers) per
// direction. From a socket, pipe has waited and d.buf holds the chunk;
// from a stream, pipe has waited (stream.Wait) and read takes a relay
// buffer, which the bytes there are written from at once.
func (d *direction) move() (n int64, eof bool, err error) {
	if d.buf == nil {
		if eof, err := d.read(); eof || err != nil {
			return 0, eof, err
		}
	}
	w, err := d.dst.c.Write((*d.buf)[d.off:d.n])
	d.off += w
	n = int64(w)
	if err != nil {
		if d.off == d.n {
			d.drop()
		}
		return n, false, err
	}
	full := d.n == len(*d.buf)
	d.drop()
	if !full || !d.splice {
		return n, false, nil
	}
	var avail int
	d.raw.Control(func(fd uintptr) {
		avail, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	if avail == 0 {
		return n, false, nil
	}
	d.lr.R, d.lr.N = d.src.tcp, int64(avail)
	m, err := io.Copy(d.dst.tcp, &d.lr)
	return n + m, false, err
}

// took reports what the chunk poll took from the socket says: bytes to
// write (in d.buf), EOF or a read error.
func (d *direction) took() (eof bool, err error) {
	if d.err == nil && d.n > 0 {
		return false, nil
	}
	d.drop()
	err = d.err
	d.err = nil
	if err != nil {
		return false, os.NewSyscallError("read", err)
	}
	return true, nil
}

// read fills d.buf with the next chunk of a stream. A read error that
// came with bytes is kept for the next read, after the bytes are written.
func (d *direction) read() (eof bool, err error) {
	if err := d.err; err != nil {
		d.err = nil
		return err == io.EOF, ignoreEOF(err)
	}
	bp := d.pool.Get().(*[]byte)
	n, err := d.src.c.Read(*bp)
	if n == 0 {
		d.pool.Put(bp)
		if err == nil {
			return false, nil
		}
		return err == io.EOF, ignoreEOF(err)
	}
	d.buf, d.off, d.n, d.err = bp, 0, n, err
	return false, nil
}

func ignoreEOF(err error) error {
	if err == io.EOF {
		return nil
	}
	return err
}

// drop returns the chunk buffer, if any, to its pool.
func (d *direction) drop() {
	if d.buf != nil {
		d.pool.Put(d.buf)
		d.buf = nil
	}
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
	d.buf, d.off, d.n, d.err = bp, 0, max(n, 0), err
	return true
}

// abort ends both directions at once: for a flow in a loop, a command
// to the loop, which alone closes what it polls; for forward's
// goroutines, deadlines in the past unblock the other direction's wait
// without closing the sides under it.
func (f *flow) abort(err error) {
	if !f.ended.CompareAndSwap(false, true) {
		return
	}
	switch err {
	case errIdle:
		f.g.m.IdleClosed.Inc()
	case errMaxDuration:
		// Closed as the idle timeout closes: the connection did nothing
		// wrong.
		f.g.m.DurationClosed.Inc()
	default:
		f.failed.Store(true)
	}
	if l := f.loop.Load(); l != nil {
		// Only the loop closes what it polls. A flow aborted before the
		// loop had it is ended as the loop adopts it.
		l.send(command{f: f})
		return
	}
	past := time.Unix(1, 0)
	f.client.c.SetDeadline(past)
	f.up.c.SetDeadline(past)
}

// expire ends the flow at its route's MaxConnectionDuration: a
// time.AfterFunc callback, which pump arms for a flow the goroutines
// forward (a loop's flow has a deadline its sweep checks instead).
func (f *flow) expire() { f.abort(errMaxDuration) }

// cut resets and closes the flow's sides at once, for a drain that ran
// out of time or a tunnel link that closed; a flow in a loop is ended by
// the loop, at the next command it runs. Callers hold g.mu, under
// which f.up is set, or are the goroutine that set it.
func (f *flow) cut() {
	f.failed.Store(true)
	if l := f.loop.Load(); l != nil {
		if f.ended.CompareAndSwap(false, true) {
			l.send(command{f: f})
		}
		return
	}
	for _, e := range []*end{&f.client, &f.up} {
		if e.c != nil {
			e.reset()
			e.c.Close()
		}
	}
}
