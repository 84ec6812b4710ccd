package gateway

import (
	"slices"
	"strings"
	"time"

	"github.com/ewgate/ewgate/discovery"
)

// DebugConfig describes what the gateway serves now, for /debug/config.
type DebugConfig struct {
	Network   string          `json:"network"`
	Listeners []DebugListener `json:"listeners"`
	// Services is the merged catalog: this gateway's own definitions and
	// those other networks gossip, each part saying where it came from.
	Services []DebugService `json:"services"`
	// Conflicts are the definitions the merge did not use, and why.
	Conflicts []discovery.Conflict `json:"conflicts"`
	Routes    []DebugRoute         `json:"routes"`
	// TunnelPeers are the other networks' gateways that tunneled
	// connections were tried on, by tunnel address, with their open
	// streams and ejection (Weight is per key, so 0 here).
	TunnelPeers []DebugEndpoint `json:"tunnelPeers,omitempty"`
}

// DebugService is one service of the merged catalog. Each From is "local"
// (with the resource for the service itself) or "network N via gateway
// G".
type DebugService struct {
	Host      string        `json:"host"`
	Namespace string        `json:"namespace"`
	ExportTo  []string      `json:"exportTo,omitempty"`
	From      string        `json:"from"`
	Ports     []DebugPort   `json:"ports"`
	Subsets   []DebugSubset `json:"subsets,omitempty"`
	// RemoteServiceAccounts are the SPIFFE IDs other networks report for
	// their endpoints of the service.
	RemoteServiceAccounts []string `json:"remoteServiceAccounts,omitempty"`
}

// DebugPort is one port of a DebugService.
type DebugPort struct {
	Number   uint32           `json:"number"`
	Name     string           `json:"name,omitempty"`
	Protocol string           `json:"protocol,omitempty"`
	From     discovery.Origin `json:"from"`
}

// DebugSubset is one subset of a DebugService.
type DebugSubset struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	From   discovery.Origin  `json:"from"`
}

// DebugListener is one served port.
type DebugListener struct {
	Port    uint32   `json:"port"`
	Address string   `json:"address,omitempty"`
	Gateway string   `json:"gateway"`
	Mode    string   `json:"mode"`
	Hosts   []string `json:"hosts"`
	// TLSRoutes are a PASSTHROUGH listener's VirtualService tls matches,
	// in the order they claimed their server names.
	TLSRoutes []DebugTLSRoute `json:"tlsRoutes,omitempty"`
}

// DebugTLSRoute is one VirtualService tls match of a PASSTHROUGH listener.
type DebugTLSRoute struct {
	VirtualService string             `json:"virtualService"`
	Field          string             `json:"field"`
	SNIHosts       []string           `json:"sniHosts"`
	Destinations   []DebugDestination `json:"destinations"`
}

// DebugDestination is one weighted destination of a DebugTLSRoute.
type DebugDestination struct {
	Host      string          `json:"host"`
	Port      uint16          `json:"port"`
	Subset    string          `json:"subset,omitempty"`
	Weight    uint32          `json:"weight"`
	Endpoints []DebugEndpoint `json:"endpoints"`
}

// DebugRoute is one service, port and subset with its eligible endpoints.
type DebugRoute struct {
	SNI       string   `json:"sni"`
	Service   string   `json:"service"`
	Namespace string   `json:"namespace"`
	Port      uint16   `json:"port"`
	Subset    string   `json:"subset,omitempty"`
	ExportTo  []string `json:"exportTo,omitempty"`
	// Exported is false when this network does not export the service:
	// its endpoints are listed but never forwarded to from the listeners
	// or tunnels.
	Exported bool `json:"exported"`
	// From is where the route's service, port or subset was defined:
	// "local", or the other network that defines it (the route then
	// leads to that network and has no endpoints here).
	From      discovery.Origin `json:"from"`
	Endpoints []DebugEndpoint  `json:"endpoints"`
}

// DebugEndpoint is one eligible endpoint and its live state.
type DebugEndpoint struct {
	Address      string     `json:"address"`
	Weight       uint32     `json:"weight"`
	Locality     string     `json:"locality,omitempty"`
	Active       int64      `json:"active"`
	Ejected      bool       `json:"ejected"`
	EjectedUntil *time.Time `json:"ejectedUntil,omitempty"`
}

// Debug returns a snapshot of the gateway's listeners, routes and endpoint
// state; nil before the first Apply.
func (g *Gateway) Debug() *DebugConfig {
	t := g.table.Load()
	if t == nil {
		return nil
	}
	addrs := g.Addrs()
	now := time.Now().UnixNano()
	d := &DebugConfig{Network: t.view.Node.Network, Listeners: []DebugListener{}, Services: []DebugService{},
		Conflicts: append([]discovery.Conflict{}, t.view.Conflicts...), Routes: []DebugRoute{}}
	for _, svc := range t.view.Services() {
		d.Services = append(d.Services, debugService(svc))
	}
	for _, l := range t.view.Listeners {
		dl := DebugListener{Port: l.Port, Gateway: l.Gateway.Source.String(), Mode: string(l.Server.Mode)}
		if a, ok := addrs[l.Port]; ok {
			dl.Address = a.String()
		}
		for _, h := range l.Server.Hosts {
			dl.Hosts = append(dl.Hosts, h.String())
		}
		d.Listeners = append(d.Listeners, dl)
	}
	for _, l := range t.view.Passthrough {
		dl := DebugListener{Port: l.Port, Gateway: l.Gateway.Source.String(), Mode: string(l.Server.Mode), TLSRoutes: []DebugTLSRoute{}}
		if a, ok := addrs[l.Port]; ok {
			dl.Address = a.String()
		}
		for _, h := range l.Server.Hosts {
			dl.Hosts = append(dl.Hosts, h.String())
		}
		for _, r := range l.Routes {
			dr := DebugTLSRoute{VirtualService: r.VirtualService.String(), Field: r.Field, SNIHosts: r.SNIHosts}
			for _, dst := range r.Destinations {
				dr.Destinations = append(dr.Destinations, DebugDestination{Host: dst.Route.Key.Host, Port: dst.Route.Key.Port,
					Subset: dst.Route.Key.Subset, Weight: dst.Weight, Endpoints: debugEndpoints(t.clusters[dst.Route], dst.Route, now)})
			}
			dl.TLSRoutes = append(dl.TLSRoutes, dr)
		}
		d.Listeners = append(d.Listeners, dl)
	}
	for _, r := range t.view.Routes() {
		dr := DebugRoute{SNI: r.Key.SNI(), Service: r.Service.Host, Namespace: r.Service.Namespace,
			Port: r.Key.Port, Subset: r.Key.Subset, ExportTo: r.Service.ExportTo, Exported: r.Exported, From: r.Origin,
			Endpoints: debugEndpoints(t.clusters[r], r, now)}
		d.Routes = append(d.Routes, dr)
	}
	if tn := g.tunnels.Load(); tn != nil {
		tn.mu.Lock()
		for _, u := range tn.state {
			d.TunnelPeers = append(d.TunnelPeers, u.debug(0, "", now))
		}
		tn.mu.Unlock()
		slices.SortFunc(d.TunnelPeers, func(a, b DebugEndpoint) int { return strings.Compare(a.Address, b.Address) })
	}
	return d
}

// debug describes u's live state.
func (u *upstream) debug(weight uint32, locality string, now int64) DebugEndpoint {
	de := DebugEndpoint{Address: u.addr, Weight: weight, Locality: locality, Active: u.active.Load()}
	if until := u.ejectedUntil.Load(); until > now {
		tu := time.Unix(0, until)
		de.Ejected, de.EjectedUntil = true, &tu
	}
	return de
}

func debugService(svc *discovery.Service) DebugService {
	ds := DebugService{Host: svc.Host, Namespace: svc.Namespace, ExportTo: svc.ExportTo, From: svc.Origin.String(),
		Ports: []DebugPort{}, RemoteServiceAccounts: svc.RemoteAccounts}
	if !svc.Origin.Remote() {
		ds.From = "local: " + svc.Source.String()
	}
	for _, p := range svc.Ports {
		ds.Ports = append(ds.Ports, DebugPort{Number: p.Number, Name: p.Name, Protocol: p.Protocol, From: p.Origin})
	}
	for _, ss := range svc.Subsets {
		ds.Subsets = append(ds.Subsets, DebugSubset{Name: ss.Name, Labels: ss.Labels, From: ss.Origin})
	}
	return ds
}

// debugEndpoints describes the members of cl, the cluster of route r.
func debugEndpoints(cl *cluster, r *discovery.Route, now int64) []DebugEndpoint {
	out := []DebugEndpoint{}
	for i, u := range cl.members {
		out = append(out, u.debug(uint32(cl.weight(i)), r.Targets[i].Locality, now))
	}
	return out
}
