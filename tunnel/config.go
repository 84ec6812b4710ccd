package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ewgate/ewgate/identity"
)

// Defaults of [Config] fields that the gateway's flags show.
const (
	// DefaultMaxIdleTimeout is the default of Config.MaxIdleTimeout.
	DefaultMaxIdleTimeout = 5 * time.Second
	// DefaultMaxIncomingStreams is the default of Config.MaxIncomingStreams.
	DefaultMaxIncomingStreams = 4096
	// DefaultMaxLinksPerPeer is the default of Config.MaxLinksPerPeer.
	DefaultMaxLinksPerPeer = 4
	// DefaultMaxHandshakes is the default of Config.MaxHandshakes.
	DefaultMaxHandshakes = 128
	// DefaultMaxTCPLinkMemory is the default of Config.MaxTCPLinkMemory.
	DefaultMaxTCPLinkMemory = 256 << 20
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
	// Name is this gateway's gossip member name. The dialing side sends it
	// in every link setup, so that the accepting side can bind the link
	// to that member; at most 255 bytes.
	Name string
	// Members, if set, binds every link to one live gossip member: an
	// inbound link only if the member its dialer names announces exactly
	// the SPIFFE ID the dialer presented, an outbound one only if the
	// peer presents the ID that a member announcing the dialed address
	// announces. Refusals are counted (ReasonNotMember, ReasonIDMismatch,
	// ReasonWrongPeer) and logged. nil binds links to no member: any peer
	// the Authorizer allows may link (tests, tools).
	Members Members
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
	// open on one link. Over QUIC a dialer past it waits for a stream to
	// end; the TCP fallback allows fewer if MaxTCPLinkMemory says so.
	// Default 4096.
	MaxIncomingStreams int64
	// MaxLinksPerPeer is the number of inbound links one peer (one
	// member, or one SPIFFE ID without Members) may hold at once; more are
	// refused with ReasonTooManyLinks. A peer needs one link, two while it
	// replaces one, more while old links finish their streams. Default 4.
	MaxLinksPerPeer int
	// MaxHandshakes is the number of inbound links, over both transports,
	// that may be between their first packet and their admission at once;
	// more are refused at once with ReasonTooManyHandshakes, before any
	// TLS work, so that unauthenticated peers holding handshakes open (up
	// to HandshakeTimeout each) cannot run the gateway out of memory or
	// file descriptors. Default 128.
	MaxHandshakes int
	// MaxTCPLinkMemory bounds what one link over the TCP fallback buffers
	// (received and not yet read, both directions' receive windows), so
	// that streams whose reader is stuck cannot hold more. yamux gives
	// every stream a 256 KiB window and has no per-link window, so a TCP
	// link carries at most MaxTCPLinkMemory/256 KiB concurrent streams (a
	// dialer past it waits for a stream to end) and windows grow past 256
	// KiB only within the budget. Default 256 MiB: 1024 streams.
	MaxTCPLinkMemory int64
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
		c.MaxIncomingStreams = DefaultMaxIncomingStreams
	}
	if c.MaxLinksPerPeer <= 0 {
		c.MaxLinksPerPeer = DefaultMaxLinksPerPeer
	}
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = DefaultMaxHandshakes
	}
	if c.MaxTCPLinkMemory <= 0 {
		c.MaxTCPLinkMemory = DefaultMaxTCPLinkMemory
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

// validate reports settings that cannot work, after withDefaults.
func (c Config) validate() error {
	if c.Source == nil {
		return errors.New("tunnel: Config.Source is nil")
	}
	if _, err := ParseTransport(string(c.Transport)); err != nil {
		return err
	}
	if len(c.Name) > maxNameLen {
		return fmt.Errorf("tunnel: Config.Name is %d bytes, more than %d", len(c.Name), maxNameLen)
	}
	if c.MaxTCPLinkMemory < yamuxStreamWindow {
		return fmt.Errorf("tunnel: Config.MaxTCPLinkMemory %d is less than one stream's window (%d)", c.MaxTCPLinkMemory, yamuxStreamWindow)
	}
	return nil
}

// tcpStreams is the number of concurrent streams a TCP link allows.
func (c Config) tcpStreams() int64 {
	return min(c.MaxIncomingStreams, c.MaxTCPLinkMemory/yamuxStreamWindow)
}
