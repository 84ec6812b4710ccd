package gateway

import (
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ewgate/ewgate/sni"
)

// serve is a connection's path from accept to dial: what serve and
// handle do for a connection Go accepted, with the same rules, shared.
func (l *loop) serve(port uint32, fd int, sa netip.AddrPort) {
	g := l.g
	if ref := g.admitConn(); ref != nil {
		g.note(sa.String, ref)
		rawLingerZero(fd)
		rawClose(fd)
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
		err = sni.ReadError(os.NewSyscallError("read", err), 0)
	case n == 0:
		err = sni.ReadError(io.EOF, 0)
	default:
		hello, err = g.cfg.Peek.Parse(b[:n])
		if err == sni.ErrIncomplete {
			l.handOff(port, fd, sa, &preread{bp: bp, n: n})
			return
		}
	}
	g.m.PeekSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		l.refuse(fd, sa, peekRefusal(hello, err), bp)
		return
	}
	t := g.table.Load()
	p, ref := g.route(t, port, hello)
	if ref != nil {
		l.refuse(fd, sa, ref, bp)
		return
	}
	if p.cl == nil || p.tn != nil || !p.cl.raw {
		l.handOff(port, fd, sa, &preread{bp: bp, n: n, routed: true, hello: hello, t: t, p: p})
		return
	}
	if !p.cl.admit() {
		l.refuse(fd, sa, routeOverLimit(p), bp)
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

// refuse turns away a client serve admitted: answered, then bp, the
// hello's buffer, which ref's key may view, and the connection's count
// go.
func (l *loop) refuse(fd int, sa netip.AddrPort, ref *refusal, bp *[]byte) {
	l.answer(fd, sa, ref)
	l.g.bufs.Put(bp)
	l.g.leaveConn()
}

// answer answers a refused client of the loop's, as Gateway.refuse
// does: counted and logged by note, the alert written (the socket's
// buffer is empty: a few bytes always fit) and the socket closed.
func (l *loop) answer(fd int, sa netip.AddrPort, ref *refusal) {
	g := l.g
	g.note(sa.String, ref)
	if ref.alert != 0 {
		rawWrite(fd, alertRecord(ref.alert))
	}
	rawClose(fd)
}

// handOff gives a connection the loop does not dial itself to a handler,
// with what was read of it: a *net.TCPConn of its own (a duplicate; the
// loop's descriptor is closed), registered with the flows as serve does.
// net adopts no descriptor without FileConn's dup, and the handlers need
// a *net.TCPConn (docs/architecture.md).
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
