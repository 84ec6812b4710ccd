package peer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestNameConflictFailsLaterNode starts two real nodes under one name on
// loopback: the one started later reports the conflict, naming the flag to
// change and the other's address; the first does not. Once the first is
// gone, the conflict lapses.
func TestNameConflictFailsLaterNode(t *testing.T) {
	cfg := testConfig("gw", "net-a")
	cfg.BindAddr = "127.0.0.1"
	first := startNode(t, cfg)
	cfg2 := testConfig("gw", "net-b")
	cfg2.BindAddr = "127.0.0.2"
	cfg2.Join = []string{first.Addr().String()}
	second := startNode(t, cfg2)

	waitFor(t, "conflict on the later node", func() error {
		err := second.Conflict()
		if err == nil {
			return errors.New("no conflict reported")
		}
		if !errors.Is(err, ErrNameConflict) || !strings.Contains(err.Error(), "--node-name") ||
			!strings.Contains(err.Error(), first.Addr().String()) {
			return fmt.Errorf("conflict error %q does not name --node-name and %s", err, first.Addr())
		}
		return nil
	})
	// The first node hears of the conflict from the same exchange, on
	// its own side of it: not necessarily by the time the second reports.
	waitFor(t, "the first node to hear of the conflict", func() error {
		if !first.conflicted() {
			return errors.New("not heard of")
		}
		return nil
	})
	if err := first.Conflict(); err != nil {
		t.Errorf("the first node yields too: %v", err)
	}
	// Neither took the other's entry as an earlier incarnation of itself.
	for _, n := range []*Node{first, second} {
		if s, ok := summaryFrom(n, "gw"); !ok || s.Meta.Network != n.cfg.Network {
			t.Errorf("%s holds its own summary as %+v", n.cfg.Network, s)
		}
	}

	first.Shutdown()
	waitWithin(t, conflictHold+2*conflictRecheck+waitTimeout, "conflict lapses", func() error {
		return second.Conflict()
	})
}

// TestDistinctNamesOneHost: two nodes on one address family with distinct
// names join without a conflict.
func TestDistinctNamesOneHost(t *testing.T) {
	a := testConfig("host-net-a-7946", "net-a")
	a.BindAddr = "127.0.0.1"
	na := startNode(t, a)
	b := testConfig("host-net-b-7947", "net-b")
	b.BindAddr = "127.0.0.1"
	b.Join = []string{na.Addr().String()}
	nb := startNode(t, b)
	waitFor(t, "both see two summaries", func() error {
		for _, n := range []*Node{na, nb} {
			if got := len(n.Summaries()); got != 2 {
				return fmt.Errorf("%s holds %d summaries", n.Name(), got)
			}
		}
		return nil
	})
	for _, n := range []*Node{na, nb} {
		if n.conflicted() {
			t.Errorf("%s heard of a name conflict", n.Name())
		}
	}
}

// TestSetPassthroughAddrSpreads: a changed passthrough address reaches
// the other node's view of the member.
func TestSetPassthroughAddrSpreads(t *testing.T) {
	na := startNode(t, testConfig("pa", "net-a"))
	b := testConfig("pb", "net-b")
	b.Join = []string{na.Addr().String()}
	nb := startNode(t, b)
	if err := nb.WaitJoined(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := na.SetPassthroughAddr("10.9.9.9:15443", time.Second); err != nil {
		t.Logf("SetPassthroughAddr: %v (the update still spreads)", err)
	}
	if err := na.SetPassthroughAddr("not an address", time.Second); err == nil {
		t.Errorf("SetPassthroughAddr accepted a bad address")
	}
	if got := na.Meta().PassthroughAddr; got != "10.9.9.9:15443" {
		t.Errorf("own meta says %q", got)
	}
	waitFor(t, "new address seen", func() error {
		if s, ok := summaryFrom(nb, "pa"); !ok || s.Meta.PassthroughAddr != "10.9.9.9:15443" {
			return fmt.Errorf("pb sees pa as %+v", s.Meta)
		}
		return nil
	})
}
