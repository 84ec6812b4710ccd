package peer

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Publish replaces this node's summary of its own network and spreads it:
// by gossip broadcast when it fits a packet, otherwise over TCP to every
// live member; push/pull carries it to nodes that miss both. Publish
// copies s and puts the copy in canonical order. s.Network, when set, must
// be the node's network. Publishing a summary equal to the current one
// changes nothing. Publish returns an error for an invalid summary (empty
// host, port 0, duplicate host, port, subset or locality) or one whose
// encoding exceeds Config.MaxStateBytes.
func (n *Node) Publish(s Summary) error {
	s = cloneSummary(s)
	if s.Network == "" {
		s.Network = n.cfg.Network
	} else if s.Network != n.cfg.Network {
		return fmt.Errorf("peer: publish: summary of network %q on a node of network %q", s.Network, n.cfg.Network)
	}
	if err := canonicalize(&s); err != nil {
		return fmt.Errorf("peer: publish: %w", err)
	}

	n.mu.Lock()
	defer n.mu.Unlock()
	if n.isClosed() {
		return ErrClosed
	}
	cur := n.store.get(n.cfg.Name)
	v := Version{Epoch: cur.version.Epoch, Seq: cur.version.Seq + 1}
	e := newEntry(n.cfg.Name, v, s, time.Now())
	if bytes.Equal(e.body, cur.body) {
		return nil
	}
	if e.size() > n.cfg.MaxStateBytes {
		return fmt.Errorf("peer: publish: summary encodes to %d bytes, over MaxStateBytes %d", e.size(), n.cfg.MaxStateBytes)
	}
	n.store.merge(e)
	n.gen++
	d := diffSummary(n.cfg.Name, cur.version, v, &cur.summary, &s)
	if msg := encodeMessage(kindDelta, encodeDelta(d)); len(msg) < e.size() {
		n.log.Debug("summary published as a delta", "version", v, "services", len(s.Services), "changed", len(d.upserts.summary.Services), "removed", len(d.removed), "bytes", len(msg))
		n.sendDeltaLocked(cur, e, msg)
	} else {
		n.log.Debug("summary published", "version", v, "services", len(s.Services))
		n.disseminateLocked(e)
	}
	n.notify()
	return nil
}

// sendDeltaLocked spreads msg, the delta from base to e, this node's
// previous and new entries: by gossip when it fits a packet, else over
// TCP. A delta still waiting for TCP is merged into this one (one delta
// from its base to e), and a whole entry waiting is replaced by e: each
// receiver gets one message per send round, so it never sees a delta
// before the one it builds on from the same round. n.mu must be held.
func (n *Node) sendDeltaLocked(base, e *entry, msg []byte) {
	n.c.deltasSent.Add(1)
	if len(msg) <= n.maxBroadcast {
		n.queue.QueueBroadcast(&deltaBroadcast{origin: e.origin, msg: msg})
		n.c.broadcasts.Add(1)
		return
	}
	switch {
	case n.pendingReliable == nil:
		n.pendingReliable, n.pendingBase = msg, base
	case n.pendingBase != nil:
		d := diffSummary(e.origin, n.pendingBase.version, e.version, &n.pendingBase.summary, &e.summary)
		n.pendingReliable = encodeMessage(kindDelta, encodeDelta(d))
	default:
		n.pendingReliable = encodeMessage(kindEntry, e.wire())
	}
	n.kickReliable()
}

func (n *Node) kickReliable() {
	select {
	case n.reliableKick <- struct{}{}:
	default:
	}
}

// disseminateLocked spreads this node's own entry e. n.mu must be held.
func (n *Node) disseminateLocked(e *entry) {
	msg := encodeMessage(kindEntry, e.wire())
	if len(msg) <= n.maxBroadcast {
		n.pendingReliable, n.pendingBase = nil, nil // superseded
		n.queue.QueueBroadcast(&entryBroadcast{origin: e.origin, msg: msg})
		n.c.broadcasts.Add(1)
		return
	}
	n.pendingReliable, n.pendingBase = msg, nil
	n.kickReliable()
}

// reliableLoop sends the latest too-large-to-gossip entry over TCP to
// every live member; newer entries replace one not yet sent.
func (n *Node) reliableLoop() {
	defer n.wg.Done()
	for {
		select {
		case <-n.reliableKick:
		case <-n.done:
			return
		}
		n.mu.Lock()
		msg := n.pendingReliable
		n.pendingReliable, n.pendingBase = nil, nil
		var targets []memberlist.Node
		for name, m := range n.members {
			if name != n.cfg.Name && m.state == StateAlive {
				targets = append(targets, memberlist.Node{Name: name, Addr: m.addr.Addr().AsSlice(), Port: m.addr.Port()})
			}
		}
		n.mu.Unlock()
		if msg == nil {
			continue
		}
		sem := make(chan struct{}, reliableFanout)
		var wg sync.WaitGroup
	send:
		for _, t := range targets {
			select {
			case sem <- struct{}{}:
			case <-n.done:
				break send
			}
			wg.Go(func() {
				defer func() { <-sem }()
				n.c.reliableSends.Add(1)
				if err := n.ml.SendReliable(&t, msg); err != nil {
					n.c.reliableKO.Add(1)
					n.log.Warn("reliable send of summary failed; push/pull will repair", "to", t.Name, "bytes", len(msg), "err", err)
				}
			})
		}
		wg.Wait()
	}
}

// applyEntries merges remote entries and reports which were accepted.
func (n *Node) applyEntries(entries []*entry) []bool {
	now := time.Now()
	accepted := make([]bool, len(entries))
	changed := false
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, e := range entries {
		e.received = now
		if e.origin == n.cfg.Name {
			n.refuteLocked(e)
			continue
		}
		if n.store.merge(e) == mergeAccepted {
			n.log.Debug("summary accepted", "origin", e.origin, "version", e.version, "services", len(e.summary.Services))
			accepted[i], changed = true, true
			n.c.accepted.Add(1)
		} else {
			n.c.stale.Add(1)
		}
	}
	if changed {
		n.gen++
		n.notify()
	}
	return accepted
}

// refuteLocked handles an entry under this node's own name. One newer than
// ours comes from an earlier incarnation (this node restarted with a clock
// behind the old one's): republish our summary above it. n.mu must be held.
func (n *Node) refuteLocked(e *entry) {
	cur := n.store.get(n.cfg.Name)
	if e.version.Compare(cur.version) <= 0 {
		if !bytes.Equal(e.body, cur.body) && e.version == cur.version {
			n.reject(rForeignOrigin, errors.New("entry under our name with our version and other content"))
		}
		n.c.stale.Add(1)
		return
	}
	if n.conflicted() {
		// Another live node uses our name: its entries are not an earlier
		// incarnation's, and superseding them would make the two of us
		// outbid each other forever.
		n.reject(rForeignOrigin, errors.New("entry under our name from another node claiming it (name conflict)"))
		return
	}
	v := Version{Epoch: e.version.Epoch, Seq: e.version.Seq + 1}
	mine := newEntry(cur.origin, v, cur.summary, e.received)
	n.store.put(mine)
	n.gen++
	n.log.Info("superseding an earlier incarnation's summary", "its_version", e.version, "new_version", v)
	n.disseminateLocked(mine)
}

// knownSummary returns the held summary whose body has hash h.
func (n *Node) knownSummary(h [sha256.Size]byte) (Summary, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.store.lookup(h)
	if !ok {
		return Summary{}, false
	}
	return c.summary, true
}

// notify signals Changed without blocking.
func (n *Node) notify() {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

// Summaries returns the latest summary of every live member (alive or
// suspect) and of this node, sorted by node name: what resolution needs.
// A member whose summary names a network other than its meta's is left
// out. The summaries are shared with the node and must not be modified.
func (n *Node) Summaries() []NodeSummary {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]NodeSummary, 0, len(n.store.entries))
	for _, e := range n.liveEntriesLocked() {
		out = append(out, NodeSummary{Node: e.origin, Meta: n.members[e.origin].meta, Version: e.version, Summary: e.summary})
	}
	slices.SortFunc(out, func(a, b NodeSummary) int { return cmp.Compare(a.Node, b.Node) })
	return out
}

// liveEntriesLocked returns the entries of live members whose summary
// matches their meta's network. n.mu must be held.
func (n *Node) liveEntriesLocked() []*entry {
	var out []*entry
	for origin, e := range n.store.entries {
		m := n.members[origin]
		if m == nil || m.state != StateAlive || m.meta.Network != e.summary.Network {
			continue
		}
		out = append(out, e)
	}
	return out
}

// Changed returns a channel that receives a value after membership or any
// summary changed. Notifications coalesce: one value may stand for many
// changes, so a receiver should re-read Members or Summaries each time.
func (n *Node) Changed() <-chan struct{} { return n.changed }

// entryBroadcast is one origin's entry in memberlist's broadcast queue;
// a newer entry of the same origin replaces it (NamedBroadcast).
type entryBroadcast struct {
	origin string
	msg    []byte
	sent   chan<- struct{} // if not nil, signalled when fully transmitted
}

var _ memberlist.NamedBroadcast = (*entryBroadcast)(nil)

func (b *entryBroadcast) Name() string    { return "summary:" + b.origin }
func (b *entryBroadcast) Message() []byte { return b.msg }
func (b *entryBroadcast) Finished() {
	if b.sent != nil {
		select {
		case b.sent <- struct{}{}:
		default:
		}
	}
}
func (b *entryBroadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(*entryBroadcast)
	return ok && o.origin == b.origin
}

// queueSentinel keeps the broadcast queue from ever being empty, working
// around a memberlist v0.7.0 bug: TransmitLimitedQueue resets its id
// generator whenever it becomes empty, even while the item being queued
// (or re-queued after a transmit) holds an id already; a later item with
// the same id, length and transmit count then silently replaces it in the
// queue's btree. Catalog entries of one shape all have the same length, so
// whole publishes vanished. The sentinel is larger than any gossip packet:
// it is never sent, never finished.
type queueSentinel struct{ msg []byte }

var _ memberlist.UniqueBroadcast = (*queueSentinel)(nil)

func (s *queueSentinel) Invalidates(memberlist.Broadcast) bool { return false }
func (s *queueSentinel) Message() []byte                       { return s.msg }
func (s *queueSentinel) Finished()                             {}
func (s *queueSentinel) UniqueBroadcast()                      {}
