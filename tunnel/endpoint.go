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

// Connection close codes sent in CONNECTION_CLOSE frames.
const (
	// codeShutdown: the endpoint is closing.
	codeShutdown quic.ApplicationErrorCode = 0
	// codeNotMember: the Allow hook refused the peer.
	codeNotMember quic.ApplicationErrorCode = 0x10
	// codeInternal: the accepting side failed to set the link up.
	codeInternal quic.ApplicationErrorCode = 0x11
)

// Errors wrapped by Dial.
var (
	// ErrRejected is wrapped when the peer refused this gateway: its TLS
	// stack rejected our certificate, or its Allow hook refused our ID.
	// The error wrapping it says which, and why if the peer said so.
	ErrRejected = errors.New("peer rejected this gateway")
	// ErrClosed is wrapped when the Endpoint is closed.
	ErrClosed = errors.New("tunnel: endpoint closed")

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

	// KeepAlivePeriod is the interval of keep-alive packets. Default 10s.
	KeepAlivePeriod time.Duration
	// MaxIdleTimeout closes a link that has heard nothing for this long.
	// Default 30s.
	MaxIdleTimeout time.Duration
	// HandshakeTimeout bounds setting up a link, including the peer's
	// authorization. Default 10s.
	HandshakeTimeout time.Duration
	// HeaderTimeout bounds reading a stream header. Default 10s.
	HeaderTimeout time.Duration
	// MaxIncomingStreams is the number of concurrent streams a peer may
	// open on one link. Default 10000.
	MaxIncomingStreams int64
	// MaxStreamReceiveWindow is the largest per-stream flow-control window
	// (auto-tuned from 512 KiB). Default 8 MiB.
	MaxStreamReceiveWindow uint64
	// MaxConnectionReceiveWindow is the largest per-link flow-control window
	// (auto-tuned from 1.5 times the initial stream window). Default 64 MiB.
	MaxConnectionReceiveWindow uint64
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.KeepAlivePeriod, 10*time.Second)
	def(&c.MaxIdleTimeout, 30*time.Second)
	def(&c.HandshakeTimeout, 10*time.Second)
	def(&c.HeaderTimeout, 10*time.Second)
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
// quic.Transport) that accepts links from peer gateways and dials links to
// them. Outbound links are pooled: one QUIC connection per peer address,
// shared by all streams to that peer and redialed when it dies.
//
// A new link is usable only once the accepting side has authorized this
// gateway (its certificate and its Allow hook) and said so; streams on an
// established link open with no round trip. It is safe for concurrent use.
type Endpoint struct {
	cfg       Config
	log       *slog.Logger
	pc        net.PacketConn
	tr        *quic.Transport
	ln        *quic.Listener
	clientTLS *tls.Config

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines started by the Endpoint

	mu       sync.Mutex
	closed   bool
	links    map[string]*link      // outbound, by dialed address
	outPeers map[string]*peerStats // outbound, by dialed address
	inConns  map[*quic.Conn]*peerStats
	inReject map[string]uint64
}

// link is one outbound connection, possibly still being set up.
type link struct {
	ready  chan struct{} // closed when setup finished; then conn or err is set
	conn   *quic.Conn
	peerID string
	err    error
	stats  *peerStats
}

// New opens a UDP socket on addr (host:port; port 0 picks one) and returns
// an Endpoint using it. If cfg.Handler is set, it accepts tunnel links at
// once. Close releases everything.
func New(addr string, cfg Config) (*Endpoint, error) {
	if cfg.Source == nil {
		return nil, errors.New("tunnel: Config.Source is nil")
	}
	cfg = cfg.withDefaults()
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("tunnel: resolving %q: %w", addr, err)
	}
	pc, err := net.ListenUDP("udp", udpAddr)
	if err != nil {
		return nil, fmt.Errorf("tunnel: listening on %q: %w", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Endpoint{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "tunnel"),
		pc:       pc,
		tr:       &quic.Transport{Conn: pc},
		ctx:      ctx,
		cancel:   cancel,
		links:    make(map[string]*link),
		outPeers: make(map[string]*peerStats),
		inConns:  make(map[*quic.Conn]*peerStats),
		inReject: make(map[string]uint64),
	}
	e.clientTLS = identity.ClientTLSConfig(cfg.Source, cfg.Authorizer)
	e.clientTLS.NextProtos = []string{ALPN}
	if cfg.Handler != nil {
		tlsConf := identity.ServerTLSConfig(cfg.Source, cfg.Authorizer)
		tlsConf.NextProtos = []string{ALPN}
		verify := tlsConf.VerifyConnection
		tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
			err := verify(cs)
			if err != nil {
				e.countInboundReject(rejectReason(err))
			}
			return err
		}
		ln, err := e.tr.Listen(tlsConf, cfg.quicConfig(cfg.MaxIncomingStreams, -1))
		if err != nil {
			cancel()
			_ = e.tr.Close()
			_ = pc.Close()
			return nil, fmt.Errorf("tunnel: listening on %s: %w", pc.LocalAddr(), err)
		}
		e.ln = ln
		e.wg.Add(1)
		go e.acceptLinks()
	}
	return e, nil
}

// Addr returns the local UDP address, to advertise to peers.
func (e *Endpoint) Addr() net.Addr { return e.pc.LocalAddr() }

// Close closes every link (telling peers), stops accepting, waits for the
// Endpoint's goroutines and handlers to return, and closes the socket.
// Streams fail once their link is closed. It is idempotent.
func (e *Endpoint) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	var conns []*quic.Conn
	for c := range e.inConns {
		conns = append(conns, c)
	}
	e.mu.Unlock()
	e.cancel()
	if e.ln != nil {
		_ = e.ln.Close()
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
		_ = c.CloseWithError(codeShutdown, "gateway tunnel endpoint closing")
	}
	e.wg.Wait()
	err := e.tr.Close()
	if cerr := e.pc.Close(); err == nil {
		err = cerr
	}
	return err
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
		qs, err := l.conn.OpenStreamSync(ctx)
		if err == nil {
			if _, err = qs.Write(hdr); err != nil {
				qs.CancelRead(codeCanceled)
				qs.CancelWrite(codeCanceled)
			}
		}
		if err == nil {
			return newStream(qs, l.conn, l.stats, l.peerID), nil
		}
		// quic-go's connection errors all wrap net.ErrClosed; stream
		// and context errors do not.
		if ctx.Err() != nil || !errors.Is(err, net.ErrClosed) || attempt > 0 {
			return nil, fmt.Errorf("tunnel: opening stream to %s: %w", addr, connError(err))
		}
		e.log.Info("link to peer died, redialing", "peer", addr, "peer_id", l.peerID, "err", connError(err))
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
			if l.err != nil || l.conn.Context().Err() != nil {
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
	return l, nil
}

// setUp dials addr and waits for the peer's ready signal, then publishes
// the result in l. A failed link is removed from the pool so that the next
// Dial retries.
func (e *Endpoint) setUp(addr string, l *link) {
	defer e.wg.Done()
	defer close(l.ready)
	conn, peerID, err := e.dial(addr)
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
	l.conn, l.peerID = conn, peerID
	l.stats.connected(peerID, conn)
	e.log.Info("tunnel link up", "peer", addr, "peer_id", peerID)
}

// dial sets up one connection: QUIC and TLS handshakes, then the accepting
// side's ready signal, which it sends only after authorizing us.
func (e *Endpoint) dial(addr string) (*quic.Conn, string, error) {
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.HandshakeTimeout)
	defer cancel()
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("resolving: %w", err)
	}
	conn, err := e.tr.Dial(ctx, udpAddr, e.clientTLS, e.cfg.quicConfig(-1, 1))
	if err != nil {
		return nil, "", connError(err)
	}
	id, err := identity.PeerID(conn.ConnectionState().TLS)
	if err == nil {
		err = awaitReady(ctx, conn)
	}
	if err != nil {
		_ = conn.CloseWithError(codeInternal, "link setup failed")
		return nil, "", err
	}
	return conn, id.String(), nil
}

// readyByte is the content of the ready signal: a unidirectional stream the
// accepting side opens after it has authorized the dialer.
const readyByte = 1

// awaitReady waits for the ready signal. In TLS 1.3 the client finishes
// its handshake before the server has checked the client's certificate,
// so a completed Dial does not mean the peer accepted us; this does.
func awaitReady(ctx context.Context, conn *quic.Conn) error {
	rs, err := conn.AcceptUniStream(ctx)
	if err != nil {
		return connError(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(rs, b[:]); err != nil {
		return connError(err)
	}
	if b[0] != readyByte {
		return fmt.Errorf("tunnel: unexpected ready signal %#x", b[0])
	}
	return nil
}

// acceptLinks accepts inbound links until the listener closes.
func (e *Endpoint) acceptLinks() {
	defer e.wg.Done()
	for {
		conn, err := e.ln.Accept(e.ctx)
		if err != nil {
			return
		}
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			_ = conn.CloseWithError(codeShutdown, "gateway tunnel endpoint closing")
			return
		}
		stats := &peerStats{dir: Inbound, addr: conn.RemoteAddr().String()}
		e.inConns[conn] = stats
		e.wg.Add(1)
		e.mu.Unlock()
		go e.serveLink(conn, stats)
	}
}

// serveLink authorizes an inbound link, sends the ready signal and serves
// its streams until it closes.
func (e *Endpoint) serveLink(conn *quic.Conn, stats *peerStats) {
	defer e.wg.Done()
	defer func() {
		e.mu.Lock()
		delete(e.inConns, conn)
		e.mu.Unlock()
	}()
	log := e.log.With("peer", conn.RemoteAddr().String())
	id, err := identity.PeerID(conn.ConnectionState().TLS)
	if err != nil { // cannot happen after ServerTLSConfig's verification
		log.Error("inbound link without SPIFFE ID", "err", err)
		_ = conn.CloseWithError(codeInternal, "no SPIFFE ID")
		return
	}
	peerID := id.String()
	log = log.With("peer_id", peerID)
	if e.cfg.Allow != nil && !e.cfg.Allow(peerID) {
		e.countInboundReject(ReasonNotMember)
		log.Warn("rejected inbound link", "reason", ReasonNotMember)
		_ = conn.CloseWithError(codeNotMember, "peer "+peerID+" is not a live gateway member")
		return
	}
	if err := sendReady(conn); err != nil {
		log.Warn("inbound link failed", "err", err)
		_ = conn.CloseWithError(codeInternal, "link setup failed")
		return
	}
	stats.connected(peerID, conn)
	log.Info("tunnel link accepted")

	ctx := conn.Context()
	for {
		qs, err := conn.AcceptStream(ctx)
		if err != nil {
			log.Info("tunnel link closed", "err", connError(err))
			return
		}
		e.wg.Add(1)
		go e.serveStream(ctx, log, newStream(qs, conn, stats, peerID))
	}
}

func sendReady(conn *quic.Conn) error {
	ss, err := conn.OpenUniStream()
	if err != nil {
		return fmt.Errorf("opening ready stream: %w", err)
	}
	if _, err := ss.Write([]byte{readyByte}); err != nil {
		return fmt.Errorf("writing ready signal: %w", err)
	}
	return ss.Close()
}

// serveStream reads the header of an accepted stream and runs the handler.
func (e *Endpoint) serveStream(ctx context.Context, log *slog.Logger, s *Stream) {
	defer e.wg.Done()
	defer s.Close()
	_ = s.SetReadDeadline(time.Now().Add(e.cfg.HeaderTimeout))
	h, err := ReadHeader(s)
	if err != nil {
		log.Warn("bad tunnel stream", "err", err)
		s.qs.CancelRead(codeBadHeader)
		s.qs.CancelWrite(codeBadHeader)
		return
	}
	_ = s.SetReadDeadline(time.Time{})
	e.cfg.Handler(ctx, h, s)
}

// connError explains connection-level failures: a peer that refused our
// certificate or ID gives an error wrapping ErrRejected.
func connError(err error) error {
	var te *quic.TransportError
	if errors.As(err, &te) && te.Remote && te.ErrorCode.IsCryptoError() {
		return fmt.Errorf("%w: it refused our certificate (TLS alert %d): %w",
			ErrRejected, uint8(te.ErrorCode-0x100), err)
	}
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote && ae.ErrorCode == codeNotMember {
		return fmt.Errorf("%w: %w: %s", ErrRejected, errNotMember, ae.ErrorMessage)
	}
	return err
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
