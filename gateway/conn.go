package gateway

import (
	"errors"
	"io"
	"strings"
	"time"

	"github.com/ewgate/ewgate/sni"
)

// maxPooledHelloSize is the largest ClientHello buffer returned to the
// pool; larger ones are left to the garbage collector.
const maxPooledHelloSize = 16 << 10

// handle routes one accepted client connection and starts forwarding it;
// the flow releases itself when forwarding ends. A connection that is not
// forwarded is released here. dc bounds its dials: the handler's. pre,
// if not nil, is what an event loop read of the connection already, and
// the route it decided, if it did.
func (g *Gateway) handle(port uint32, f *flow, dc *dialContext, pre *preread) {
	c := f.client.tcp
	forwarding := false
	defer func() {
		if !forwarding {
			g.release(f)
		}
	}()
	var bp *[]byte
	var hello sni.Hello
	var t *table
	var p plan
	routed := pre != nil && pre.routed
	if routed {
		bp, hello, t, p = pre.bp, pre.hello, pre.t, pre.p
	} else {
		// Peek is PeekFrom with nothing read yet.
		n := 0
		if pre != nil {
			bp, n = pre.bp, pre.n
		} else {
			bp = g.bufs.Get().(*[]byte)
		}
		start := time.Now()
		var err error
		hello, err = g.cfg.Peek.PeekFrom(c, *bp, n)
		g.m.PeekSeconds.Observe(time.Since(start).Seconds())
		if err != nil {
			g.bufs.Put(bp)
			g.refuse(c, peekRefusal(hello, err))
			return
		}
	}
	defer func() {
		if cap(hello.Raw) <= maxPooledHelloSize {
			*bp = hello.Raw[:cap(hello.Raw)]
		}
		g.bufs.Put(bp)
	}()
	if !routed {
		t = g.table.Load()
		var ref *refusal
		if p, ref = g.route(t, port, hello); ref != nil {
			g.refuse(c, ref)
			return
		}
	}
	up, u, cl, ref := g.dial(t, p, c.RemoteAddr(), dc)
	if ref != nil {
		g.refuse(c, ref)
		return
	}
	if !g.start(f, up, u, cl, hello.Raw) {
		return
	}
	forwarding = true
	g.pump(f)
}

// pump forwards f, started: in an event loop if both its ends are
// sockets (handover), whose sweep ends it at its route's
// MaxConnectionDuration, otherwise with forward's goroutines and a
// timer for that.
func (g *Gateway) pump(f *flow) {
	if g.handover(f) {
		return
	}
	if d := f.maxAge(); d > 0 {
		f.expiry = time.AfterFunc(d, f.expire)
	}
	f.forward()
}

// maxAge returns f's route's MaxConnectionDuration, 0 for none.
func (f *flow) maxAge() time.Duration {
	if f.cl == nil {
		return 0
	}
	return f.cl.policy.MaxConnectionDuration
}

// peekRefusal is the refusal of a connection whose hello the peek
// refused with err.
func peekRefusal(hello sni.Hello, err error) *refusal {
	if len(hello.Raw) == 0 && errors.Is(err, io.EOF) {
		return &healthCheck
	}
	return &refusal{reason: rejectPeekPrefix + sni.Reason(err), err: err}
}

// healthCheck is the refusal of a connection that closed without a byte:
// a load balancer's TCP health check, not an attack, counted and not
// logged. The commonest refusal, it is one value that every such check
// shares, never modified (refuseStream, which adds to a refusal's args,
// adds them to a copy).
var healthCheck = refusal{reason: RejectNoData, quiet: true}

// route decides where a client's connection to port goes, from its
// hello: by the VirtualService tls routes of a PASSTHROUGH listener, or,
// on an AUTO_PASSTHROUGH one, by the Istio routing key its server name
// encodes (resolve).
func (g *Gateway) route(t *table, port uint32, hello sni.Hello) (plan, *refusal) {
	if l := t.passthrough[port]; l != nil {
		return g.routePassthrough(t, l, hello.ServerName)
	}
	key, ref := g.parse(hello)
	if ref != nil {
		return plan{}, ref
	}
	li, ok := t.listener[port]
	if !ok {
		// The listener was closed by a reload after this accept.
		return plan{}, &refusal{reason: RejectNoListener, alert: alertUnrecognizedName, key: key}
	}
	return g.resolve(t, li, key)
}

// parse checks the hello's ALPN and decodes its server name into a
// routing key, or says why it does not route.
//
// The key's strings, like the hello's, are views of the pooled hello
// buffer (sni.Hello): valid until handle returns. A refusal's log
// arguments are copies, since a log handler may keep them.
func (g *Gateway) parse(hello sni.Hello) (sni.Key, *refusal) {
	if !g.cfg.AnyALPN && !offersOneOf(hello.ALPN, g.cfg.ALPN) {
		return sni.Key{}, &refusal{reason: RejectALPN, alert: alertNoALPN, args: []any{"alpn", hello.ALPN.Strings(), "sni", strings.Clone(hello.ServerName)}}
	}
	if hello.ServerName == "" {
		return sni.Key{}, &refusal{reason: RejectNoSNI, alert: alertUnrecognizedName}
	}
	key, err := sni.ParseName(hello.ServerName)
	if err != nil {
		return sni.Key{}, &refusal{reason: RejectBadSNI, alert: alertUnrecognizedName, args: []any{"sni", strings.Clone(hello.ServerName)}, err: err}
	}
	return key, nil
}

// offersOneOf reports whether offered holds one of want.
func offersOneOf(offered sni.Protocols, want []string) bool {
	for _, p := range want {
		if offered.Contains(p) {
			return true
		}
	}
	return false
}

// start replays the client's first bytes (its ClientHello) to the dialed
// upstream side and makes the flow forward-ready under the policy of cl,
// the route's cluster dial admitted it to (nil for a tunnel); on failure
// it refuses the client and returns false. Shutdown may cut the flow
// from here on.
func (g *Gateway) start(f *flow, up end, u *upstream, cl *cluster, first []byte) bool {
	f.idle = g.cfg.IdleTimeout
	if cl != nil {
		// release lets the route's connection go from here on.
		f.cl, f.idle = cl, cl.idle
	}
	if len(first) > 0 {
		if _, err := up.c.Write(first); err != nil {
			g.m.ConnectErrors.Inc()
			up.reset()
			up.c.Close()
			u.active.Add(-1)
			g.refuseFlow(f, &refusal{reason: RejectUnavailable, alert: alertInternalError, args: []any{"upstream", u.addr}, err: err})
			return false
		}
	}
	g.mu.Lock()
	f.up, f.upstream = up, u
	cutting := g.cutting.Load()
	g.mu.Unlock()
	if cutting {
		// Shutdown may have cut the flows before this one had its
		// upstream.
		f.cut()
	}
	g.m.Forwarded.Inc()
	return true
}

// release forgets a flow whose sides are closed.
func (g *Gateway) release(f *flow) {
	if f.upstream != nil {
		f.upstream.active.Add(-1)
	}
	if f.cl != nil {
		f.cl.leave()
	}
	g.mu.Lock()
	delete(g.flows, f)
	g.mu.Unlock()
	g.active.Add(-1)
	g.m.Active.Add(-1)
	if f.done != nil {
		close(f.done)
	}
	g.wg.Done()
}
