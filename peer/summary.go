package peer

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
)

// Summary is what one gateway tells the others about its own network: the
// healthy endpoint count of every exported service port and subset, per
// locality. It never holds endpoint addresses.
//
// [Node.Publish] stores a summary in canonical form: services sorted by
// Host, ports by Port, subsets by Name, localities by Locality, with no
// duplicates; received summaries must be canonical too.
type Summary struct {
	// Network is the publishing gateway's network; Publish fills it in
	// when empty.
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

// SubsetSummary counts the healthy eligible endpoints of one subset.
type SubsetSummary struct {
	// Name is the DestinationRule subset; "" stands for all endpoints of
	// the port.
	Name    string
	Healthy []LocalityCount
}

// LocalityCount is a number of healthy endpoints in one locality
// (region/zone/subzone, "" if unknown).
type LocalityCount struct {
	Locality string
	Count    uint32
}

// Version orders the summaries one origin node publishes: a receiver keeps
// the entry with the greatest Version. Comparison is by Epoch, then Seq.
type Version struct {
	// Epoch identifies a node incarnation: the wall clock (Unix ns) at
	// Start, raised above any earlier incarnation of the same name the node
	// learns of, so a restarted node's state beats its old state.
	Epoch uint64
	// Seq counts publishes within an epoch.
	Seq uint64
}

// Compare returns -1, 0 or +1 as v is older than, equal to or newer than w.
func (v Version) Compare(w Version) int {
	if c := cmp.Compare(v.Epoch, w.Epoch); c != 0 {
		return c
	}
	return cmp.Compare(v.Seq, w.Seq)
}

// NodeSummary is the latest summary of one live node, as returned by
// [Node.Summaries].
type NodeSummary struct {
	Node    string // origin node name
	Meta    Meta   // origin node's current meta
	Version Version
	Summary Summary
}

// Clone returns a deep copy of s.
func (s Summary) Clone() Summary {
	c := Summary{Network: s.Network, Services: make([]ServiceSummary, len(s.Services))}
	for i, svc := range s.Services {
		ports := make([]PortSummary, len(svc.Ports))
		for j, p := range svc.Ports {
			subsets := make([]SubsetSummary, len(p.Subsets))
			for k, ss := range p.Subsets {
				subsets[k] = SubsetSummary{Name: ss.Name, Healthy: slices.Clone(ss.Healthy)}
			}
			ports[j] = PortSummary{Port: p.Port, Subsets: subsets}
		}
		c.Services[i] = ServiceSummary{Host: svc.Host, Ports: ports}
	}
	return c
}

// canonicalize sorts s in place into canonical order and reports the
// first problem: an empty host, port 0 or a duplicate key.
func (s *Summary) canonicalize() error {
	slices.SortFunc(s.Services, func(a, b ServiceSummary) int { return cmp.Compare(a.Host, b.Host) })
	for i := range s.Services {
		svc := &s.Services[i]
		slices.SortFunc(svc.Ports, func(a, b PortSummary) int { return cmp.Compare(a.Port, b.Port) })
		for j := range svc.Ports {
			p := &svc.Ports[j]
			slices.SortFunc(p.Subsets, func(a, b SubsetSummary) int { return cmp.Compare(a.Name, b.Name) })
			for k := range p.Subsets {
				slices.SortFunc(p.Subsets[k].Healthy, func(a, b LocalityCount) int { return cmp.Compare(a.Locality, b.Locality) })
			}
		}
	}
	return s.checkCanonical()
}

// checkCanonical reports whether s is sorted without duplicates and
// without empty hosts or zero ports.
func (s *Summary) checkCanonical() error {
	for i, svc := range s.Services {
		if svc.Host == "" {
			return errors.New("service with empty host")
		}
		if i > 0 && s.Services[i-1].Host >= svc.Host {
			return fmt.Errorf("service %q duplicated or out of order", svc.Host)
		}
		for j, p := range svc.Ports {
			if p.Port == 0 {
				return fmt.Errorf("service %q: port 0", svc.Host)
			}
			if j > 0 && svc.Ports[j-1].Port >= p.Port {
				return fmt.Errorf("service %q: port %d duplicated or out of order", svc.Host, p.Port)
			}
			for k, ss := range p.Subsets {
				if k > 0 && p.Subsets[k-1].Name >= ss.Name {
					return fmt.Errorf("service %q port %d: subset %q duplicated or out of order", svc.Host, p.Port, ss.Name)
				}
				for l, lc := range ss.Healthy {
					if l > 0 && ss.Healthy[l-1].Locality >= lc.Locality {
						return fmt.Errorf("service %q port %d subset %q: locality %q duplicated or out of order", svc.Host, p.Port, ss.Name, lc.Locality)
					}
				}
			}
		}
	}
	return nil
}
