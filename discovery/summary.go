package discovery

import (
	"cmp"
	"maps"
	"slices"
	"strings"
)

// Summary is what one gateway tells gateways of other networks about its
// own network: for every service it exports, the service's definition
// (host, namespace, ports, subsets, exportTo, the SPIFFE IDs of its
// endpoints) and, per service port and subset, the healthy eligible
// endpoints per locality. It never holds an endpoint address: those stay
// in their network.
//
// A summary is canonical when services are sorted by Host, ports by Port,
// subsets by Name, localities by Locality and service accounts as
// strings, without duplicates and without zero counts; Summarize returns
// canonical summaries. ExportTo keeps the order it was given in.
type Summary struct {
	Network  string
	Services []ServiceSummary
}

// ServiceSummary is one service host of a Summary.
type ServiceSummary struct {
	Host      string // service FQDN, e.g. reviews.bookinfo.svc.cluster.local
	Namespace string // the namespace of the resource defining it
	// ExportTo is the service's exportTo list as given; empty means "*".
	ExportTo []string
	// ServiceAccounts are the SPIFFE IDs (spiffe://<td>/ns/<ns>/sa/<sa>)
	// of the service's eligible endpoints in this network: what a client's
	// sidecar verifies. Endpoints without a service account add none.
	ServiceAccounts []string
	Ports           []PortSummary
	// Subsets are the service's DestinationRule subsets.
	Subsets []SubsetDefinition
}

// PortSummary is one service port (not target port) of a service.
type PortSummary struct {
	Port     uint16
	Name     string
	Protocol string
	Subsets  []SubsetSummary
}

// SubsetDefinition is a named subset and the endpoint labels that select
// it.
type SubsetDefinition struct {
	Name   string
	Labels map[string]string
}

// SubsetSummary counts the healthy eligible endpoints of one subset; the
// subset named "" stands for all endpoints of the port.
type SubsetSummary struct {
	Name    string
	Healthy []LocalityCount
}

// LocalityCount is a number of healthy endpoints in one locality
// ("region/zone/subzone"; "" when unknown).
type LocalityCount struct {
	Locality string
	Count    uint32
}

// Summarize returns the canonical summary of v's own network: every
// service this gateway's own config defines, that at least one of v's
// listeners exposes and that is exported (ExportLabel, the node's
// ExportDefault), with its definition, and per port and subset the
// targets healthy reports true for (nil: all), counted per locality.
// Parts merged in from other networks are never summarized: each network
// speaks for itself only. Routes with no healthy target are listed with
// no counts, so that other networks learn the service exists but has
// nothing to offer now.
func Summarize(v *View, healthy func(addr string) bool) Summary {
	s := Summary{Network: v.Node.Network}
	for _, host := range slices.Sorted(slices.Values(v.hosts)) {
		sv := v.services[host]
		svc := sv.svc
		if svc.Origin.Remote() || !svc.exported(v.Node.ExportDefault) || sv.exposedOn() < 0 {
			continue
		}
		ss := ServiceSummary{Host: host, Namespace: svc.Namespace, ExportTo: slices.Clone(svc.ExportTo),
			ServiceAccounts: serviceAccounts(v.Node, svc)}
		for _, sub := range svc.Subsets {
			if !sub.Origin.Remote() {
				ss.Subsets = append(ss.Subsets, SubsetDefinition{Name: sub.Name, Labels: maps.Clone(sub.Labels)})
			}
		}
		slices.SortFunc(ss.Subsets, func(a, b SubsetDefinition) int { return cmp.Compare(a.Name, b.Name) })
		for _, p := range svc.Ports {
			if p.Origin.Remote() {
				continue
			}
			ps := PortSummary{Port: uint16(p.Number), Name: p.Name, Protocol: p.Protocol}
			for _, name := range append([]string{""}, subsetNames(ss.Subsets)...) {
				r := sv.routes[portSubset{uint16(p.Number), name}]
				ps.Subsets = append(ps.Subsets, SubsetSummary{Name: name, Healthy: countHealthy(r.Targets, healthy)})
			}
			ss.Ports = append(ss.Ports, ps)
		}
		slices.SortFunc(ss.Ports, func(a, b PortSummary) int { return cmp.Compare(a.Port, b.Port) })
		s.Services = append(s.Services, ss)
	}
	return s
}

func subsetNames(subs []SubsetDefinition) []string {
	names := make([]string, len(subs))
	for i, s := range subs {
		names[i] = s.Name
	}
	return names
}

// countHealthy counts the targets healthy reports true for (nil: all) per
// locality, sorted by locality.
func countHealthy(ts []Target, healthy func(addr string) bool) []LocalityCount {
	counts := make(map[string]uint32)
	for _, t := range ts {
		if healthy == nil || healthy(t.Address) {
			counts[t.Locality]++
		}
	}
	var out []LocalityCount
	for _, loc := range slices.Sorted(maps.Keys(counts)) {
		out = append(out, LocalityCount{Locality: loc, Count: counts[loc]})
	}
	return out
}

// serviceAccounts returns the sorted SPIFFE IDs of svc's endpoints that
// the node's network may route to.
func serviceAccounts(n Node, svc *Service) []string {
	td := cmp.Or(n.TrustDomain, DefaultTrustDomain)
	var ids []string
	for _, ep := range svc.Endpoints {
		if ep.ServiceAccount == "" || (ep.Network != "" && ep.Network != n.Network) ||
			(!n.AnyTLSMode && ep.Labels[TLSModeLabel] != TLSModeIstio) {
			continue
		}
		ids = append(ids, SPIFFEID(td, svc.Namespace, ep.ServiceAccount))
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// SPIFFEID returns Istio's identity of service account sa in namespace
// ns of trust domain td: spiffe://td/ns/ns/sa/sa. A service account
// already written as a spiffe:// URI is returned as it is.
func SPIFFEID(td, ns, sa string) string {
	if strings.HasPrefix(sa, "spiffe://") {
		return sa
	}
	return "spiffe://" + td + "/ns/" + ns + "/sa/" + sa
}

// healthy returns the counts of a subset of a port of a host, or nil.
func (s *Summary) healthy(host string, port uint16, subset string) ([]LocalityCount, bool) {
	i, ok := slices.BinarySearchFunc(s.Services, host, func(ss ServiceSummary, h string) int { return cmp.Compare(ss.Host, h) })
	if !ok {
		return nil, false
	}
	ports := s.Services[i].Ports
	j, ok := slices.BinarySearchFunc(ports, port, func(p PortSummary, q uint16) int { return cmp.Compare(p.Port, q) })
	if !ok {
		return nil, false
	}
	subs := ports[j].Subsets
	k, ok := slices.BinarySearchFunc(subs, subset, func(ss SubsetSummary, n string) int { return cmp.Compare(ss.Name, n) })
	if !ok {
		return nil, false
	}
	return subs[k].Healthy, true
}
