package discovery

import (
	"cmp"
	"maps"
	"slices"
)

// Summary is what one gateway tells gateways of other networks about its
// own network: for every service port and subset it exposes, the healthy
// eligible endpoints per locality. It never holds an endpoint address:
// those stay in their network.
//
// A summary is canonical when services are sorted by Host, ports by Port,
// subsets by Name and localities by Locality, without duplicates and
// without zero counts; Summarize returns canonical summaries.
type Summary struct {
	Network  string
	Services []ServiceSummary
}

// ServiceSummary is one service host of a Summary.
type ServiceSummary struct {
	Host  string // service FQDN, e.g. reviews.bookinfo.svc.cluster.local
	Ports []PortSummary
}

// PortSummary is one service port (not target port) of a service.
type PortSummary struct {
	Port    uint16
	Subsets []SubsetSummary
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

// Summarize returns the canonical summary of v's own network: for each
// route that at least one of v's listeners exposes, the targets healthy
// reports true for (nil: all), counted per locality. Routes with no
// healthy target are listed with no counts, so that other networks learn
// the service exists but has nothing to offer now.
func Summarize(v *View, healthy func(addr string) bool) Summary {
	type hostPort struct {
		host string
		port uint16
	}
	subsets := make(map[hostPort][]SubsetSummary)
	for _, r := range v.Routes() {
		if !slices.Contains(v.services[r.Key.Host].exposed, true) {
			continue
		}
		counts := make(map[string]uint32)
		for _, t := range r.Targets {
			if healthy == nil || healthy(t.Address) {
				counts[t.Locality]++
			}
		}
		sub := SubsetSummary{Name: r.Key.Subset}
		for _, loc := range slices.Sorted(maps.Keys(counts)) {
			sub.Healthy = append(sub.Healthy, LocalityCount{Locality: loc, Count: counts[loc]})
		}
		k := hostPort{r.Key.Host, r.Key.Port}
		subsets[k] = append(subsets[k], sub)
	}
	keys := slices.SortedFunc(maps.Keys(subsets), func(a, b hostPort) int {
		return cmp.Or(cmp.Compare(a.host, b.host), cmp.Compare(a.port, b.port))
	})
	s := Summary{Network: v.Node.Network}
	for _, k := range keys {
		if n := len(s.Services); n == 0 || s.Services[n-1].Host != k.host {
			s.Services = append(s.Services, ServiceSummary{Host: k.host})
		}
		subs := subsets[k]
		slices.SortFunc(subs, func(a, b SubsetSummary) int { return cmp.Compare(a.Name, b.Name) })
		svc := &s.Services[len(s.Services)-1]
		svc.Ports = append(svc.Ports, PortSummary{Port: k.port, Subsets: subs})
	}
	return s
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
