package peer

import (
	"fmt"
	"testing"
	"time"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// When a gateway's SVID rotates, it signs its entry again with the new
// one and every other gateway takes it: the entries others hold never
// outlive their certificate.
func TestSVIDRotationResigns(t *testing.T) {
	leakcheck.Check(t)
	cfg := testConfig("a1", "a")
	src := cfg.Identity.(*identity.MemorySource)
	a := startNode(t, cfg)
	b := startNode(t, func() Config { c := testConfig("b1", "b"); c.Join = []string{a.Addr().String()}; return c }())
	waitConverged(t, []*Node{a, b}, 2)
	if err := a.Publish(summaryOf("a", 1, "a.ns")); err != nil {
		t.Fatal(err)
	}
	old := a.store.get("a1").chainDigest
	ca, err := testCA()
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.Issue(spiffeid.RequireFromString(gatewayIDPrefix+"a1"), identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src.SetX509SVID(svid)
	waitFor(t, "a1's entry signed with its new SVID at b1", func() error {
		b.mu.Lock()
		defer b.mu.Unlock()
		e := b.store.get("a1")
		if e == nil || e.chainDigest == old || e.chain == nil || !e.chain.leaf.Equal(svid.Certificates[0]) {
			return fmt.Errorf("b1 holds a1's entry signed by chain %x", e.chainDigest[:4])
		}
		return nil
	})
	if s, _ := summaryFrom(b, "a1"); len(s.Summary.Services) != 1 {
		t.Errorf("a1's re-signed summary at b1: %+v", s.Summary)
	}
}

// benchSigner returns a signer for one test gateway and an entry it signed.
func benchSigner(b *testing.B) (*signer, *entry) {
	sg, _, err := newSigner(testIdentity(gatewayIDPrefix+"bench"), allowGateways)
	if err != nil {
		b.Fatal(err)
	}
	e := newEntry("bench", Version{Epoch: 1, Seq: 1}, bigSummary("a", 100), time.Time{})
	if err := sg.sign(e); err != nil {
		b.Fatal(err)
	}
	return sg, e
}

// BenchmarkSignature measures signing an entry with a gateway's SVID
// (ECDSA P-256) and verifying one: the chain against the trust bundle and
// the signature (a new gateway or SVID), the signature alone (a new
// version of a known gateway), and a signature already verified.
//
//	go test -run='^$' -bench=Signature -benchtime=2000x ./peer/
func BenchmarkSignature(b *testing.B) {
	b.Run("sign", func(b *testing.B) {
		sg, e := benchSigner(b)
		for range b.N {
			if err := sg.sign(e); err != nil {
				b.Fatal(err)
			}
		}
	})
	verify := func(b *testing.B, forget func(*signer)) {
		sg, e := benchSigner(b)
		der, own := e.chain.der, e.chain.digest
		sg.mu.Lock()
		sg.own = nil // verify the chain as another gateway's
		sg.mu.Unlock()
		now := time.Now()
		b.ResetTimer()
		for range b.N {
			forget(sg)
			c, _, err := sg.chainFor(own, der, now)
			if err != nil {
				b.Fatal(err)
			}
			if err := sg.verify(c, e.origin, e.version, e.hash, e.sig); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("verify chain and signature", func(b *testing.B) {
		verify(b, func(sg *signer) { sg.mu.Lock(); clear(sg.chains); clear(sg.verified); sg.mu.Unlock() })
	})
	b.Run("verify signature", func(b *testing.B) {
		verify(b, func(sg *signer) { sg.mu.Lock(); clear(sg.verified); sg.mu.Unlock() })
	})
	b.Run("verified before", func(b *testing.B) { verify(b, func(*signer) {}) })
}

// BenchmarkMergeSignedState measures merging a push/pull state of 1,000
// gateways' signed entries (10 networks, each gateway its own SVID):
// the first time (every chain and signature verified) and again (all
// held: nothing verified).
//
//	go test -run='^$' -bench=MergeSignedState -benchtime=5x ./peer/
func BenchmarkMergeSignedState(b *testing.B) {
	const gateways = 1000
	var entries []*entry
	for i := range gateways {
		name := fmt.Sprintf("gw-%04d", i)
		sg, _, err := newSigner(testIdentity(gatewayIDPrefix+name), allowGateways)
		if err != nil {
			b.Fatal(err)
		}
		e := newEntry(name, Version{Epoch: 1, Seq: 1}, summaryOf(fmt.Sprintf("net-%d", i%10), 1, "a.ns", "b.ns"), time.Now())
		if err := sg.sign(e); err != nil {
			b.Fatal(err)
		}
		entries = append(entries, e)
	}
	state := encodeMessage(kindSharedState, encodeSharedState(entries))
	node := func(b *testing.B) *Node {
		n := startNode(b, testConfig("probe", "p"))
		for _, e := range entries {
			n.setAnnounced(e.origin, e.chain.id)
		}
		return n
	}
	b.Run("new", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			n := node(b)
			b.StartTimer()
			(*delegate)(n).MergeRemoteState(state, false)
			b.StopTimer()
			if got := n.Stats().Accepted; got != gateways {
				b.Fatalf("accepted %d of %d", got, gateways)
			}
			n.Shutdown()
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*gateways), "µs/entry")
	})
	b.Run("held", func(b *testing.B) {
		n := node(b)
		(*delegate)(n).MergeRemoteState(state, false)
		b.ResetTimer()
		for range b.N {
			(*delegate)(n).MergeRemoteState(state, false)
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*gateways), "µs/entry")
		b.ReportMetric(float64(len(state)), "state-bytes")
	})
}
