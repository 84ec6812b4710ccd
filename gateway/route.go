package gateway

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/sni"
)

// Reasons a connection is refused, beyond the peek errors of package sni
// and the routing reasons of package discovery. Values are metric labels.
const (
	RejectNoSNI       = "no_sni"
	RejectBadSNI      = "bad_sni"
	RejectALPN        = "alpn"
	RejectNoEndpoints = "no_endpoints"
	RejectUnavailable = "upstream_unavailable"
	RejectOverLimit   = "over_limit"
	// RejectRouteOverLimit refuses a connection to a route that has as
	// many open as its DestinationRule's connectionPool.tcp.maxConnections.
	RejectRouteOverLimit = "route_over_limit"
	RejectNoListener     = "no_listener"
	RejectNoData         = "no_data"
	// RejectTooManyHops refuses a tunnel stream that already crossed a
	// tunnel: a connection crosses at most one, so that no two gateways
	// can bounce it between them.
	RejectTooManyHops = "too_many_hops"
	rejectPeekPrefix  = "hello_"
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

// refusal says why a connection is not forwarded and how its client is
// told.
type refusal struct {
	reason string  // the metric label
	alert  byte    // the TLS alert sent first; 0 for none
	key    sni.Key // the routing key, if it was decoded
	args   []any   // more log detail
	err    error   // the cause, if any
	quiet  bool    // counted, not logged
}

// plan is what resolve decided for a routable connection: dial cl's
// endpoints, or carry it to another network through a tunnel.
type plan struct {
	key sni.Key
	cl  *cluster // this network's endpoints; nil when tunneled
	// tn are the tunnels to dial through when tunneled, or, with cl,
	// when none of cl's endpoints connects.
	tn *tunnels
	// withheld: this network has the service but does not export it, so
	// a tunnel that fails is refused as not_exported.
	withheld bool
}

// anyListener is resolve's listener for a stream carried here through a
// tunnel: it arrived on no listener, and routes through any that exposes
// the service, as this network's summary advertises it.
const anyListener = -1

// resolve decides where a connection for key goes, from the listener with
// index li in t's view, or anyListener for a tunneled stream: to an
// eligible endpoint of this network, or, from a listener with tunnels set
// up, to another network when this one has none or does not export the
// service. Otherwise it returns the refusal. It is the one routing
// decision of every path; dial carries it out.
func (g *Gateway) resolve(t *table, li int, key sni.Key) (plan, *refusal) {
	var r *discovery.Route
	var err error
	if li == anyListener {
		r, err = t.view.RouteExposed(key)
	} else {
		r, err = t.view.Route(li, key)
	}
	if err != nil {
		reason := RejectUnavailable
		if re := (*discovery.RouteError)(nil); errors.As(err, &re) {
			reason = string(re.Reason)
		}
		return plan{}, &refusal{reason: reason, alert: alertUnrecognizedName, key: key, err: err}
	}
	cl := t.clusters[r]
	// Connections from other networks' gateways are never carried on:
	// a connection crosses at most one tunnel.
	var tn *tunnels
	if li != anyListener {
		tn = g.tunnels.Load()
	}
	switch {
	case !r.Exported:
		// A service this network does not export keeps its endpoints
		// from the gateway's clients, which may be other networks';
		// other networks that export it may still serve it.
		if tn != nil {
			return plan{key: key, tn: tn, withheld: true}, nil
		}
		return plan{}, &refusal{reason: string(discovery.NotExported), alert: alertUnrecognizedName, key: key,
			args: []any{"network", t.view.Node.Network}}
	case len(cl.members) == 0:
		if tn != nil {
			return plan{key: key, tn: tn}, nil
		}
		return plan{}, &refusal{reason: RejectNoEndpoints, alert: alertHandshakeFailure, key: key,
			args: []any{"network", t.view.Node.Network}}
	}
	// Under an outlier policy, Istio's locality failover ends at other
	// networks' gateways: when no endpoint here connects, the tunnels
	// are next.
	var failover *tunnels
	if cl.outlier() != nil {
		failover = tn
	}
	return plan{key: key, cl: cl, tn: failover}, nil
}

// dial connects p's upstream side: one of its cluster's endpoints, or a
// tunnel stream to another network's gateway, trying up to DialAttempts
// of them; with both, the tunnels when no endpoint connects. client is
// the client's address, for source IP hashing and the far gateway's
// logs. A connection dialed to p's cluster counts against its route's
// MaxConnections until start's flow is released: dial returns that
// cluster, nil when the connection was tunneled. dc, if not nil, bounds
// the TCP connects instead of a context of their own (dialContext).
func (g *Gateway) dial(t *table, p plan, client net.Addr, dc *dialContext) (end, *upstream, *cluster, *refusal) {
	if p.cl != nil {
		if !p.cl.admit() {
			return end{}, nil, nil, routeOverLimit(p)
		}
		up, u, tried, err := g.dialCluster(p.cl, p.key, nil, client, dc)
		if err == nil {
			return up, u, p.cl, nil
		}
		p.cl.leave()
		if p.tn == nil {
			return end{}, nil, nil, unavailable(p, tried, err)
		}
		g.rlog.Warn(g.log, "failover", "no endpoint of this network connects: trying other networks through tunnels", "sni", p.key.SNI(), "tried", tried, "err", err)
	}
	var up end
	var u *upstream
	var tried int
	cl, err := p.tn.cluster(t, p.key)
	if err == nil {
		up, u, tried, err = g.dialCluster(cl, p.key, p.tn, client, nil)
	}
	if err == nil {
		return up, u, nil, nil
	}
	if p.withheld {
		return end{}, nil, nil, &refusal{reason: string(discovery.NotExported), alert: alertUnrecognizedName, key: p.key,
			args: []any{"network", t.view.Node.Network, "via", "tunnel"}, err: err}
	}
	return end{}, nil, nil, &refusal{reason: RejectUnavailable, alert: alertInternalError, key: p.key,
		args: []any{"via", "tunnel", "tried", tried}, err: err}
}

// routeOverLimit refuses a connection to p's route, at its
// MaxConnections.
func routeOverLimit(p plan) *refusal {
	return &refusal{reason: RejectRouteOverLimit, alert: alertInternalError, key: p.key,
		args: []any{"max_connections", p.cl.policy.MaxConnections}}
}

// unavailable refuses a connection to p's cluster, of which tried
// members failed to connect, the last with err.
func unavailable(p plan, tried int, err error) *refusal {
	return &refusal{reason: RejectUnavailable, alert: alertInternalError, key: p.key, args: []any{"tried", tried}, err: err}
}

// dialCluster connects to one of cl's members, trying up to DialAttempts
// of them in the order cluster.pick chooses: endpoints by TCP, or, with
// tn set, other networks' gateways by tunnel stream. It returns the
// number tried, and the last error on failure. dc is dial's.
func (g *Gateway) dialCluster(cl *cluster, key sni.Key, tn *tunnels, client net.Addr, dc *dialContext) (end, *upstream, int, error) {
	var a attempts
	a.begin(cl, addrIP(client))
	dialer := cl.dialerOr(&g.dialer)
	for {
		u := g.nextMember(cl, &a)
		if u == nil {
			return end{}, nil, len(a.tried), a.err
		}
		var up end
		var err error
		if tn != nil {
			up, err = tn.dial(g.cfg.DialTimeout, u, key, client)
		} else {
			var c net.Conn
			if dc != nil {
				// The dialer's Timeout is the same bound, from a
				// moment later: net keeps dc's deadline and makes no
				// context of its own.
				dc.begin(dialer.Timeout)
				c, err = dialer.DialContext(dc, "tcp", u.addr)
				dc.end()
			} else {
				c, err = dialer.Dial("tcp", u.addr)
			}
			if err == nil {
				up = tcpEnd(c.(*net.TCPConn))
			}
		}
		if g.dialed(cl, u, &a, key, tn != nil, err) {
			return up, u, len(a.tried), nil
		}
	}
}

// attempts is the state of one connection's tries at a cluster's
// members, which dialCluster and the event loops' dial share: the
// members tried, in order, and the last error.
type attempts struct {
	buf   [8]int
	tried []int
	src   uint64 // the client's source hash, for cluster.pick
	err   error
}

// begin starts the attempts of a connection from client to cl.
func (a *attempts) begin(cl *cluster, client netip.Addr) {
	a.tried, a.err = a.buf[:0], errNoMember
	if cl.addrHash != nil {
		a.src = sourceHash(client)
	}
}

// nextMember picks the member of cl to try next, counted as active, or
// returns nil once DialAttempts were tried or none is left; a.err then
// says why the last one failed.
func (g *Gateway) nextMember(cl *cluster, a *attempts) *upstream {
	if len(a.tried) >= g.cfg.DialAttempts {
		return nil
	}
	i := cl.pick(a.tried, g.now(), a.src)
	if i < 0 {
		return nil
	}
	a.tried = append(a.tried, i)
	u := cl.members[i]
	u.active.Add(1)
	return u
}

// dialed records the outcome of a connect to u that nextMember picked,
// for outlier detection, and reports whether it connected; a failure is
// counted, logged and no longer active.
func (g *Gateway) dialed(cl *cluster, u *upstream, a *attempts, key sni.Key, tunnel bool, err error) bool {
	g.result(cl, u, err)
	if err == nil {
		return true
	}
	a.err = err
	u.active.Add(-1)
	g.m.ConnectErrors.Inc()
	g.rlog.Warn(g.log, "connect", "upstream connect failed", "upstream", u.addr, "tunnel", tunnel, "sni", key.SNI(), "err", err)
	return false
}

// dialerOr returns the dialer of cl's policy (its connect timeout and
// keep-alive), or def.
func (cl *cluster) dialerOr(def *net.Dialer) *net.Dialer {
	if cl.dialer != nil {
		return cl.dialer
	}
	return def
}

// errNoMember is dialCluster's error when it tried nothing.
var errNoMember = errors.New("no member to try")

// alertRecord is a plaintext TLS record holding one fatal alert.
func alertRecord(alert byte) []byte { return []byte{21, 3, 3, 0, 2, 2, alert} }

// answer is how every refusal is answered: it counts and logs the
// connection under ref's reason and sends c ref's TLS alert, if any. It
// reports whether an alert was written. The caller closes c.
func (g *Gateway) answer(c net.Conn, ref *refusal) bool {
	g.note(c.RemoteAddr().String, ref)
	if ref.alert == 0 {
		return false
	}
	c.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := c.Write(alertRecord(ref.alert))
	return err == nil
}

// note counts and logs the refusal of client's connection under ref's
// reason: the part of answer that every path shares. client formats the
// client's address, only if the refusal is logged: a quiet one (a health
// check) allocates nothing.
func (g *Gateway) note(client func() string, ref *refusal) {
	g.m.reject(ref.reason)
	if ref.quiet {
		return
	}
	args := []any{"reason", ref.reason, "client", client()}
	if ref.key.Host != "" {
		args = append(args, "key", ref.key.String())
	}
	args = append(args, ref.args...)
	if ref.err != nil {
		args = append(args, "err", ref.err)
	}
	g.rlog.Warn(g.log, ref.reason, "connection refused", args...)
}

// refuse answers a client of this gateway that will not be forwarded and
// closes its connection.
func (g *Gateway) refuse(c *net.TCPConn, ref *refusal) {
	g.answer(c, ref)
	c.Close()
}

// refuseFlow answers the client side of f, a client of this gateway or a
// stream another gateway carried here.
func (g *Gateway) refuseFlow(f *flow, ref *refusal) {
	if f.client.tcp != nil {
		g.refuse(f.client.tcp, ref)
		return
	}
	g.refuseStream(f.client.c, ref)
}

// refuseStream answers a stream carried here from another network as
// refuse answers a local client, the alert travelling back through the
// tunnel to the client. It half-closes, then waits a moment for the far
// gateway to close its side too, so that closing the stream (the tunnel
// handler's job) does not reset it before the alert has been read there.
func (g *Gateway) refuseStream(s halfConn, ref *refusal) {
	// A copy: refusals may be shared (healthCheck), and appending to
	// args in place would write into their backing array.
	r := *ref
	r.args = append(slices.Clip(r.args), "via", "tunnel")
	ref = &r
	if !g.answer(s, ref) || s.CloseWrite() != nil {
		return
	}
	s.SetReadDeadline(time.Now().Add(time.Second))
	var b [512]byte
	for {
		if _, err := s.Read(b[:]); err != nil {
			return
		}
	}
}
