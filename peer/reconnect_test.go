package peer

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/hashicorp/memberlist"
)

func TestReconnectSet(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	addr := func(i int) netip.AddrPort { return netip.MustParseAddrPort(fmt.Sprintf("127.0.0.%d:7946", i)) }
	type op func(s *reconnectSet)
	failed := func(name string, a, minute int) op {
		return func(s *reconnectSet) { s.failed(name, addr(a), t0.Add(time.Duration(minute)*time.Minute)) }
	}
	alive := func(name string, a int) op { return func(s *reconnectSet) { s.alive(name, addr(a)) } }
	left := func(name string) op { return func(s *reconnectSet) { s.left(name) } }

	tests := []struct {
		name string
		max  int
		ops  []op
		want []string // remembered, sorted
	}{
		{"failed members are remembered", 8, []op{failed("a", 1, 0), failed("b", 2, 0)}, []string{"a", "b"}},
		{"invalid address is not", 8, []op{func(s *reconnectSet) { s.failed("a", netip.AddrPort{}, t0) }}, nil},
		{"back alive is forgotten", 8, []op{failed("a", 1, 0), failed("b", 2, 0), alive("a", 1)}, []string{"b"}},
		{"back alive at a new address is forgotten", 8, []op{failed("a", 1, 0), alive("a", 9)}, nil},
		{"another name alive at its address replaces it", 8, []op{failed("a", 1, 0), failed("b", 2, 0), alive("c", 1)}, []string{"b"}},
		{"left is forgotten", 8, []op{failed("a", 1, 0), left("a")}, nil},
		{"failing again updates", 8, []op{failed("a", 1, 0), failed("a", 2, 1)}, []string{"a"}},
		{"full: first failed goes", 2, []op{failed("a", 1, 1), failed("b", 2, 0), failed("c", 3, 2)}, []string{"a", "c"}},
		{"full: refailing a known member evicts nobody", 2, []op{failed("a", 1, 1), failed("b", 2, 0), failed("b", 2, 3)}, []string{"a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newReconnectSet(tt.max)
			for _, o := range tt.ops {
				o(s)
			}
			var got []string
			for n := range s.members {
				got = append(got, n)
			}
			slices.Sort(got)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("remembered %v, want %v", got, tt.want)
			}
			if s.len() != len(tt.want) {
				t.Errorf("len = %d, want %d", s.len(), len(tt.want))
			}
		})
	}

	t.Run("expire", func(t *testing.T) {
		s := newReconnectSet(8)
		s.failed("old", addr(1), t0)
		s.failed("edge", addr(2), t0.Add(time.Hour))
		s.failed("new", addr(3), t0.Add(2*time.Hour))
		if got := s.expire(t0.Add(3*time.Hour), 2*time.Hour); !reflect.DeepEqual(got, []string{"old"}) {
			t.Errorf("expired %v, want [old] (edge failed exactly timeout ago stays)", got)
		}
		if got := s.expire(t0.Add(3*time.Hour), time.Hour-1); !reflect.DeepEqual(got, []string{"edge", "new"}) {
			t.Errorf("expired %v, want [edge new]", got)
		}
		if s.len() != 0 {
			t.Errorf("%d left", s.len())
		}
	})

	t.Run("pick", func(t *testing.T) {
		s := newReconnectSet(8)
		for i, n := range []string{"a", "b", "c", "d"} {
			s.failed(n, addr(i+1), t0)
		}
		s.failed("a-again", addr(1), t0) // same address: picked once
		reverse := func(n int) []int {
			p := make([]int, n)
			for i := range p {
				p[i] = n - 1 - i
			}
			return p
		}
		if got, want := s.pick(3, reverse), []netip.AddrPort{addr(4), addr(3), addr(2)}; !reflect.DeepEqual(got, want) {
			t.Errorf("pick(3) = %v, want %v", got, want)
		}
		if got := s.pick(10, reverse); len(got) != 4 {
			t.Errorf("pick(10) = %v, want the 4 distinct addresses", got)
		}
		if got := newReconnectSet(8).pick(3, reverse); len(got) != 0 {
			t.Errorf("pick on empty set = %v", got)
		}
	})
}

func TestResolveSeeds(t *testing.T) {
	self := netip.MustParseAddrPort("10.0.0.1:15012")
	lookup := func(_ context.Context, network, host string) ([]netip.Addr, error) {
		switch host {
		case "gateways.istio-system": // a headless Service: every gateway, this one too
			return []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("::ffff:10.0.0.3")}, nil
		case "v6.example":
			return []netip.Addr{netip.MustParseAddr("fd00::1")}, nil
		}
		return nil, fmt.Errorf("lookup %s: no such host", host)
	}
	tests := []struct {
		name  string
		seeds []string
		want  []string
	}{
		{"self by address is left out", []string{"10.0.0.1:15012", "10.0.0.2:15012"}, []string{"10.0.0.2:15012"}},
		{"same address, other port is kept", []string{"10.0.0.1:15013"}, []string{"10.0.0.1:15013"}},
		{"a name resolving to every gateway", []string{"gateways.istio-system:15012"}, []string{"10.0.0.2:15012", "10.0.0.3:15012"}},
		{"duplicates once", []string{"10.0.0.2:15012", "gateways.istio-system:15012"}, []string{"10.0.0.2:15012", "10.0.0.3:15012"}},
		{"IPv6", []string{"v6.example:15012", "[fd00::2]:15012"}, []string{"[fd00::1]:15012", "[fd00::2]:15012"}},
		{"unresolvable kept for Join to fail", []string{"nowhere.example:15012"}, []string{"nowhere.example:15012"}},
		{"other forms kept for Join", []string{"gw-b-1/10.0.0.9:15012", "10.0.0.9", "10.0.0.9:http"}, []string{"gw-b-1/10.0.0.9:15012", "10.0.0.9", "10.0.0.9:http"}},
		{"only self", []string{"10.0.0.1:15012"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := resolveSeeds(context.Background(), tt.seeds, self, lookup); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("resolveSeeds(%q) = %q, want %q", tt.seeds, got, tt.want)
			}
		})
	}
}

// reconnectConfig returns testConfig with a fast reconnect loop. memberlist
// forgets a dead node at once instead of gossiping to it for 15 s more
// (GossipToTheDeadTime): from the moment a node is declared dead,
// memberlist sends it nothing, so only the reconnect loop can bring the
// two sides of a healed partition together, as after a long real outage.
func reconnectConfig(name, network string) Config {
	cfg := testConfig(name, network)
	cfg.ReconnectInterval = 100 * time.Millisecond
	cfg.tuneMemberlist = func(mc *memberlist.Config) { mc.GossipToTheDeadTime = time.Nanosecond }
	return cfg
}

// TestPartitionHeals cuts a four-node cluster into two networks' halves,
// waits until each half has declared the other dead, lifts the cut and
// waits until the halves have found each other again.
//
// The cut is emulated in-process: each node's transport drops packets to,
// and refuses dials to, the other half's gossip addresses. A real cut
// (nftables rules between network namespaces) is tested in e2e.
func TestPartitionHeals(t *testing.T) {
	leakcheck.Check(t)
	var nodes []*Node
	for _, name := range []string{"a1", "a2", "b1", "b2"} {
		cfg := reconnectConfig(name, name[:1])
		for _, n := range nodes {
			cfg.Join = append(cfg.Join, n.Addr().String())
		}
		nodes = append(nodes, startNode(t, cfg))
	}
	for _, n := range nodes {
		if err := n.WaitJoined(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	waitConverged(t, nodes, 4)
	side := map[string][]*Node{"a": nodes[:2], "b": nodes[2:]}
	other := map[string]string{"a": "b", "b": "a"}

	// Cut.
	for _, n := range nodes {
		addrs := make(map[string]bool)
		for _, o := range side[other[n.cfg.Network]] {
			addrs[o.Addr().String()] = true
		}
		n.tr.setBlock(func(addr string) bool { return addrs[addr] })
	}
	await.True(t, 2*waitTimeout, "each half declares the other dead", func() bool {
		for _, n := range nodes {
			for _, o := range side[other[n.cfg.Network]] {
				if st, _ := memberState(n, o.Name()); st != StateDead {
					return false
				}
				if _, ok := summaryFrom(n, o.Name()); ok {
					return false
				}
			}
			if st := n.Stats(); st.ReconnectPending != 2 || st.Networks != 1 {
				return false
			}
		}
		return true
	})
	await.True(t, waitTimeout, "reconnects tried and failing during the cut", func() bool {
		for _, n := range nodes {
			if st := n.Stats(); st.ReconnectAttempts == 0 {
				return false
			}
		}
		return true
	})
	var during uint64
	for _, n := range nodes {
		during += n.Stats().ReconnectSuccesses
	}

	// Heal.
	for _, n := range nodes {
		n.tr.setBlock(nil)
	}
	await.True(t, 2*waitTimeout, "both halves see each other again", func() bool {
		for _, n := range nodes {
			for _, o := range nodes {
				if st, _ := memberState(n, o.Name()); st != StateAlive {
					return false
				}
				if _, ok := summaryFrom(n, o.Name()); !ok {
					return false
				}
			}
			if st := n.Stats(); st.ReconnectPending != 0 || st.Networks != 2 {
				return false
			}
		}
		return true
	})
	var after uint64
	for _, n := range nodes {
		after += n.Stats().ReconnectSuccesses
	}
	if after <= during {
		t.Errorf("no reconnect succeeded after the heal (%d before, %d after): what brought the halves together?", during, after)
	}
}

// TestAloneRejoinsSeeds: a node whose only peer left (so it is not
// remembered as failed) and came back on the same address, without seeds
// of its own, is found again through the node's seeds.
func TestAloneRejoinsSeeds(t *testing.T) {
	leakcheck.Check(t)
	b1 := startNode(t, reconnectConfig("b1", "b"))
	cfg := reconnectConfig("a1", "a")
	cfg.Join = []string{b1.Addr().String()}
	a1 := startNode(t, cfg)
	if err := a1.WaitJoined(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, []*Node{a1, b1}, 2)

	addr := b1.Addr()
	if err := b1.Leave(waitTimeout); err != nil {
		t.Fatal(err)
	}
	if err := b1.Shutdown(); err != nil {
		t.Fatal(err)
	}
	await.True(t, waitTimeout, "a1 alone", func() bool {
		st, _ := memberState(a1, "b1")
		return st == StateLeft && a1.Stats().Alive == 1
	})
	if st := a1.Stats(); st.ReconnectPending != 0 {
		t.Errorf("a member that left is remembered for reconnecting: %v", a1.reconnectPending())
	}

	cfg = reconnectConfig("b1", "b")
	cfg.BindAddr, cfg.BindPort = addr.Addr().String(), int(addr.Port())
	b1 = startNode(t, cfg)
	waitConverged(t, []*Node{a1, b1}, 2)
	if st := a1.Stats(); st.ReconnectSuccesses == 0 {
		t.Errorf("found again without a reconnect: %+v", st)
	}
}

// TestReconnectStopsOnLeave: after Leave the node no longer rejoins, even
// though the member it lost is remembered as failed.
func TestReconnectStopsOnLeave(t *testing.T) {
	leakcheck.Check(t)
	var nodes []*Node
	for _, name := range []string{"a1", "b1"} {
		cfg := reconnectConfig(name, name[:1])
		for _, n := range nodes {
			cfg.Join = append(cfg.Join, n.Addr().String())
		}
		nodes = append(nodes, startNode(t, cfg))
	}
	waitConverged(t, nodes, 2)
	a1, b1 := nodes[0], nodes[1]
	b1.Shutdown() // killed: a1 remembers it as failed
	await.True(t, waitTimeout, "a1 retries b1", func() bool {
		return a1.Stats().ReconnectAttempts > 0 && slices.Equal(a1.reconnectPending(), []string{"b1"})
	})
	if err := a1.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	await.True(t, waitTimeout, "reconnect loop returned after Leave", func() bool {
		select {
		case <-a1.reconnectDone:
			return true
		default:
			return false
		}
	})
	if err := a1.Leave(time.Second); err != nil { // a second Leave is harmless
		t.Fatal(err)
	}
}
