package peer

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
)

// State is a member's state as this node sees it.
type State uint8

// Member states. Memberlist's intermediate "suspect" state is reported as
// StateAlive: memberlist v0.7.0 exposes it only through Members(), whose
// nodes it keeps mutating in place, which cannot be read race-free. A
// suspect node stays live (its summary is kept) until declared dead.
const (
	StateAlive State = iota // joined and not declared dead (may be suspect)
	StateDead               // declared dead by failure detection
	StateLeft               // left gracefully
)

// String returns "alive", "dead" or "left".
func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Member is one node of the cluster as this node knows it.
type Member struct {
	Name  string
	Addr  netip.AddrPort // gossip address
	State State
	// Meta is the member's decoded meta. Members with malformed meta are
	// refused by memberlist, so it is always valid for remote members.
	Meta Meta
	// Since is when the member was last seen to change state.
	Since time.Time
}

type member struct {
	addr    netip.AddrPort
	state   State
	meta    Meta
	since   time.Time
	leaving bool // said goodbye: its death is a departure
}

type event struct {
	kind memberlist.NodeEventType
	name string
	addr netip.AddrPort
	meta []byte
}

// SetPassthroughAddr changes the passthrough address this node advertises
// (a listener moved to another port) and gossips the new meta, waiting up
// to timeout for the update to go out. It fails for an address that is not
// host:port or makes the meta too large; the old address then stays.
func (n *Node) SetPassthroughAddr(addr string, timeout time.Duration) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("peer: passthrough address: %w", err)
	}
	n.metaMu.Lock()
	defer n.metaMu.Unlock()
	meta := *n.meta.Load()
	if meta.PassthroughAddr == addr {
		return nil
	}
	meta.PassthroughAddr = addr
	b := meta.encode()
	if len(b) > memberlist.MetaMaxSize {
		return fmt.Errorf("peer: node meta would be %d bytes, over memberlist's %d-byte limit", len(b), memberlist.MetaMaxSize)
	}
	n.meta.Store(&meta)
	n.metaBytes.Store(&b)
	n.mu.Lock()
	if m := n.members[n.cfg.Name]; m != nil {
		m.meta = meta
	}
	n.gen++
	n.mu.Unlock()
	n.notify()
	if err := n.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("peer: advertise passthrough address %s: %w", addr, err)
	}
	return nil
}

// numNodes sizes the broadcast queue's retransmit limit. It must not lock
// n.mu: the queue calls it holding its own lock, which Publish takes while
// holding n.mu.
func (n *Node) numNodes() int { return int(n.live.Load()) }

// Members returns every member this node knows, itself included, sorted
// by name: live ones and, for a while, those that left or died.
func (n *Node) Members() []Member {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]Member, 0, len(n.members))
	for name, m := range n.members {
		out = append(out, Member{Name: name, Addr: m.addr, State: m.state, Meta: m.meta, Since: m.since})
	}
	slices.SortFunc(out, func(a, b Member) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// applyBye records a member's goodbye and reports whether it was news.
func (n *Node) applyBye(b bye) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	m := n.members[b.origin]
	if b.origin == n.cfg.Name || m == nil || m.leaving {
		return false
	}
	if e := n.store.get(b.origin); e != nil && b.version.Compare(e.version) < 0 {
		n.c.stale.Add(1) // from an earlier incarnation
		return false
	}
	if r, err := n.authenticByeLocked(b); err != nil {
		if errors.Is(err, errUnverifiable) {
			n.c.unverified.Add(1)
		} else {
			n.reject(r, err)
		}
		return false
	}
	m.leaving = true
	n.reconnects.left(b.origin)
	if m.state == StateDead {
		m.state = StateLeft
		n.gen++
		n.notify()
	}
	return true
}

// eventLoop applies membership events handed off by the delegate, outside
// memberlist's locks, prunes what departed long ago and signs this node's
// entry again when its SVID rotated.
func (n *Node) eventLoop() {
	defer n.wg.Done()
	tick := time.NewTicker(retention / 4)
	defer tick.Stop()
	resign := time.NewTicker(resignInterval)
	defer resign.Stop()
	for {
		select {
		case <-n.evKick:
			n.applyEvents()
		case now := <-tick.C:
			n.prune(now)
		case <-resign.C:
			n.resign()
		case <-n.done:
			return
		}
	}
}

func (n *Node) applyEvents() {
	n.evMu.Lock()
	evs := n.evs
	n.evs = nil
	n.evMu.Unlock()
	if len(evs) == 0 {
		return
	}
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ev := range evs {
		if ev.name == n.cfg.Name {
			continue // this node is alive to itself until Shutdown
		}
		m := n.members[ev.name]
		if m == nil {
			m = &member{}
			n.members[ev.name] = m
		}
		m.addr, m.since = ev.addr, now
		switch ev.kind {
		case memberlist.NodeJoin, memberlist.NodeUpdate:
			if ev.kind == memberlist.NodeJoin && n.signer != nil {
				// New to us, or back: it may lack our chain, without
				// which it cannot verify our broadcasts.
				n.introduce[ev.name] = true
				n.kickReliable()
			}
			m.state, m.leaving = StateAlive, false
			n.reconnects.alive(ev.name, ev.addr)
			meta, err := decodeMeta(ev.meta)
			if err != nil { // NotifyAlive refuses such nodes; keep the last good meta
				n.reject(rMetaMalformed, fmt.Errorf("member %q: %w", ev.name, err))
				continue
			}
			m.meta = meta
			n.log.Debug("member up", "member", ev.name, "network", meta.Network, "addr", ev.addr)
		case memberlist.NodeLeave:
			// memberlist v0.7.0 does not say whether a node left or
			// died (the Node it passes has no state): a goodbye does.
			m.state = StateDead
			if m.leaving {
				m.state = StateLeft
				n.reconnects.left(ev.name)
			} else {
				n.reconnects.failed(ev.name, ev.addr, now)
			}
			n.log.Info("member down", "member", ev.name, "state", m.state, "network", m.meta.Network)
		}
	}
	live := 0
	for _, m := range n.members {
		if m.state == StateAlive {
			live++
		}
	}
	n.live.Store(int64(live))
	n.gen++
	n.notify()
}

// prune forgets members gone for longer than retention, and entries whose
// origin has not been live for that long.
func (n *Node) prune(now time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, m := range n.members {
		if m.state != StateAlive && now.Sub(m.since) > retention {
			delete(n.members, name)
			n.idsMu.Lock()
			delete(n.ids, name)
			n.idsMu.Unlock()
		}
	}
	if n.store.prune(func(e *entry) bool {
		m := n.members[e.origin]
		return (m == nil || m.state != StateAlive) && now.Sub(e.received) > retention
	}) > 0 {
		n.gen++
	}
}
