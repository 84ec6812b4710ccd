package peer

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrClosed is returned by methods of a Node that has been shut down.
var ErrClosed = errors.New("peer: node shut down")

// Tuning that needs no configuration.
const (
	// retention is how long the entry and the member record of a node that
	// left or died are kept, so that a node refuting a false death comes
	// back with its summary at once.
	retention = 5 * time.Minute
	// reliableFanout bounds concurrent reliable sends of one large entry.
	reliableFanout = 8
	// minRetransmitMult is the least RetransmitMult of the catalog queue.
	minRetransmitMult = 4
	// sentinelSize exceeds any gossip packet (UDP datagrams are < 64 KiB).
	sentinelSize = 64 << 10
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

// Reasons counted in [Stats].Rejected, usable as metric labels.
const (
	RejectStateMalformed   = "state_malformed"    // push/pull state that does not decode
	RejectStateTooLarge    = "state_too_large"    // push/pull state over Config.MaxStateBytes
	RejectMessageMalformed = "message_malformed"  // broadcast or reliable message that does not decode
	RejectMessageTooLarge  = "message_too_large"  // message over Config.MaxStateBytes
	RejectMetaMalformed    = "meta_malformed"     // node meta that does not decode: node refused
	RejectForeignOrigin    = "foreign_self_entry" // entry under this node's name from another node
	// RejectVersion counts messages, push/pull states and nodes of another
	// ProtocolVersion: gateways of one mesh must run one wire version.
	RejectVersion = "wire_version"
)

// Stats are a node's counters, for metrics. Counters only grow.
type Stats struct {
	Alive, Dead, Left int // members by state, this node included
	Summaries         int // live nodes' summaries held, this node's included
	Services          int // service entries across those summaries
	Networks          int // distinct networks among them

	BytesIn, BytesOut uint64 // all gossip bytes, UDP and TCP, memberlist's own included

	PushPulls        uint64        // remote push/pull states merged (joins included)
	LastPushPull     time.Duration // time to decode and merge the last one
	StateBuilds      uint64        // times the cached local push/pull state was rebuilt
	StatesTooLarge   uint64        // push/pull states not sent: over MaxStateBytes, or memberlist's 20 MiB as sent
	Broadcasts       uint64        // entries queued for gossip, relays included
	DeltasSent       uint64        // publishes sent as deltas (changed services only), by gossip or TCP
	DeltasApplied    uint64        // remote deltas applied to the entry they were based on
	DeltaMisses      uint64        // remote deltas ignored: their base was not held (push/pull repairs)
	ReliableSends    uint64        // entries or deltas sent over TCP because too large for a packet
	ReliableFailures uint64        // such sends that failed (push/pull repairs them later)
	Accepted         uint64        // remote entries newer than held, applied
	Stale            uint64        // remote entries not newer than held, ignored
	JoinAttempts     uint64
	JoinFailures     uint64
	// ReconnectPending is the number of failed members (declared dead, not
	// left) remembered for reconnecting: see Config.ReconnectInterval.
	ReconnectPending int
	// ReconnectAttempts counts reconnect joins tried, one per address: to
	// failed members, and to the seeds while the node is alone.
	ReconnectAttempts uint64
	// ReconnectSuccesses counts reconnect joins that reached another node.
	ReconnectSuccesses uint64
	// Rejected counts input from the network that was ignored, by reason
	// (the Reject* constants).
	Rejected map[string]uint64
}

// Node is one gateway's gossip node. Its methods are safe for concurrent
// use. Create it with [Start]; call [Node.Leave] then [Node.Shutdown].
type Node struct {
	cfg          Config
	log          *slog.Logger
	meta         atomic.Pointer[Meta] // what NodeMeta advertises; see SetPassthroughAddr
	metaBytes    atomic.Pointer[[]byte]
	metaMu       sync.Mutex // serializes meta updates
	selfAddr     atomic.Pointer[netip.AddrPort]
	keyring      *memberlist.Keyring // nil when gossiping in plaintext
	ml           *memberlist.Memberlist
	tr           *countingTransport
	live         atomic.Int64 // live members, this node included
	queue        *memberlist.TransmitLimitedQueue
	maxBroadcast int // largest message that fits an otherwise empty gossip packet

	changed       chan struct{} // buffer 1: coalescing change notification
	evKick        chan struct{} // buffer 1: events pending
	reliableKick  chan struct{} // buffer 1: a large entry waits for sending
	joined        chan struct{} // closed when a join succeeded
	stop          chan struct{} // closed by Leave or Shutdown: stop joining
	stopOnce      sync.Once
	reconnectDone chan struct{} // closed when the reconnect loop returned
	done          chan struct{} // closed by Shutdown
	wg            sync.WaitGroup

	evMu sync.Mutex
	evs  []event

	mu              sync.Mutex
	store           *store
	members         map[string]*member
	gen             uint64 // bumped when what LocalState sends changes
	stateCache      []byte
	stateGen        uint64
	stateCached     bool   // stateCache (nil when too large) is for stateGen
	pendingReliable []byte // the message for reliableLoop: a whole entry, or a delta on pendingBase
	pendingBase     *entry // the entry the pending delta is based on; nil for a whole entry
	reconnects      *reconnectSet

	lifeMu sync.Mutex
	closed bool

	c counters

	conflict conflict
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

const numReasons = 7

func reasonName(i int) string {
	return [numReasons]string{RejectStateMalformed, RejectStateTooLarge, RejectMessageMalformed,
		RejectMessageTooLarge, RejectMetaMalformed, RejectForeignOrigin, RejectVersion}[i]
}

const (
	rStateMalformed = iota
	rStateTooLarge
	rMessageMalformed
	rMessageTooLarge
	rMetaMalformed
	rForeignOrigin
	rVersion
)

type counters struct {
	bytesIn, bytesOut         atomic.Uint64
	pushPulls                 atomic.Uint64
	lastPushPull              atomic.Int64
	stateBuilds               atomic.Uint64
	statesTooLarge            atomic.Uint64
	broadcasts                atomic.Uint64
	reliableSends, reliableKO atomic.Uint64
	deltasSent, deltasApplied atomic.Uint64
	deltaMisses               atomic.Uint64
	accepted, stale           atomic.Uint64
	joinAttempts, joinKO      atomic.Uint64
	reconnectAttempts         atomic.Uint64
	reconnects                atomic.Uint64
	rejected                  [numReasons]atomic.Uint64
	lastRejectLog             [numReasons]atomic.Int64
}

// Start creates the node, binds its gossip port and starts joining
// Config.Join in the background. It returns an error for an invalid Config
// (ErrNoKeys without keys, meta over 512 bytes, ...) or when the port
// cannot be bound. The context is used only while starting; cancelling it
// later does not affect the node: call Leave and Shutdown.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("peer: start: %w", err)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	meta := Meta{
		Network:         cfg.Network,
		PassthroughAddr: cfg.PassthroughAddr,
		TunnelAddr:      cfg.TunnelAddr,
		SPIFFEID:        cfg.SPIFFEID,
		Version:         ProtocolVersion,
	}
	now := time.Now()
	meta.Started = uint64(now.UnixNano())
	metaBytes := meta.encode()
	if len(metaBytes) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("peer: node meta is %d bytes, over memberlist's %d-byte limit: shorten Network, PassthroughAddr, TunnelAddr or SPIFFEID",
			len(metaBytes), memberlist.MetaMaxSize)
	}

	n := &Node{
		cfg:           cfg,
		log:           cfg.Logger.With("node", cfg.Name),
		changed:       make(chan struct{}, 1),
		evKick:        make(chan struct{}, 1),
		reliableKick:  make(chan struct{}, 1),
		joined:        make(chan struct{}),
		stop:          make(chan struct{}),
		reconnectDone: make(chan struct{}),
		done:          make(chan struct{}),
		store:         newStore(),
		members:       make(map[string]*member),
		reconnects:    newReconnectSet(maxReconnectMembers),
	}
	n.meta.Store(&meta)
	n.metaBytes.Store(&metaBytes)
	n.selfAddr.Store(&netip.AddrPort{})

	mc := memberlistConfig(cfg.Profile)
	mc.Name = cfg.Name
	mc.Label = cfg.MeshID
	mc.Logger = log.New(logWriter{n.log}, "", 0)
	mc.DeadNodeReclaimTime = max(cfg.DeadNodeReclaimTime, 0)
	mc.Delegate = (*delegate)(n)
	mc.Events = (*delegate)(n)
	mc.Alive = (*delegate)(n)
	mc.Conflict = (*delegate)(n)
	mc.DelegateProtocolVersion = ProtocolVersion
	mc.DelegateProtocolMin = ProtocolVersion
	mc.DelegateProtocolMax = ProtocolVersion
	if len(cfg.Keys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
		if err != nil {
			return nil, fmt.Errorf("peer: keyring: %w", err)
		}
		n.keyring = kr
		mc.Keyring = kr
		mc.GossipVerifyIncoming = true
		mc.GossipVerifyOutgoing = true
	}

	nt, err := listen(cfg, mc.Logger)
	if err != nil {
		return nil, err
	}
	port := nt.GetAutoBindPort()
	mc.BindAddr, mc.BindPort = cfg.BindAddr, port
	mc.AdvertiseAddr, mc.AdvertisePort = cfg.AdvertiseAddr, cfg.AdvertisePort
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = port
	}
	tr := newCountingTransport(nt, &n.c.bytesIn, &n.c.bytesOut)
	mc.Transport = tr
	n.tr = tr
	if cfg.tuneMemberlist != nil {
		cfg.tuneMemberlist(mc)
	}

	// Catalog changes are rare and matter: each is retransmitted at least
	// as often as the LAN profile would (4 * log10(N+1) times), even in
	// the local profile, whose 2 lets an epidemic die out in small clusters.
	n.queue = &memberlist.TransmitLimitedQueue{NumNodes: n.numNodes, RetransmitMult: max(mc.RetransmitMult, minRetransmitMult)}
	n.queue.QueueBroadcast(&queueSentinel{msg: make([]byte, sentinelSize)})
	n.maxBroadcast = mc.UDPBufferSize - 2 /* compound header */ - 3 /* per-message overhead */
	if cfg.MeshID != "" {
		n.maxBroadcast -= 2 + len(cfg.MeshID)
	}
	if n.keyring != nil {
		n.maxBroadcast -= 45 // worst-case encryption overhead
	}

	self := newEntry(cfg.Name, Version{Epoch: uint64(now.UnixNano())}, Summary{Network: cfg.Network}, now)
	n.store.merge(self)
	n.members[cfg.Name] = &member{state: StateAlive, meta: meta, since: now}
	n.live.Store(1)

	n.wg.Add(2)
	go n.eventLoop()
	go n.reliableLoop()

	ml, err := memberlist.Create(mc)
	if err != nil {
		close(n.done)
		tr.Shutdown()
		n.wg.Wait()
		return nil, fmt.Errorf("peer: start memberlist: %w", err)
	}
	n.ml = ml
	ln := ml.LocalNode()
	selfAddr := addrPort(ln.Addr, ln.Port)
	n.selfAddr.Store(&selfAddr)
	n.mu.Lock()
	if m := n.members[cfg.Name]; m != nil {
		m.addr = selfAddr
	}
	n.mu.Unlock()

	if len(cfg.Join) > 0 {
		n.wg.Add(1)
		go n.joinLoop(slices.Clone(cfg.Join))
	} else {
		close(n.joined)
	}
	if cfg.ReconnectInterval > 0 {
		n.wg.Add(1)
		go n.reconnectLoop()
	}
	n.wg.Add(1)
	go n.conflictLoop()
	n.log.Info("gossip started", "addr", n.Addr(), "network", cfg.Network, "encrypted", n.keyring != nil, "mesh_id", cfg.MeshID, "profile", cfg.Profile)
	return n, nil
}

// listen binds the gossip port, retrying a few times when port 0 picked a
// port free for TCP but taken for UDP.
func listen(cfg Config, logger *log.Logger) (*memberlist.NetTransport, error) {
	tc := &memberlist.NetTransportConfig{BindAddrs: []string{cfg.BindAddr}, BindPort: cfg.BindPort, Logger: logger}
	tries := 1
	if cfg.BindPort == 0 {
		tries = 10
	}
	var err error
	for range tries {
		var nt *memberlist.NetTransport
		if nt, err = memberlist.NewNetTransport(tc); err == nil {
			return nt, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, fmt.Errorf("peer: bind %s: %w", net.JoinHostPort(cfg.BindAddr, fmt.Sprint(cfg.BindPort)), err)
}

// Name returns the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// Addr returns the gossip address other nodes reach this node at, for
// their Config.Join.
func (n *Node) Addr() netip.AddrPort {
	ln := n.ml.LocalNode()
	return addrPort(ln.Addr, ln.Port)
}

// Meta returns the meta this node advertises.
func (n *Node) Meta() Meta { return *n.meta.Load() }

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

// WaitJoined blocks until a join to one of Config.Join succeeded (at once
// when Join is empty), ctx is done or the node shuts down.
func (n *Node) WaitJoined(ctx context.Context) error {
	select {
	case <-n.joined:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("peer: waiting for join: %w", ctx.Err())
	case <-n.done:
		return ErrClosed
	}
}

func (n *Node) joinLoop(seeds []string) {
	defer n.wg.Done()
	backoff := n.cfg.JoinBackoff
	for {
		select {
		case <-n.stop: // left or shut down
			return
		default:
		}
		n.c.joinAttempts.Add(1)
		k, err := n.ml.Join(seeds)
		if k > 0 {
			n.log.Info("joined gossip cluster", "contacted", k)
			// The seeds got our entry by push/pull; the others get it by
			// gossip rather than waiting for their next push/pull.
			n.mu.Lock()
			n.disseminateLocked(n.store.get(n.cfg.Name))
			n.mu.Unlock()
			close(n.joined)
			return
		}
		n.c.joinKO.Add(1)
		n.log.Warn("gossip join failed, retrying", "seeds", seeds, "retry_in", backoff, "err", err)
		// Up to 20% jitter keeps gateways started together from retrying in step.
		t := time.NewTimer(backoff + rand.N(backoff/5+1))
		select {
		case <-t.C:
		case <-n.stop:
			t.Stop()
			return
		}
		backoff = min(2*backoff, n.cfg.JoinBackoffMax)
	}
}

// numNodes sizes the broadcast queue's retransmit limit. It must not lock
// n.mu: the queue calls it holding its own lock, which Publish takes while
// holding n.mu.
func (n *Node) numNodes() int { return int(n.live.Load()) }

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

// reject counts ignored input and logs it, at warning level at most once a
// second per reason, at debug level otherwise.
func (n *Node) reject(reason int, err error) {
	n.c.rejected[reason].Add(1)
	now := time.Now().UnixNano()
	last := n.c.lastRejectLog[reason].Load()
	level := slog.LevelDebug
	if now-last >= int64(time.Second) && n.c.lastRejectLog[reason].CompareAndSwap(last, now) {
		level = slog.LevelWarn
	}
	n.log.Log(context.Background(), level, "ignoring gossip input", "reason", reasonName(reason), "err", err)
}

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

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	s := Stats{
		BytesIn:          n.c.bytesIn.Load(),
		BytesOut:         n.c.bytesOut.Load(),
		PushPulls:        n.c.pushPulls.Load(),
		LastPushPull:     time.Duration(n.c.lastPushPull.Load()),
		StateBuilds:      n.c.stateBuilds.Load(),
		StatesTooLarge:   n.c.statesTooLarge.Load(),
		Broadcasts:       n.c.broadcasts.Load(),
		DeltasSent:       n.c.deltasSent.Load(),
		DeltasApplied:    n.c.deltasApplied.Load(),
		DeltaMisses:      n.c.deltaMisses.Load(),
		ReliableSends:    n.c.reliableSends.Load(),
		ReliableFailures: n.c.reliableKO.Load(),
		Accepted:         n.c.accepted.Load(),
		Stale:            n.c.stale.Load(),
		JoinAttempts:     n.c.joinAttempts.Load(),
		JoinFailures:     n.c.joinKO.Load(),
		Rejected:         make(map[string]uint64, numReasons),

		ReconnectAttempts:  n.c.reconnectAttempts.Load(),
		ReconnectSuccesses: n.c.reconnects.Load(),
	}
	for i := range numReasons {
		s.Rejected[reasonName(i)] = n.c.rejected[i].Load()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.members {
		switch m.state {
		case StateAlive:
			s.Alive++
		case StateDead:
			s.Dead++
		case StateLeft:
			s.Left++
		}
	}
	networks := make(map[string]bool)
	for _, e := range n.liveEntriesLocked() {
		s.Summaries++
		s.Services += len(e.summary.Services)
		networks[e.summary.Network] = true
	}
	s.Networks = len(networks)
	s.ReconnectPending = n.reconnects.len()
	return s
}

// SetKeys replaces the gossip keyring without a restart: it installs the
// new keys, makes keys[0] the primary and removes keys not listed. To
// rotate without partitioning the cluster, call it on every node three
// times, each round complete before the next: [old, new] (install),
// [new, old] (switch), [new] (remove). A node started without keys
// (Insecure) cannot turn encryption on.
func (n *Node) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("peer: SetKeys: no keys")
	}
	for i, k := range keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return fmt.Errorf("peer: SetKeys: key %d: %w", i, err)
		}
	}
	if n.keyring == nil {
		return errors.New("peer: SetKeys: node gossips in plaintext (started without keys); restart it with keys")
	}
	for i, k := range keys {
		if err := n.keyring.AddKey(k); err != nil {
			return fmt.Errorf("peer: SetKeys: install key %d: %w", i, err)
		}
	}
	if err := n.keyring.UseKey(keys[0]); err != nil {
		return fmt.Errorf("peer: SetKeys: use primary: %w", err)
	}
	for _, old := range slices.Clone(n.keyring.GetKeys()) {
		if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, old) }) {
			if err := n.keyring.RemoveKey(old); err != nil {
				return fmt.Errorf("peer: SetKeys: remove old key: %w", err)
			}
		}
	}
	n.log.Info("gossip keyring updated", "keys", len(keys))
	return nil
}

// Leave tells the cluster this node is leaving (a goodbye gossiped first,
// so others record it as left rather than dead, then memberlist's leave),
// waiting up to timeout in all for the messages to go out, so others
// withdraw its summary at once instead of after failure detection. The node
// keeps running until Shutdown but stops joining and reconnecting.
func (n *Node) Leave(timeout time.Duration) error {
	n.lifeMu.Lock()
	defer n.lifeMu.Unlock()
	if n.closed {
		return ErrClosed
	}
	n.stopJoining()
	deadline := time.Now().Add(timeout)
	if n.live.Load() > 1 {
		n.mu.Lock()
		cur := n.store.get(n.cfg.Name)
		n.mu.Unlock()
		sent := make(chan struct{}, 1)
		n.queue.QueueBroadcast(&entryBroadcast{
			origin: cur.origin,
			msg:    encodeMessage(kindBye, encodeBye(bye{origin: cur.origin, version: cur.version})),
			sent:   sent,
		})
		t := time.NewTimer(timeout)
		select {
		case <-sent:
		case <-t.C:
		}
		t.Stop()
	}
	if err := n.ml.Leave(max(time.Until(deadline), time.Millisecond)); err != nil {
		return fmt.Errorf("peer: leave: %w", err)
	}
	return nil
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
	m.leaving = true
	n.reconnects.left(b.origin)
	if m.state == StateDead {
		m.state = StateLeft
		n.gen++
		n.notify()
	}
	return true
}

// Shutdown stops gossiping, closes the port and waits for the node's
// goroutines. Without a prior Leave, other nodes withdraw this node's
// summary after failure detection. Shutdown is idempotent.
func (n *Node) Shutdown() error {
	n.lifeMu.Lock()
	defer n.lifeMu.Unlock()
	if n.closed {
		return nil
	}
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	n.stopJoining()
	close(n.done)
	err := n.ml.Shutdown()
	n.wg.Wait()
	if err != nil {
		return fmt.Errorf("peer: shutdown: %w", err)
	}
	return nil
}

// stopJoining stops the join and reconnect loops; joins in flight finish.
func (n *Node) stopJoining() { n.stopOnce.Do(func() { close(n.stop) }) }

// isClosed reports whether Shutdown ran; n.mu must be held.
func (n *Node) isClosed() bool { return n.closed }

// eventLoop applies membership events handed off by the delegate, outside
// memberlist's locks, and prunes what departed long ago.
func (n *Node) eventLoop() {
	defer n.wg.Done()
	tick := time.NewTicker(retention / 4)
	defer tick.Stop()
	for {
		select {
		case <-n.evKick:
			n.applyEvents()
		case now := <-tick.C:
			n.prune(now)
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
		}
	}
	if n.store.prune(func(e *entry) bool {
		m := n.members[e.origin]
		return (m == nil || m.state != StateAlive) && now.Sub(e.received) > retention
	}) > 0 {
		n.gen++
	}
}

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

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}
