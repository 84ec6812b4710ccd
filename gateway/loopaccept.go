package gateway

import (
	"net"
	"net/netip"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The accept path of Config.LoopAccept: the event loops accept a
// listener's connections themselves, read and parse the ClientHello,
// route it and dial a local endpoint with raw non-blocking sockets, so
// that the common connection never enters Go's net (nor its netpoller,
// nor a handler goroutine). What the loops do not do themselves (a hello
// that did not arrive whole in the first read, a tunneled route, an
// endpoint named by DNS) is handed to the handlers with what was read
// (preread), where handle carries on after its peek or, for a hello the
// loop routed, with the loop's plan. This file accepts;
// loophello.go reads, routes and hands off; loopdial.go connects.

// padListener tags a listening socket's events (EpollEvent.Pad); a
// flow's sockets carry their side's generation there (side.gen).
const padListener = -1

// rawListen makes ln's socket one the loops accept on: a duplicate,
// non-blocking, outside Go's netpoller; ln itself is closed. It returns
// the descriptor.
func rawListen(ln *net.TCPListener) (int, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl", derr)
	}
	ln.Close()
	return fd, nil
}

// listenInLoops gives each loop a listening socket of l's port of its
// own, SO_REUSEPORT, which the loops accept on from now on, and reports
// whether it could; false leaves l to serve. Called with g.mu held.
func (g *Gateway) listenInLoops(l *listener) bool {
	all := g.loops.started(g)
	if len(all) == 0 {
		return false
	}
	fds := make([]int, 0, len(all))
	fail := func(err error) bool {
		for _, fd := range fds {
			rawClose(fd)
		}
		g.log.Warn("listener stays with Go's accept", "port", l.port, "err", err)
		return false
	}
	// The other loops' sockets first: l.ln is kept until they are bound.
	for range len(all) - 1 {
		ln, err := listen(l.addr.String(), true)
		if err != nil {
			return fail(err)
		}
		fd, err := rawListen(ln)
		if err != nil {
			ln.Close()
			return fail(err)
		}
		fds = append(fds, fd)
	}
	fd, err := rawListen(l.ln)
	if err != nil {
		return fail(err)
	}
	fds = append(fds, fd)
	l.ln, l.closed = nil, make(chan struct{})
	l.holders.Store(int32(len(all)))
	g.wg.Add(1) // until the last loop closes its socket
	for i, lp := range all {
		lp.send(command{listen: l, fd: fds[i]})
	}
	return true
}

// closeListener stops accepting on l: at once for one Go accepts on;
// for the loops' sockets, once every loop has closed its own (wait for
// l.closed), so that no loop accepts on a descriptor number that was
// closed and reused.
func (g *Gateway) closeListener(l *listener) {
	if l.ln != nil {
		l.ln.Close()
		return
	}
	for _, lp := range g.loops.all {
		lp.send(command{unlisten: l})
	}
}

// loopListener is a listening socket of a loop's: its own of l's port.
type loopListener struct {
	l  *listener
	fd int
	// edge: the socket is polled edge-triggered, as it is after an
	// accept failed (accept), until its backlog is drained again.
	edge bool
}

// listenEvents are the events a listening socket is polled for:
// level-triggered, so that accept takes one connection per event, as
// nginx's workers do, and no accept4 that finds the backlog empty is
// made per connection; the next poll reports a backlog not yet empty.
const listenEvents = unix.EPOLLIN

// listen registers fd, the loop's socket of ln, in its epoll set.
func (l *loop) listen(ln *listener, fd int) {
	ev := unix.EpollEvent{Events: listenEvents, Fd: int32(fd), Pad: padListener}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		// Kept in lns all the same, for unlisten to close. Its
		// connections wait in its backlog until then: the kernel
		// spreads them by hash.
		l.g.log.Error("listener not polled by an event loop", "port", ln.port, "err", err)
	}
	l.lns = append(l.lns, loopListener{l: ln, fd: fd})
}

// unlisten closes the loop's socket of ln; the last loop to do so
// releases ln.
func (l *loop) unlisten(ln *listener) {
	for i, x := range l.lns {
		if x.l == ln {
			// Closing removes it from the epoll set.
			rawClose(x.fd)
			l.lns = append(l.lns[:i], l.lns[i+1:]...)
			break
		}
	}
	if ln.holders.Add(-1) == 0 {
		close(ln.closed)
		l.g.wg.Done()
	}
}

// listenerAt returns the loop's listening socket at fd.
func (l *loop) listenerAt(fd int) *loopListener {
	for i := range l.lns {
		if l.lns[i].fd == fd {
			return &l.lns[i]
		}
	}
	return nil
}

// accept takes a connection queued on ln, one per event. One that may
// leave others queued sets acceptMore: poll then polls again before it
// parks, since a level-triggered socket that stays ready signals no new
// edge to the netpoller, which waits for the loop's epoll set. A failure
// (out of descriptors), after which the socket would stay ready and
// every poll fail again, turns the socket edge-triggered: the backlog is
// retried at the next connection's edge, and the socket is
// level-triggered again once an accept drained it.
func (l *loop) accept(ln *loopListener) {
	for {
		fd, sa, err := l.accept4(ln.fd)
		switch err {
		case nil, unix.EINTR, unix.ECONNABORTED:
			// A connection, or a signal or a connection reset while it
			// was queued: the rest of the backlog is still there.
			if err == nil {
				l.serve(ln.l.port, fd, sa)
			}
			if !ln.edge {
				l.acceptMore = true
				return
			}
		case unix.EAGAIN:
			if ln.edge {
				l.pollListener(ln, false)
			}
			return
		default:
			l.g.rlog.Warn(l.g.log, "accept", "accept failed", "port", ln.l.port, "err", os.NewSyscallError("accept4", err))
			if !ln.edge {
				l.pollListener(ln, true)
			}
			return
		}
	}
}

// pollListener makes the epoll set poll ln edge-triggered or, for
// !edge, level-triggered.
func (l *loop) pollListener(ln *loopListener, edge bool) {
	ev := unix.EpollEvent{Events: listenEvents, Fd: int32(ln.fd), Pad: padListener}
	if edge {
		ev.Events |= unix.EPOLLET
	}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, ln.fd, &ev); err != nil {
		l.g.log.Error("listener's polling not changed", "port", ln.l.port, "edge", edge, "err", err)
		return
	}
	ln.edge = edge
}

// accept4 accepts a connection on the listening socket fd, non-blocking,
// with its peer's address. unix.Accept4 would also ask the listening
// socket for its protocol (a getsockopt per connection) and allocate the
// address.
func (l *loop) accept4(fd int) (int, netip.AddrPort, error) {
	n := uint32(unsafe.Sizeof(l.rsa))
	nfd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&l.rsa)), uintptr(unsafe.Pointer(&n)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, e
	}
	var ap netip.AddrPort
	switch l.rsa.Addr.Family {
	case unix.AF_INET:
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(&l.rsa))
		ap = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), netOrder(a.Port))
	case unix.AF_INET6:
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(&l.rsa))
		ap = netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), netOrder(a.Port))
	}
	return int(nfd), ap, nil
}
