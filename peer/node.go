package peer

import (
	"context"
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
	stateCached     bool        // stateCache (nil when too large) is for stateGen
	stateBuild      *stateBuild // the state LocalState is building, if any
	buildingState   func()      // if set, LocalState calls it before a build, outside mu: a test's hold; nil but in tests
	pendingReliable []byte      // the message for reliableLoop: a whole entry, or a delta on pendingBase
	pendingBase     *entry      // the entry the pending delta is based on; nil for a whole entry
	reconnects      *reconnectSet
	introduce       map[string]bool // members to send our entry and chain to

	// signer signs our entries and verifies others'; nil without
	// Config.Identity.
	signer *signer
	// ids are the SPIFFE IDs members announce in their meta, recorded
	// from memberlist's callbacks (see setAnnounced).
	idsMu sync.Mutex
	ids   map[string]string

	lifeMu sync.Mutex
	closed bool

	c counters

	conflict conflict
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
	var sg *signer
	if cfg.Identity != nil {
		var id string
		if sg, id, err = newSigner(cfg.Identity, cfg.AllowGateway); err != nil {
			return nil, err
		}
		if cfg.SPIFFEID == "" {
			cfg.SPIFFEID = id
		} else if cfg.SPIFFEID != id {
			return nil, fmt.Errorf("peer: Config.SPIFFEID %q is not the ID of Config.Identity's SVID, %q", cfg.SPIFFEID, id)
		}
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
		introduce:     make(map[string]bool),
		signer:        sg,
		ids:           map[string]string{cfg.Name: cfg.SPIFFEID},
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
	if err := n.signOwn(self); err != nil {
		tr.Shutdown()
		return nil, err
	}
	n.store.put(self)
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
	n.log.Info("gossip started", "addr", n.Addr(), "network", cfg.Network, "encrypted", n.keyring != nil, "signed", sg != nil, "spiffe_id", cfg.SPIFFEID, "mesh_id", cfg.MeshID, "profile", cfg.Profile)
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
		b := bye{origin: cur.origin, version: cur.version}
		if n.signer != nil {
			var err error
			if b.sig, _, err = n.signer.signMessage(signedBye(b.origin, b.version)); err != nil {
				n.log.Error("cannot sign the goodbye; others will see this gateway die instead", "err", err)
			}
		}
		sent := make(chan struct{}, 1)
		n.queue.QueueBroadcast(&entryBroadcast{
			origin: cur.origin,
			msg:    encodeMessage(kindBye, encodeBye(b)),
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

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}
