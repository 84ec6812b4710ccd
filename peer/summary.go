package peer

import (
	"cmp"
	"errors"
	"fmt"
	"github.com/ewgate/ewgate/discovery"
	"slices"
)

// The summary types are the catalog's own: a gateway gossips exactly what
// discovery.Summarize computes, in the canonical order it defines
// (services by Host, ports by Port, subsets by Name, localities by
// Locality, no duplicates). Received summaries must be canonical too.
type (
	Summary        = discovery.Summary
	ServiceSummary = discovery.ServiceSummary
	PortSummary    = discovery.PortSummary
	SubsetSummary  = discovery.SubsetSummary
	LocalityCount  = discovery.LocalityCount
)

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

// cloneSummary returns a deep copy of s.
func cloneSummary(s Summary) Summary {
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
func canonicalize(s *Summary) error {
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
	return checkCanonical(s)
}

// checkCanonical reports whether s is sorted without duplicates and
// without empty hosts or zero ports.
func checkCanonical(s *Summary) error {
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
