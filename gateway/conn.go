package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"time"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/sni"
)

// Reasons a connection is refused, beyond the peek errors of package sni
// and the routing reasons of package discovery. Values are metric labels.
const (
	RejectNoSNI        = "no_sni"
	RejectBadSNI       = "bad_sni"
	RejectALPN         = "alpn"
	RejectNoEndpoints  = "no_endpoints"
	RejectUnavailable  = "upstream_unavailable"
	RejectOverLimit    = "over_limit"
	RejectNoListener   = "no_listener"
	RejectNoData       = "no_data"
	rejectPeekPrefix   = "hello_"
	maxPooledHelloSize = 16 << 10
)

// TLS alerts sent to refused clients whose hello was read, so that they
// fail with a clear error ("tls: unrecognized name") instead of a bare
// reset. Alerts before the ServerHello are plaintext, so no key is needed.
const (
	alertHandshakeFailure = 40
	alertInternalError    = 80
	alertUnrecognizedName = 112
	alertNoALPN           = 120
)

// handle routes one accepted client connection and starts forwarding it;
// the flow releases itself when forwarding ends. A connection that is not
// forwarded is released here.
func (g *Gateway) handle(port uint32, f *flow) {
	c := f.client
	forwarding := false
	defer func() {
		if !forwarding {
			g.release(f)
		}
	}()
	bp := g.bufs.Get().(*[]byte)
	start := time.Now()
	hello, err := g.cfg.Peek.Peek(c, *bp)
	g.m.PeekSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		g.bufs.Put(bp)
		if len(hello.Raw) == 0 && errors.Is(err, io.EOF) {
			// Connect and close without a byte: a load balancer's TCP
			// health check, not an attack. Counted, not logged.
			g.m.reject(RejectNoData)
			c.Close()
			return
		}
		g.refuse(c, rejectPeekPrefix+sni.Reason(err), 0, "err", err)
		return
	}
	var up *net.TCPConn
	var u *upstream
	var remote HalfConn
	if t := g.table.Load(); t.passthrough[port] != nil {
		up, u = g.routePassthrough(t.passthrough[port], t, c, hello)
	} else {
		up, u, remote = g.route(port, c, hello)
	}
	if cap(hello.Raw) <= maxPooledHelloSize {
		*bp = hello.Raw[:cap(hello.Raw)]
	}
	if remote != nil {
		_, err := remote.Write(hello.Raw)
		g.bufs.Put(bp)
		if err != nil {
			g.refuse(c, RejectUnavailable, alertInternalError, "via", "tunnel", "err", err)
			remote.Close()
			return
		}
		f.remote.Store(&remote)
		if g.cutting.Load() {
			// Shutdown may have looked for the stream before it was set.
			remote.Close()
		}
		g.m.Forwarded.Inc()
		g.relay(c, remote)
		return
	}
	if up == nil {
		g.bufs.Put(bp)
		return
	}
	_, err = up.Write(hello.Raw)
	g.bufs.Put(bp)
	if err != nil {
		g.m.ConnectErrors.Inc()
		g.refuse(c, RejectUnavailable, alertInternalError, "endpoint", u.addr, "err", err)
		up.Close()
		u.active.Add(-1)
		return
	}
	f.up.Store(up)
	if g.cutting.Load() {
		// Shutdown may have looked for the upstream before it was set.
		up.Close()
	}
	g.m.Forwarded.Inc()
	f.upstream = u
	forwarding = true
	f.forward(up)
}

// release forgets a flow whose sockets are closed.
func (g *Gateway) release(f *flow) {
	if f.upstream != nil {
		f.upstream.active.Add(-1)
	}
	g.track(f, false)
	g.active.Add(-1)
	g.m.Active.Add(-1)
	g.wg.Done()
}

// route resolves the hello to an endpoint of this network and connects to
// it, or, when this network has no eligible endpoint and a RemoteDialer is
// configured, opens a link through another network's gateway (remote is
// then set). On failure it refuses the client itself and returns nils.
func (g *Gateway) route(port uint32, c *net.TCPConn, hello sni.Hello) (up *net.TCPConn, u *upstream, remote HalfConn) {
	if !g.cfg.AnyALPN && !slices.ContainsFunc(hello.ALPN, func(p string) bool { return slices.Contains(g.cfg.ALPN, p) }) {
		g.refuse(c, RejectALPN, alertNoALPN, "sni", hello.ServerName, "alpn", hello.ALPN)
		return nil, nil, nil
	}
	if hello.ServerName == "" {
		g.refuse(c, RejectNoSNI, alertUnrecognizedName)
		return nil, nil, nil
	}
	key, err := sni.ParseName(hello.ServerName)
	if err != nil {
		g.refuse(c, RejectBadSNI, alertUnrecognizedName, "sni", hello.ServerName, "err", err)
		return nil, nil, nil
	}
	t := g.table.Load()
	li, ok := t.listener[port]
	if !ok {
		// The port left the config while this connection was peeking.
		g.refuse(c, RejectNoListener, alertUnrecognizedName, "sni", hello.ServerName)
		return nil, nil, nil
	}
	r, err := t.view.Route(li, key)
	if err != nil {
		var re *discovery.RouteError
		errors.As(err, &re)
		g.refuse(c, string(re.Reason), alertUnrecognizedName, "sni", hello.ServerName)
		return nil, nil, nil
	}
	cl := t.clusters[r]
	// A service this network does not export keeps its endpoints from
	// other networks' clients, which may be among this listener's; other
	// networks that export it may still serve it.
	withheld := !r.Exported && len(cl.members) > 0
	if len(cl.members) == 0 || withheld {
		if rd := g.remote.Load(); rd != nil {
			// The dialer bounds each gateway it tries; this bounds them all.
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(g.cfg.DialAttempts)*g.cfg.DialTimeout)
			defer cancel()
			remote, err := rd.DialRemote(ctx, key, c.RemoteAddr())
			if err == nil {
				return nil, nil, remote
			}
			if withheld {
				g.refuse(c, string(discovery.NotExported), alertUnrecognizedName, "sni", hello.ServerName, "network", t.view.Node.Network, "err", err)
				return nil, nil, nil
			}
			g.m.ConnectErrors.Inc()
			g.refuse(c, RejectUnavailable, alertInternalError, "sni", hello.ServerName, "via", "tunnel", "err", err)
			return nil, nil, nil
		}
		if withheld {
			g.refuse(c, string(discovery.NotExported), alertUnrecognizedName, "sni", hello.ServerName, "network", t.view.Node.Network)
			return nil, nil, nil
		}
		g.refuse(c, RejectNoEndpoints, alertHandshakeFailure, "sni", hello.ServerName, "network", t.view.Node.Network)
		return nil, nil, nil
	}
	up, u, tried := g.dialCluster(cl, hello.ServerName)
	if up == nil {
		g.refuse(c, RejectUnavailable, alertInternalError, "sni", hello.ServerName, "tried", tried)
	}
	return up, u, nil
}

// dialCluster connects to one of cl's endpoints, trying up to
// DialAttempts of them. It returns nil and the number tried on failure.
func (g *Gateway) dialCluster(cl *cluster, serverName string) (*net.TCPConn, *upstream, int) {
	var triedBuf [8]int
	tried := triedBuf[:0]
	for range g.cfg.DialAttempts {
		i := cl.pick(tried, time.Now().UnixNano())
		if i < 0 {
			break
		}
		tried = append(tried, i)
		u := cl.members[i]
		u.active.Add(1)
		conn, err := g.dialer.Dial("tcp", u.addr)
		g.result(u, err)
		if err == nil {
			return conn.(*net.TCPConn), u, len(tried)
		}
		u.active.Add(-1)
		g.m.ConnectErrors.Inc()
		g.rlog.warn("connect", "endpoint connect failed", "endpoint", u.addr, "sni", serverName, "err", err)
	}
	return nil, nil, len(tried)
}

// alertRecord is a plaintext TLS record holding one fatal alert.
func alertRecord(alert byte) []byte { return []byte{21, 3, 3, 0, 2, 2, alert} }

// refuse closes a client connection that will not be forwarded, after a TLS
// alert if alert is not 0, and counts and logs it under reason.
func (g *Gateway) refuse(c *net.TCPConn, reason string, alert byte, logArgs ...any) {
	g.answerRefused(c, reason, alert, logArgs...)
	c.Close()
}

// answerRefused counts and logs a refused connection under reason and
// sends it a TLS alert if alert is not 0; it reports whether the alert
// was written. The caller closes c.
func (g *Gateway) answerRefused(c net.Conn, reason string, alert byte, logArgs ...any) bool {
	g.m.reject(reason)
	g.rlog.warn(reason, "connection refused", append([]any{"reason", reason, "client", c.RemoteAddr().String()}, logArgs...)...)
	if alert == 0 {
		return false
	}
	c.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := c.Write(alertRecord(alert))
	return err == nil
}
