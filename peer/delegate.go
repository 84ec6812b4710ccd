package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
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
	var m entryMessage
	switch {
	case err != nil:
	case kind == kindEntry:
		m, err = decodeEntryMessage(body)
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
		err = fmt.Errorf("message kind %d, want entry, delta or bye: %w", kind, errMalformed)
	}
	if err != nil {
		n.reject(reasonFor(err, rMessageTooLarge, rMessageMalformed), err)
		return
	}
	chain := func([sha256.Size]byte) []byte { return m.chain }
	if n.applyEntries([]*entry{m.entry}, chain)[0] && len(msg) <= n.maxBroadcast {
		n.queue.QueueBroadcast(&entryBroadcast{origin: m.entry.origin, msg: msg})
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
// and chain once, compressed, for push/pull. A state a peer would refuse
// (over MaxStateBytes, or memberlist's 20 MiB as sent) leaves out the
// largest summaries of other origins until it fits, counted in
// Stats.StatesTooLarge: memberlist would fail the whole exchange,
// membership included, and one large entry must not stop anti-entropy
// for the others. The bytes are cached until an entry or the membership
// changes.
//
// One state is built at a time. memberlist calls LocalState within the
// push/pull's TCP deadline (TCPTimeout), and a large catalog can take
// longer to build than that on a busy machine: the peer then gives up
// and retries, and if every attempt started a build of its own, the
// builds would share the CPU and each take longer, so that none
// finished within any attempt's deadline (seen: 15 builds of one
// 10,000-service state at once, each over 15 s). A caller instead
// waits for the build in progress when it started after the caller's
// last change, and the next attempt finds the state cached.
func (d *delegate) LocalState(join bool) []byte {
	n := d.node()
	n.mu.Lock()
	want := n.gen // the state returned reflects every change up to here
	for {
		if n.stateCached && n.stateGen == n.gen {
			b := n.stateCache
			n.mu.Unlock()
			return b
		}
		sb := n.stateBuild
		if sb == nil {
			break
		}
		n.mu.Unlock()
		<-sb.done
		if sb.gen >= want {
			return sb.state
		}
		n.mu.Lock() // that build predates a change the caller must see
	}
	sb := &stateBuild{gen: n.gen, done: make(chan struct{})}
	n.stateBuild = sb
	live := n.liveEntriesLocked()
	hold := n.buildingState
	n.mu.Unlock()

	if hold != nil {
		hold()
	}
	// Entries are immutable once stored: encode and compress outside the lock.
	sb.state = n.buildState(live)
	n.mu.Lock()
	if n.gen == sb.gen {
		n.stateCache, n.stateGen, n.stateCached = sb.state, sb.gen, true
	}
	n.stateBuild = nil
	n.mu.Unlock()
	close(sb.done)
	return sb.state
}

// stateBuild is a push/pull state being built by one LocalState call,
// for the others to wait for.
type stateBuild struct {
	gen   uint64        // Node.gen the state is built from
	done  chan struct{} // closed when state is set
	state []byte
}

// buildState encodes and compresses live for LocalState, trimming it to
// what peers accept (nil if nothing fits).
func (n *Node) buildState(live []*entry) []byte {
	var b []byte
	for range 8 {
		body := encodeSharedState(live)
		b = encodeMessage(kindSharedState, body)
		n.c.stateBuilds.Add(1)
		over := max(len(body)-n.cfg.MaxStateBytes, (len(b)-maxPushStateBytes)*len(body)/max(len(b), 1))
		if over <= 0 {
			break
		}
		n.c.statesTooLarge.Add(1)
		trimmed := trimState(live, n.cfg.Name, over)
		n.log.Error("push/pull catalog state too large; leaving out the largest summaries of other gateways (peers get them by broadcast and deltas)",
			"bytes", len(body), "compressed", len(b), "limit", n.cfg.MaxStateBytes, "memberlist_limit", maxPushStateBytes, "left_out", len(live)-len(trimmed))
		if len(trimmed) == len(live) {
			b = nil
			break
		}
		live, b = trimmed, nil
	}
	return b
}

// MergeRemoteState merges a peer's push/pull state. A state that does not
// parse is refused whole; an entry that is malformed, too large, over the
// state budget or not authentic is refused alone.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	n := d.node()
	start := time.Now()
	kind, body, err := decodeMessage(buf, n.cfg.MaxStateBytes)
	var st *sharedState
	switch {
	case err != nil:
	case kind == kindSharedState:
		st, err = parseSharedState(body)
	default:
		err = fmt.Errorf("message kind %d, want state: %w", kind, errMalformed)
	}
	if err != nil {
		n.reject(reasonFor(err, rStateTooLarge, rStateMalformed), err)
		return
	}
	entries, refused := st.entries(n.knownSummary, n.cfg.MaxEntryBytes)
	for _, r := range refused {
		n.reject(r.reason, r.err)
	}
	n.applyEntries(entries, st.chain)
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
	if kind != memberlist.NodeLeave && nd.Name != d.cfg.Name {
		if m, err := decodeMeta(nd.Meta); err == nil {
			d.node().setAnnounced(nd.Name, m.SPIFFEID)
		}
	}
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
