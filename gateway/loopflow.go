package gateway

import (
	"math"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// loopFlow is a flow's state in its event loop, touched by the loop's
// goroutine alone. side[0] is the client's socket, side[1] the
// upstream's; the direction that reads side i writes side 1-i, and its
// state (what it read and could not write yet) is kept in side i.
type loopFlow struct {
	f    *flow
	side [2]side
	last int64 // the loop's clock when a byte last moved
	i    int   // index in the loop's flows; -1 while not in it
	done bool  // finished: later events and commands are stale
	// expires is when, on the loop's clock, the flow is as old as its
	// route's MaxConnectionDuration, which the sweep checks; 0 for none.
	expires int64
	// dial, while the loop connects the upstream socket, is the
	// connect's state (loopdial.go); the flow is not pumped yet.
	dial *loopDial
}

// side is one socket of a loop flow. Both sockets are registered once,
// edge-triggered, for reading and writing: readable and writable follow
// the edges, cleared by a read or write that comes short, so no chunk
// costs a system call beyond its read and write.
type side struct {
	lf *loopFlow
	fd int
	// gen tags the socket's events (EpollEvent.Pad) for a socket the
	// loop registered itself (watch); 0 for register's.
	gen      int32
	readable bool // read may return bytes: no short read since the last edge
	writable bool // write may take bytes: no short write since the last edge
	// hup: the peer's FIN or an error arrived; the reads that follow
	// end in EOF or the error, which no further edge announces, so a
	// short read does not clear readable.
	hup  bool
	eof  bool // read EOF: the other socket is half-closed once pend is written
	shut bool // the direction reading this side has ended
	// pend is what was read from this side and the other did not take:
	// (*pend)[off:n]. While it is there this side is not read, so that
	// a slow reader costs at most one chunk.
	pend   *[]byte
	off, n int
	// uncounted: the first bytes of pend are the rest of the hello,
	// which is not counted as forwarded.
	uncounted int
	// pipe holds inPipe bytes spliced from this side for the other.
	pipe   *pipe
	inPipe int
	// bulk: the last edge's bytes were a stream of more than a chunk,
	// so the next edge's are spliced at once, not copied first.
	bulk bool
}

// pipe is a splice pipe: bulk data goes socket to pipe to socket without
// entering user space.
type pipe struct{ r, w int }

// maxSplice is a pipe's size and the most one splice moves, as Go's own
// splice uses.
const maxSplice = 1 << 20

func (p *pipe) close() {
	rawClose(p.r)
	rawClose(p.w)
}

// getPipe returns an empty pipe from the loop's pool or a new one.
func (l *loop) getPipe() (*pipe, error) {
	if n := len(l.pipes); n > 0 {
		p := l.pipes[n-1]
		l.pipes = l.pipes[:n-1]
		return p, nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	// A smaller pipe works too, with more system calls.
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, maxSplice)
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// putPipe gives an empty pipe back to the pool, or closes it if the pool
// is full or the pipe still holds bytes.
func (l *loop) putPipe(p *pipe, empty bool) {
	if empty && len(l.pipes) < maxPooledPipes {
		l.pipes = append(l.pipes, p)
		return
	}
	p.close()
}

// flowEvents are the events a flow's sockets are registered for, once,
// edge-triggered (side).
const flowEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// register hands lf to the loop from the goroutine that dialed: it
// queues lf, then adds its sockets to the epoll set itself, so that the
// loop needs no wake-up of its own for a new flow. Registering a
// connected socket reports its state (writable at least) as a first
// edge, on which the loop, finding no flow at that descriptor, adopts
// the queued ones.
func (l *loop) register(lf *loopFlow) {
	l.mu.Lock()
	l.incoming = append(l.incoming, lf)
	l.mu.Unlock()
	for i := range lf.side {
		fd := lf.side[i].fd
		ev := unix.EpollEvent{Events: flowEvents, Fd: int32(fd)}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			// No edge may come: the loop must be asked to end it.
			l.g.log.Warn("epoll_ctl add failed", "err", err)
			lf.f.abort(err)
			return
		}
	}
}

// adoptIncoming starts pumping the flows register queued.
func (l *loop) adoptIncoming() {
	l.mu.Lock()
	in := l.incoming
	l.incoming, l.spareIn = l.spareIn[:0], in
	l.mu.Unlock()
	for i, lf := range in {
		l.adopt(lf)
		in[i] = nil
	}
}

// adopt starts pumping lf in this loop.
func (l *loop) adopt(lf *loopFlow) {
	f := lf.f
	f.lf = lf
	if f.ended.Load() {
		// Aborted before the loop had it: its abort found no flow.
		l.finish(lf)
		return
	}
	for i := range lf.side {
		l.setFD(&lf.side[i])
	}
	l.track(lf)
}

// track adds lf, whose sockets are polled, to the flows the sweep looks
// at.
func (l *loop) track(lf *loopFlow) {
	lf.last = l.now
	lf.i = len(l.flows)
	l.flows = append(l.flows, lf)
	l.schedule(lf)
}

// expiresAt returns when, on a loop's clock, f, started at now, is as
// old as its route's MaxConnectionDuration; 0 for none.
func expiresAt(f *flow, now int64) int64 {
	if d := f.maxAge(); d > 0 {
		return after(now, d)
	}
	return 0
}

// after returns the loop's clock d after now. A d beyond the clock's
// range (Istio's largest durations saturate to the longest
// time.Duration) gives the clock's end, not a sum wrapped into the past,
// which the sweep or expireDials would take for passed at once.
func after(now int64, d time.Duration) int64 {
	if int64(d) > math.MaxInt64-now {
		return math.MaxInt64
	}
	return now + int64(d)
}

// finish ends lf: it forgets the flow's sockets and what it held, then
// closes the flow as forward's last direction does.
func (l *loop) finish(lf *loopFlow) {
	lf.done = true
	f := lf.f
	f.ended.Store(true)
	if lf.dial != nil {
		l.abandonDial(lf)
	}
	if lf.i >= 0 {
		l.flows = swapRemove(l.flows, lf.i, flowIndex)
		lf.i = -1
	}
	for i := range lf.side {
		s := &lf.side[i]
		l.forget(s)
		if s.pend != nil {
			l.g.chunks.Put(s.pend)
			s.pend = nil
		}
		if s.pipe != nil {
			l.putPipe(s.pipe, s.inPipe == 0)
			s.pipe = nil
		}
	}
	// Closing removes the descriptors from the loop's epoll set: no
	// descriptor is duplicated, so these are the last references.
	f.close()
}

// setFD makes s the side polled at its descriptor.
func (l *loop) setFD(s *side) {
	for s.fd >= len(l.byFD) {
		l.byFD = append(l.byFD, nil)
	}
	l.byFD[s.fd] = s
}

// sideAt returns the flow side polled at fd, or nil.
func (l *loop) sideAt(fd int) *side {
	if fd < len(l.byFD) {
		return l.byFD[fd]
	}
	return nil
}

// forget clears the descriptor table's entry of s.
func (l *loop) forget(s *side) {
	if s.lf != nil && l.sideAt(s.fd) == s {
		l.byFD[s.fd] = nil
	}
}

// swapRemove removes the flow at index i of list by moving the last
// one into its place: at returns the field in which a flow keeps its
// index in list, which the moved one's becomes i.
func swapRemove(list []*loopFlow, i int, at func(*loopFlow) *int) []*loopFlow {
	last := list[len(list)-1]
	list[i], *at(last) = last, i
	list[len(list)-1] = nil
	return list[:len(list)-1]
}

// flowIndex is lf's index in the loop's flows, for swapRemove.
func flowIndex(lf *loopFlow) *int { return &lf.i }

// ready takes an event on s's socket and pumps its flow both ways.
func (l *loop) ready(s *side, ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.readable = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.hup = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.writable = true
	}
	lf := s.lf
	if lf.dial != nil {
		if s == &lf.side[1] {
			l.dialEvent(lf, ev)
		}
		return
	}
	l.pumpBoth(lf)
}

// pumpBoth pumps lf both ways and ends it on an error or once both
// directions are done.
func (l *loop) pumpBoth(lf *loopFlow) {
	err := l.pump(lf, 0)
	if err == nil {
		err = l.pump(lf, 1)
	}
	switch {
	case err != nil:
		// An error either way resets both sides, as in forward.
		lf.f.failed.Store(true)
		l.finish(lf)
	case lf.side[0].shut && lf.side[1].shut:
		l.finish(lf)
	}
}

// pump moves what it can from side i to the other until a socket would
// block: a chunk read is written at once, and a chunk that filled the
// buffer means a stream, whose backlog is spliced.
func (l *loop) pump(lf *loopFlow, i int) error {
	s, t := &lf.side[i], &lf.side[1-i]
	for !s.shut {
		if s.pend != nil || s.inPipe > 0 {
			if !t.writable {
				return nil
			}
			if err := l.flush(lf, i); err != nil || s.pend != nil || s.inPipe > 0 {
				return err
			}
		}
		if s.eof {
			// As forward's CloseWrite: an error here is the other
			// direction's to see. The last direction to end leaves the
			// FIN to finish's close: the other read t to its end, so
			// the close cannot turn into a reset.
			if !t.shut {
				rawShutdown(t.fd, unix.SHUT_WR)
			}
			s.shut = true
			return nil
		}
		if !s.readable {
			return nil
		}
		if s.bulk {
			if err := l.splice(lf, i); err != nil {
				return err
			}
			continue
		}
		n, err := rawRead(s.fd, l.buf)
		switch {
		case err == unix.EAGAIN:
			s.readable = false
			return nil
		case err != nil:
			return os.NewSyscallError("read", err)
		case n == 0:
			s.eof = true
			continue
		}
		lf.last = l.now
		w := 0
		if t.writable {
			if w, err = rawWrite(t.fd, l.buf[:n]); err == unix.EAGAIN {
				w = 0
			} else if err != nil {
				return os.NewSyscallError("write", err)
			}
		}
		l.count(i, w)
		if w < n {
			// The other side is full: keep the rest, and read this side
			// again only once it is written.
			t.writable = false
			s.pend = l.g.chunks.Get().(*[]byte)
			s.off, s.n = 0, copy(*s.pend, l.buf[w:n])
			return nil
		}
		if n < len(l.buf) {
			if s.hup {
				continue
			}
			// A short read drained the socket: the next bytes are a new
			// edge.
			s.readable = false
			return nil
		}
		if err := l.splice(lf, i); err != nil {
			return err
		}
	}
	return nil
}

// flush writes what side i holds for the other: its pending chunk, then
// its pipe. A write that comes short leaves the rest for the next edge.
func (l *loop) flush(lf *loopFlow, i int) error {
	s, t := &lf.side[i], &lf.side[1-i]
	if s.pend != nil {
		w, err := rawWrite(t.fd, (*s.pend)[s.off:s.n])
		if err == unix.EAGAIN {
			t.writable = false
			return nil
		}
		if err != nil {
			return os.NewSyscallError("write", err)
		}
		s.off += w
		skip := min(w, s.uncounted)
		s.uncounted -= skip
		l.count(i, w-skip)
		lf.last = l.now
		if s.off < s.n {
			t.writable = false
			return nil
		}
		l.g.chunks.Put(s.pend)
		s.pend = nil
	}
	if s.inPipe > 0 {
		return l.drain(lf, i)
	}
	return nil
}

// splice moves side i's backlog to the other through a pipe, until side
// i has nothing more, ends, or the other is full. The pipe goes back to
// the pool once empty, so that an idle flow holds none.
func (l *loop) splice(lf *loopFlow, i int) error {
	s := &lf.side[i]
	moved := 0
	for {
		if s.pipe == nil {
			p, err := l.getPipe()
			if err != nil {
				return err
			}
			s.pipe = p
		}
		n, err := rawSplice(s.fd, s.pipe.w, maxSplice, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		switch {
		case err == unix.EAGAIN:
			// The pipe is empty: it is the socket that has nothing.
			s.readable = false
		case err != nil:
			return os.NewSyscallError("splice", err)
		case n == 0:
			s.eof = true
		}
		if n <= 0 {
			l.putPipe(s.pipe, true)
			s.pipe = nil
			// Less than a chunk this edge: back to copying, as small
			// messages want.
			s.bulk = moved >= chunkSize
			return nil
		}
		moved += n
		s.inPipe = n
		lf.last = l.now
		if err := l.drain(lf, i); err != nil || s.inPipe > 0 {
			return err
		}
	}
}

// drain splices side i's pipe into the other side until the pipe is
// empty, returning the pipe, or the other side would block.
func (l *loop) drain(lf *loopFlow, i int) error {
	s, t := &lf.side[i], &lf.side[1-i]
	for s.inPipe > 0 {
		if !t.writable {
			return nil
		}
		n, err := rawSplice(s.pipe.r, t.fd, s.inPipe, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		if err == unix.EAGAIN {
			// Only EAGAIN clears writable: a short splice may have other
			// causes, and waiting for an edge that never comes would
			// stall the flow.
			t.writable = false
			return nil
		}
		if err != nil {
			return os.NewSyscallError("splice", err)
		}
		s.inPipe -= n
		l.count(i, n)
	}
	l.putPipe(s.pipe, true)
	s.pipe = nil
	return nil
}

// count adds n bytes to the direction's counter: up from the client,
// down from the upstream.
func (l *loop) count(i, n int) {
	if n <= 0 {
		return
	}
	if i == 0 {
		l.g.m.BytesUp.Add(uint64(n))
	} else {
		l.g.m.BytesDown.Add(uint64(n))
	}
}
