package peer

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Name conflicts: two live nodes started under one name. memberlist then
// refuses the second one's alive messages wherever the first is known
// (logging "Conflicting address" each time) and each node sees the other's
// gossip entries under its own name. Neither is part of the cluster as it
// believes. The node started later yields: [Node.Conflict] reports an error
// naming the other address until the other claimant has not been heard for
// conflictHold, so that readiness fails where the operator has to act.
const (
	// conflictRecheck is how often a yielding node pushes and pulls state
	// with the other claimant: memberlist reports a conflict only when it
	// hears of the other, which in a small cluster happens only at a join.
	conflictRecheck = 5 * time.Second
	// conflictHold is how long after the last report a conflict stands.
	conflictHold = 3 * conflictRecheck
)

// ErrNameConflict is wrapped by the error [Node.Conflict] returns.
var ErrNameConflict = errors.New("peer: node name conflict")

// conflict is the latest name conflict a node heard of.
type conflict struct {
	mu    sync.Mutex
	other netip.AddrPort // the other claimant's gossip address
	meta  Meta           // the other claimant's meta, if it decoded
	last  time.Time      // when memberlist last reported it
	yield bool           // this node started later: it is the one to fix
}

var _ memberlist.ConflictDelegate = (*delegate)(nil)

// NotifyConflict records another node alive under this node's name. Called
// by memberlist with its node lock held: it only records.
func (d *delegate) NotifyConflict(existing, other *memberlist.Node) {
	n := d.node()
	if other.Name != n.cfg.Name {
		return // two other nodes disagree; their problem, and logged by memberlist
	}
	meta, _ := decodeMeta(other.Meta) // zero Started when it does not decode: we yield to it
	addr := addrPort(other.Addr, other.Port)
	self := n.meta.Load().Started
	// The later start yields; a tie (clocks equal to the nanosecond) is
	// broken by address so that exactly one side yields.
	yield := meta.Started < self || (meta.Started == self && addr.String() < n.selfAddr.Load().String())
	c := &n.conflict
	c.mu.Lock()
	first := c.last.IsZero() || time.Since(c.last) > conflictHold
	c.other, c.meta, c.last, c.yield = addr, meta, time.Now(), yield
	c.mu.Unlock()
	if first {
		n.log.Error("another gateway gossips under this node's name: give each gateway a unique --node-name",
			"name", n.cfg.Name, "other_addr", addr, "other_network", meta.Network, "this_node_yields", yield)
	}
}

// Conflict returns an error wrapping ErrNameConflict while another live
// node uses this node's name and this node is the one that started later
// (so the cluster knows the other under the name); nil otherwise. The error
// says what to change. It clears once the other claimant has not been
// heard of for 15 s: it stopped, or was renamed.
func (n *Node) Conflict() error {
	c := &n.conflict
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.yield || c.last.IsZero() || time.Since(c.last) > conflictHold {
		return nil
	}
	return fmt.Errorf("%w: gateway at %s (network %q) already gossips as %q; give this gateway a unique --node-name (nodeName)",
		ErrNameConflict, c.other, c.meta.Network, n.cfg.Name)
}

// conflicted reports whether a name conflict was heard of recently, on
// either side: entries under this node's name are then the other
// claimant's, not an earlier incarnation's.
func (n *Node) conflicted() bool {
	c := &n.conflict
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.last.IsZero() && time.Since(c.last) <= conflictHold
}

// conflictLoop re-contacts the other claimant while this node yields, so
// that the conflict stays reported while the other lives and clears soon
// after it is gone.
func (n *Node) conflictLoop() {
	defer n.wg.Done()
	t := time.NewTicker(conflictRecheck)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-n.stop:
			return
		}
		c := &n.conflict
		c.mu.Lock()
		other, active := c.other, c.yield && !c.last.IsZero() && time.Since(c.last) <= conflictHold
		c.mu.Unlock()
		if active {
			n.ml.Join([]string{other.String()}) // an error means it is gone: the conflict then lapses
		}
	}
}
