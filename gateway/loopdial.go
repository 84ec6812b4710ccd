package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

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
	ev := unix.EpollEvent{Events: flowEvents, Fd: int32(fd), Pad: s.gen}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.g.log.Warn("epoll_ctl add failed", "err", err)
		return false
	}
	l.setFD(s)
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
			l.answer(f.client.fd, d.sa, ref) // before the hello's buffer, which ref's key views, goes
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
				d.due = after(l.now, cl.dialerOr(&g.dialer).Timeout)
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
	err = rawOptions(fd, network, u.addr, cl.dialerOr(&g.dialer))
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
func rawOptions(fd int, network, addr string, d *net.Dialer) error {
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
	if w < len(hello) {
		c := &lf.side[0]
		c.pend = g.chunks.Get().(*[]byte)
		c.off, c.n = 0, copy(*c.pend, hello[w:])
		c.uncounted = c.n
		s.writable = false
	}
	// d outlives endDial, which only takes it from lf.
	l.endDial(lf)
	g.bufs.Put(d.bp)
	g.start(lf.f, rawEnd(s.fd), d.u, d.p.cl, nil)
	lf.expires = expiresAt(lf.f, l.now)
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

// expireDials fails the connects whose deadline passed and returns the
// earliest deadline of those left, or 0: one scan of the dials per poll
// pass does both.
func (l *loop) expireDials() (next int64) {
	for i := 0; i < len(l.dials); {
		lf := l.dials[i]
		if d := lf.dial; l.now >= d.due {
			l.dialFailed(lf, fmt.Errorf("dial tcp %s: %w", d.u.addr, os.ErrDeadlineExceeded))
			if i >= len(l.dials) || l.dials[i] != lf {
				continue // lf left the dials: the last one took its place
			}
		}
		if due := lf.dial.due; next == 0 || due < next {
			next = due
		}
		i++
	}
	return next
}

// endDial takes lf out of the dials.
func (l *loop) endDial(lf *loopFlow) {
	d := lf.dial
	if d.i >= 0 {
		l.dials = swapRemove(l.dials, d.i, dialIndex)
		d.i = -1
	}
	lf.dial = nil
}

// dialIndex is lf's index in the loop's dials, for swapRemove.
func dialIndex(lf *loopFlow) *int { return &lf.dial.i }

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
