package discovery

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ewgate/ewgate/sni"
)

// PassthroughListener is a port the node serves for one PASSTHROUGH
// Gateway server: a connection is routed by the plain server name of its
// ClientHello to the destinations of the VirtualService tls match that
// selects it, and its TLS is never terminated. Unlike an AUTO_PASSTHROUGH
// Listener it serves only endpoints of this network, of any tls mode (what
// it forwards is the client's own TLS, not Istio mTLS), and never carries a
// connection to another network: the far gateway could not route the plain
// name.
type PassthroughListener struct {
	Port    uint32
	Server  Server
	Gateway *Gateway
	// Routes are the tls matches bound to the server, in the order Istio
	// considers them; a match whose server names an earlier one claimed
	// is left out (see View.Ignored).
	Routes []*TLSRoute

	exact    map[string]*TLSRoute // by server name
	wildcard map[string]*TLSRoute // by the suffix after "*", e.g. ".example.com"
	any      *TLSRoute            // sniHosts "*": connections no other match takes
}

// TLSRoute is one VirtualService tls match bound to a passthrough listener,
// with the destinations of its rule.
type TLSRoute struct {
	// VirtualService is the resource the match is in, and Field where.
	VirtualService Source
	Field          string
	// SNIHosts are the server names the match claims on the listener.
	SNIHosts     []string
	Destinations []Destination
}

// Destination is one weighted destination of a TLSRoute: a service port
// and subset with this network's endpoints for it, of any tls mode.
type Destination struct {
	// Route holds the destination's key (service host, port, subset) and
	// its targets; it has no targets if the catalog has no such service,
	// port or subset, or no endpoint of this network for it.
	Route *Route
	// Weight is the share of connections, relative to the route's other
	// destinations; a route with one destination gets every connection.
	Weight uint32
}

// Ignored is a rule of the config that the view does not serve, and why,
// for the operator.
type Ignored struct {
	Source Source
	Field  string
	Reason string
}

// Reasons a passthrough listener refuses a connection, beyond those of
// Route; values are metric labels.
const (
	// NoTLSRoute: no VirtualService tls match of the listener selects the
	// server name.
	NoTLSRoute Reason = "no_tls_route"
)

// Match returns the route for a connection with the given server name ("" if
// the client sent none), as Envoy chooses a filter chain: an exact name
// first, then the longest "*.suffix" wildcard, then a "*" match.
func (l *PassthroughListener) Match(serverName string) (*TLSRoute, bool) {
	name := strings.ToLower(serverName)
	if name != "" {
		if r, ok := l.exact[name]; ok {
			return r, true
		}
		for i := strings.IndexByte(name, '.'); i >= 0; {
			if r, ok := l.wildcard[name[i:]]; ok {
				return r, true
			}
			j := strings.IndexByte(name[i+1:], '.')
			if j < 0 {
				break
			}
			i += 1 + j
		}
	}
	return l.any, l.any != nil
}

// gatewayName is the gateway's name as VirtualServices refer to it.
func gatewayName(g *Gateway) string { return g.Source.Namespace + "/" + g.Source.Name }

// bindPassthrough builds the routes of passthrough listener l from the
// catalog's VirtualServices, as Istio builds a PASSTHROUGH server's filter
// chains (pilot/pkg/networking/core/gateway.go,
// buildGatewayNetworkFiltersFromTLSRoutes): the VirtualServices bound to
// the gateway and visible in its namespace, those whose hosts meet the
// server's, each tls match whose port and gateways admit the server, and
// of two matches claiming one server name the first. The Gateway's
// namespace stands for Istio's proxy namespace.
func (v *View) bindPassthrough(c *Catalog, l *PassthroughListener, dests map[RouteDestination]*Route) {
	l.exact = make(map[string]*TLSRoute)
	l.wildcard = make(map[string]*TLSRoute)
	gw := gatewayName(l.Gateway)
	ns := l.Gateway.Source.Namespace
	claimed := make(map[string]bool)
	for _, vs := range visibleVirtualServices(c.VirtualServices, gw, ns) {
		if !serverHostsMeet(l.Server.Hosts, ns, vs) {
			continue
		}
		for i, rule := range vs.TLS {
			if len(rule.Routes) == 0 {
				continue
			}
			for j, m := range rule.Matches {
				if m.Port != 0 && m.Port != l.Port || len(m.Gateways) > 0 && !slices.Contains(m.Gateways, gw) {
					continue
				}
				field := fmt.Sprintf("spec.tls[%d].match[%d]", i, j)
				var dup []string
				for _, h := range m.SNIHosts {
					if claimed[h] {
						dup = append(dup, h)
					}
				}
				if len(dup) > 0 {
					// Istio keeps the first match of a server name and skips
					// the whole later one.
					v.Ignored = append(v.Ignored, Ignored{Source: vs.Source, Field: field,
						Reason: fmt.Sprintf("on port %d of %v, server names %v are already routed by an earlier match", l.Port, l.Gateway.Source, dup)})
					continue
				}
				r := &TLSRoute{VirtualService: vs.Source, Field: field, SNIHosts: m.SNIHosts}
				for k, d := range rule.Routes {
					route, why := v.destination(d, dests)
					if why != "" {
						v.Ignored = append(v.Ignored, Ignored{Source: vs.Source, Field: fmt.Sprintf("spec.tls[%d].route[%d].destination", i, k), Reason: why})
					}
					w := uint32(d.Weight) // never negative: refused at load
					if len(rule.Routes) == 1 {
						w = 1
					}
					r.Destinations = append(r.Destinations, Destination{Route: route, Weight: w})
				}
				for _, h := range m.SNIHosts {
					claimed[h] = true
					switch {
					case h == "*":
						l.any = r
					case strings.HasPrefix(h, "*."):
						l.wildcard[h[1:]] = r
					default:
						l.exact[h] = r
					}
				}
				l.Routes = append(l.Routes, r)
			}
		}
	}
}

// visibleVirtualServices returns the VirtualServices bound to gateway gw
// that proxies in namespace ns see, in Istio's order
// (PushContext.VirtualServicesForGateway): those private to ns, those
// exported to it by name, then the public ones, each in catalog order.
func visibleVirtualServices(all []*VirtualService, gw, ns string) []*VirtualService {
	var privateVS, namedVS, publicVS []*VirtualService
	for _, vs := range all {
		if !slices.Contains(vs.Gateways, gw) {
			continue
		}
		switch exportVisibility(vs.ExportTo, vs.Source.Namespace, ns) {
		case private:
			privateVS = append(privateVS, vs)
		case named:
			namedVS = append(namedVS, vs)
		case public:
			publicVS = append(publicVS, vs)
		}
	}
	return slices.Concat(privateVS, namedVS, publicVS)
}

// serverHostsMeet reports whether one of the VirtualService's hosts meets
// one of the server's, as Istio's pickMatchingGatewayHosts decides: a
// server host "ns/host" admits only VirtualServices of namespace ns, and
// the hosts meet when either one's wildcard covers the other. gwNS is the
// Gateway's namespace, which "./host" names.
func serverHostsMeet(server []HostPattern, gwNS string, vs *VirtualService) bool {
	for _, sh := range server {
		if !sh.admitsNamespace(vs.Source.Namespace, gwNS) {
			continue
		}
		for _, h := range vs.Hosts {
			if hostsOverlap(sh.Host, h) {
				return true
			}
		}
	}
	return false
}

// destination returns the route of one tls route destination, shared by
// every listener and rule that names it, and, the first time, why it has
// no targets when that is a mistake in the config.
func (v *View) destination(d RouteDestination, dests map[RouteDestination]*Route) (*Route, string) {
	key := RouteDestination{Host: d.Host, Port: d.Port, Subset: d.Subset}
	var svc *Service
	if sv, ok := v.services[d.Host]; ok {
		svc = sv.svc
	}
	why := ""
	var port Port
	var subset Subset
	switch {
	case svc == nil:
		why = fmt.Sprintf("no service %s in the catalog", d.Host)
	case d.Port == 0 && len(svc.Ports) != 1:
		why = fmt.Sprintf("port required: service %s has %d ports", d.Host, len(svc.Ports))
	default:
		var ok bool
		if d.Port == 0 {
			port, ok = svc.Ports[0], true
			key.Port = port.Number
		} else {
			port, ok = svc.Port(d.Port)
		}
		if !ok {
			why = fmt.Sprintf("service %s has no port %d", d.Host, d.Port)
		} else if d.Subset != "" {
			if subset, ok = svc.Subset(d.Subset); !ok {
				why = fmt.Sprintf("service %s has no subset %q (DestinationRule)", d.Host, d.Subset)
			}
		}
	}
	if r, ok := dests[key]; ok {
		return r, "" // reported when it was made
	}
	r := &Route{Key: sni.Key{Host: key.Host, Port: uint16(key.Port), Subset: key.Subset}, Service: svc}
	dests[key] = r
	v.passthroughRoutes = append(v.passthroughRoutes, r)
	if why != "" || port.Origin.Remote() || subset.Origin.Remote() {
		return r, why
	}
	r.Policy = translatePolicy(resolvePolicy(svc.policy, subset.policy, port.Number))
	// Any tls mode: what passes through is the client's own TLS.
	r.Targets = targets(svc, port, subset, v.Node.Network, true)
	return r, ""
}

// PassthroughRoutes returns the routes of every passthrough listener's
// destinations, once each.
func (v *View) PassthroughRoutes() []*Route { return v.passthroughRoutes }
