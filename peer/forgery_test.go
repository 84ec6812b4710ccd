package peer

import (
	"fmt"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/hashicorp/memberlist"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// forge signs an entry under origin with the attacker's SVID (nil: none)
// and sends it, with the attacker's chain, over TCP from the attacker's
// memberlist to the target: what a member holding the gossip key can do.
func forge(t *testing.T, attacker, target *Node, origin string, v Version, s Summary, sign bool) {
	t.Helper()
	e := newEntry(origin, v, s, time.Time{})
	var chain []byte
	if sign {
		if err := attacker.signer.sign(e); err != nil {
			t.Fatal(err)
		}
		chain = e.chain.der
	}
	to := memberlist.Node{Name: target.Name(), Addr: target.Addr().Addr().AsSlice(), Port: target.Addr().Port()}
	if err := attacker.ml.SendReliable(&to, encodeMessage(kindEntry, encodeEntryMessage(e, chain))); err != nil {
		t.Fatal(err)
	}
}

// waitRejected waits until n has counted want more refusals for reason
// than before.
func waitRejected(t *testing.T, n *Node, reason string, before uint64) {
	t.Helper()
	waitFor(t, reason+" refusal", func() error {
		if got := n.Stats().Rejected[reason]; got <= before {
			return fmt.Errorf("Rejected[%s] = %d", reason, got)
		}
		return nil
	})
}

// A member holding the gossip key, with a gateway SVID of its own, cannot
// publish under another gateway's name: not with the greatest version,
// not unsigned, not signed by itself. The victim's own entry stays, and
// its next publish wins.
func TestForgedEntryRefused(t *testing.T) {
	leakcheck.Check(t)
	nodes := cluster(t, "a1", "b1", "c1")
	victim, observer, attacker := nodes[0], nodes[1], nodes[2]
	real := summaryOf("a", 3, "reviews.bookinfo.svc.cluster.local")
	if err := victim.Publish(real); err != nil {
		t.Fatal(err)
	}
	held := func() NodeSummary {
		s, _ := summaryFrom(observer, "a1")
		return s
	}
	waitFor(t, "the victim's summary at the observer", func() error {
		if s := held(); len(s.Summary.Services) != 1 {
			return fmt.Errorf("observer holds %+v", s)
		}
		return nil
	})
	before := held()
	withdrawn := Summary{Network: "a"} // withdraws every service of network a
	inflated := summaryOf("a", MaxHealthyCount, "reviews.bookinfo.svc.cluster.local")

	tests := []struct {
		name    string
		version Version
		summary Summary
		sign    bool
		reason  string
	}{
		// Yesterday's attack: the greatest version, which the victim's
		// refutation (Seq+1) can never exceed.
		{"max version", Version{Epoch: math.MaxUint64, Seq: math.MaxUint64}, withdrawn, true, RejectVersionImplausible},
		{"signed by another gateway", Version{Epoch: before.Version.Epoch, Seq: before.Version.Seq + 100}, withdrawn, true, RejectIdentityMismatch},
		{"inflated counts signed by another gateway", Version{Epoch: before.Version.Epoch + 1, Seq: 0}, inflated, true, RejectIdentityMismatch},
		{"unsigned", Version{Epoch: before.Version.Epoch, Seq: before.Version.Seq + 100}, withdrawn, false, RejectUnsigned},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, target := range []*Node{observer, victim} {
				n := target.Stats().Rejected[tt.reason]
				forge(t, attacker, target, "a1", tt.version, tt.summary, tt.sign)
				waitRejected(t, target, tt.reason, n)
			}
			if got := held(); got.Version != before.Version || !reflect.DeepEqual(got.Summary, before.Summary) {
				t.Errorf("the observer holds %v %+v for a1, want its own %v", got.Version, got.Summary, before.Version)
			}
		})
	}

	// Nor can it say goodbye for the victim, which would make its next
	// failure a departure that is never reconnected.
	for _, tt := range []struct {
		name   string
		sign   bool
		reason string
	}{{"unsigned goodbye", false, RejectUnsigned}, {"goodbye signed by another gateway", true, RejectBadSignature}} {
		t.Run(tt.name, func(t *testing.T) {
			b := bye{origin: "a1", version: before.Version}
			if tt.sign {
				var err error
				if b.sig, _, err = attacker.signer.signMessage(signedBye(b.origin, b.version)); err != nil {
					t.Fatal(err)
				}
			}
			n := observer.Stats().Rejected[tt.reason]
			to := memberlist.Node{Name: observer.Name(), Addr: observer.Addr().Addr().AsSlice(), Port: observer.Addr().Port()}
			if err := attacker.ml.SendReliable(&to, encodeMessage(kindBye, encodeBye(b))); err != nil {
				t.Fatal(err)
			}
			waitRejected(t, observer, tt.reason, n)
			observer.mu.Lock()
			leaving := observer.members["a1"].leaving
			observer.mu.Unlock()
			if leaving {
				t.Error("the observer took the forged goodbye")
			}
		})
	}

	// The victim's own next publish still wins everywhere.
	next := summaryOf("a", 5, "ratings.bookinfo.svc.cluster.local", "reviews.bookinfo.svc.cluster.local")
	if err := victim.Publish(next); err != nil {
		t.Fatal(err)
	}
	if err := canonicalize(&next); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the victim's next summary everywhere", func() error {
		for _, n := range nodes {
			if s, _ := summaryFrom(n, "a1"); !reflect.DeepEqual(s.Summary, next) {
				return fmt.Errorf("%s holds %+v", n.Name(), s.Summary)
			}
		}
		return nil
	})
}

// A healthy count over MaxHealthyCount is refused from the network and
// lowered to it when publishing.
func TestInflatedCountsCapped(t *testing.T) {
	leakcheck.Check(t)
	nodes := cluster(t, "a1", "b1")
	a, b := nodes[0], nodes[1]
	// Signed by its own origin, so only the count is wrong.
	n := b.Stats().Rejected[RejectCountTooLarge]
	cur, _ := summaryFrom(b, "a1")
	forge(t, a, b, "a1", Version{Epoch: cur.Version.Epoch, Seq: cur.Version.Seq + 10}, summaryOf("a", MaxHealthyCount+1, "x.ns"), true)
	waitRejected(t, b, RejectCountTooLarge, n)
	if got, _ := summaryFrom(b, "a1"); got.Version != cur.Version {
		t.Errorf("b1 took the inflated entry: %v", got.Version)
	}

	if err := a.Publish(summaryOf("a", math.MaxUint32, "x.ns")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the capped summary at b1", func() error {
		s, _ := summaryFrom(b, "a1")
		if len(s.Summary.Services) != 1 {
			return fmt.Errorf("b1 holds %+v", s.Summary)
		}
		if c := s.Summary.Services[0].Ports[0].Subsets[0].Healthy[0].Count; c != MaxHealthyCount {
			return fmt.Errorf("count %d, want %d", c, MaxHealthyCount)
		}
		return nil
	})
}

// Entries signed by an SVID outside the gateway policy (a workload's), or
// by one the trust bundle does not vouch for, are refused, whatever name
// they carry; such a member's own summary is never used.
func TestSignerOutsidePolicyRefused(t *testing.T) {
	otherCA, err := identity.NewDevCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	untrusted, err := otherCA.NewSource(spiffeid.RequireFromString(gatewayIDPrefix+"x1"), identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		identity IdentitySource
		reason   string
	}{
		{"workload SVID", testIdentity("spiffe://cluster.local/ns/default/sa/x1"), RejectNotGateway},
		{"SVID of another CA", untrusted, RejectUntrustedChain},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leakcheck.Check(t)
			nodes := cluster(t, "a1", "b1")
			cfg := testConfig("x1", "x")
			cfg.Identity = tt.identity
			cfg.AllowGateway = func(string) error { return nil } // its own view does not matter
			cfg.Join = []string{nodes[0].Addr().String()}
			x := startNode(t, cfg)
			if err := x.Publish(summaryOf("x", 1, "evil.ns.svc.cluster.local")); err != nil {
				t.Fatal(err)
			}
			b := nodes[1]
			waitFor(t, "x1 a member of b1", func() error {
				if st, _ := memberState(b, "x1"); st != StateAlive {
					return fmt.Errorf("x1 is %v", st)
				}
				return nil
			})
			// Its introduction (its own entry and chain) is refused.
			waitRejected(t, b, tt.reason, 0)
			n := b.Stats().Rejected[tt.reason]
			cur, _ := summaryFrom(b, "a1")
			forge(t, x, b, "a1", Version{Epoch: cur.Version.Epoch, Seq: cur.Version.Seq + 1}, Summary{Network: "a"}, true)
			waitRejected(t, b, tt.reason, n)
			if got, _ := summaryFrom(b, "a1"); got.Version != cur.Version {
				t.Errorf("b1 took the forged entry for a1: %v", got.Version)
			}
			if _, ok := summaryFrom(b, "x1"); ok {
				t.Error("b1 holds the summary of a member outside the gateway policy")
			}
		})
	}
}

// A push/pull state with an entry over MaxEntryBytes, or one that would
// push the held entries over MaxStateBytes, refuses that entry alone: the
// others still merge.
func TestPushPullRefusesEntryAlone(t *testing.T) {
	leakcheck.Check(t)
	nodes := cluster(t, "a1", "b1", "d1")
	a, b, dn := nodes[0], nodes[1], nodes[2]
	// c1 takes entries of at most 32 KiB, 48 KiB in all.
	cfg := testConfig("c1", "c")
	cfg.MaxEntryBytes, cfg.MaxStateBytes = 32<<10, 48<<10
	for _, n := range nodes {
		cfg.Join = append(cfg.Join, n.Addr().String())
	}
	c := startNode(t, cfg)
	waitConverged(t, append(nodes, c), 4)

	// signed returns origin's next entry with s, signed by origin's SVID
	// and not gossiped: a newer entry than c1 holds.
	signed := func(origin *Node, s Summary) *entry {
		t.Helper()
		cur, _ := summaryFrom(c, origin.Name())
		e := newEntry(origin.Name(), Version{Epoch: cur.Version.Epoch, Seq: cur.Version.Seq + 1}, s, time.Now())
		if err := origin.signer.sign(e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	d := (*delegate)(c)
	merge := func(entries ...*entry) {
		d.MergeRemoteState(encodeMessage(kindSharedState, encodeSharedState(entries)), false)
	}
	holds := func(e *entry) bool { s, _ := summaryFrom(c, e.origin); return s.Version == e.version }

	t.Run("over the entry limit", func(t *testing.T) {
		n := c.Stats().Rejected[RejectEntryTooLarge]
		big, small := signed(a, bigSummary("a", 200)), signed(dn, summaryOf("d", 2, "d.ns"))
		merge(big, small)
		if got := c.Stats().Rejected[RejectEntryTooLarge]; got != n+1 {
			t.Errorf("Rejected[entry_too_large] = %d, want %d", got, n+1)
		}
		if !holds(small) {
			t.Error("d1's entry in the same state was not merged")
		}
		if holds(big) {
			t.Error("c1 holds a1's oversized entry")
		}
	})

	t.Run("over the state budget", func(t *testing.T) {
		// a1 publishes 27 KiB: c1 takes it, then holds about 29 KiB.
		if err := a.Publish(bigSummary("a", 140)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a1's summary at c1", func() error {
			if s, _ := summaryFrom(c, "a1"); len(s.Summary.Services) != 140 {
				return fmt.Errorf("c1 holds %d services of a1", len(s.Summary.Services))
			}
			return nil
		})
		n := c.Stats().Rejected[RejectStateBudget]
		second, small := signed(b, bigSummary("b", 140)), signed(dn, summaryOf("d", 3, "d.ns"))
		merge(second, small)
		if got := c.Stats().Rejected[RejectStateBudget]; got != n+1 {
			t.Errorf("Rejected[state_budget] = %d, want %d", got, n+1)
		}
		if holds(second) || !holds(small) {
			t.Errorf("c1 holds b1's: %v, d1's: %v; want false, true", holds(second), holds(small))
		}
		if d.LocalState(false) == nil {
			t.Error("c1 stopped sending its push/pull state")
		}
	})
}

// A node whose own summary grows past its state limit beside what it
// holds leaves other origins' largest summaries out of its push/pull
// state instead of sending none: anti-entropy goes on for the rest.
func TestLocalStateLeavesOutLargest(t *testing.T) {
	leakcheck.Check(t)
	// Without an identity, so that the hand-made entries below are used.
	n := testNode(t, func(c *Config) { c.MaxStateBytes, c.Identity = 96<<10, nil })
	other := newEntry("big", Version{Epoch: 1}, bigSummary("b", 300), time.Now())
	small := newEntry("small", Version{Epoch: 1}, summaryOf("c", 1, "c.ns"), time.Now())
	n.mu.Lock()
	for _, e := range []*entry{other, small} {
		n.store.put(e)
		n.members[e.origin] = &member{state: StateAlive, meta: Meta{Network: e.summary.Network}}
	}
	n.gen++
	n.mu.Unlock()
	if err := n.Publish(bigSummary("a", 300)); err != nil {
		t.Fatal(err)
	}
	before := n.Stats().StatesTooLarge
	st := (*delegate)(n).LocalState(false)
	if st == nil {
		t.Fatal("no push/pull state sent")
	}
	if got := n.Stats().StatesTooLarge; got != before+1 {
		t.Errorf("StatesTooLarge = %d, want %d", got, before+1)
	}
	_, body, err := decodeMessage(st, n.cfg.MaxStateBytes)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := parseSharedState(body)
	if err != nil {
		t.Fatal(err)
	}
	var origins []string
	for _, h := range ps.heads {
		origins = append(origins, h.origin)
	}
	if want := []string{"self", "small"}; !sameSet(origins, want) {
		t.Errorf("state holds %v, want %v", origins, want)
	}
}

func sameSet(a, b []string) bool {
	m := make(map[string]int)
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for _, v := range m {
		if v != 0 {
			return false
		}
	}
	return true
}

// A key holder that poses as a member in memberlist (its alive message
// for the victim's name, with its own SPIFFE ID in the meta, until the
// victim refutes it) may get an entry accepted meanwhile. Once the meta
// is the victim's again, the impostor's entry is not used, and the
// victim's own entry replaces it although its version is lower.
func TestImpostorEntryUndone(t *testing.T) {
	leakcheck.Check(t)
	nodes := cluster(t, "a1", "b1", "c1")
	victim, observer, attacker := nodes[0], nodes[1], nodes[2]
	if err := victim.Publish(summaryOf("a", 3, "reviews.ns")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the victim's summary at the observer", func() error {
		if s, _ := summaryFrom(observer, "a1"); len(s.Summary.Services) != 1 {
			return fmt.Errorf("observer holds %+v", s.Summary)
		}
		return nil
	})
	real, _ := summaryFrom(observer, "a1")
	// Emulated: crafting memberlist's alive message is memberlist's
	// business; its effect here is the announced ID.
	observer.setAnnounced("a1", attacker.Meta().SPIFFEID)
	forged := Version{Epoch: real.Version.Epoch + uint64(time.Minute), Seq: 1}
	n := observer.Stats().Accepted
	forge(t, attacker, observer, "a1", forged, Summary{Network: "a"}, true)
	waitFor(t, "the impostor's entry taken", func() error {
		if observer.Stats().Accepted == n {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	observer.setAnnounced("a1", victim.Meta().SPIFFEID) // the victim refuted
	if s, _ := summaryFrom(observer, "a1"); s.Version == forged {
		t.Error("the impostor's entry is used after the victim's meta is back")
	}
	next := summaryOf("a", 4, "reviews.ns")
	if err := victim.Publish(next); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the victim's next summary at the observer", func() error {
		s, _ := summaryFrom(observer, "a1")
		if len(s.Summary.Services) != 1 || s.Summary.Services[0].Ports[0].Subsets[0].Healthy[0].Count != 4 {
			return fmt.Errorf("observer holds %v %+v", s.Version, s.Summary)
		}
		return nil
	})
}
