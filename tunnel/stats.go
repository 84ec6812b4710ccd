package tunnel

import (
	"context"
	"errors"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ewgate/ewgate/identity"
)

// Handshake failure reasons counted in [PeerStats.HandshakeFailures] and
// [Stats.InboundRejections]. Values from identity.Reason (for example
// "untrusted", "not_allowed") are used as they are for certificate
// rejections decided by this gateway's Authorizer.
const (
	// ReasonRejectedByPeer: the peer refused our certificate.
	ReasonRejectedByPeer = "rejected_by_peer"
	// ReasonNotMember: the accepting gateway knows no live member by the
	// name the dialer gave (Config.Members).
	ReasonNotMember = "not_member"
	// ReasonIDMismatch: the member the dialer named announces another
	// SPIFFE ID than the one the dialer presented.
	ReasonIDMismatch = "id_mismatch"
	// ReasonWrongPeer: the dialer found that the peer is not the member
	// announcing the dialed address (outbound only).
	ReasonWrongPeer = "wrong_peer"
	// ReasonTooManyLinks: the peer holds Config.MaxLinksPerPeer links.
	ReasonTooManyLinks = "too_many_links"
	// ReasonTooManyHandshakes: Config.MaxHandshakes inbound handshakes
	// were in progress (inbound only).
	ReasonTooManyHandshakes = "too_many_handshakes"
	// ReasonBadHello: the dialer sent no valid link hello in time.
	ReasonBadHello = "bad_hello"
	// ReasonTimeout: the handshake did not finish in time.
	ReasonTimeout = "timeout"
	// ReasonOther: any other failure (address, network, protocol).
	ReasonOther = "other"
)

// Direction says which side opened a link.
type Direction string

// Link directions.
const (
	Outbound Direction = "outbound" // this gateway dialed
	Inbound  Direction = "inbound"  // the peer dialed
)

// PeerStats is a snapshot of one peer link's counters. Counters are
// cumulative over the links to that peer; RTT and Connected describe the
// current link.
type PeerStats struct {
	// Direction says who dialed.
	Direction Direction
	// Addr is the peer's tunnel address: as dialed for outbound peers, as
	// seen for inbound ones.
	Addr string
	// PeerID is the peer's SPIFFE ID once a handshake succeeded.
	PeerID string
	// Member and Network are the gossip member the link is bound to and
	// its network, "" without Config.Members.
	Member, Network string
	// Connected reports whether a QUIC connection is currently up.
	Connected bool
	// StreamsOpen is the number of streams open now.
	StreamsOpen int64
	// StreamsTotal counts streams ever opened.
	StreamsTotal uint64
	// BytesSent and BytesReceived count stream payload bytes.
	BytesSent, BytesReceived uint64
	// HandshakeFailures counts failed outbound connection attempts by
	// reason (Reason* constants or identity.Reason values).
	HandshakeFailures map[string]uint64
	// Dials counts successful outbound connections (1 + redials).
	Dials uint64
	// RTT is the smoothed round-trip time of the current connection, or 0.
	RTT time.Duration
	// Transport is the transport of the current connection, or "".
	Transport Transport
	// Fallbacks counts outbound connections set up over TCP because QUIC
	// failed (TransportAuto only).
	Fallbacks uint64
	// Silences counts the times an outbound link was found to have heard
	// nothing from its peer for too long (Dial then fails with ErrSilent
	// until the peer is heard again or the link is replaced or closes).
	Silences uint64
}

// Stats is a snapshot of an [Endpoint]'s counters.
type Stats struct {
	// Peers lists outbound peers ever dialed and inbound peers currently
	// connected, in no particular order.
	Peers []PeerStats
	// InboundRejections counts refused inbound handshakes by reason.
	InboundRejections map[string]uint64
	// AcceptErrors counts failed accepts of either listener, such as
	// running out of file descriptors; each is retried after a backoff.
	AcceptErrors uint64
	// Handshakes is the number of inbound links between their first
	// packet and their admission now (at most Config.MaxHandshakes).
	Handshakes int
}

// peerStats holds one peer's live counters.
type peerStats struct {
	dir  Direction
	addr string

	streamsOpen   atomic.Int64
	streamsTotal  atomic.Uint64
	bytesSent     atomic.Uint64
	bytesReceived atomic.Uint64

	mu        sync.Mutex
	peer      Member
	dials     uint64
	fallbacks uint64
	silences  uint64
	failures  map[string]uint64
	conn      conn // current connection, nil before the first
}

func (p *peerStats) failed(reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failures == nil {
		p.failures = make(map[string]uint64)
	}
	p.failures[reason]++
}

func (p *peerStats) silent() {
	p.mu.Lock()
	p.silences++
	p.mu.Unlock()
}

// connected records a new connection; fallback says it is on TCP because
// QUIC failed.
func (p *peerStats) connected(peer Member, c conn, fallback bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.peer = peer
	p.dials++
	if fallback {
		p.fallbacks++
	}
	p.conn = c
}

func (p *peerStats) snapshot() PeerStats {
	s := PeerStats{
		Direction:     p.dir,
		Addr:          p.addr,
		StreamsOpen:   p.streamsOpen.Load(),
		StreamsTotal:  p.streamsTotal.Load(),
		BytesSent:     p.bytesSent.Load(),
		BytesReceived: p.bytesReceived.Load(),
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s.PeerID, s.Member, s.Network = p.peer.ID, p.peer.Name, p.peer.Network
	s.Dials = p.dials
	s.Fallbacks = p.fallbacks
	s.Silences = p.silences
	s.HandshakeFailures = maps.Clone(p.failures)
	if s.HandshakeFailures == nil {
		s.HandshakeFailures = map[string]uint64{}
	}
	if p.conn != nil && alive(p.conn) {
		s.Connected = true
		s.RTT = p.conn.rtt()
		s.Transport = p.conn.transport()
	}
	return s
}

// failureReason classifies a failed outbound link setup.
func failureReason(err error) string {
	var rej *identity.RejectError
	var idle *quic.IdleTimeoutError
	var hs *quic.HandshakeTimeoutError
	var refused *rejectedError
	switch {
	case errors.As(err, &rej):
		return string(rej.Reason)
	case errors.As(err, &refused):
		return refused.reason
	case errors.Is(err, ErrWrongPeer):
		return ReasonWrongPeer
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
