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
	if len(d.metaBytes) > limit {
		d.log.Error("node meta over limit; advertising none", "bytes", len(d.metaBytes), "limit", limit)
		return nil
	}
	return d.metaBytes
}

// NotifyMsg receives one entry, broadcast or sent reliably, or a node's
// goodbye. A new one small enough for a packet is relayed so it spreads
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

// LocalState returns every live origin's entry, compressed, for push/pull.
// The bytes are cached until an entry or the membership changes.
func (d *delegate) LocalState(join bool) []byte {
	n := d.node()
	n.mu.Lock()
	if n.stateCache != nil && n.stateGen == n.gen {
		b := n.stateCache
		n.mu.Unlock()
		return b
	}
	gen := n.gen
	live := n.liveEntriesLocked()
	wires := make([][]byte, len(live))
	for i, e := range live {
		wires[i] = e.wire
	}
	n.mu.Unlock()

	b := encodeMessage(kindState, encodeState(wires)) // compress outside the lock
	n.c.stateBuilds.Add(1)
	if len(b) > n.cfg.MaxStateBytes {
		n.log.Warn("push/pull state over MaxStateBytes: peers will refuse it", "bytes", len(b), "limit", n.cfg.MaxStateBytes)
	}
	n.mu.Lock()
	if n.gen == gen {
		n.stateCache, n.stateGen = b, gen
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
	if err == nil && kind != kindState {
		err = fmt.Errorf("message kind %d, want state: %w", kind, errMalformed)
	}
	var entries []*entry
	if err == nil {
		entries, err = decodeState(body)
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
