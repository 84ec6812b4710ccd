package discovery

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Definition is one service as a gateway of another network defines it in
// its summary.
type Definition struct {
	Origin  Origin
	Service *ServiceSummary
}

// Conflict is a disagreement between two definitions of one service that
// Merge settled: the part as Kept defines it stays, Ignored's is not used.
type Conflict struct {
	Host         string `json:"host"`
	Part         string `json:"part"` // "namespace", "exportTo", "port 9080", "subset v1"
	Kept         Origin `json:"kept"`
	KeptValue    string `json:"keptValue"`
	Ignored      Origin `json:"ignored"`
	IgnoredValue string `json:"ignoredValue"`
}

// Definitions returns the services that live gateways of networks other
// than network define, in the order Merge gives them precedence: by
// network name, then gateway name, then host.
func Definitions(network string, gws []RemoteGateway) []Definition {
	order := make([]*RemoteGateway, 0, len(gws))
	n := 0
	for i := range gws {
		if g := &gws[i]; g.Network != network { // this network's gateways serve its own endpoints
			order = append(order, g)
			n += len(g.Summary.Services)
		}
	}
	slices.SortFunc(order, func(a, b *RemoteGateway) int {
		return cmp.Or(cmp.Compare(a.Network, b.Network), cmp.Compare(a.Node, b.Node))
	})
	out := make([]Definition, 0, n)
	for _, g := range order {
		// A canonical summary is sorted by host already.
		for j := range g.Summary.Services {
			out = append(out, Definition{Origin: Origin{Network: g.Network, Gateway: g.Node}, Service: &g.Summary.Services[j]})
		}
	}
	return out
}

// SameDefinitions reports whether a and b define the same services the
// same way, health counts aside: merging either gives the same catalog.
func SameDefinitions(a, b []Definition) bool {
	return slices.EqualFunc(a, b, func(x, y Definition) bool {
		// An entry gossip did not replace is the same value.
		return x.Origin == y.Origin && (x.Service == y.Service || sameDefinition(x.Service, y.Service))
	})
}

func sameDefinition(a, b *ServiceSummary) bool {
	return a.Host == b.Host && a.Namespace == b.Namespace && slices.Equal(a.ExportTo, b.ExportTo) &&
		slices.Equal(a.ServiceAccounts, b.ServiceAccounts) &&
		slices.EqualFunc(a.Ports, b.Ports, func(p, q PortSummary) bool {
			return p.Port == q.Port && p.Name == q.Name && p.Protocol == q.Protocol
		}) &&
		slices.EqualFunc(a.Subsets, b.Subsets, func(s, t SubsetDefinition) bool {
			return s.Name == t.Name && maps.Equal(s.Labels, t.Labels)
		})
}

// Merge returns the mesh-wide catalog: c (this gateway's own config) with
// the services, ports and subsets that defs (from [Definitions]) add. A
// service is the same service in every network that defines the same host
// (Istio's namespace sameness), so:
//
//   - a host c lacks becomes a service defined by its first definition,
//     with no endpoints here: the gateway admits it by its own Gateway
//     hosts and the service's exportTo, and routes it to other networks;
//   - ports and subsets are the union of all definitions; a port number or
//     subset name defined more than once takes the first definition's
//     name and protocol, or labels;
//   - namespace and exportTo come from the first definition.
//
// "First" is by precedence: this gateway's own config, then other
// networks by name, then their gateways by name. The result depends only
// on the definitions, never on the order they arrived in, so every
// gateway that sees the same definitions merges them the same way and
// the answer does not flap. Each disagreement with a definition of lower
// precedence is listed in the result's Conflicts; parts that only other
// networks define carry their Origin and never route to this network's
// endpoints. c is not modified.
func (c *Catalog) Merge(defs []Definition) *Catalog {
	if len(defs) == 0 {
		return c
	}
	out := &Catalog{Gateways: c.Gateways, VirtualServices: c.VirtualServices, Services: make([]*Service, 0, len(c.Services))}
	byHost := make(map[string]*Service, len(c.Services))
	for _, svc := range c.Services {
		cp := *svc
		cp.Ports, cp.Subsets = slices.Clip(svc.Ports), slices.Clip(svc.Subsets)
		byHost[svc.Host] = &cp
		out.Services = append(out.Services, &cp)
	}
	for _, d := range defs {
		svc, ok := byHost[d.Service.Host]
		if !ok {
			svc = &Service{
				Source:    Source{Kind: "ServiceEntry", Namespace: d.Service.Namespace},
				Host:      d.Service.Host,
				Namespace: d.Service.Namespace,
				ExportTo:  slices.Clone(d.Service.ExportTo),
				Origin:    d.Origin,
			}
			byHost[svc.Host] = svc
			out.Services = append(out.Services, svc)
		}
		out.Conflicts = mergeDefinition(svc, d, out.Conflicts)
	}
	for _, svc := range out.Services {
		slices.Sort(svc.RemoteAccounts)
		svc.RemoteAccounts = slices.Compact(svc.RemoteAccounts)
	}
	return out
}

// mergeDefinition adds d's ports, subsets and service accounts to svc,
// whose own parts take precedence, and appends the disagreements to cs.
func mergeDefinition(svc *Service, d Definition, cs []Conflict) []Conflict {
	def := d.Service
	conflict := func(part string, kept Origin, keptValue, ignoredValue string) {
		cs = append(cs, Conflict{Host: svc.Host, Part: part, Kept: kept, KeptValue: keptValue, Ignored: d.Origin, IgnoredValue: ignoredValue})
	}
	if svc.Namespace != def.Namespace {
		conflict("namespace", svc.Origin, svc.Namespace, def.Namespace)
	}
	if a, b := exportSet(svc.ExportTo), exportSet(def.ExportTo); !slices.Equal(a, b) {
		conflict("exportTo", svc.Origin, strings.Join(a, ","), strings.Join(b, ","))
	}
	for _, p := range def.Ports {
		i := slices.IndexFunc(svc.Ports, func(q Port) bool { return q.Number == uint32(p.Port) })
		if i < 0 {
			svc.Ports = append(svc.Ports, Port{Number: uint32(p.Port), Name: p.Name, Protocol: p.Protocol, Origin: d.Origin})
			continue
		}
		if q := svc.Ports[i]; q.Name != p.Name || !strings.EqualFold(q.Protocol, p.Protocol) {
			conflict(fmt.Sprintf("port %d", p.Port), q.Origin, portValue(q.Name, q.Protocol), portValue(p.Name, p.Protocol))
		}
	}
	for _, ss := range def.Subsets {
		i := slices.IndexFunc(svc.Subsets, func(t Subset) bool { return t.Name == ss.Name })
		if i < 0 {
			svc.Subsets = append(svc.Subsets, Subset{Name: ss.Name, Labels: maps.Clone(ss.Labels), Origin: d.Origin})
			continue
		}
		if t := svc.Subsets[i]; !maps.Equal(t.Labels, ss.Labels) {
			conflict("subset "+ss.Name, t.Origin, labelsValue(t.Labels), labelsValue(ss.Labels))
		}
	}
	svc.RemoteAccounts = append(svc.RemoteAccounts, def.ServiceAccounts...)
	return cs
}

// exportSet returns exportTo sorted, with the empty list written "*".
func exportSet(e []string) []string {
	if len(e) == 0 {
		return []string{"*"}
	}
	s := slices.Clone(e)
	slices.Sort(s)
	return slices.Compact(s)
}

func portValue(name, protocol string) string {
	return fmt.Sprintf("name %q protocol %q", name, protocol)
}

// labelsValue returns labels as "k=v,..." sorted by key.
func labelsValue(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}
