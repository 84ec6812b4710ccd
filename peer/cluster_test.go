package peer

import (
	"context"
	"errors"
	"fmt"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// cluster starts one node per name (network = the name's first letter),
// all joining the first, and waits until everyone sees everyone's summary.
func cluster(t *testing.T, names ...string) []*Node {
	t.Helper()
	var nodes []*Node
	for i, name := range names {
		cfg := testConfig(name, name[:1])
		// Joining every earlier node makes each learn the newcomer at once;
		// with only one seed, memberlist's alive gossip for joins made at
		// the same moment can die out, leaving the rest to push/pull.
		for _, n := range nodes[:i] {
			cfg.Join = append(cfg.Join, n.Addr().String())
		}
		nodes = append(nodes, startNode(t, cfg))
	}
	for _, n := range nodes {
		if err := n.WaitJoined(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	waitConverged(t, nodes, len(nodes))
	return nodes
}

// waitConverged waits until every node holds want live summaries.
func waitConverged(t *testing.T, nodes []*Node, want int) {
	t.Helper()
	waitFor(t, "convergence", func() error {
		for _, n := range nodes {
			if got := len(n.Summaries()); got != want {
				return fmt.Errorf("%s holds %d summaries, want %d", n.Name(), got, want)
			}
		}
		return nil
	})
}

func TestClusterLifecycle(t *testing.T) {
	leakcheck.Check(t)
	names := []string{"a1", "a2", "b1", "b2", "c1", "c2"}
	nodes := cluster(t, names...)
	byName := make(map[string]*Node)
	for _, n := range nodes {
		byName[n.Name()] = n
		if err := n.Publish(summaryOf(n.cfg.Network, 1, "svc-"+n.cfg.Network+".ns.svc.cluster.local")); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("converge", func(t *testing.T) {
		waitFor(t, "published summaries everywhere", func() error {
			for _, n := range nodes {
				for _, origin := range nodes {
					s, ok := summaryFrom(n, origin.Name())
					if !ok {
						return fmt.Errorf("%s lacks %s", n.Name(), origin.Name())
					}
					if s.Meta != origin.Meta() {
						return fmt.Errorf("%s sees meta %+v of %s, want %+v", n.Name(), s.Meta, origin.Name(), origin.Meta())
					}
					if len(s.Summary.Services) != 1 {
						return fmt.Errorf("%s sees %d services from %s", n.Name(), len(s.Summary.Services), origin.Name())
					}
				}
			}
			return nil
		})
		for _, n := range nodes {
			if got, want := networksOf(n), map[string]int{"a": 2, "b": 2, "c": 2}; !reflect.DeepEqual(got, want) {
				t.Errorf("%s networks = %v, want %v", n.Name(), got, want)
			}
		}
	})

	t.Run("publish change", func(t *testing.T) {
		a1 := byName["a1"]
		want := summaryOf("a", 7, "reviews.bookinfo.svc.cluster.local", "ratings.bookinfo.svc.cluster.local")
		if err := a1.Publish(want); err != nil {
			t.Fatal(err)
		}
		if err := canonicalize(&want); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "change visible in other networks", func() error {
			for _, n := range nodes {
				s, _ := summaryFrom(n, "a1")
				if !reflect.DeepEqual(s.Summary, want) {
					return fmt.Errorf("%s sees %+v", n.Name(), s.Summary)
				}
			}
			return nil
		})
	})

	t.Run("leave withdraws", func(t *testing.T) {
		if err := byName["a1"].Leave(waitTimeout); err != nil {
			t.Fatal(err)
		}
		byName["a1"].Shutdown()
		rest := without(nodes, "a1")
		waitFor(t, "a1 withdrawn", func() error {
			for _, n := range rest {
				if _, ok := summaryFrom(n, "a1"); ok {
					return fmt.Errorf("%s still holds a1", n.Name())
				}
				if st, _ := memberState(n, "a1"); st != StateLeft {
					return fmt.Errorf("%s sees a1 %v", n.Name(), st)
				}
			}
			return nil
		})
	})

	t.Run("killed network disappears", func(t *testing.T) {
		byName["b1"].Shutdown() // no Leave: failure detection must notice
		byName["b2"].Shutdown()
		rest := without(nodes, "a1", "b1", "b2")
		waitFor(t, "network b gone", func() error {
			for _, n := range rest {
				if got, want := networksOf(n), map[string]int{"a": 1, "c": 2}; !reflect.DeepEqual(got, want) {
					return fmt.Errorf("%s networks = %v, want %v", n.Name(), got, want)
				}
				for _, b := range []string{"b1", "b2"} {
					if st, _ := memberState(n, b); st != StateDead {
						return fmt.Errorf("%s sees %s %v", n.Name(), b, st)
					}
				}
			}
			return nil
		})
		st := rest[0].Stats()
		if st.Alive != 3 || st.Dead != 2 || st.Left != 1 || st.Networks != 2 || st.Summaries != 3 {
			t.Errorf("Stats = %+v", st)
		}
		if st.BytesIn == 0 || st.BytesOut == 0 || st.PushPulls == 0 {
			t.Errorf("traffic counters not counting: %+v", st)
		}
	})
}

func without(nodes []*Node, names ...string) []*Node {
	return slices.DeleteFunc(slices.Clone(nodes), func(n *Node) bool { return slices.Contains(names, n.Name()) })
}

func TestIntruderCannotJoin(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
	}{
		{"wrong key", func(c *Config) { c.Keys = [][]byte{testKey(9)} }},
		{"other mesh id", func(c *Config) { c.MeshID = "other-mesh" }},
		{"plaintext", func(c *Config) { c.Keys, c.Insecure = nil, true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leakcheck.Check(t)
			nodes := cluster(t, "a1", "b1")
			cfg := testConfig("x1", "x")
			cfg.Join = []string{nodes[0].Addr().String(), nodes[1].Addr().String()}
			tt.modify(&cfg)
			x := startNode(t, cfg)
			if err := x.Publish(summaryOf("x", 1, "evil.ns.svc.cluster.local")); err != nil {
				t.Fatal(err)
			}
			// Several failed attempts prove the intruder tried and was refused.
			waitFor(t, "intruder's join attempts", func() error {
				if st := x.Stats(); st.JoinFailures < 3 {
					return fmt.Errorf("%d join failures", st.JoinFailures)
				}
				return nil
			})
			for _, n := range nodes {
				if _, ok := memberState(n, "x1"); ok {
					t.Errorf("%s knows intruder", n.Name())
				}
				if _, ok := networksOf(n)["x"]; ok {
					t.Errorf("%s holds the intruder's summary", n.Name())
				}
			}
			if got := len(x.Members()); got != 1 {
				t.Errorf("intruder knows %d members", got)
			}
		})
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		modify  func(*Config)
		wantIs  error
		wantSub string
	}{
		{"no keys", nil, func(c *Config) { c.Keys = nil }, ErrNoKeys, ""},
		{"no network", nil, func(c *Config) { c.Network = "" }, nil, "Network is required"},
		{"short key", nil, func(c *Config) { c.Keys = [][]byte{[]byte("short")} }, nil, "Keys[0]"},
		{"bad profile", nil, func(c *Config) { c.Profile = "moon" }, nil, "Profile"},
		{"meta too large", nil, func(c *Config) { c.Identity, c.SPIFFEID = nil, "spiffe://td/"+strings.Repeat("x", 600) }, nil, "512-byte limit"},
		{"bad passthrough", nil, func(c *Config) { c.PassthroughAddr = "no-port" }, nil, "PassthroughAddr"},
		{"long mesh id", nil, func(c *Config) { c.MeshID = strings.Repeat("m", 300) }, nil, "MeshID"},
		{"negative reconnect timeout", nil, func(c *Config) { c.ReconnectTimeout = -time.Second }, nil, "ReconnectTimeout"},
		{"SPIFFEID not the SVID's", nil, func(c *Config) { c.SPIFFEID = gatewayIDPrefix + "other" }, nil, "not the ID of Config.Identity's SVID"},
		{"identity without SVID", nil, func(c *Config) { c.Identity = identity.NewMemorySource(nil) }, nil, "identity"},
		{"canceled", canceled, func(c *Config) {}, context.Canceled, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leakcheck.Check(t)
			cfg := testConfig("n1", "a")
			tt.modify(&cfg)
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			n, err := Start(ctx, cfg)
			if err == nil {
				n.Shutdown()
				t.Fatal("Start succeeded")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("err = %v, want %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantSub) {
				t.Errorf("err = %v, want it to mention %q", err, tt.wantSub)
			}
		})
	}
}

// bigSummary returns a catalog of n services, far too large for a packet.
func bigSummary(network string, n int) Summary {
	s := Summary{Network: network}
	for i := range n {
		ns := fmt.Sprintf("ns-%03d", i%100)
		s.Services = append(s.Services, ServiceSummary{
			Host:            fmt.Sprintf("svc-%05d.%s.svc.cluster.local", i, ns),
			Namespace:       ns,
			ExportTo:        []string{".", "istio-system"},
			ServiceAccounts: []string{fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/svc-%05d", ns, i)},
			Ports: []PortSummary{{Port: 8080, Name: "http", Protocol: "HTTP", Subsets: []SubsetSummary{
				{Healthy: []LocalityCount{{Locality: "eu-west-1/eu-west-1a", Count: uint32(i%7 + 1)}}},
				{Name: "v1", Healthy: []LocalityCount{{Locality: "eu-west-1/eu-west-1a", Count: uint32(i%7 + 1)}}},
			}}},
			Subsets: []SubsetDefinition{{Name: "v1", Labels: map[string]string{"app": "svc", "version": "v1"}}},
		})
	}
	return s
}

func TestLargeCatalogSyncs(t *testing.T) {
	leakcheck.Check(t)
	nodes := cluster(t, "a1", "b1")
	const services = 10_000
	want := bigSummary("a", services)
	if err := nodes[0].Publish(want); err != nil {
		t.Fatal(err)
	}
	check := func(n *Node) error {
		s, ok := summaryFrom(n, "a1")
		if !ok || len(s.Summary.Services) != services {
			return fmt.Errorf("%s holds %d services from a1", n.Name(), len(s.Summary.Services))
		}
		if !reflect.DeepEqual(s.Summary, want) {
			return errors.New("content differs")
		}
		return nil
	}
	t.Run("reliable send", func(t *testing.T) {
		waitFor(t, "catalog on b1", func() error { return check(nodes[1]) })
		if st := nodes[0].Stats(); st.ReliableSends == 0 {
			t.Errorf("no reliable send: %+v", st)
		}
	})
	t.Run("push/pull on join", func(t *testing.T) {
		cfg := testConfig("c1", "c")
		cfg.Join = []string{nodes[1].Addr().String()} // learns a1's catalog from b1
		c1 := startNode(t, cfg)
		waitFor(t, "catalog on c1", func() error { return check(c1) })
	})
}

func TestRestartSameNameRejoins(t *testing.T) {
	leakcheck.Check(t)
	nodes := cluster(t, "a1", "b1")
	a1, b1 := nodes[0], nodes[1]
	if err := b1.Publish(summaryOf("b", 1, "old.ns.svc.cluster.local")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "old summary on a1", func() error {
		if s, _ := summaryFrom(a1, "b1"); len(s.Summary.Services) != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	oldAddr := b1.Addr()
	b1.Shutdown() // killed: a1 must declare it dead before the name can be reclaimed
	waitFor(t, "b1 dead on a1", func() error {
		if st, _ := memberState(a1, "b1"); st != StateDead {
			return fmt.Errorf("b1 is %v", st)
		}
		return nil
	})

	cfg := testConfig("b1", "b")
	cfg.Join = []string{a1.Addr().String()}
	cfg.DeadNodeReclaimTime = 1 // reclaim at once
	b1 = startNode(t, cfg)
	if b1.Addr() == oldAddr {
		t.Fatalf("restarted on the same address %v", oldAddr)
	}
	want := summaryOf("b", 3, "new.ns.svc.cluster.local")
	if err := b1.Publish(want); err != nil {
		t.Fatal(err)
	}
	if err := canonicalize(&want); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "new incarnation's summary on a1", func() error {
		s, ok := summaryFrom(a1, "b1")
		if !ok || !reflect.DeepEqual(s.Summary, want) {
			return fmt.Errorf("a1 holds %+v (live %v)", s.Summary, ok)
		}
		for _, m := range a1.Members() {
			if m.Name == "b1" && (m.Addr != b1.Addr() || m.State != StateAlive) {
				return fmt.Errorf("a1 sees b1 at %v, %v", m.Addr, m.State)
			}
		}
		return nil
	})
}

func TestKeyRotationKeepsCluster(t *testing.T) {
	leakcheck.Check(t)
	nodes := cluster(t, "a1", "b1", "c1")
	oldKey, newKey := testKey(1), testKey(2)
	for _, round := range [][][]byte{{oldKey, newKey}, {newKey, oldKey}, {newKey}} {
		for _, n := range nodes {
			if err := n.SetKeys(round); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := nodes[0].Publish(summaryOf("a", 5, "after-rotation.ns.svc.cluster.local")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "publish after rotation", func() error {
		for _, n := range nodes[1:] {
			if s, _ := summaryFrom(n, "a1"); len(s.Summary.Services) != 1 {
				return fmt.Errorf("%s lacks the change", n.Name())
			}
		}
		return nil
	})

	cfg := testConfig("d1", "d")
	cfg.Keys = [][]byte{newKey}
	cfg.Join = []string{nodes[2].Addr().String()}
	d1 := startNode(t, cfg)
	waitConverged(t, append(nodes, d1), 4)

	cfg = testConfig("e1", "e")
	cfg.Keys = [][]byte{oldKey} // retired key
	cfg.Join = []string{nodes[0].Addr().String()}
	e1 := startNode(t, cfg)
	waitFor(t, "retired key refused", func() error {
		if e1.Stats().JoinFailures < 2 {
			return errors.New("not yet")
		}
		return nil
	})
	for _, n := range nodes {
		if got := len(n.Summaries()); got != 4 {
			t.Errorf("%s holds %d summaries, want 4", n.Name(), got)
		}
	}

	if err := nodes[0].SetKeys([][]byte{[]byte("short")}); err == nil {
		t.Error("SetKeys accepted a bad key")
	}
}
