package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate implements memberlist's callbacks on a Node without exporting
// them. None of them calls back into memberlist: membership events are
// handed to the event loop (memberlist holds its node lock while calling
// them, and calling Members there deadlocks).
type delegate Node

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
	_ memberlist.AliveDelegate = (*delegate)(nil)
)

func (d *delegate) node() *Node { return (*Node)(d) }

// NodeMeta returns the meta validated by Start. It never exceeds limit;
// should it, no meta is better than memberlist's panic.
func (d *delegate) NodeMeta(limit int) []byte {
	b := *d.metaBytes.Load()
	if len(b) > limit {
		d.log.Error("node meta over limit; advertising none", "bytes", len(b), "limit", limit)
		return nil
	}
	return b
}

// NotifyMsg receives one entry or delta, broadcast or sent reliably, or a
// node's goodbye. A new one small enough for a packet is relayed so it spreads
// epidemically.
func (d *delegate) NotifyMsg(buf []byte) {
	n := d.node()
	msg := bytes.Clone(buf) // memberlist reuses buf
	kind, body, err := decodeMessage(msg, n.cfg.MaxStateBytes)
	var e *entry
	switch {
	case err != nil:
	case kind == kindEntry:
		e, err = decodeEntry(body)
	case kind == kindDelta:
		var d *delta
		if d, err = decodeDelta(body); err == nil {
			if n.applyDelta(d) && len(msg) <= n.maxBroadcast {
				n.queue.QueueBroadcast(&deltaBroadcast{origin: d.upserts.origin, msg: msg})
				n.c.broadcasts.Add(1)
			}
			return
		}
	case kind == kindBye:
		var b bye
		if b, err = decodeBye(body); err == nil {
			if n.applyBye(b) && len(msg) <= n.maxBroadcast {
				n.queue.QueueBroadcast(&entryBroadcast{origin: b.origin, msg: msg})
			}
			return
		}
	default:
		err = fmt.Errorf("message kind %d, want entry or bye: %w", kind, errMalformed)
	}
	if err != nil {
		if errors.Is(err, errTooLarge) {
			n.reject(rMessageTooLarge, err)
		} else if errors.Is(err, errVersion) {
			n.reject(rVersion, err)
		} else {
			n.reject(rMessageMalformed, err)
		}
		return
	}
	if n.applyEntries([]*entry{e})[0] && len(msg) <= n.maxBroadcast {
		n.queue.QueueBroadcast(&entryBroadcast{origin: e.origin, msg: msg})
		n.c.broadcasts.Add(1)
	}
}

// GetBroadcasts hands queued entries to memberlist's gossip.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.queue.GetBroadcasts(overhead, limit)
}

// maxPushStateBytes is memberlist's limit on push/pull user state as sent
// (its net.go): a peer receiving more fails the whole exchange.
const maxPushStateBytes = 20 << 20

// LocalState returns every live origin's entry, each distinct summary
// once, compressed, for push/pull, or nil (counted in
// Stats.StatesTooLarge) when a peer would refuse it.
// The bytes are cached until an entry or the membership changes.
func (d *delegate) LocalState(join bool) []byte {
	n := d.node()
	n.mu.Lock()
	if n.stateCached && n.stateGen == n.gen {
		b := n.stateCache
		n.mu.Unlock()
		return b
	}
	gen := n.gen
	live := n.liveEntriesLocked()
	n.mu.Unlock()

	// Entries are immutable once stored: encode and compress outside the lock.
	body := encodeSharedState(live)
	b := encodeMessage(kindSharedState, body)
	n.c.stateBuilds.Add(1)
	if len(body) > n.cfg.MaxStateBytes || len(b) > maxPushStateBytes {
		// Peers would refuse it, memberlist's limit failing the whole
		// exchange, membership included: send no catalog instead.
		n.c.statesTooLarge.Add(1)
		n.log.Error("push/pull catalog state too large; not sent (peers rely on broadcasts and deltas)",
			"bytes", len(body), "compressed", len(b), "limit", n.cfg.MaxStateBytes, "memberlist_limit", maxPushStateBytes)
		b = nil
	}
	n.mu.Lock()
	if n.gen == gen {
		n.stateCache, n.stateGen, n.stateCached = b, gen, true
	}
	n.mu.Unlock()
	return b
}

// MergeRemoteState merges a peer's push/pull state; one malformed entry
// rejects it all.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	n := d.node()
	start := time.Now()
	kind, body, err := decodeMessage(buf, n.cfg.MaxStateBytes)
	var entries []*entry
	switch {
	case err != nil:
	case kind == kindSharedState:
		var st *sharedState
		if st, err = parseSharedState(body); err == nil {
			entries, err = st.entries(n.knownSummary)
		}
	case kind == kindState:
		entries, err = decodeState(body)
	default:
		err = fmt.Errorf("message kind %d, want state: %w", kind, errMalformed)
	}
	if err != nil {
		if errors.Is(err, errTooLarge) {
			n.reject(rStateTooLarge, err)
		} else if errors.Is(err, errVersion) {
			n.reject(rVersion, err)
		} else {
			n.reject(rStateMalformed, err)
		}
		return
	}
	n.applyEntries(entries)
	n.c.pushPulls.Add(1)
	n.c.lastPushPull.Store(int64(time.Since(start)))
}

// NotifyAlive refuses nodes whose meta does not decode, and nodes of
// another ProtocolVersion, whose summaries this node could not read nor
// they this node's: such a node is not a member here.
func (d *delegate) NotifyAlive(peer *memberlist.Node) error {
	if peer.Name == d.cfg.Name {
		return nil
	}
	m, err := decodeMeta(peer.Meta)
	if err != nil {
		d.node().reject(rMetaMalformed, fmt.Errorf("member %q: %w", peer.Name, err))
		return err
	}
	if m.Version != ProtocolVersion {
		err := fmt.Errorf("member %q speaks wire version %d, this node %d: upgrade every gateway of the mesh to one version: %w",
			peer.Name, m.Version, ProtocolVersion, errVersion)
		d.node().reject(rVersion, err)
		return err
	}
	return nil
}

func (d *delegate) NotifyJoin(nd *memberlist.Node)   { d.handOff(memberlist.NodeJoin, nd) }
func (d *delegate) NotifyUpdate(nd *memberlist.Node) { d.handOff(memberlist.NodeUpdate, nd) }
func (d *delegate) NotifyLeave(nd *memberlist.Node)  { d.handOff(memberlist.NodeLeave, nd) }

// handOff copies what the event loop needs while memberlist still holds
// its lock, queues it and returns.
func (d *delegate) handOff(kind memberlist.NodeEventType, nd *memberlist.Node) {
	ev := event{
		kind: kind,
		name: nd.Name,
		addr: addrPort(nd.Addr, nd.Port),
		meta: bytes.Clone(nd.Meta),
	}
	d.evMu.Lock()
	d.evs = append(d.evs, ev)
	d.evMu.Unlock()
	select {
	case d.evKick <- struct{}{}:
	default:
	}
}

// logWriter turns memberlist's "[LEVEL] memberlist: ..." log lines into
// slog records.
type logWriter struct{ l *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for _, lv := range []struct {
		prefix string
		level  slog.Level
	}{{"[DEBUG]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo}, {"[WARN]", slog.LevelWarn}, {"[ERR]", slog.LevelError}, {"[ERROR]", slog.LevelError}} {
		if rest, ok := strings.CutPrefix(msg, lv.prefix); ok {
			msg, level = strings.TrimSpace(rest), lv.level
			break
		}
	}
	if w.l.Enabled(context.Background(), level) {
		w.l.Log(context.Background(), level, msg, "component", "memberlist")
	}
	return len(p), nil
}
