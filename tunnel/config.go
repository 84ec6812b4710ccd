package tunnel

import (
	"context"
	"log/slog"
	"time"

	"github.com/ewgate/ewgate/identity"
)

// DefaultMaxIdleTimeout is the default of Config.MaxIdleTimeout.
const DefaultMaxIdleTimeout = 5 * time.Second

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
