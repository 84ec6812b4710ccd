package peer

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/ewgate/ewgate/discovery"
)

// The summary types are the catalog's own: a gateway gossips exactly what
// discovery.Summarize computes, in the canonical order it defines
// (services by Host, ports by Port, subsets by Name, localities by
// Locality, service accounts and subset definitions sorted, no
// duplicates). Received summaries must be canonical too, and every string
// in them within the limits below.
type (
	Summary          = discovery.Summary
	ServiceSummary   = discovery.ServiceSummary
	PortSummary      = discovery.PortSummary
	SubsetSummary    = discovery.SubsetSummary
	SubsetDefinition = discovery.SubsetDefinition
	LocalityCount    = discovery.LocalityCount
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

// Bounds on what a received entry may claim. A gateway's own publishes
// stay far below them; entries beyond them are refused, counted and
// logged (RejectVersionImplausible, RejectCountTooLarge).
const (
	// MaxSeq bounds Version.Seq: a publish a second for a hundred million
	// years stays below it, and Seq+1, which supersedes an entry, cannot
	// wrap.
	MaxSeq = 1 << 62
	// MaxClockSkew is how far in the future of this node's clock an
	// entry's Version.Epoch (its origin's start time) may be.
	MaxClockSkew = time.Hour
	// MaxHealthyCount bounds a healthy endpoint count (per port, subset
	// and locality). Publish lowers larger counts to it.
	MaxHealthyCount = 1 << 20
)

// plausible reports whether an origin could have made v by now: an epoch
// no further ahead of now than MaxClockSkew (MaxSeq is checked when
// decoding).
func (v Version) plausible(now time.Time) error {
	if limit := uint64(now.Add(MaxClockSkew).UnixNano()); v.Epoch > limit {
		return fmt.Errorf("epoch %s is more than %v ahead of this node's clock: %w",
			time.Unix(0, int64(min(v.Epoch, math.MaxInt64))).UTC().Format(time.RFC3339), MaxClockSkew, errImplausible)
	}
	return nil
}

// NodeSummary is the latest summary of one live node, as returned by
// [Node.Summaries].
type NodeSummary struct {
	Node    string // origin node name
	Meta    Meta   // origin node's current meta
	Version Version
	Summary Summary
}

// Limits on the strings of a summary, checked when publishing and when
// decoding, so that one bad field is refused by name instead of growing
// every gateway's memory. They follow the formats: DNS names, DNS labels,
// Kubernetes label keys and values, SPIFFE IDs.
const (
	maxHostLen     = 253  // a DNS name
	maxLabelLen    = 63   // a DNS label: namespaces, subset names
	maxPortNameLen = 253  // Istio does not bound port names; Kubernetes does at 15
	maxKeyLen      = 317  // a Kubernetes label key: 253-byte prefix, '/', 63-byte name
	maxSPIFFEIDLen = 2048 // the SPIFFE ID limit
	maxLocalityLen = 1024 // region/zone/subzone
)

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
			ports[j] = PortSummary{Port: p.Port, Name: p.Name, Protocol: p.Protocol, Subsets: subsets}
		}
		var defs []SubsetDefinition
		for _, d := range svc.Subsets {
			defs = append(defs, SubsetDefinition{Name: d.Name, Labels: maps.Clone(d.Labels)})
		}
		c.Services[i] = ServiceSummary{Host: svc.Host, Namespace: svc.Namespace, ExportTo: slices.Clone(svc.ExportTo),
			ServiceAccounts: slices.Clone(svc.ServiceAccounts), Ports: ports, Subsets: defs}
	}
	return c
}

// capCounts lowers the healthy counts of s over MaxHealthyCount to it.
func capCounts(s *Summary) {
	for i := range s.Services {
		for j := range s.Services[i].Ports {
			for k := range s.Services[i].Ports[j].Subsets {
				for l := range s.Services[i].Ports[j].Subsets[k].Healthy {
					lc := &s.Services[i].Ports[j].Subsets[k].Healthy[l]
					lc.Count = min(lc.Count, MaxHealthyCount)
				}
			}
		}
	}
}

// canonicalize sorts s in place into canonical order and reports the
// first problem: an empty host, port 0, a duplicate key or a string over
// its limit.
func canonicalize(s *Summary) error {
	slices.SortFunc(s.Services, func(a, b ServiceSummary) int { return cmp.Compare(a.Host, b.Host) })
	for i := range s.Services {
		svc := &s.Services[i]
		slices.Sort(svc.ServiceAccounts)
		slices.SortFunc(svc.Subsets, func(a, b SubsetDefinition) int { return cmp.Compare(a.Name, b.Name) })
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

// checkCanonical reports whether s is sorted without duplicates, without
// empty hosts or zero ports, and with every string within its limit.
func checkCanonical(s *Summary) error {
	for i := range s.Services {
		svc := &s.Services[i]
		if svc.Host == "" {
			return errors.New("service with empty host")
		}
		if i > 0 && s.Services[i-1].Host >= svc.Host {
			return fmt.Errorf("service %q duplicated or out of order", svc.Host)
		}
		if err := checkService(svc); err != nil {
			return fmt.Errorf("service %q: %w", svc.Host, err)
		}
	}
	return nil
}

func checkService(svc *ServiceSummary) error {
	if err := checkLen("host", svc.Host, maxHostLen); err != nil {
		return err
	}
	if err := checkLen("namespace", svc.Namespace, maxLabelLen); err != nil {
		return err
	}
	for _, e := range svc.ExportTo {
		if err := checkLen("exportTo", e, maxHostLen); err != nil {
			return err
		}
	}
	for j, id := range svc.ServiceAccounts {
		if err := checkLen("service account", id, maxSPIFFEIDLen); err != nil {
			return err
		}
		if j > 0 && svc.ServiceAccounts[j-1] >= id {
			return fmt.Errorf("service account %q duplicated or out of order", id)
		}
	}
	for j, d := range svc.Subsets {
		if err := checkLen("subset", d.Name, maxLabelLen); err != nil {
			return err
		}
		if j > 0 && svc.Subsets[j-1].Name >= d.Name {
			return fmt.Errorf("subset definition %q duplicated or out of order", d.Name)
		}
		for k, v := range d.Labels {
			if err := checkLen("subset "+d.Name+" label key", k, maxKeyLen); err != nil {
				return err
			}
			if err := checkLen("subset "+d.Name+" label "+k, v, maxLabelLen); err != nil {
				return err
			}
		}
	}
	for j, p := range svc.Ports {
		if p.Port == 0 {
			return errors.New("port 0")
		}
		if j > 0 && svc.Ports[j-1].Port >= p.Port {
			return fmt.Errorf("port %d duplicated or out of order", p.Port)
		}
		if err := checkLen(fmt.Sprintf("port %d name", p.Port), p.Name, maxPortNameLen); err != nil {
			return err
		}
		if err := checkLen(fmt.Sprintf("port %d protocol", p.Port), p.Protocol, maxLabelLen); err != nil {
			return err
		}
		for k, ss := range p.Subsets {
			if err := checkLen("subset", ss.Name, maxLabelLen); err != nil {
				return err
			}
			if k > 0 && p.Subsets[k-1].Name >= ss.Name {
				return fmt.Errorf("port %d: subset %q duplicated or out of order", p.Port, ss.Name)
			}
			for l, lc := range ss.Healthy {
				if err := checkLen("locality", lc.Locality, maxLocalityLen); err != nil {
					return err
				}
				if lc.Count > MaxHealthyCount {
					return fmt.Errorf("port %d subset %q locality %q: count %d: %w", p.Port, ss.Name, lc.Locality, lc.Count, errCount)
				}
				if l > 0 && ss.Healthy[l-1].Locality >= lc.Locality {
					return fmt.Errorf("port %d subset %q: locality %q duplicated or out of order", p.Port, ss.Name, lc.Locality)
				}
			}
		}
	}
	return nil
}

func checkLen(what, s string, limit int) error {
	if len(s) > limit {
		return fmt.Errorf("%s is %d bytes, over the limit of %d", what, len(s), limit)
	}
	return nil
}

// encodeSummary appends s in wire form: the network, then per service its
// host, namespace, exportTo, service accounts, ports (number, name,
// protocol, then per subset the counts per locality) and subset
// definitions (name, then labels sorted by key).
func encodeSummary(w *writer, s *Summary) {
	w.str(s.Network)
	w.uvarint(uint64(len(s.Services)))
	for _, svc := range s.Services {
		w.str(svc.Host)
		w.str(svc.Namespace)
		w.strs(svc.ExportTo)
		w.strs(svc.ServiceAccounts)
		w.uvarint(uint64(len(svc.Ports)))
		for _, p := range svc.Ports {
			w.uvarint(uint64(p.Port))
			w.str(p.Name)
			w.str(p.Protocol)
			w.uvarint(uint64(len(p.Subsets)))
			for _, ss := range p.Subsets {
				w.str(ss.Name)
				w.uvarint(uint64(len(ss.Healthy)))
				for _, lc := range ss.Healthy {
					w.str(lc.Locality)
					w.uvarint(uint64(lc.Count))
				}
			}
		}
		w.uvarint(uint64(len(svc.Subsets)))
		for _, d := range svc.Subsets {
			w.str(d.Name)
			keys := slices.Sorted(maps.Keys(d.Labels))
			w.uvarint(uint64(len(keys)))
			for _, k := range keys {
				w.str(k)
				w.str(d.Labels[k])
			}
		}
	}
}

// decodeSummary reads what encodeSummary wrote. Counts are checked
// against the bytes left (reader.count), so garbage cannot make it
// allocate more than the input's size; label keys must come sorted
// without duplicates. The caller checks r.err and canonical order.
func decodeSummary(r *reader) Summary {
	s := Summary{Network: r.str()}
	for n := r.count(); n > 0 && r.err == nil; n-- {
		svc := ServiceSummary{Host: r.str(), Namespace: r.str(), ExportTo: r.strs(), ServiceAccounts: r.strs()}
		for n := r.count(); n > 0 && r.err == nil; n-- {
			p := PortSummary{Port: uint16(r.bounded(math.MaxUint16)), Name: r.str(), Protocol: r.str()}
			for n := r.count(); n > 0 && r.err == nil; n-- {
				ss := SubsetSummary{Name: r.str()}
				for n := r.count(); n > 0 && r.err == nil; n-- {
					ss.Healthy = append(ss.Healthy, LocalityCount{Locality: r.str(), Count: uint32(r.bounded(math.MaxUint32))})
				}
				p.Subsets = append(p.Subsets, ss)
			}
			svc.Ports = append(svc.Ports, p)
		}
		for n := r.count(); n > 0 && r.err == nil; n-- {
			d := SubsetDefinition{Name: r.str()}
			last := ""
			for n := r.count(); n > 0 && r.err == nil; n-- {
				k, v := r.str(), r.str()
				if d.Labels == nil {
					d.Labels = make(map[string]string)
				} else if k <= last {
					r.fail("label order")
				}
				d.Labels[k], last = v, k
			}
			svc.Subsets = append(svc.Subsets, d)
		}
		s.Services = append(s.Services, svc)
	}
	return s
}
