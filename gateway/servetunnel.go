package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"

	"github.com/ewgate/ewgate/tunnel"
)

// ServeTunnel is the tunnel.Handler of the gateway's tunnel endpoint: it
// forwards a stream that another network's gateway carried here, for
// h.Key, to an eligible endpoint of this network, and returns when the
// flow ends. The stream routes through any listener that exposes the
// service (discovery.View.RouteExposed, the rule by which this network's
// summary advertises it), with the same host, exportTo, port and subset
// rules; it is never carried on to another network, and a stream that
// already crossed a tunnel (h.Hops > 0) is refused as too_many_hops. It
// counts against MaxConnections, obeys IdleTimeout and drains like any
// connection; refusals are answered, counted and logged as a local
// client's are, the alert travelling back through the tunnel.
//
// It returns early, cutting the flow, once ctx is done: the tunnel
// endpoint or the stream's link closed, which a direction waiting on the
// endpoint alone would not notice.
func (g *Gateway) ServeTunnel(ctx context.Context, h tunnel.Header, s *tunnel.Stream) {
	g.mu.Lock()
	if g.draining.Load() {
		g.mu.Unlock()
		g.refuseStream(s, &refusal{reason: RejectUnavailable, alert: alertInternalError, key: h.Key, err: errors.New("gateway is draining")})
		return
	}
	g.m.Accepted.Inc()
	if n := g.active.Add(1); n > int64(g.cfg.MaxConnections) {
		g.active.Add(-1)
		g.mu.Unlock()
		g.answer(s, &refusal{reason: RejectOverLimit, key: h.Key, args: []any{"limit", g.cfg.MaxConnections, "via", "tunnel"}})
		s.Abort()
		return
	}
	f := &flow{g: g, client: streamEnd(s), done: make(chan struct{})}
	g.flows[f] = struct{}{}
	g.wg.Add(1)
	g.mu.Unlock()
	g.m.Active.Add(1)
	if !g.serveFlow(h, f) {
		g.release(f)
		return
	}
	g.pump(f)
	stop := context.AfterFunc(ctx, func() {
		g.mu.Lock()
		f.cut()
		g.mu.Unlock()
	})
	// The tunnel endpoint closes the stream when its handler returns.
	<-f.done
	stop()
}

// serveFlow routes and dials a tunneled flow; on failure it refuses it.
func (g *Gateway) serveFlow(h tunnel.Header, f *flow) bool {
	if h.Hops > 0 {
		// Multi-hop is not configured: a connection crosses at most one
		// tunnel.
		g.refuseFlow(f, &refusal{reason: RejectTooManyHops, alert: alertInternalError, key: h.Key, args: []any{"hops", h.Hops}})
		return false
	}
	t := g.table.Load()
	if t == nil {
		g.refuseFlow(f, &refusal{reason: RejectNoListener, alert: alertUnrecognizedName, key: h.Key, err: errors.New("no config applied")})
		return false
	}
	p, ref := g.resolve(t, anyListener, h.Key)
	if ref != nil {
		g.refuseFlow(f, ref)
		return false
	}
	// Never tunneled on; the client's address, which the near gateway
	// passes on, is the source for the route's source IP hashing.
	var client net.Addr
	if ap, err := netip.ParseAddrPort(h.ClientAddr); err == nil {
		client = net.TCPAddrFromAddrPort(ap)
	}
	up, u, cl, ref := g.dial(t, p, client, nil)
	if ref != nil {
		g.refuseFlow(f, ref)
		return false
	}
	return g.start(f, up, u, cl, nil)
}
