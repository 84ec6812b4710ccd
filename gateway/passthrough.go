package gateway

import (
	"math/rand/v2"
	"strings"

	"github.com/ewgate/ewgate/discovery"
)

// routePassthrough resolves the plain server name of a connection to a
// PASSTHROUGH listener by the listener's VirtualService tls routes, to the
// endpoints of the chosen destination in this network, or refuses it. No
// ALPN is required and no tunnel is used: the client's TLS is its own,
// not Istio's mTLS, and another network's gateway could not route the
// plain name. serverName is a view of the pooled hello buffer (sni.Hello):
// the refusals copy it.
func (g *Gateway) routePassthrough(t *table, l *discovery.PassthroughListener, serverName string) (plan, *refusal) {
	r, ok := l.Match(serverName)
	if !ok {
		return plan{}, &refusal{reason: string(discovery.NoTLSRoute), alert: alertUnrecognizedName, args: []any{"sni", strings.Clone(serverName), "port", l.Port}}
	}
	d := pickDestination(r.Destinations)
	cl := t.clusters[d.Route] // every destination has one: buildTable makes them from PassthroughRoutes
	if len(cl.members) == 0 {
		return plan{}, &refusal{reason: RejectNoEndpoints, alert: alertHandshakeFailure, key: d.Route.Key, args: []any{"sni", strings.Clone(serverName),
			"virtualservice", r.VirtualService.String(), "network", t.view.Node.Network}}
	}
	return plan{key: d.Route.Key, cl: cl}, nil
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
