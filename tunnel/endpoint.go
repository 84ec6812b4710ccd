package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ewgate/ewgate/identity"
)

// ALPN is the TLS application protocol of gateway tunnels.
const ALPN = "ewgate-tunnel/1"

// Connection close codes sent in CONNECTION_CLOSE frames (QUIC) and
// GO_AWAY frames (the TCP fallback).
const (
	// codeShutdown: the endpoint is closing, or the link is not needed.
	codeShutdown = 0
	// codeNotMember: the Allow hook refused the peer.
	codeNotMember = 0x10
	// codeInternal: the accepting side failed to set the link up.
	codeInternal = 0x11
)

// DefaultMaxIdleTimeout is the default of Config.MaxIdleTimeout.
const DefaultMaxIdleTimeout = 5 * time.Second

// Errors wrapped by Dial.
var (
	// ErrRejected is wrapped when the peer refused this gateway: its TLS
	// stack rejected our certificate, or its Allow hook refused our ID.
	// The error wrapping it says which, and why if the peer said so.
	ErrRejected = errors.New("peer rejected this gateway")
	// ErrClosed is wrapped when the Endpoint is closed.
	ErrClosed = errors.New("tunnel: endpoint closed")
	// ErrSilent is wrapped when the link to the peer has heard nothing,
	// not even an answer to its keep-alives, for twice KeepAlivePeriod
	// (plus two round trips): the peer is probably dead or the path
	// blocked. Dial fails at once rather than send a stream nobody may
	// answer, so the caller can try another gateway. Meanwhile a new link
	// is set up in the background (over TCP, with TransportAuto, if QUIC
	// no longer gets through) and takes the silent one's place once up;
	// the silent link closes at MaxIdleTimeout, or recovers if the peer
	// is heard again first.
	ErrSilent = errors.New("tunnel: link to peer is silent")

	// errNotMember is wrapped with ErrRejected when the peer's Allow hook
	// refused us.
	errNotMember = errors.New("its membership check refused our ID")
)

// Handler serves one accepted stream. ctx is canceled when the link or the
// Endpoint closes. The handler owns s while it runs; the Endpoint closes s
// when the handler returns. A handler must return once s fails or ctx is
// done, since Endpoint.Close waits for handlers.
type Handler func(ctx context.Context, h Header, s *Stream)

// Config configures an [Endpoint]. Zero durations and sizes take the
// documented defaults.
type Config struct {
	// Source provides this gateway's SVID and trust bundles. Required.
	Source identity.Source
	// Authorizer decides which peer SPIFFE IDs are accepted, both when
	// accepting and when dialing. nil allows the own trust domain only.
	Authorizer *identity.Authorizer
	// Allow, if set, is asked after a successful inbound handshake; false
	// closes the connection and the dialer's Dial fails with ErrRejected
	// (the gateway uses it to require a live gossip member).
	Allow func(spiffeID string) bool
	// Handler serves accepted streams. nil makes the Endpoint dial-only:
	// it does not accept tunnel connections.
	Handler Handler
	// Logger receives link events. nil discards them.
	Logger *slog.Logger

	// Transport says how links are dialed. Default TransportAuto. An
	// Endpoint with a Handler accepts both transports whatever this says.
	Transport Transport
	// FallbackAfter is how long, with TransportAuto, a QUIC link may take
	// to come up before the TCP fallback is tried. Default 2s.
	FallbackAfter time.Duration
	// QUICRetryInterval is how often, with TransportAuto, a link on the TCP
	// fallback tries QUIC again. Default 30s.
	QUICRetryInterval time.Duration
	// StatelessResetKey, if set, makes the endpoint answer packets of
	// connections it does not know with QUIC stateless resets, so that
	// peers of a gateway that restarted with the same key notice at once
	// that their links are gone instead of waiting for MaxIdleTimeout.
	// It must stay the same across restarts and be secret.
	StatelessResetKey *[32]byte

	// MaxIdleTimeout closes a link that has heard nothing from its peer
	// for this long; its streams fail and the next Dial sets up a new
	// link (over TCP, with TransportAuto, if QUIC no longer connects). It
	// is how a link notices a dead peer or a path that stopped carrying
	// its packets, such as UDP blocked mid-link, so it is short. Raise it
	// for paths that lose everything for seconds at a time. Default 5s.
	MaxIdleTimeout time.Duration
	// KeepAlivePeriod is how long a link may go without receiving before
	// it pings its peer, whose answer keeps it alive. Default
	// MaxIdleTimeout/5; at most MaxIdleTimeout/2.
	KeepAlivePeriod time.Duration
	// HandshakeTimeout bounds setting up a link, including the peer's
	// authorization and a fallback to TCP. Default 10s.
	HandshakeTimeout time.Duration
	// HeaderTimeout bounds reading a stream header. Default 10s.
	HeaderTimeout time.Duration
	// MaxIncomingStreams is the number of concurrent streams a peer may
	// open on one link. Default 10000.
	MaxIncomingStreams int64
	// MaxStreamReceiveWindow is the largest per-stream flow-control window
	// (auto-tuned from 512 KiB, 256 KiB on TCP). Default 8 MiB.
	MaxStreamReceiveWindow uint64
	// MaxConnectionReceiveWindow is the largest per-link flow-control window
	// of QUIC links (auto-tuned from 1.5 times the initial stream window).
	// Default 64 MiB. TCP's own window bounds TCP links.
	MaxConnectionReceiveWindow uint64
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.MaxIdleTimeout, DefaultMaxIdleTimeout)
	def(&c.KeepAlivePeriod, c.MaxIdleTimeout/5)
	c.KeepAlivePeriod = min(c.KeepAlivePeriod, c.MaxIdleTimeout/2)
	def(&c.HandshakeTimeout, 10*time.Second)
	def(&c.HeaderTimeout, 10*time.Second)
	def(&c.FallbackAfter, 2*time.Second)
	def(&c.QUICRetryInterval, 30*time.Second)
	if c.Transport == "" {
		c.Transport = TransportAuto
	}
	if c.MaxIncomingStreams <= 0 {
		c.MaxIncomingStreams = 10000
	}
	if c.MaxStreamReceiveWindow == 0 {
		c.MaxStreamReceiveWindow = 8 << 20
	}
	if c.MaxConnectionReceiveWindow == 0 {
		c.MaxConnectionReceiveWindow = 64 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// quicConfig returns the QUIC configuration; streams and uniStreams are
// the numbers of bidirectional and unidirectional streams the peer may open
// (-1 for none). Only the dialing side opens bidirectional streams; only
// the accepting side opens one unidirectional stream, the ready signal.
func (c Config) quicConfig(streams, uniStreams int64) *quic.Config {
	const initialStreamWindow = 512 << 10
	return &quic.Config{
		HandshakeIdleTimeout:           c.HandshakeTimeout,
		MaxIdleTimeout:                 c.MaxIdleTimeout,
		KeepAlivePeriod:                c.KeepAlivePeriod,
		InitialStreamReceiveWindow:     min(initialStreamWindow, c.MaxStreamReceiveWindow),
		MaxStreamReceiveWindow:         c.MaxStreamReceiveWindow,
		InitialConnectionReceiveWindow: min(initialStreamWindow*3/2, c.MaxConnectionReceiveWindow),
		MaxConnectionReceiveWindow:     c.MaxConnectionReceiveWindow,
		MaxIncomingStreams:             streams,
		MaxIncomingUniStreams:          uniStreams,
	}
}

// Endpoint is a gateway's end of its tunnels: one UDP socket (one
// quic.Transport) that accepts QUIC links from peer gateways and dials
// links to them, and, for accepting, a TCP listener on the same port
// number for the TCP + TLS 1.3 fallback. Outbound links are pooled: one
// link per peer address, shared by all streams to that peer and redialed
// when it dies.
//
// A new link is usable only once the accepting side has authorized this
// gateway (its certificate and its Allow hook) and said so; streams on an
// established link open with no round trip. It is safe for concurrent use.
type Endpoint struct {
	cfg       Config
	log       *slog.Logger
	pc        net.PacketConn
	tr        *quic.Transport
	ln        *quic.Listener // nil when dial-only
	tcpLn     net.Listener   // nil when dial-only
	clientTLS *tls.Config
	serverTLS *tls.Config

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines started by the Endpoint

	mu       sync.Mutex
	closed   bool
	links    map[string]*link      // outbound, by dialed address
	outPeers map[string]*peerStats // outbound, by dialed address
	inConns  map[conn]*peerStats
	inReject map[string]uint64
}

// link is one outbound connection, possibly still being set up.
type link struct {
	ready  chan struct{} // closed when setup finished; then conn or err is set
	conn   conn
	peerID string
	err    error
	stats  *peerStats

	// Guarded by Endpoint.mu: whether a replacement is being set up (a
	// QUIC probe for a link on the TCP fallback, or a new link for a
	// silent one), and when the next QUIC probe may start.
	probing   bool
	nextProbe time.Time

	// What the link had received (conn.received) when last looked at,
	// and since when; set up when the link is.
	heardMu    sync.Mutex
	heardCount uint64
	heardSince time.Time
	silent     bool // the last look found it silent
}

// silentErr returns an error wrapping ErrSilent if watchLinks last found
// l silent. Dial asks it for every stream, so it only reads a flag.
func (l *link) silentErr(addr string) error {
	l.heardMu.Lock()
	silent, since := l.silent, l.heardSince
	l.heardMu.Unlock()
	if !silent {
		return nil
	}
	return fmt.Errorf("tunnel: link to %s heard nothing for %v: %w", addr, time.Since(since).Round(time.Millisecond), ErrSilent)
}

// silence reports how long l has heard nothing from its peer, as far as
// looking now and at the last call can tell: the peer was heard between
// two looks if the received count changed. Endpoint.watchLinks looks
// twice per keep-alive period, which makes that accurate enough.
func (l *link) silence(now time.Time) time.Duration {
	n := l.conn.received()
	l.heardMu.Lock()
	defer l.heardMu.Unlock()
	if n != l.heardCount || l.heardSince.IsZero() {
		l.heardCount, l.heardSince = n, now
	}
	return now.Sub(l.heardSince)
}

// watchLinks looks at every outbound link twice per keep-alive period,
// so that silence is timed from when the peer was last heard rather than
// from the last Dial, and a silent link is noticed, and replaced, even
// while nobody dials; a link on the TCP fallback is probed for QUIC on
// schedule even while idle.
func (e *Endpoint) watchLinks() {
	defer e.wg.Done()
	tick := time.NewTicker(e.cfg.KeepAlivePeriod / 2)
	defer tick.Stop()
	type watched struct {
		addr string
		l    *link
	}
	var links []watched
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-tick.C:
		}
		links = links[:0]
		e.mu.Lock()
		for addr, l := range e.links {
			select {
			case <-l.ready:
				if l.conn != nil && alive(l.conn) {
					links = append(links, watched{addr, l})
				}
			default: // still being set up
			}
		}
		e.mu.Unlock()
		for _, w := range links {
			if !e.watch(w.addr, w.l) {
				// An idle link on the TCP fallback moves back to QUIC too.
				e.maybeProbeQUIC(w.addr, w.l)
			}
		}
	}
}

// watch reports whether l has heard nothing for longer than a live peer
// allows, records it for Dial, logs when a link turns silent or is heard
// again, and starts replacing a link that turned silent.
func (e *Endpoint) watch(addr string, l *link) (silent bool) {
	quiet := l.silence(time.Now())
	limit := 2*e.cfg.KeepAlivePeriod + 2*l.conn.rtt()
	silent = quiet > limit
	l.heardMu.Lock()
	changed := silent != l.silent
	l.silent = silent
	l.heardMu.Unlock()
	if changed && silent {
		l.stats.silent()
		e.log.Warn("tunnel link silent: refusing new streams until it is heard again, replaced or closed", "peer", addr, "peer_id", l.peerID, "transport", l.conn.transport(), "silent_for", quiet.Round(time.Millisecond))
		e.replaceSilent(addr, l)
	} else if changed {
		e.log.Info("tunnel link heard again", "peer", addr, "peer_id", l.peerID)
	}
	return silent
}

// New opens a UDP socket on addr (host:port; port 0 picks one) and returns
// an Endpoint using it. If cfg.Handler is set, it also listens on TCP on
// the same port number and accepts tunnel links at once. Close releases
// everything.
func New(addr string, cfg Config) (*Endpoint, error) {
	if cfg.Source == nil {
		return nil, errors.New("tunnel: Config.Source is nil")
	}
	if _, err := ParseTransport(string(cfg.Transport)); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	pc, tcpLn, err := listen(addr, cfg.Handler != nil)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Endpoint{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "tunnel"),
		pc:       pc,
		tr:       &quic.Transport{Conn: pc, StatelessResetKey: (*quic.StatelessResetKey)(cfg.StatelessResetKey)},
		tcpLn:    tcpLn,
		ctx:      ctx,
		cancel:   cancel,
		links:    make(map[string]*link),
		outPeers: make(map[string]*peerStats),
		inConns:  make(map[conn]*peerStats),
		inReject: make(map[string]uint64),
	}
	e.clientTLS = identity.ClientTLSConfig(cfg.Source, cfg.Authorizer)
	e.clientTLS.NextProtos = []string{ALPN}
	e.clientTLS.MinVersion = tls.VersionTLS13
	if cfg.Handler == nil {
		e.wg.Add(1)
		go e.watchLinks()
		return e, nil
	}
	e.serverTLS = identity.ServerTLSConfig(cfg.Source, cfg.Authorizer)
	e.serverTLS.NextProtos = []string{ALPN}
	e.serverTLS.MinVersion = tls.VersionTLS13
	verify := e.serverTLS.VerifyConnection
	e.serverTLS.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verify(cs)
		if err != nil {
			e.countInboundReject(rejectReason(err))
		}
		return err
	}
	ln, err := e.tr.Listen(e.serverTLS, cfg.quicConfig(cfg.MaxIncomingStreams, -1))
	if err != nil {
		cancel()
		_ = e.tr.Close()
		_ = pc.Close()
		_ = tcpLn.Close()
		return nil, fmt.Errorf("tunnel: listening on %s: %w", pc.LocalAddr(), err)
	}
	e.ln = ln
	e.wg.Add(3)
	go e.watchLinks()
	go e.acceptQUIC()
	go e.acceptTCP()
	return e, nil
}

// listen opens the UDP socket and, if withTCP, a TCP listener on the same
// port number. Port 0 picks a port free for both.
func listen(addr string, withTCP bool) (*net.UDPConn, net.Listener, error) {
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("tunnel: resolving %q: %w", addr, err)
	}
	for attempt := 0; ; attempt++ {
		pc, err := net.ListenUDP("udp", udpAddr)
		if err != nil {
			return nil, nil, fmt.Errorf("tunnel: listening on %q: %w", addr, err)
		}
		if !withTCP {
			return pc, nil, nil
		}
		local := pc.LocalAddr().(*net.UDPAddr)
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: local.IP, Port: local.Port, Zone: local.Zone})
		if err == nil {
			return pc, ln, nil
		}
		_ = pc.Close()
		// A port picked for UDP may be taken on TCP: pick another.
		if udpAddr.Port != 0 || attempt == 10 {
			return nil, nil, fmt.Errorf("tunnel: listening on TCP %s for the fallback: %w", local, err)
		}
	}
}

// Addr returns the local UDP address, to advertise to peers. An Endpoint
// with a Handler accepts the TCP fallback on the same address.
func (e *Endpoint) Addr() net.Addr { return e.pc.LocalAddr() }

// Close closes every link (telling peers), stops accepting, waits for the
// Endpoint's goroutines and handlers to return, and closes the sockets.
// Streams fail once their link is closed. It is idempotent.
func (e *Endpoint) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	var conns []conn
	for c := range e.inConns {
		conns = append(conns, c)
	}
	e.mu.Unlock()
	e.cancel()
	if e.ln != nil {
		_ = e.ln.Close()
		_ = e.tcpLn.Close()
	}
	// Outbound links still being set up see the canceled context; links
	// that are up are closed here. e.links no longer changes once closed
	// is set, except for removals by finished setups.
	e.mu.Lock()
	links := make([]*link, 0, len(e.links))
	for _, l := range e.links {
		links = append(links, l)
	}
	e.mu.Unlock()
	for _, l := range links {
		<-l.ready
		if l.conn != nil {
			conns = append(conns, l.conn)
		}
	}
	for _, c := range conns {
		c.close(codeShutdown, "gateway tunnel endpoint closing")
	}
	e.wg.Wait()
	err := e.tr.Close()
	if cerr := e.pc.Close(); err == nil {
		err = cerr
	}
	return err
}

// RetireLink stops sending new streams on the outbound link to addr: the
// next Dial sets up a new link, and the old one closes once its open
// streams end, at once if it has none. The gateway calls it when gossip
// says the peer left or died. A dead peer's streams then fail within
// MaxIdleTimeout, while those of a peer declared dead by mistake (and
// refuting it a moment later) lose nothing. It reports whether a link was
// retired; a link still being set up is left alone.
func (e *Endpoint) RetireLink(addr, why string) bool {
	e.mu.Lock()
	l := e.links[addr]
	if l != nil {
		select {
		case <-l.ready:
		default:
			l = nil
		}
	}
	if l == nil || l.conn == nil || e.closed {
		e.mu.Unlock()
		return false
	}
	delete(e.links, addr)
	e.wg.Add(1)
	e.mu.Unlock()
	e.log.Info("retiring tunnel link", "peer", addr, "peer_id", l.peerID, "streams", l.conn.streams(), "why", why)
	go e.retire(l.conn, why)
	return true
}

// Stats returns a snapshot of the per-peer counters.
func (e *Endpoint) Stats() Stats {
	e.mu.Lock()
	peers := make([]*peerStats, 0, len(e.outPeers)+len(e.inConns))
	for _, p := range e.outPeers {
		peers = append(peers, p)
	}
	for _, p := range e.inConns {
		peers = append(peers, p)
	}
	s := Stats{InboundRejections: make(map[string]uint64, len(e.inReject))}
	for r, n := range e.inReject {
		s.InboundRejections[r] = n
	}
	e.mu.Unlock()
	for _, p := range peers {
		s.Peers = append(s.Peers, p.snapshot())
	}
	return s
}

func (e *Endpoint) countInboundReject(reason string) {
	e.mu.Lock()
	e.inReject[reason]++
	e.mu.Unlock()
}

// Dial opens a stream to the peer gateway at addr (its tunnel host:port)
// and writes h on it. It reuses the link to addr if one is up, or sets one
// up, redialing a link that died. ctx bounds the wait for the link and for
// stream credit; the link's own setup is bounded by HandshakeTimeout and
// shared by concurrent callers. If the peer refuses this gateway, the error
// wraps ErrRejected and says why. The caller must Close the stream.
func (e *Endpoint) Dial(ctx context.Context, addr string, h Header) (*Stream, error) {
	hdr, err := h.MarshalBinary()
	if err != nil {
		return nil, err
	}
	// A link found dead while opening the stream is replaced once; a
	// second failure is reported.
	for attempt := 0; ; attempt++ {
		l, err := e.link(ctx, addr)
		if err != nil {
			return nil, err
		}
		if err := l.silentErr(addr); err != nil {
			return nil, err
		}
		rs, err := l.conn.openStream(ctx)
		if err == nil {
			if _, err = rs.Write(hdr); err != nil {
				rs.abort(codeCanceled)
				rs.release()
			}
		}
		if err == nil {
			return newStream(rs, l.conn, l.stats, l.peerID), nil
		}
		dead := !alive(l.conn) || errors.Is(err, net.ErrClosed)
		if ctx.Err() != nil || !dead || attempt > 0 {
			return nil, fmt.Errorf("tunnel: opening stream to %s: %w", addr, err)
		}
		e.log.Info("link to peer died, redialing", "peer", addr, "peer_id", l.peerID, "err", err)
		e.mu.Lock()
		if e.links[addr] == l {
			delete(e.links, addr)
		}
		e.mu.Unlock()
	}
}

// link returns the live outbound link to addr, setting one up if needed.
func (e *Endpoint) link(ctx context.Context, addr string) (*link, error) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	l := e.links[addr]
	if l != nil {
		select {
		case <-l.ready:
			if l.err != nil || !alive(l.conn) {
				delete(e.links, addr)
				l = nil
			}
		default: // setup in progress: wait for it
		}
	}
	if l == nil {
		stats := e.outPeers[addr]
		if stats == nil {
			stats = &peerStats{dir: Outbound, addr: addr}
			e.outPeers[addr] = stats
		}
		l = &link{ready: make(chan struct{}), stats: stats}
		e.links[addr] = l
		e.wg.Add(1)
		go e.setUp(addr, l)
	}
	e.mu.Unlock()

	select {
	case <-l.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("tunnel: waiting for link to %s: %w", addr, ctx.Err())
	}
	if l.err != nil {
		return nil, l.err
	}
	e.maybeProbeQUIC(addr, l)
	return l, nil
}

// setUp dials addr and publishes the result in l. A failed link is removed
// from the pool so that the next Dial retries.
func (e *Endpoint) setUp(addr string, l *link) {
	defer e.wg.Done()
	defer close(l.ready)
	c, peerID, err := e.dial(addr)
	if err != nil {
		reason := failureReason(err)
		l.stats.failed(reason)
		l.err = fmt.Errorf("tunnel: link to %s: %w", addr, err)
		e.log.Warn("tunnel link failed", "peer", addr, "reason", reason, "err", err)
		e.mu.Lock()
		if e.links[addr] == l {
			delete(e.links, addr)
		}
		e.mu.Unlock()
		return
	}
	e.mu.Lock()
	fallback := e.install(l, c, peerID)
	e.mu.Unlock()
	l.stats.connected(peerID, c, fallback)
	e.log.Info("tunnel link up", "peer", addr, "peer_id", peerID, "transport", c.transport())
}

// install makes c l's connection and reports whether it is a fallback
// link (TCP under TransportAuto), scheduling its first QUIC probe if so.
// e.mu must be held.
func (e *Endpoint) install(l *link, c conn, peerID string) (fallback bool) {
	l.conn, l.peerID = c, peerID
	l.silence(time.Now())
	fallback = e.cfg.Transport == TransportAuto && c.transport() == TransportTCP
	if fallback {
		l.nextProbe = time.Now().Add(e.cfg.QUICRetryInterval)
	}
	return fallback
}

// dial sets up one link over the configured transport; with TransportAuto
// it tries QUIC for FallbackAfter, then TCP. A peer's refusal is final:
// it is not a transport problem.
func (e *Endpoint) dial(addr string) (conn, string, error) {
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.HandshakeTimeout)
	defer cancel()
	if e.cfg.Transport != TransportAuto {
		return e.dialOver(ctx, addr, e.cfg.Transport)
	}
	qctx, qcancel := context.WithTimeout(ctx, e.cfg.FallbackAfter)
	c, id, err := e.dialOver(qctx, addr, TransportQUIC)
	qcancel()
	if err == nil || errors.Is(err, ErrRejected) || ctx.Err() != nil {
		return c, id, err
	}
	e.log.Info("QUIC tunnel link failed, falling back to TCP", "peer", addr, "err", err)
	c, id, terr := e.dialOver(ctx, addr, TransportTCP)
	if terr != nil {
		return nil, "", fmt.Errorf("over TCP: %w (over QUIC: %w)", terr, err)
	}
	return c, id, nil
}

// dialOver sets up a link over one transport and returns it with the
// peer's SPIFFE ID once the peer has authorized us.
func (e *Endpoint) dialOver(ctx context.Context, addr string, t Transport) (conn, string, error) {
	var c conn
	var err error
	if t == TransportTCP {
		c, err = e.dialTCP(ctx, addr)
	} else {
		c, err = e.dialQUIC(ctx, addr)
	}
	if err != nil {
		return nil, "", err
	}
	id, err := identity.PeerID(c.tlsState())
	if err != nil {
		c.close(codeInternal, "link setup failed")
		return nil, "", err
	}
	return c, id.String(), nil
}

// dialQUIC sets up a QUIC link: QUIC and TLS handshakes, then the
// accepting side's ready signal, which it sends only after authorizing us.
func (e *Endpoint) dialQUIC(ctx context.Context, addr string) (conn, error) {
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolving: %w", err)
	}
	qc, err := e.tr.Dial(ctx, udpAddr, e.clientTLS, e.cfg.quicConfig(-1, 1))
	if err != nil {
		return nil, quicError(err)
	}
	if err := awaitReady(ctx, qc); err != nil {
		_ = qc.CloseWithError(codeInternal, "link setup failed")
		return nil, err
	}
	return &quicConn{Conn: qc}, nil
}

// maybeProbeQUIC starts, for a link on the TCP fallback, an attempt to set
// up QUIC again if one is due. When it succeeds, new streams use the QUIC
// link and the TCP link closes once its streams are done.
func (e *Endpoint) maybeProbeQUIC(addr string, l *link) {
	if e.cfg.Transport != TransportAuto || l.conn.transport() != TransportTCP {
		return
	}
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || l.probing || now.Before(l.nextProbe) || e.links[addr] != l {
		return
	}
	l.probing = true
	l.nextProbe = now.Add(e.cfg.QUICRetryInterval)
	e.wg.Add(1)
	go e.probeQUIC(addr, l)
}

func (e *Endpoint) probeQUIC(addr string, old *link) {
	e.replace(addr, old, "link replaced by QUIC", func(ctx context.Context) (conn, string, error) {
		return e.dialOver(ctx, addr, TransportQUIC)
	})
}

// replaceSilent starts setting up a link to replace a silent one, unless
// a replacement or a QUIC probe is already on its way: over TCP, with
// TransportAuto, if QUIC no longer gets through. A dead peer's link is
// left to close at MaxIdleTimeout.
func (e *Endpoint) replaceSilent(addr string, l *link) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || l.probing || e.links[addr] != l {
		return
	}
	l.probing = true
	e.wg.Add(1)
	go e.replace(addr, l, "link replaced: it went silent", func(context.Context) (conn, string, error) {
		return e.dial(addr)
	})
}

// replace sets up a new link to addr with dial and, if old is still the
// pool's link once it is up, puts it in old's place and retires old,
// telling the peer why. The caller has set old.probing and done e.wg.Add.
func (e *Endpoint) replace(addr string, old *link, why string, dial func(context.Context) (conn, string, error)) {
	defer e.wg.Done()
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.HandshakeTimeout)
	c, peerID, err := dial(ctx)
	cancel()
	e.mu.Lock()
	old.probing = false
	if err != nil {
		e.mu.Unlock()
		e.log.Debug("tunnel link not replaced", "peer", addr, "why", why, "err", err)
		return
	}
	if e.closed || e.links[addr] != old {
		e.mu.Unlock()
		c.close(codeShutdown, "link not needed")
		return
	}
	l := &link{ready: make(chan struct{}), stats: old.stats}
	fallback := e.install(l, c, peerID)
	close(l.ready)
	e.links[addr] = l
	e.wg.Add(1)
	e.mu.Unlock()
	l.stats.connected(peerID, c, fallback)
	e.log.Info("tunnel link replaced", "peer", addr, "peer_id", peerID, "transport", c.transport(), "why", why)
	go e.retire(old.conn, why)
}

// retire closes a link taken out of the pool once its streams are done,
// or when the Endpoint closes; why is sent to the peer.
func (e *Endpoint) retire(c conn, why string) {
	defer e.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for c.streams() > 0 {
		select {
		case <-tick.C:
		case <-c.done():
			return
		case <-e.ctx.Done():
			c.close(codeShutdown, "gateway tunnel endpoint closing")
			return
		}
	}
	c.close(codeShutdown, why)
}

// readyByte is the content of the ready signal the accepting side sends
// after it has authorized the dialer: on QUIC, alone on a unidirectional
// stream; on TCP, as the status byte.
const readyByte = 1

// awaitReady waits for the ready signal. In TLS 1.3 the client finishes
// its handshake before the server has checked the client's certificate,
// so a completed Dial does not mean the peer accepted us; this does.
func awaitReady(ctx context.Context, qc *quic.Conn) error {
	rs, err := qc.AcceptUniStream(ctx)
	if err != nil {
		return quicError(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(rs, b[:]); err != nil {
		return quicError(err)
	}
	if b[0] != readyByte {
		return fmt.Errorf("tunnel: unexpected ready signal %#x", b[0])
	}
	return nil
}

// acceptQUIC accepts inbound QUIC links until the listener closes.
func (e *Endpoint) acceptQUIC() {
	defer e.wg.Done()
	for {
		qc, err := e.ln.Accept(e.ctx)
		if err != nil {
			return
		}
		e.wg.Add(1)
		go e.serveQUIC(qc)
	}
}

// serveQUIC authorizes an inbound QUIC link, sends the ready signal and
// serves the link's streams.
func (e *Endpoint) serveQUIC(qc *quic.Conn) {
	defer e.wg.Done()
	log := e.log.With("peer", qc.RemoteAddr().String(), "transport", TransportQUIC)
	peerID, err := e.admit(qc.ConnectionState().TLS, log)
	if err != nil {
		_ = qc.CloseWithError(quic.ApplicationErrorCode(refusalCode(err)), err.Error())
		return
	}
	if err := sendReady(qc); err != nil {
		log.Warn("inbound link failed", "err", err)
		_ = qc.CloseWithError(codeInternal, "link setup failed")
		return
	}
	e.serveConn(&quicConn{Conn: qc}, peerID, log.With("peer_id", peerID))
}

func sendReady(qc *quic.Conn) error {
	ss, err := qc.OpenUniStream()
	if err != nil {
		return fmt.Errorf("opening ready stream: %w", err)
	}
	if _, err := ss.Write([]byte{readyByte}); err != nil {
		return fmt.Errorf("writing ready signal: %w", err)
	}
	return ss.Close()
}

// errRefused is wrapped by admit's errors when the Allow hook said no.
var errRefused = errors.New("not a live gateway member")

// admit authorizes an inbound link whose TLS handshake succeeded: it
// returns the peer's SPIFFE ID, or an error whose text is sent to the peer.
func (e *Endpoint) admit(state tls.ConnectionState, log *slog.Logger) (string, error) {
	id, err := identity.PeerID(state)
	if err != nil { // cannot happen after ServerTLSConfig's verification
		log.Error("inbound link without SPIFFE ID", "err", err)
		return "", fmt.Errorf("no SPIFFE ID: %w", err)
	}
	peerID := id.String()
	if e.cfg.Allow != nil && !e.cfg.Allow(peerID) {
		e.countInboundReject(ReasonNotMember)
		log.Warn("rejected inbound link", "peer_id", peerID, "reason", ReasonNotMember)
		return "", fmt.Errorf("peer %s is %w", peerID, errRefused)
	}
	return peerID, nil
}

// refusalCode is the close code for an admit error.
func refusalCode(err error) uint64 {
	if errors.Is(err, errRefused) {
		return codeNotMember
	}
	return codeInternal
}

// serveConn serves the streams of an authorized inbound link until it
// closes.
func (e *Endpoint) serveConn(c conn, peerID string, log *slog.Logger) {
	stats := &peerStats{dir: Inbound, addr: c.RemoteAddr().String()}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		c.close(codeShutdown, "gateway tunnel endpoint closing")
		return
	}
	e.inConns[c] = stats
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.inConns, c)
		e.mu.Unlock()
	}()
	stats.connected(peerID, c, false)
	log.Info("tunnel link accepted")

	// Handlers' context ends with the link: accepting fails only then.
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	for {
		rs, err := c.acceptStream(ctx)
		if err != nil {
			log.Info("tunnel link closed", "err", err)
			return
		}
		e.wg.Add(1)
		go e.serveStream(ctx, log, newStream(rs, c, stats, peerID))
	}
}

// serveStream reads the header of an accepted stream and runs the handler.
func (e *Endpoint) serveStream(ctx context.Context, log *slog.Logger, s *Stream) {
	defer e.wg.Done()
	defer s.Close()
	_ = s.SetReadDeadline(time.Now().Add(e.cfg.HeaderTimeout))
	h, err := ReadHeader(s)
	if err != nil {
		if ctx.Err() != nil {
			// The link or the Endpoint closed under the stream: not the
			// peer's fault.
			log.Debug("tunnel stream closed before its header", "err", err)
		} else {
			log.Warn("bad tunnel stream", "err", err)
		}
		s.rs.abort(codeBadHeader)
		return
	}
	_ = s.SetReadDeadline(time.Time{})
	e.cfg.Handler(ctx, h, s)
}

// failureReason classifies a failed outbound link setup.
func failureReason(err error) string {
	var rej *identity.RejectError
	var idle *quic.IdleTimeoutError
	var hs *quic.HandshakeTimeoutError
	switch {
	case errors.As(err, &rej):
		return string(rej.Reason)
	case errors.Is(err, errNotMember):
		return ReasonNotMember
	case errors.Is(err, ErrRejected):
		return ReasonRejectedByPeer
	case errors.As(err, &idle), errors.As(err, &hs), errors.Is(err, context.DeadlineExceeded):
		return ReasonTimeout
	default:
		return ReasonOther
	}
}

// rejectReason returns the identity.Reason of a verification error.
func rejectReason(err error) string {
	var rej *identity.RejectError
	if errors.As(err, &rej) {
		return string(rej.Reason)
	}
	return ReasonOther
}
