package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/quic-go/quic-go"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/ratelog"
)

// ALPN is the TLS application protocol of gateway tunnels. Version 2
// added the dialer's hello to the link setup (setup.go).
const ALPN = "ewgate-tunnel/2"

// Errors wrapped by Dial.
var (
	// ErrRejected is wrapped when the peer refused this gateway: its TLS
	// stack rejected our certificate, or its admission refused the link
	// (we are not the live member we named, or hold too many links). The
	// error wrapping it says which, and why if the peer said so.
	ErrRejected = errors.New("peer rejected this gateway")
	// ErrWrongPeer is wrapped when the peer at the dialed address is not
	// a live member announcing that address with the SPIFFE ID the peer
	// presented (Config.Members): the link is closed before any stream.
	ErrWrongPeer = errors.New("tunnel: peer is not the member announcing its address")
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
)

// Endpoint is a gateway's end of its tunnels: one UDP socket (one
// quic.Transport) that accepts QUIC links from peer gateways and dials
// links to them, and, for accepting, a TCP listener on the same port
// number for the TCP + TLS 1.3 fallback. Outbound links are pooled: one
// link per peer address, shared by all streams to that peer and redialed
// when it dies.
//
// A new link is usable only once the accepting side has authorized this
// gateway (its certificate and its admission) and said so; streams on an
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

	// handshakes holds a token per inbound connection between its first
	// packet and its admission (MaxHandshakes).
	handshakes chan struct{}

	mu           sync.Mutex
	closed       bool
	links        map[string]*link      // outbound, by dialed address
	outPeers     map[string]*peerStats // outbound, by dialed address
	inConns      map[conn]*peerStats
	inLinks      map[string]int // admitted inbound links by peerKey
	inReject     map[string]uint64
	rejectLogged ratelog.Logger // by reason
	acceptErrors uint64
}

// New opens a UDP socket on addr (host:port; port 0 picks one) and returns
// an Endpoint using it. If cfg.Handler is set, it also listens on TCP on
// the same port number and accepts tunnel links at once. Close releases
// everything.
func New(addr string, cfg Config) (*Endpoint, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
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
		inLinks:  make(map[string]int),
		inReject: make(map[string]uint64),

		handshakes: make(chan struct{}, cfg.MaxHandshakes),
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
			// The Authorizer logged it.
			e.mu.Lock()
			e.inReject[rejectReason(err)]++
			e.mu.Unlock()
		}
		return err
	}
	e.tr.ConnContext = e.connContext
	// Once half the handshake slots are taken, new QUIC connections must
	// first prove their source address (a Retry round trip), so that
	// spoofed Initial packets cannot take the other half.
	e.tr.VerifySourceAddress = func(net.Addr) bool { return 2*len(e.handshakes) >= cap(e.handshakes) }
	ln, err := e.tr.Listen(e.serverTLS, cfg.quicConfig(cfg.MaxIncomingStreams, 1))
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
// port number. Port 0 picks a port free for both: the TCP port first,
// which the kernel picks among those no TCP socket holds, then UDP on
// its number. The other order failed on hosts with many TCP connections:
// a port the kernel picks for UDP knows nothing of TCP, and each outbound
// connection (and its TIME-WAIT for a minute after) holds its local port,
// so that most ports picked for UDP were taken on TCP. UDP sockets are
// few; a port taken on UDP is retried with another.
func listen(addr string, withTCP bool) (*net.UDPConn, net.Listener, error) {
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("tunnel: resolving %q: %w", addr, err)
	}
	if !withTCP {
		pc, err := net.ListenUDP("udp", udpAddr)
		if err != nil {
			return nil, nil, fmt.Errorf("tunnel: listening on %q: %w", addr, err)
		}
		return pc, nil, nil
	}
	tcpAddr := &net.TCPAddr{IP: udpAddr.IP, Port: udpAddr.Port, Zone: udpAddr.Zone}
	for attempt := 1; ; attempt++ {
		ln, err := net.ListenTCP("tcp", tcpAddr)
		if err != nil {
			return nil, nil, fmt.Errorf("tunnel: listening on TCP %q for the fallback: %w", addr, err)
		}
		local := ln.Addr().(*net.TCPAddr)
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: local.IP, Port: local.Port, Zone: local.Zone})
		if err == nil {
			return pc, ln, nil
		}
		_ = ln.Close()
		if udpAddr.Port != 0 || attempt == 10 {
			return nil, nil, fmt.Errorf("tunnel: listening on %s: %w", local, err)
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
	s := Stats{InboundRejections: make(map[string]uint64, len(e.inReject)), AcceptErrors: e.acceptErrors, Handshakes: len(e.handshakes)}
	for r, n := range e.inReject {
		s.InboundRejections[r] = n
	}
	e.mu.Unlock()
	for _, p := range peers {
		s.Peers = append(s.Peers, p.snapshot())
	}
	return s
}
