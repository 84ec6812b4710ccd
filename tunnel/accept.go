package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ewgate/ewgate/identity"
)

func (e *Endpoint) countInboundReject(reason string) {
	e.mu.Lock()
	e.inReject[reason]++
	e.mu.Unlock()
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
