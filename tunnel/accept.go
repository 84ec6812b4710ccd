package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ewgate/ewgate/identity"
)

// errTooManyHandshakes refuses an inbound connection over MaxHandshakes.
var errTooManyHandshakes = errors.New("tunnel: too many handshakes in progress")

// maxAcceptBackoff is the longest an accept loop waits after an error
// before it tries again.
const maxAcceptBackoff = time.Second

// acceptFailed counts and logs an accept error, such as running out of
// file descriptors, and waits before the loop tries again: longer after
// each error in a row, up to maxAcceptBackoff, as the gateway's own
// listeners do. It returns the wait, or 0 if the Endpoint closed.
func (e *Endpoint) acceptFailed(t Transport, err error, last time.Duration) time.Duration {
	backoff := min(max(2*last, 5*time.Millisecond), maxAcceptBackoff)
	e.mu.Lock()
	e.acceptErrors++
	e.mu.Unlock()
	e.log.Warn("tunnel: accept failed; retrying", "transport", t, "err", err, "retry_in", backoff)
	timer := time.NewTimer(backoff)
	defer timer.Stop()
	select {
	case <-timer.C:
		return backoff
	case <-e.ctx.Done():
		return 0
	}
}

// startHandshake takes one of MaxHandshakes slots for an inbound
// connection from addr, or counts and logs a refusal. done gives the slot
// back; it may be called more than once.
func (e *Endpoint) startHandshake(addr net.Addr, t Transport) (done func(), ok bool) {
	select {
	case e.handshakes <- struct{}{}:
	default:
		e.refuseInbound(e.log, ReasonTooManyHandshakes, "refused inbound tunnel connection: too many handshakes in progress", func() []any {
			return []any{"peer", addr.String(), "transport", t, "limit", e.cfg.MaxHandshakes}
		})
		return nil, false
	}
	return sync.OnceFunc(func() { <-e.handshakes }), true
}

// refuseInbound counts an inbound refusal and logs it at warn level, at
// most once a second per reason (with the number left unlogged), so that
// a flood of refusals does not flood the log. args builds the line's
// attributes; it is called only for a line logged, so that a refusal
// left out of the log allocates nothing.
func (e *Endpoint) refuseInbound(log *slog.Logger, reason, msg string, args func() []any) {
	e.mu.Lock()
	e.inReject[reason]++
	e.mu.Unlock()
	e.rejectLogged.WarnFunc(log, reason, msg, func() []any { return append(args(), "reason", reason) })
}

// badHello refuses a link whose dialer sent no valid hello in time.
func (e *Endpoint) badHello(log *slog.Logger, err error) error {
	e.refuseInbound(log, ReasonBadHello, "rejected inbound link: no valid hello", func() []any { return []any{"err", err} })
	return &refusal{code: codeBadHello, msg: fmt.Sprintf("no valid link hello: %v", err)}
}

// admit authorizes an inbound link whose TLS handshake succeeded, given
// the member name its dialer sent. With Members, the named member must be
// live and announce exactly the SPIFFE ID the peer presented; then the
// peer may hold at most MaxLinksPerPeer links. It returns the member the
// link is bound to, holding a link slot that unadmit gives back, or a
// *refusal to send to the peer.
func (e *Endpoint) admit(state tls.ConnectionState, name string, log *slog.Logger) (Member, error) {
	id, err := identity.PeerID(state)
	if err != nil { // cannot happen after ServerTLSConfig's verification
		log.Error("inbound link without SPIFFE ID", "err", err)
		return Member{}, fmt.Errorf("no SPIFFE ID: %w", err)
	}
	peer := Member{ID: id.String()}
	if e.cfg.Members != nil {
		m, ok := e.cfg.Members.Member(name)
		if !ok {
			e.refuseInbound(log, ReasonNotMember, "rejected inbound link: not a live member", func() []any {
				return []any{"peer_id", peer.ID, "member", name}
			})
			return Member{}, &refusal{code: codeNotMember, msg: fmt.Sprintf("%q is not a live gateway member", name)}
		}
		if m.ID != peer.ID {
			e.refuseInbound(log, ReasonIDMismatch, "rejected inbound link: the member announces another SPIFFE ID", func() []any {
				return []any{"peer_id", peer.ID, "member", name, "announced_id", m.ID}
			})
			return Member{}, &refusal{code: codeIDMismatch, msg: fmt.Sprintf("member %q announces %s, not %s", name, m.ID, peer.ID)}
		}
		peer = m
	}
	e.mu.Lock()
	n := e.inLinks[peerKey(peer)]
	if n < e.cfg.MaxLinksPerPeer {
		e.inLinks[peerKey(peer)]++
	}
	e.mu.Unlock()
	if n >= e.cfg.MaxLinksPerPeer {
		e.refuseInbound(log, ReasonTooManyLinks, "rejected inbound link: the peer holds too many links", func() []any {
			return []any{"peer_id", peer.ID, "member", peer.Name, "limit", e.cfg.MaxLinksPerPeer}
		})
		return Member{}, &refusal{code: codeTooManyLinks, msg: fmt.Sprintf("%d links from this peer already", n)}
	}
	return peer, nil
}

// unadmit gives back the link slot admit took for peer.
func (e *Endpoint) unadmit(peer Member) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := peerKey(peer)
	if e.inLinks[k]--; e.inLinks[k] <= 0 {
		delete(e.inLinks, k)
	}
}

// peerKey is what MaxLinksPerPeer counts links by: the member, or the
// SPIFFE ID without Members.
func peerKey(m Member) string {
	if m.Name != "" {
		return "member " + m.Name
	}
	return "id " + m.ID
}

// serveConn serves the streams of an admitted inbound link until it
// closes, then gives back its link slot.
func (e *Endpoint) serveConn(c conn, peer Member, log *slog.Logger) {
	defer e.unadmit(peer)
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
	stats.connected(peer, c, false)
	log.Info("tunnel link accepted", "network", peer.Network)

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
		go e.serveStream(ctx, log, newStream(rs, c, stats, peer))
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
