// Package gateway is ewgate's data plane: it listens on the ports of the
// Gateway servers that select its node, reads each connection's TLS
// ClientHello without terminating it, routes the Istio SNI to an eligible
// endpoint of its own network and splices the raw bytes both ways.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/internal/ratelog"
	"github.com/ewgate/ewgate/sni"
)

// IstioALPN returns the ALPN protocols Istio's AUTO_PASSTHROUGH requires
// one of (its rule since CVE-2021-31921), in a new slice.
func IstioALPN() []string {
	return []string{"istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"}
}

// Config configures a Gateway. Zero fields take the documented defaults.
type Config struct {
	// BindAddress is the IP the listeners bind; default all addresses.
	BindAddress string
	// ALPN lists the protocols a client must offer one of; default
	// IstioALPN().
	ALPN []string
	// AnyALPN turns the ALPN check off.
	AnyALPN bool
	// Peek bounds the ClientHello read: default 64 KiB and 5 s. Its
	// Budget is set from HelloMemory.
	Peek sni.Peeker
	// HelloMemory bounds the bytes that all ClientHello reads in progress
	// may allocate beyond their first 4 KiB each (the pooled buffers,
	// bounded by MaxConnections): a hello that would exceed it is refused
	// with reason hello_over_budget. Default DefaultHelloMemory (64 MiB):
	// a thousand hellos of the largest size at once. Negative: no bound.
	HelloMemory int64
	// DialTimeout bounds each upstream connect; default 5s.
	DialTimeout time.Duration
	// DialControl, if not nil, is called with the address of every
	// upstream socket before it connects (net.Dialer.Control); an error
	// refuses the connect. cmd sets it to discovery.AddressPolicy.Control,
	// so that an endpoint named by DNS cannot resolve to an address the
	// policy refuses.
	DialControl func(network, address string, c syscall.RawConn) error
	// DialAttempts is how many endpoints, or other networks' gateways for
	// a tunneled connection, are tried per connection; default 3.
	DialAttempts int
	// EjectAfter consecutive connect failures eject an endpoint; default 3.
	EjectAfter int
	// EjectFor is how long an ejected endpoint is skipped; default 30s.
	EjectFor time.Duration
	// ProbeInterval, if positive, probes each ejected endpoint with a TCP
	// connect that often: one that connects is readmitted at once, one
	// that fails stays ejected for another EjectFor. Default 0: no
	// probes, an ejection lasts EjectFor.
	ProbeInterval time.Duration
	// IdleTimeout closes a connection on which no byte moved either way for
	// that long (detected within twice that); default 1h, like Envoy's
	// tcp_proxy. Negative disables it. It holds for every path: to an
	// endpoint, into a tunnel, and out of one.
	IdleTimeout time.Duration
	// MaxConnections caps concurrent connections, the listeners' clients
	// and the tunnel streams other networks' gateways carry here counted
	// together; default 10000. Connections over the cap are reset at once
	// and counted (over_limit).
	MaxConnections int
	// Locality is the gateway's own, "region/zone/subzone", which
	// DestinationRule locality load balancing is relative to; "" (the
	// default) turns locality load balancing off.
	Locality string
	// LoopAccept makes the event loops accept the listeners'
	// connections, read and route their ClientHello and dial local
	// endpoints themselves, with raw non-blocking sockets, rather than
	// Go's net and a handler goroutine; what they do not dial
	// themselves (tunneled routes, endpoints named by DNS, hellos that
	// take more than one read) goes to the handlers as before. Default
	// false, so that a Gateway built without it is served by the
	// handlers alone; ewgate run sets it (--loop-accept, on by default:
	// docs/architecture.md).
	LoopAccept bool
	// EventLoops is how many event loops pump the flows (and, with
	// LoopAccept, accept them); 0 (the default) or less is GOMAXPROCS, a
	// loop per core Go runs on. Fewer loops than GOMAXPROCS cost less CPU per
	// request where the gateway shares few cores with busy processes: two
	// loops made ready at once make Go wake a second thread, which
	// preempts the first (docs/benchmarks.md, "ewgate's threads preempt
	// each other"). One loop caps the spliced data plane at one core.
	EventLoops int
	// SpreadLoops keeps every event loop on a goroutine of its own at
	// any load. By default, once the process has used under 0.85 of a
	// core for 200 ms, the first loop's goroutine does the work of all
	// of them, which saves the wake-ups of a second thread (8-14 % of
	// the CPU per request, measured), and they spread again within 50
	// ms of that goroutine polling 95 % of the time (gateway/looppack.go).
	SpreadLoops bool
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Metrics receives counters; nil keeps them unexported.
	Metrics *Metrics
}

// DefaultHelloMemory is the default of Config.HelloMemory.
const DefaultHelloMemory = 64 << 20

func (c *Config) setDefaults() {
	if c.HelloMemory == 0 {
		c.HelloMemory = DefaultHelloMemory
	}
	if c.HelloMemory > 0 {
		c.Peek.Budget = sni.NewBudget(c.HelloMemory)
	}
	if c.ALPN == nil {
		c.ALPN = IstioALPN()
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.DialAttempts <= 0 {
		c.DialAttempts = 3
	}
	if c.EjectAfter <= 0 {
		c.EjectAfter = 3
	}
	if c.EjectFor <= 0 {
		c.EjectFor = 30 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = time.Hour
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = 10000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
}

// Gateway is the data plane. Build it with New, give it a view with Apply,
// and stop it with Shutdown.
type Gateway struct {
	cfg    Config
	log    *slog.Logger
	m      *Metrics
	dialer net.Dialer
	rlog   ratelog.Logger
	bufs   sync.Pool // *[]byte ClientHello buffers
	chunks sync.Pool // *[]byte forwarding buffers, held only while a chunk moves
	relays sync.Pool // *[]byte buffers of reads that a stream end takes part in, while data is flowing
	loops  loops     // pump the socket-to-socket flows

	table    atomic.Pointer[table]
	active   atomic.Int64
	draining atomic.Bool
	cutting  atomic.Bool // drain timed out: flows must close
	tunnels  atomic.Pointer[tunnels]
	probe    prober
	handlers *handlers

	mu        sync.Mutex
	listeners map[uint32]*listener
	upstreams map[string]*upstream
	routes    map[routeID]*routeState
	flows     map[*flow]struct{} // every connection, accepted here or carried here by a tunnel
	wg        sync.WaitGroup     // accept loops and connections

	// now is the clock of ejections, in unix nanoseconds: time.Now, or
	// a test's clock, so that ejection lengths can be asserted exactly.
	now func() int64
}

// listener is one bound port: a Go listener that serve accepts on, or,
// with Config.LoopAccept, a socket the event loops accept on (ln nil).
type listener struct {
	port uint32
	ln   *net.TCPListener
	addr net.Addr
	// With the loops' sockets (one per loop, SO_REUSEPORT): the loops
	// that still poll theirs, and closed, closed once the last closed
	// its.
	holders atomic.Int32
	closed  chan struct{}
}

// New returns a Gateway with no listeners.
func New(cfg Config) *Gateway {
	cfg.setDefaults()
	g := &Gateway{
		cfg:       cfg,
		log:       cfg.Logger,
		m:         cfg.Metrics,
		listeners: make(map[uint32]*listener),
		upstreams: make(map[string]*upstream),
		routes:    make(map[routeID]*routeState),
		now:       func() int64 { return time.Now().UnixNano() },
		flows:     make(map[*flow]struct{}),
		handlers:  newHandlers(),
	}
	// Upstream sockets get keep-alive only from a route's tcpKeepalive
	// (applyPolicy), as Envoy's: not Go's default, 4 system calls per dial.
	g.dialer = net.Dialer{Timeout: cfg.DialTimeout, Control: cfg.DialControl, KeepAlive: -1}
	g.bufs.New = func() any {
		// Big enough for Go's and browsers' hellos (1.5-2 KB) in one read;
		// Peek grows it for larger ones.
		b := make([]byte, 4096)
		return &b
	}
	g.chunks.New = func() any {
		b := make([]byte, chunkSize)
		return &b
	}
	g.relays.New = func() any {
		b := make([]byte, relayChunkSize)
		return &b
	}
	return g
}

// relayChunkSize is the buffer of reads to or from a tunnel stream while
// data is flowing. Each read from a socket is then one write into the
// stream: 128 KiB makes a QUIC stream write, or a frame of the TCP
// fallback, four times io.Copy's 32 KiB, for 10-16% (QUIC) to 31-35%
// (TCP fallback) fewer system calls per MiB through a tunnel
// (docs/benchmarks.md, "Tunnels"); 256 KiB did no better. Only
// directions moving bulk hold one: a direction waiting on a socket or a
// stream (Stream.Wait) holds no buffer (see move).
const relayChunkSize = 128 << 10

// chunkSize is the forwarding buffer: messages up to this size are copied
// through it, larger backlogs are spliced.
const chunkSize = 16 << 10

// Apply makes v the gateway's routing: it binds listeners for new ports,
// closes those no longer served and swaps the routing table. Established
// connections are untouched. If a port cannot be bound, nothing changes and
// the error names the port.
func (g *Gateway) Apply(v *discovery.View) error {
	closing, err := g.apply(v)
	for _, l := range closing {
		if l.closed != nil {
			<-l.closed
		}
	}
	return err
}

// apply is Apply under g.mu; it returns the listeners it closes, which
// the loops may still be letting go.
func (g *Gateway) apply(v *discovery.View) ([]*listener, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.draining.Load() {
		return nil, errors.New("gateway is draining")
	}
	want := make(map[uint32]bool)
	var added []*listener
	for port, gw := range servedPorts(v) {
		want[port] = true
		if _, ok := g.listeners[port]; ok {
			continue
		}
		addr := net.JoinHostPort(g.cfg.BindAddress, strconv.Itoa(int(port)))
		ln, err := listen(addr, g.cfg.LoopAccept)
		if err != nil {
			for _, a := range added {
				a.ln.Close()
			}
			return nil, fmt.Errorf("listener for %v port %d: %w", gw.Source, port, err)
		}
		added = append(added, &listener{port: port, ln: ln, addr: ln.Addr()})
	}
	g.table.Store(g.buildTable(v))
	g.startProbing()
	for _, l := range added {
		g.listeners[l.port] = l
		if !g.cfg.LoopAccept || !g.listenInLoops(l) {
			g.wg.Add(1)
			go g.serve(l)
		}
		g.log.Info("listening", "address", l.addr.String())
	}
	var closing []*listener
	for port, l := range g.listeners {
		if !want[port] {
			g.closeListener(l)
			closing = append(closing, l)
			delete(g.listeners, port)
			g.log.Info("listener closed", "address", l.addr.String())
		}
	}
	return closing, nil
}

// servedPorts returns every port v serves, AUTO_PASSTHROUGH and
// PASSTHROUGH, with the Gateway that claims it.
func servedPorts(v *discovery.View) map[uint32]*discovery.Gateway {
	out := make(map[uint32]*discovery.Gateway, len(v.Listeners)+len(v.Passthrough))
	for _, l := range v.Listeners {
		out[l.Port] = l.Gateway
	}
	for _, l := range v.Passthrough {
		out[l.Port] = l.Gateway
	}
	return out
}

// listen binds a TCP listener without MPTCP, whose extra subflows the
// splice fast path cannot use, with the options of listenerOptions.
// KeepAlive -1 keeps Go from setting the keep-alive options again on
// every accepted socket (4 system calls each): Linux copies them from
// the listening socket. With reusePort, further sockets can bind the
// same address (listenInLoops).
func listen(addr string, reusePort bool) (*net.TCPListener, error) {
	lc := net.ListenConfig{KeepAlive: -1, Control: listenerOptions}
	if reusePort {
		lc.Control = reusePortOptions
	}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// Addrs returns the bound listener addresses by port.
func (g *Gateway) Addrs() map[uint32]net.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[uint32]net.Addr, len(g.listeners))
	for p, l := range g.listeners {
		out[p] = l.addr
	}
	return out
}

// Ready reports whether a view is applied and every listener is bound.
func (g *Gateway) Ready() bool {
	t := g.table.Load()
	if t == nil || g.draining.Load() {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for port := range servedPorts(t.view) {
		if _, ok := g.listeners[port]; !ok {
			return false
		}
	}
	return true
}

// Active returns the number of open connections: the listeners' clients
// and the streams other networks' gateways carried here.
func (g *Gateway) Active() int64 { return g.active.Load() }

// HelloMemory returns the bytes ClientHello reads in progress hold beyond
// their pooled buffers, as counted against Config.HelloMemory; 0 without
// a bound.
func (g *Gateway) HelloMemory() int64 {
	if b := g.cfg.Peek.Budget; b != nil {
		return b.InUse()
	}
	return 0
}

// Shutdown drains the gateway: it stops accepting at once, lets open
// connections finish until ctx is done, then closes the rest. It returns
// ctx's error if connections had to be cut.
func (g *Gateway) Shutdown(ctx context.Context) error {
	// Once the accept loops and connections are done, no handler is
	// busy; the loops stop after the wait for every flow, which they
	// release.
	defer g.handlers.stop()
	defer g.loops.stop()
	g.mu.Lock()
	g.draining.Store(true)
	for port, l := range g.listeners {
		g.closeListener(l)
		delete(g.listeners, port)
	}
	g.mu.Unlock()
	g.stopProbing()
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	g.cutting.Store(true)
	g.mu.Lock()
	for f := range g.flows {
		f.cut()
	}
	g.mu.Unlock()
	<-done
	return fmt.Errorf("drain cut open connections: %w", ctx.Err())
}

func (g *Gateway) serve(l *listener) {
	defer g.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of fds or similar: back off instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			g.log.Warn("accept failed", "port", l.port, "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if ref := g.admitConn(); ref != nil {
			g.answer(c, ref)
			c.SetLinger(0)
			c.Close()
			continue
		}
		f := &flow{g: g, client: tcpEnd(c)}
		g.track(f)
		g.dispatch(l.port, f, nil)
	}
}

// admitConn counts an accepted connection against MaxConnections, or
// returns the refusal of one over it, which the caller resets.
func (g *Gateway) admitConn() *refusal {
	g.m.Accepted.Inc()
	if n := g.active.Add(1); n > int64(g.cfg.MaxConnections) {
		g.active.Add(-1)
		return &refusal{reason: RejectOverLimit, args: []any{"limit", g.cfg.MaxConnections}}
	}
	g.m.Active.Add(1)
	return nil
}

// leaveConn lets go of a connection admitConn counted.
func (g *Gateway) leaveConn() {
	g.active.Add(-1)
	g.m.Active.Add(-1)
}

// track registers f, an admitted connection, with the flows that
// Shutdown waits for and cuts; release lets it go.
func (g *Gateway) track(f *flow) {
	g.mu.Lock()
	g.flows[f] = struct{}{}
	g.mu.Unlock()
	g.wg.Add(1)
}

// table is an immutable routing snapshot.
type table struct {
	view     *discovery.View
	listener map[uint32]int // port -> index in view.Listeners
	// passthrough holds the view's PASSTHROUGH listeners by port.
	passthrough map[uint32]*discovery.PassthroughListener
	clusters    map[*discovery.Route]*cluster
	upstreams   []*upstream
}

// buildTable compiles v, reusing the upstream state (active connections,
// ejections) of endpoints that stay. Called with g.mu held.
func (g *Gateway) buildTable(v *discovery.View) *table {
	t := &table{view: v, listener: make(map[uint32]int), passthrough: make(map[uint32]*discovery.PassthroughListener),
		clusters: make(map[*discovery.Route]*cluster)}
	for i, l := range v.Listeners {
		t.listener[l.Port] = i
	}
	for _, l := range v.Passthrough {
		t.passthrough[l.Port] = l
	}
	keep := make(map[string]*upstream)
	keepRoutes := make(map[routeID]*routeState)
	for _, rs := range []struct {
		routes      []*discovery.Route
		passthrough bool
	}{{v.Routes(), false}, {v.PassthroughRoutes(), true}} {
		for _, r := range rs.routes {
			id := routeID{key: r.Key, passthrough: rs.passthrough}
			st, ok := keepRoutes[id]
			if !ok {
				if st, ok = g.routes[id]; !ok {
					st = new(routeState)
				}
				keepRoutes[id] = st
			}
			t.clusters[r] = g.buildCluster(r, st, keep)
		}
	}
	g.routes = keepRoutes
	g.upstreams = keep
	for _, u := range keep {
		t.upstreams = append(t.upstreams, u)
	}
	slices.SortFunc(t.upstreams, func(a, b *upstream) int { return strings.Compare(a.addr, b.addr) })
	return t
}

// buildCluster compiles r's endpoints, with st its route's state, under
// its policy, taking each endpoint's state from keep or, for one new to
// keep, from the last table. Called with g.mu held.
func (g *Gateway) buildCluster(r *discovery.Route, st *routeState, keep map[string]*upstream) *cluster {
	cl := &cluster{route: r, idle: g.cfg.IdleTimeout, raw: true}
	weights, prio, levels := g.localize(r)
	for i, tg := range r.Targets {
		w := uint64(tg.Weight)
		if weights != nil {
			if w = weights[i]; w == 0 {
				continue // distribute sends its locality nothing
			}
		}
		u, ok := keep[tg.Address]
		if !ok {
			if u, ok = g.upstreams[tg.Address]; !ok {
				u = &upstream{addr: tg.Address, ap: addrPortOf(tg.Address)}
			}
			keep[tg.Address] = u
		}
		cl.add(u, w)
		cl.raw = cl.raw && u.ap.IsValid()
		cl.target = append(cl.target, i)
		if prio != nil {
			cl.prio = append(cl.prio, prio[i])
		}
	}
	cl.levels = levels
	g.applyPolicy(cl, &r.Policy, st)
	return cl
}

// Healthy reports whether the endpoint at addr is known and not ejected,
// for summaries and resolution.
func (g *Gateway) Healthy(addr string) bool {
	t := g.table.Load()
	if t == nil {
		return false
	}
	i, ok := slices.BinarySearchFunc(t.upstreams, addr, func(u *upstream, a string) int { return strings.Compare(u.addr, a) })
	return ok && !t.upstreams[i].ejected(g.now())
}
