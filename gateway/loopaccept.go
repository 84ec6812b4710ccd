package gateway

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ewgate/ewgate/sni"
)

// The accept path of Config.LoopAccept: the event loops accept a
// listener's connections themselves, read and parse the ClientHello,
// route it and dial a local endpoint with raw non-blocking sockets, so
// that the common connection never enters Go's net (nor its netpoller,
// nor a handler goroutine). What the loops do not do themselves (a hello
// that did not arrive whole in the first read, a tunneled route, an
// endpoint named by DNS) is handed to the handlers with what was read
// (preread), where handle carries on after its peek.

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
}

// listen registers fd, the loop's socket of ln, in its epoll set,
// edge-triggered: accept takes every connection queued.
func (l *loop) listen(ln *listener, fd int) {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(fd), Pad: padListener}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		// Kept in lns all the same, for unlisten to close. Its
		// connections wait in its backlog until then: the kernel
		// spreads them by hash.
		l.g.log.Error("listener not polled by an event loop", "port", ln.port, "err", err)
	}
	l.lns = append(l.lns, loopListener{ln, fd})
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

// accept takes every connection queued on ln. A failure (out of
// descriptors) is logged and left for the next connection's edge, by
// which the backlog is retried.
func (l *loop) accept(ln *loopListener) {
	for {
		fd, sa, err := l.accept4(ln.fd)
		switch err {
		case nil:
			l.serve(ln.l.port, fd, sa)
		case unix.EINTR, unix.ECONNABORTED:
		case unix.EAGAIN:
			return
		default:
			l.g.rlog.Warn(l.g.log, "accept", "accept failed", "port", ln.l.port, "err", os.NewSyscallError("accept4", err))
			return
		}
	}
}

// serve is a connection's path from accept to dial: what serve and
// handle do for a connection Go accepted, with the same rules, shared.
func (l *loop) serve(port uint32, fd int, sa netip.AddrPort) {
	g := l.g
	if ref := g.admitConn(); ref != nil {
		g.note(sa.String(), ref)
		e := rawEnd(fd)
		e.reset()
		e.close()
		return
	}
	bp := g.bufs.Get().(*[]byte)
	start := time.Now()
	b := (*bp)[:cap(*bp)]
	if m := g.cfg.Peek.MaxBytes; m > 0 && m < len(b) {
		b = b[:m]
	}
	n, err := rawRead(fd, b)
	var hello sni.Hello
	switch {
	case err == unix.EAGAIN:
		// Sent nothing yet (after the deferral): the handler waits.
		l.handOff(port, fd, sa, &preread{bp: bp})
		return
	case err != nil:
		err = fmt.Errorf("%w after 0 bytes: %w", sni.ErrTruncated, os.NewSyscallError("read", err))
	case n == 0:
		err = fmt.Errorf("%w after 0 bytes: %w", sni.ErrTruncated, io.EOF)
	default:
		hello, err = g.cfg.Peek.Parse(b[:n])
		if err == sni.ErrIncomplete {
			l.handOff(port, fd, sa, &preread{bp: bp, n: n})
			return
		}
	}
	g.m.PeekSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		g.bufs.Put(bp)
		l.refuse(fd, sa, peekRefusal(hello, err))
		g.leaveConn()
		return
	}
	t := g.table.Load()
	p, ref := g.route(t, port, hello)
	if ref != nil {
		g.bufs.Put(bp)
		l.refuse(fd, sa, ref)
		g.leaveConn()
		return
	}
	if p.cl == nil || p.tn != nil || !p.cl.raw {
		l.handOff(port, fd, sa, &preread{bp: bp, n: n, parsed: true, hello: hello})
		return
	}
	if !p.cl.admit() {
		g.bufs.Put(bp)
		l.refuse(fd, sa, routeOverLimit(p))
		g.leaveConn()
		return
	}
	f := &flow{g: g, client: rawEnd(fd)}
	f.loop.Store(l)
	g.track(f)
	lf := &loopFlow{f: f, i: -1, dial: &loopDial{p: p, bp: bp, n: n, sa: sa, i: -1}}
	f.lf, lf.side[0].lf, lf.side[1].lf = lf, lf, lf
	lf.dial.a.begin(p.cl, sa.Addr())
	if !l.watch(&lf.side[0], fd) {
		l.finish(lf)
		return
	}
	l.connectNext(lf)
}

// refuse answers a refused client of the loop's, as Gateway.refuse
// does: counted and logged by note, the alert written (the socket's
// buffer is empty: a few bytes always fit) and the socket closed. The
// caller lets the connection's count go.
func (l *loop) refuse(fd int, sa netip.AddrPort, ref *refusal) {
	g := l.g
	g.note(sa.String(), ref)
	if ref.alert != 0 {
		rawWrite(fd, alertRecord(ref.alert))
	}
	rawClose(fd)
}

// handOff gives a connection the loop does not dial itself to a handler,
// with what was read of it: a *net.TCPConn of its own (a duplicate; the
// loop's descriptor is closed), registered with the flows as serve does.
func (l *loop) handOff(port uint32, fd int, sa netip.AddrPort, pre *preread) {
	g := l.g
	file := os.NewFile(uintptr(fd), "")
	c, err := net.FileConn(file)
	file.Close()
	if err != nil {
		g.bufs.Put(pre.bp)
		g.log.Warn("connection not handed to a handler", "client", sa.String(), "err", err)
		g.leaveConn()
		return
	}
	f := &flow{g: g, client: tcpEnd(c.(*net.TCPConn))}
	g.track(f)
	g.dispatch(port, f, pre)
}

// loopDial is the state of a flow whose upstream the loop is dialing.
type loopDial struct {
	p   plan
	a   attempts
	u   *upstream // the member being dialed
	bp  *[]byte   // the pooled hello buffer: the hello is (*bp)[:n]
	n   int
	sa  netip.AddrPort // the client's address, for refusals
	due int64          // the connect's deadline, on the loop's clock
	i   int            // index in the loop's dials; -1 while not in it
}

// watch registers the socket of s at fd in the loop's epoll set, for
// every edge, tagged with a new generation so that an event of a socket
// closed earlier in the same batch, whose number fd reuses, is not taken
// for this one's.
func (l *loop) watch(s *side, fd int) bool {
	l.gen++
	if l.gen <= 0 {
		l.gen = 1
	}
	s.fd, s.gen = fd, l.gen
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd), Pad: s.gen}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.g.log.Warn("epoll_ctl add failed", "err", err)
		return false
	}
	for fd >= len(l.byFD) {
		l.byFD = append(l.byFD, nil)
	}
	l.byFD[fd] = s
	return true
}

// connectNext starts the connect to the next member dialCluster's rule
// picks, or refuses the client once none is left.
func (l *loop) connectNext(lf *loopFlow) {
	g, d := l.g, lf.dial
	cl := d.p.cl
	for {
		u := g.nextMember(cl, &d.a)
		if u == nil {
			// As dial: no member connects.
			ref := unavailable(d.p, len(d.a.tried), d.a.err)
			f := lf.f
			lf.done = true
			f.ended.Store(true)
			l.forget(&lf.side[0])
			l.refuse(f.client.fd, d.sa, ref) // before the hello's buffer, which ref's key views, goes
			l.abandonDial(lf)
			f.client = end{}
			g.release(f)
			return
		}
		fd, err := l.connectRaw(cl, u)
		if err == nil {
			lf.side[1].lf = lf
			if l.watch(&lf.side[1], fd) {
				d.u = u
				d.due = l.now + int64(cl.dialerOr(&g.dialer).Timeout)
				if d.i < 0 {
					d.i = len(l.dials)
					l.dials = append(l.dials, lf)
				}
				return
			}
			rawClose(fd)
			err = errors.New("epoll_ctl add failed")
		}
		g.dialed(cl, u, &d.a, d.p.key, false, err)
	}
}

// connectRaw starts a non-blocking connect to u with the options of cl's
// dialer, as net.Dialer would: TCP_NODELAY, the route's keep-alive, the
// gateway's DialControl.
func (l *loop) connectRaw(cl *cluster, u *upstream) (int, error) {
	g := l.g
	family, network := unix.AF_INET, "tcp4"
	if !u.ap.Addr().Is4() {
		family, network = unix.AF_INET6, "tcp6"
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	err = g.rawOptions(fd, network, u.addr, cl.dialerOr(&g.dialer))
	if err == nil {
		err = rawConnect(fd, u.ap, &l.sa)
		if err == unix.EINPROGRESS || err == unix.EINTR {
			err = nil
		} else if err != nil {
			err = os.NewSyscallError("connect", err)
		}
	}
	if err != nil {
		rawClose(fd)
		return -1, fmt.Errorf("dial tcp %s: %w", u.addr, err)
	}
	return fd, nil
}

// rawOptions sets what net.Dialer d would on a socket before it
// connects.
func (g *Gateway) rawOptions(fd int, network, addr string, d *net.Dialer) error {
	set := func(level, name, v int) error {
		return os.NewSyscallError("setsockopt", rawSetsockoptInt(fd, level, name, v))
	}
	if err := set(unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return err
	}
	if ka := d.KeepAliveConfig; ka.Enable {
		if err := set(unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1); err != nil {
			return err
		}
		for _, o := range [...]struct {
			name int
			v    int
		}{{unix.TCP_KEEPIDLE, int(ka.Idle / time.Second)}, {unix.TCP_KEEPINTVL, int(ka.Interval / time.Second)}, {unix.TCP_KEEPCNT, ka.Count}} {
			if o.v > 0 {
				if err := set(unix.IPPROTO_TCP, o.name, o.v); err != nil {
					return err
				}
			}
		}
	}
	if d.Control != nil {
		return d.Control(network, addr, rawConn(fd))
	}
	return nil
}

// dialEvent takes an event of a socket being connected: an error is the
// connect's failure, the first writable edge its success.
func (l *loop) dialEvent(lf *loopFlow, ev uint32) {
	g, d := l.g, lf.dial
	s := &lf.side[1]
	if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		errno, err := rawGetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil {
			err = unix.Errno(errno)
			if errno == 0 {
				err = unix.ECONNREFUSED
			}
		}
		l.dialFailed(lf, fmt.Errorf("dial tcp %s: %w", d.u.addr, os.NewSyscallError("connect", err)))
		return
	}
	if ev&unix.EPOLLOUT == 0 {
		return
	}
	// The hello goes first, written here as start writes it: not
	// counted as forwarded bytes. A fresh socket's buffer takes it
	// whole but for a rare short write, whose rest the pump writes.
	hello := (*d.bp)[:d.n]
	w, err := rawWrite(s.fd, hello)
	if err == unix.EAGAIN {
		w, err = 0, nil
	}
	if err != nil {
		l.dialFailed(lf, fmt.Errorf("dial tcp %s: %w", d.u.addr, os.NewSyscallError("write", err)))
		return
	}
	g.dialed(d.p.cl, d.u, &d.a, d.p.key, false, nil)
	u, cl := d.u, d.p.cl
	if w < len(hello) {
		c := &lf.side[0]
		c.pend = g.chunks.Get().(*[]byte)
		c.off, c.n = 0, copy(*c.pend, hello[w:])
		c.uncounted = c.n
		s.writable = false
	}
	l.endDial(lf)
	g.bufs.Put(d.bp)
	g.start(lf.f, rawEnd(s.fd), u, cl, nil)
	l.track(lf)
	l.pumpBoth(lf)
}

// dialFailed records a failed connect and tries the next member.
func (l *loop) dialFailed(lf *loopFlow, err error) {
	d := lf.dial
	l.dropUpstream(lf)
	l.g.dialed(d.p.cl, d.u, &d.a, d.p.key, false, err)
	d.u = nil
	l.connectNext(lf)
}

// expireDials fails the connects whose deadline passed.
func (l *loop) expireDials() {
	for i := 0; i < len(l.dials); {
		lf := l.dials[i]
		if d := lf.dial; l.now >= d.due {
			l.dialFailed(lf, fmt.Errorf("dial tcp %s: %w", d.u.addr, os.ErrDeadlineExceeded))
			if i < len(l.dials) && l.dials[i] == lf {
				i++
			}
			continue
		}
		i++
	}
}

// dialDue returns the earliest connect deadline, or 0.
func (l *loop) dialDue() int64 {
	var at int64
	for _, lf := range l.dials {
		if at == 0 || lf.dial.due < at {
			at = lf.dial.due
		}
	}
	return at
}

// endDial takes lf out of the dials.
func (l *loop) endDial(lf *loopFlow) {
	d := lf.dial
	if d.i >= 0 {
		last := l.dials[len(l.dials)-1]
		l.dials[d.i], last.dial.i = last, d.i
		l.dials[len(l.dials)-1] = nil
		l.dials = l.dials[:len(l.dials)-1]
		d.i = -1
	}
	lf.dial = nil
}

// abandonDial undoes what a flow ended while dialing holds: the member
// being dialed, its socket, the route's count and the hello buffer.
func (l *loop) abandonDial(lf *loopFlow) {
	d := lf.dial
	if d.u != nil {
		l.dropUpstream(lf)
		d.u.active.Add(-1)
	}
	d.p.cl.leave()
	l.g.bufs.Put(d.bp)
	l.endDial(lf)
}

// dropUpstream closes the socket of a connect that failed or was
// abandoned, and forgets it.
func (l *loop) dropUpstream(lf *loopFlow) {
	s := &lf.side[1]
	l.forget(s)
	rawClose(s.fd)
	*s = side{}
}

// forget clears the descriptor table's entry of s.
func (l *loop) forget(s *side) {
	if s.lf != nil && s.fd < len(l.byFD) && l.byFD[s.fd] == s {
		l.byFD[s.fd] = nil
	}
}

// rawConn is a socket of the loop's as DialControl sees it: Control
// only.
type rawConn int

func (c rawConn) Control(f func(fd uintptr)) error  { f(uintptr(c)); return nil }
func (c rawConn) Read(func(fd uintptr) bool) error  { return errors.ErrUnsupported }
func (c rawConn) Write(func(fd uintptr) bool) error { return errors.ErrUnsupported }

var _ syscall.RawConn = rawConn(0)

// addrPortOf returns addr, "ip:port", as the loops connect to it, or
// the zero AddrPort for a name, which only net's dialer resolves.
func addrPortOf(addr string) netip.AddrPort {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Addr().Zone() != "" {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
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
		ap = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), ntohs(a.Port))
	case unix.AF_INET6:
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(&l.rsa))
		ap = netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), ntohs(a.Port))
	}
	return int(nfd), ap, nil
}

// ntohs reads a port in network byte order.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}
