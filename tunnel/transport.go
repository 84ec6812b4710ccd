package tunnel

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"
)

// Transport names how links are carried.
type Transport string

// Transports. The zero value means [TransportAuto].
const (
	// TransportAuto dials QUIC first and falls back to TCP + TLS 1.3 when
	// QUIC cannot set up a link within Config.FallbackAfter (UDP blocked
	// or dropped on the path). A link on the fallback tries QUIC again
	// every Config.QUICRetryInterval and moves new streams back to QUIC
	// once it connects.
	TransportAuto Transport = "auto"
	// TransportQUIC dials QUIC only.
	TransportQUIC Transport = "quic"
	// TransportTCP dials TCP + TLS 1.3 only, for networks known to block
	// UDP: it saves the QUIC attempt on every new link.
	TransportTCP Transport = "tcp"
)

// ParseTransport parses a Transport name; "" is TransportAuto.
func ParseTransport(s string) (Transport, error) {
	switch t := Transport(s); t {
	case "", TransportAuto:
		return TransportAuto, nil
	case TransportQUIC, TransportTCP:
		return t, nil
	}
	return "", fmt.Errorf("tunnel: unknown transport %q (want auto, quic or tcp)", s)
}

// conn is one authorized link to a peer gateway, over either transport.
// The dialing side opens streams and the accepting side accepts them.
type conn interface {
	openStream(ctx context.Context) (rawStream, error)
	acceptStream(ctx context.Context) (rawStream, error)
	// close closes the link, telling the peer code and why where the
	// transport can carry it.
	close(code uint64, why string)
	// done is closed once the link is closed, by either side.
	done() <-chan struct{}
	// rtt is the current round-trip estimate, or 0.
	rtt() time.Duration
	// received counts what the link has received from the peer so far, in
	// a unit of the transport's; any change means the peer was heard.
	received() uint64
	// streams is the number of streams opened or accepted and not yet
	// released.
	streams() int64
	transport() Transport
	tlsState() tls.ConnectionState
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
}

// rawStream is one stream of a conn. Read and Write return this package's
// errors: resets wrap ErrReset, closed links are explained by connError.
type rawStream interface {
	Read(p []byte) (int, error)
	Write(p []byte) (int, error)
	// closeWrite sends end-of-stream after the bytes written so far.
	closeWrite() error
	// closeRead stops reading; the peer's writes fail where the transport
	// can tell it.
	closeRead()
	// abort resets both directions with code.
	abort(code uint64)
	// release ends the stream as Stream.Close documents.
	release()
	// wait waits, holding no buffer, until Read would not block, and
	// returns what Read would return but the bytes (Stream.Wait).
	wait() error
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// alive reports whether c is still open.
func alive(c conn) bool {
	select {
	case <-c.done():
		return false
	default:
		return true
	}
}
