package peer

import (
	"fmt"
	"reflect"
	"testing"
	"time"
)

// meshSummary is the scale shape: services with 3 ports, each with the
// whole-port subset and v1, v2, in one locality.
func meshSummary(network string, services int, count uint32) Summary {
	s := Summary{Network: network}
	for i := range services {
		svc := ServiceSummary{Host: fmt.Sprintf("svc-%05d.ns.svc.cluster.local", i)}
		for _, p := range []uint16{80, 443, 9080} {
			ps := PortSummary{Port: p}
			for _, sub := range []string{"", "v1", "v2"} {
				ps.Subsets = append(ps.Subsets, SubsetSummary{Name: sub, Healthy: []LocalityCount{{Locality: "r/z", Count: count}}})
			}
			svc.Ports = append(svc.Ports, ps)
		}
		s.Services = append(s.Services, svc)
	}
	return s
}

func TestDiffApply(t *testing.T) {
	svc := func(host string, n uint32) ServiceSummary {
		return ServiceSummary{Host: host, Ports: []PortSummary{{Port: 80, Subsets: []SubsetSummary{{Healthy: []LocalityCount{{Count: n}}}}}}}
	}
	sum := func(svcs ...ServiceSummary) Summary { return Summary{Network: "n", Services: svcs} }
	tests := []struct {
		name             string
		old, cur         Summary
		upserts, removed int
	}{
		{"same", sum(svc("a", 1), svc("b", 1)), sum(svc("a", 1), svc("b", 1)), 0, 0},
		{"one changed", sum(svc("a", 1), svc("b", 1)), sum(svc("a", 1), svc("b", 2)), 1, 0},
		{"added first and last", sum(svc("b", 1)), sum(svc("a", 1), svc("b", 1), svc("c", 1)), 2, 0},
		{"removed middle", sum(svc("a", 1), svc("b", 1), svc("c", 1)), sum(svc("a", 1), svc("c", 1)), 0, 1},
		{"all replaced", sum(svc("a", 1)), sum(svc("b", 1)), 1, 1},
		{"to empty", sum(svc("a", 1), svc("b", 1)), sum(), 0, 2},
		{"from empty", sum(), sum(svc("a", 1)), 1, 0},
	}
	for _, tt := range tests {
		d := diffSummary(newEntry("o", Version{1, 1}, tt.old, time.Time{}), newEntry("o", Version{1, 2}, tt.cur, time.Time{}))
		if len(d.upserts.summary.Services) != tt.upserts || len(d.removed) != tt.removed {
			t.Errorf("%s: %d upserts, %d removed; want %d, %d", tt.name, len(d.upserts.summary.Services), len(d.removed), tt.upserts, tt.removed)
		}
		// Through the wire and back, then applied, it gives cur.
		got, err := decodeDelta(encodeDelta(d))
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if s := got.apply(&tt.old); !reflect.DeepEqual(s.Services, tt.cur.Services) && len(s.Services)+len(tt.cur.Services) > 0 {
			t.Errorf("%s: applied = %v, want %v", tt.name, s.Services, tt.cur.Services)
		}
	}
}

// A change of one service in a summary too large for a packet travels as
// a delta small enough for one, and every node ends with the same
// summary; a node that missed the base ignores deltas until push/pull.
func TestDeltaSpreads(t *testing.T) {
	a := startNode(t, testConfig("da", "net-a"))
	var nodes []*Node
	for _, name := range []string{"db", "dc"} {
		cfg := testConfig(name, "net-"+name)
		cfg.Join = []string{a.Addr().String()}
		nodes = append(nodes, startNode(t, cfg))
	}
	s := meshSummary("net-a", 2000, 1)
	if err := a.Publish(s); err != nil {
		t.Fatal(err)
	}
	holds := func(want Summary) func() error {
		return func() error {
			for _, n := range nodes {
				got, ok := summaryFrom(n, "da")
				if !ok || !reflect.DeepEqual(got.Summary, want) {
					return fmt.Errorf("%s does not hold the summary (%d services)", n.Name(), len(got.Summary.Services))
				}
			}
			return nil
		}
	}
	waitFor(t, "the whole summary", holds(s))
	sent := a.Stats().DeltasSent

	s.Services[7].Ports[1].Subsets[2].Healthy[0].Count = 0
	s.Services[7].Ports[1].Subsets[2].Healthy = nil
	s.Services = append(s.Services[:100], s.Services[101:]...)
	if err := a.Publish(s); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the changed summary", holds(s))
	if got := a.Stats().DeltasSent; got != sent+1 {
		t.Errorf("DeltasSent = %d, want %d", got, sent+1)
	}
	var applied uint64
	for _, n := range nodes {
		applied += n.Stats().DeltasApplied
	}
	if applied == 0 {
		t.Error("no node applied a delta: the change traveled whole")
	}
	if r := a.Stats().ReliableSends; r > 2 {
		t.Errorf("%d reliable sends: the delta should fit a packet", r)
	}

	// A delta whose base is not held is ignored and counted.
	n := nodes[0]
	held, _ := summaryFrom(n, "da")
	before := n.Stats().DeltaMisses
	base := Version{Epoch: held.Version.Epoch, Seq: held.Version.Seq + 5}
	d := diffSummary(newEntry("da", base, Summary{Network: "net-a"}, time.Time{}), newEntry("da", Version{Epoch: base.Epoch, Seq: base.Seq + 1}, s, time.Time{}))
	if n.applyDelta(d) {
		t.Error("a delta on a base not held was applied")
	}
	if got := n.Stats().DeltaMisses; got != before+1 {
		t.Errorf("DeltaMisses = %d, want %d", got, before+1)
	}
	if got, _ := summaryFrom(n, "da"); got.Version != held.Version {
		t.Errorf("the entry moved to %v on a delta it could not apply", got.Version)
	}
}
