package peer

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Publish replaces this node's summary of its own network and spreads it:
// by gossip broadcast when it fits a packet, otherwise over TCP to every
// live member; push/pull carries it to nodes that miss both. Publish
// copies s and puts the copy in canonical order, with healthy counts over
// MaxHealthyCount lowered to it. s.Network, when set, must be the node's
// network. Publishing a summary equal to the current one changes nothing.
// Publish returns an error for an invalid summary (empty host, port 0,
// duplicate host, port, subset or locality), one whose encoding exceeds
// Config.MaxEntryBytes, or when the node's SVID cannot sign it.
func (n *Node) Publish(s Summary) error {
	s = cloneSummary(s)
	if s.Network == "" {
		s.Network = n.cfg.Network
	} else if s.Network != n.cfg.Network {
		return fmt.Errorf("peer: publish: summary of network %q on a node of network %q", s.Network, n.cfg.Network)
	}
	capCounts(&s)
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
	if err := n.signOwn(e); err != nil {
		return fmt.Errorf("peer: publish: %w", err)
	}
	if e.size() > n.cfg.MaxEntryBytes {
		return fmt.Errorf("peer: publish: summary encodes to %d bytes, over MaxEntryBytes %d", e.size(), n.cfg.MaxEntryBytes)
	}
	n.store.put(e)
	n.gen++
	d := diffSummary(cur, e)
	if msg := encodeMessage(kindDelta, encodeDelta(d)); len(msg) < e.size() {
		n.log.Debug("summary published as a delta", "version", v, "services", len(s.Services), "changed", len(d.upserts.summary.Services), "removed", len(d.removed), "bytes", len(msg))
		n.sendDeltaLocked(cur, e, d, msg)
	} else {
		n.log.Debug("summary published", "version", v, "services", len(s.Services))
		n.disseminateLocked(e)
	}
	n.notify()
	return nil
}

// sendDeltaLocked spreads d, the delta from base to e, this node's
// previous and new entries, encoded as msg: by gossip when it fits a
// packet, else over TCP with the signing chain. A delta still waiting for
// TCP is merged into this one (one delta from its base to e), and a whole
// entry waiting is replaced by e: each receiver gets one message per send
// round, so it never sees a delta before the one it builds on from the
// same round. n.mu must be held.
func (n *Node) sendDeltaLocked(base, e *entry, d *delta, msg []byte) {
	n.c.deltasSent.Add(1)
	if len(msg) <= n.maxBroadcast {
		n.queue.QueueBroadcast(&deltaBroadcast{origin: e.origin, msg: msg})
		n.c.broadcasts.Add(1)
		return
	}
	switch {
	case n.pendingReliable == nil:
		d.chain = chainDER(e)
		n.pendingReliable, n.pendingBase = encodeMessage(kindDelta, encodeDelta(d)), base
	case n.pendingBase != nil:
		d := diffSummary(n.pendingBase, e)
		d.chain = chainDER(e)
		n.pendingReliable = encodeMessage(kindDelta, encodeDelta(d))
	default:
		n.pendingReliable = encodeMessage(kindEntry, encodeEntryMessage(e, chainDER(e)))
	}
	n.kickReliable()
}

// chainDER is the DER chain that signed e, nil if unsigned.
func chainDER(e *entry) []byte {
	if e.chain == nil {
		return nil
	}
	return e.chain.der
}

func (n *Node) kickReliable() {
	select {
	case n.reliableKick <- struct{}{}:
	default:
	}
}

// disseminateLocked spreads this node's own entry e: broadcast without its
// chain when it fits a packet, else over TCP with it. n.mu must be held.
func (n *Node) disseminateLocked(e *entry) {
	msg := encodeMessage(kindEntry, encodeEntryMessage(e, nil))
	if len(msg) <= n.maxBroadcast {
		n.pendingReliable, n.pendingBase = nil, nil // superseded
		n.queue.QueueBroadcast(&entryBroadcast{origin: e.origin, msg: msg})
		n.c.broadcasts.Add(1)
		return
	}
	n.pendingReliable, n.pendingBase = encodeMessage(kindEntry, encodeEntryMessage(e, chainDER(e))), nil
	n.kickReliable()
}

// reliableLoop sends over TCP the latest too-large-to-gossip entry or
// delta to every live member (newer ones replace one not yet sent), and
// this node's entry with its chain to the members it introduces itself to.
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
		var targets, intros []memberlist.Node
		for name, m := range n.members {
			if name == n.cfg.Name || m.state != StateAlive {
				continue
			}
			t := memberlist.Node{Name: name, Addr: m.addr.Addr().AsSlice(), Port: m.addr.Port()}
			if msg != nil {
				targets = append(targets, t)
			}
			if n.introduce[name] {
				intros = append(intros, t)
			}
		}
		clear(n.introduce)
		var intro []byte
		if len(intros) > 0 {
			own := n.store.get(n.cfg.Name)
			intro = encodeMessage(kindEntry, encodeEntryMessage(own, chainDER(own)))
		}
		n.mu.Unlock()
		n.sendReliable(targets, msg, &n.c.reliableSends)
		n.sendReliable(intros, intro, &n.c.introductions)
	}
}

// sendReliable sends msg over TCP to every target, a few at a time,
// until done, counting each send in sent.
func (n *Node) sendReliable(targets []memberlist.Node, msg []byte, sent *atomic.Uint64) {
	sem := make(chan struct{}, reliableFanout)
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, t := range targets {
		select {
		case sem <- struct{}{}:
		case <-n.done:
			return
		}
		wg.Go(func() {
			defer func() { <-sem }()
			sent.Add(1)
			if err := n.ml.SendReliable(&t, msg); err != nil {
				n.c.reliableKO.Add(1)
				n.log.Warn("reliable send of summary failed; push/pull will repair", "to", t.Name, "bytes", len(msg), "err", err)
			}
		})
	}
}

// applyEntries merges remote entries, newer than held and authentic
// (chain returns the chain carried with them by digest, nil if none), and
// reports which were accepted. Each refusal is counted alone.
func (n *Node) applyEntries(entries []*entry, chain func([sha256.Size]byte) []byte) []bool {
	now := time.Now()
	accepted := make([]bool, len(entries))
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, e := range entries {
		e.received = now
		var der []byte
		if e.signed() {
			der = chain(e.chainDigest)
		}
		if e.origin == n.cfg.Name {
			n.refuteLocked(e, der, now)
			continue
		}
		if !n.newerLocked(e) {
			n.c.stale.Add(1)
			continue
		}
		accepted[i] = n.acceptLocked(e, der, now)
	}
	return accepted
}

// newerLocked reports whether e would replace the entry held for its
// origin: it is newer, or the held one was signed by another SPIFFE ID
// than the origin member now announces. The second case undoes an entry
// accepted while a key holder posed as the member (memberlist meta is
// protected by the gossip key only, and the member refutes it): the
// member's own entries must not stay hidden behind the impostor's
// version. n.mu must be held.
func (n *Node) newerLocked(e *entry) bool {
	cur := n.store.get(e.origin)
	if cur == nil || e.version.Compare(cur.version) > 0 {
		return true
	}
	if n.signer == nil {
		return false
	}
	id, ok := n.announcedID(e.origin)
	return ok && cur.signer() != id
}

// acceptLocked stores e, newer than the entry held for its origin, if it
// fits the limits and is authentic (der is the chain carried with it),
// and reports whether it did. n.mu must be held.
func (n *Node) acceptLocked(e *entry, der []byte, now time.Time) bool {
	if size := e.size(); size > n.cfg.MaxEntryBytes {
		n.reject(rEntryTooLarge, fmt.Errorf("entry from %q is %d bytes, over the limit of %d", e.origin, size, n.cfg.MaxEntryBytes))
		return false
	}
	if r, err := n.authenticate(e, der, now); err != nil {
		if errors.Is(err, errUnverifiable) {
			n.c.unverified.Add(1)
			n.log.Debug("gossip entry not verifiable yet; push/pull or an introduction repairs", "origin", e.origin, "err", err)
		} else {
			n.reject(r, err)
		}
		return false
	}
	if size := n.store.sizeWith(e); size > n.cfg.MaxStateBytes {
		n.reject(rStateBudget, fmt.Errorf("entry from %q (%d bytes) would make the entries held %d bytes, over MaxStateBytes %d", e.origin, e.size(), size, n.cfg.MaxStateBytes))
		return false
	}
	n.store.put(e)
	n.log.Debug("summary accepted", "origin", e.origin, "version", e.version, "services", len(e.summary.Services), "signer", e.signer())
	n.c.accepted.Add(1)
	n.gen++
	n.notify()
	return true
}

// refuteLocked handles an entry under this node's own name. One newer than
// ours comes from an earlier incarnation (this node restarted with a clock
// behind the old one's): once authenticated (with an identity: signed by
// this gateway's own SPIFFE ID), republish our summary above it. n.mu
// must be held.
func (n *Node) refuteLocked(e *entry, der []byte, now time.Time) {
	cur := n.store.get(n.cfg.Name)
	if e.version.Compare(cur.version) <= 0 {
		if !bytes.Equal(e.body, cur.body) && e.version == cur.version {
			n.reject(rForeignOrigin, errors.New("entry under our name with our version and other content"))
		}
		n.c.stale.Add(1)
		return
	}
	if r, err := n.authenticate(e, der, now); err != nil {
		if errors.Is(err, errUnverifiable) {
			n.c.unverified.Add(1)
			return
		}
		n.reject(r, fmt.Errorf("entry under our name: %w", err))
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
	if v.Seq >= MaxSeq { // decoding refuses more: v is still accepted
		v = Version{Epoch: e.version.Epoch + 1}
	}
	mine := newEntry(cur.origin, v, cur.summary, e.received)
	if err := n.signOwn(mine); err != nil {
		n.log.Error("cannot sign the entry superseding an earlier incarnation's", "err", err)
		return
	}
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
// matches their meta's network and, with an identity, whose signer is
// the SPIFFE ID their meta announces. n.mu must be held.
func (n *Node) liveEntriesLocked() []*entry {
	var out []*entry
	for origin, e := range n.store.entries {
		m := n.members[origin]
		if m == nil || m.state != StateAlive || m.meta.Network != e.summary.Network {
			continue
		}
		if n.signer != nil && e.signer() != m.meta.SPIFFEID {
			continue // the member announces another identity since
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
