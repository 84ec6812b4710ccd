package gateway

import (
	"math/rand/v2"
	"net"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/sni"
)

// routePassthrough resolves the hello of a connection to a PASSTHROUGH
// listener by its plain server name, as the listener's VirtualService tls
// routes say, and connects to an endpoint of the chosen destination in
// this network. No ALPN is required and no tunnel is used: the client's
// TLS is its own, not Istio's mTLS, and another network's gateway could
// not route the plain name. On failure it refuses the client itself and
// returns nils.
func (g *Gateway) routePassthrough(l *discovery.PassthroughListener, t *table, c *net.TCPConn, hello sni.Hello) (*net.TCPConn, *upstream) {
	r, ok := l.Match(hello.ServerName)
	if !ok {
		g.refuse(c, string(discovery.NoTLSRoute), alertUnrecognizedName, "sni", hello.ServerName, "port", l.Port)
		return nil, nil
	}
	d := pickDestination(r.Destinations)
	cl := t.clusters[d.Route]
	if cl == nil || len(cl.members) == 0 {
		g.refuse(c, RejectNoEndpoints, alertHandshakeFailure, "sni", hello.ServerName, "destination", d.Route.Key.Host,
			"port", d.Route.Key.Port, "virtualservice", r.VirtualService.String(), "network", t.view.Node.Network)
		return nil, nil
	}
	up, u, tried := g.dialCluster(cl, hello.ServerName)
	if up == nil {
		g.refuse(c, RejectUnavailable, alertInternalError, "sni", hello.ServerName, "destination", d.Route.Key.Host, "tried", tried)
	}
	return up, u
}

// pickDestination chooses one of ds with probability proportional to its
// weight; when every weight is 0 each is as likely.
func pickDestination(ds []discovery.Destination) discovery.Destination {
	if len(ds) == 1 {
		return ds[0]
	}
	var total uint64
	for _, d := range ds {
		total += uint64(d.Weight)
	}
	if total == 0 {
		return ds[rand.IntN(len(ds))]
	}
	r := rand.Uint64N(total)
	for _, d := range ds {
		if r < uint64(d.Weight) {
			return d
		}
		r -= uint64(d.Weight)
	}
	return ds[len(ds)-1]
}
