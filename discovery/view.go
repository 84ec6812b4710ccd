package discovery

import (
	"cmp"
	"fmt"
	"net"
	"slices"
	"strconv"

	"github.com/ewgate/ewgate/sni"
)

// Node describes the gateway a View is built for.
type Node struct {
	// Network is the node's network; endpoints of other networks are never
	// dialed directly. Endpoints with no network belong to every network.
	Network string
	// Labels are matched by Gateway selectors.
	Labels map[string]string
	// AnyTLSMode admits endpoints without the security.istio.io/tlsMode=istio
	// label. Istio never does: such endpoints cannot terminate the client's
	// mTLS.
	AnyTLSMode bool
	// ExportDefault says whether services without an ExportLabel may be
	// reached from other networks; "" is ExportAll.
	ExportDefault ExportDefault
	// TrustDomain is the SPIFFE trust domain of the network's workloads,
	// used to turn endpoints' service accounts into SPIFFE IDs in
	// summaries; "" is DefaultTrustDomain.
	TrustDomain string
}

// DefaultTrustDomain is Istio's default trust domain.
const DefaultTrustDomain = "cluster.local"

// Listener is a port the node serves for one Gateway server.
type Listener struct {
	Port    uint32
	Server  Server
	Gateway *Gateway
}

// Target is an endpoint address to dial, with its load-balancing weight.
type Target struct {
	// Address is "host:port", from the catalog.
	Address  string
	Weight   uint32
	Locality string
}

// Route is the set of local targets for one routing key.
type Route struct {
	Key     sni.Key
	Service *Service
	Targets []Target
	// Exported reports whether the gateway may forward connections that
	// reach its listeners or tunnels to Targets: the service is exported
	// (ExportLabel, Node.ExportDefault). Targets are listed either way, for
	// resolution inside this network.
	Exported bool
	// Origin is where the route's service, port or subset was defined
	// when another network did (the first of them that is remote); such a
	// route has no Targets. Zero for routes this gateway's config defines.
	Origin Origin
	// Policy is the DestinationRule traffic policy of the route's port
	// and subset.
	Policy Policy
}

// Reason says why a key does not route; its value is a stable metric label.
type Reason string

// Reasons a routing key is refused.
const (
	UnknownService Reason = "unknown_service"
	HostNotExposed Reason = "host_not_exposed"
	NotExported    Reason = "not_exported"
	UnknownPort    Reason = "unknown_port"
	UnknownSubset  Reason = "unknown_subset"
)

// Reasons returns every Reason a routing key (View.Route) or a server name
// (PassthroughListener.Match) is refused for, in a stable order, for
// pre-registering metric labels.
func Reasons() []Reason {
	return []Reason{UnknownService, HostNotExposed, NotExported, UnknownPort, UnknownSubset, NoTLSRoute}
}

// RouteError reports a routing key the view refuses.
type RouteError struct {
	Key    sni.Key
	Reason Reason
}

func (e *RouteError) Error() string {
	return fmt.Sprintf("route %s: %s", e.Key, e.Reason)
}

// View is what one node serves: its listeners and, for each service, port
// and subset, the eligible endpoints of its own network. It is immutable.
type View struct {
	Node Node
	// Listeners are the node's AUTO_PASSTHROUGH ports, by port number.
	Listeners []*Listener
	// Passthrough are the node's PASSTHROUGH ports, by port number.
	Passthrough []*PassthroughListener
	// Ignored are the rules of the config the view does not serve (a tls
	// match whose server names an earlier one took, a destination the
	// catalog lacks), for the operator.
	Ignored []Ignored
	// Conflicts are the disagreements between networks' definitions that
	// the catalog's merge settled (see [Catalog.Merge]).
	Conflicts []Conflict
	services  map[string]*serviceView
	routes    []*Route
	hosts     []string // service hosts, in catalog order
	// passthroughRoutes are the Passthrough listeners' destinations.
	passthroughRoutes []*Route
}

type serviceView struct {
	svc *Service
	// exposed[i] reports whether Listeners[i] may route to the service.
	exposed []bool
	routes  map[portSubset]*Route
}

type portSubset struct {
	port   uint16
	subset string
}

// View builds the node's view of the catalog. It fails when Gateways that
// select the node claim the same port.
func (c *Catalog) View(n Node) (*View, error) {
	v := &View{Node: n, Conflicts: c.Conflicts, services: make(map[string]*serviceView, len(c.Services))}
	byPort := make(map[uint32]*Gateway)
	for _, g := range c.Gateways {
		if !g.Selects(n.Labels) {
			continue
		}
		for _, s := range g.Servers {
			if prev, ok := byPort[s.Port]; ok {
				return nil, fmt.Errorf("%v: port %d is already served by %v", g.Source, s.Port, prev.Source)
			}
			byPort[s.Port] = g
			if s.Mode == Passthrough {
				v.Passthrough = append(v.Passthrough, &PassthroughListener{Port: s.Port, Server: s, Gateway: g})
				continue
			}
			v.Listeners = append(v.Listeners, &Listener{Port: s.Port, Server: s, Gateway: g})
		}
	}
	slices.SortFunc(v.Listeners, func(a, b *Listener) int { return cmp.Compare(a.Port, b.Port) })
	for _, svc := range c.Services {
		sv := &serviceView{svc: svc, routes: make(map[portSubset]*Route)}
		for _, l := range v.Listeners {
			sv.exposed = append(sv.exposed, exposes(l, svc))
		}
		for _, p := range svc.Ports {
			sv.add(v, n, p, Subset{})
			for _, ss := range svc.Subsets {
				sv.add(v, n, p, ss)
			}
		}
		v.services[svc.Host] = sv
		v.hosts = append(v.hosts, svc.Host)
	}
	slices.SortFunc(v.Passthrough, func(a, b *PassthroughListener) int { return cmp.Compare(a.Port, b.Port) })
	dests := make(map[RouteDestination]*Route)
	for _, l := range v.Passthrough {
		v.bindPassthrough(c, l, dests)
	}
	return v, nil
}

func (sv *serviceView) add(v *View, n Node, p Port, ss Subset) {
	r := &Route{Key: sni.Key{Host: sv.svc.Host, Port: uint16(p.Number), Subset: ss.Name}, Service: sv.svc,
		Exported: sv.svc.exported(n.ExportDefault), Policy: translatePolicy(resolvePolicy(sv.svc.policy, ss.policy, p.Number))}
	for _, o := range []Origin{sv.svc.Origin, p.Origin, ss.Origin} {
		if o.Remote() {
			r.Origin = o
			break
		}
	}
	sv.routes[portSubset{r.Key.Port, r.Key.Subset}] = r
	v.routes = append(v.routes, r)
	if r.Origin.Remote() {
		// Only the networks that define the port or subset know which of
		// their endpoints serve it.
		return
	}
	r.Targets = targets(sv.svc, p, ss, n.Network, n.AnyTLSMode)
}

// targets returns svc's endpoints in network for port p and subset ss
// (the zero Subset: all), those without Istio's tlsMode label only if
// anyTLSMode: what a route of each listener kind may dial.
func targets(svc *Service, p Port, ss Subset, network string, anyTLSMode bool) []Target {
	var out []Target
	for _, ep := range svc.Endpoints {
		if ep.Network != "" && ep.Network != network {
			continue
		}
		if !anyTLSMode && ep.Labels[TLSModeLabel] != TLSModeIstio {
			continue
		}
		if !SelectorMatches(ss.Labels, ep.Labels) {
			continue
		}
		out = append(out, Target{
			Address:  net.JoinHostPort(ep.Address, strconv.FormatUint(uint64(ep.TargetPort(p)), 10)),
			Weight:   max(ep.Weight, 1),
			Locality: ep.Locality,
		})
	}
	return out
}

// exposes reports whether listener l may route to svc: one of its server's
// hosts must admit the service and the service must be exported to the
// Gateway's namespace.
func exposes(l *Listener, svc *Service) bool {
	gwNS := l.Gateway.Source.Namespace
	if !svc.ExportedTo(gwNS) {
		return false
	}
	for _, h := range l.Server.Hosts {
		if h.Matches(svc.Host, svc.Namespace, gwNS) {
			return true
		}
	}
	return false
}

// Route returns the route for key on the listener with index li in
// Listeners, or a *RouteError saying why there is none. A route may have no
// targets: the service exists but has no eligible endpoint here.
func (v *View) Route(li int, key sni.Key) (*Route, error) {
	sv, ok := v.services[key.Host]
	if !ok {
		return nil, &RouteError{Key: key, Reason: UnknownService}
	}
	if !sv.exposed[li] {
		if !sv.svc.ExportedTo(v.Listeners[li].Gateway.Source.Namespace) {
			return nil, &RouteError{Key: key, Reason: NotExported}
		}
		return nil, &RouteError{Key: key, Reason: HostNotExposed}
	}
	r, ok := sv.routes[portSubset{key.Port, key.Subset}]
	if !ok {
		if _, ok := sv.svc.Port(uint32(key.Port)); !ok {
			return nil, &RouteError{Key: key, Reason: UnknownPort}
		}
		return nil, &RouteError{Key: key, Reason: UnknownSubset}
	}
	return r, nil
}

// RouteExposed returns the route for key of a connection that arrived on
// no listener, such as a stream another network's gateway carried here:
// it routes through any of Listeners that exposes the service, the rule
// by which Summarize advertises services to other networks. It fails as
// Route does; when no listener exposes the service, with the reason the
// first listener gives (HostNotExposed without listeners).
func (v *View) RouteExposed(key sni.Key) (*Route, error) {
	sv, ok := v.services[key.Host]
	if !ok {
		return nil, &RouteError{Key: key, Reason: UnknownService}
	}
	li := sv.exposedOn()
	if li < 0 {
		if len(v.Listeners) == 0 {
			return nil, &RouteError{Key: key, Reason: HostNotExposed}
		}
		li = 0
	}
	return v.Route(li, key)
}

// exposedOn returns the index of the first listener that exposes the
// service, or -1: other networks may reach it only if one does.
func (sv *serviceView) exposedOn() int { return slices.Index(sv.exposed, true) }

// Routes returns every route of the view, in catalog order.
func (v *View) Routes() []*Route { return v.routes }

// Services returns every service of the view, local and merged from
// other networks, in catalog order.
func (v *View) Services() []*Service {
	out := make([]*Service, len(v.hosts))
	for i, h := range v.hosts {
		out[i] = v.services[h].svc
	}
	return out
}
