package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// link is one outbound connection, possibly still being set up.
type link struct {
	ready chan struct{} // closed when setup finished; then conn or err is set
	conn  conn
	peer  Member // the member the link is bound to
	err   error
	stats *peerStats

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
			return newStream(rs, l.conn, l.stats, l.peer), nil
		}
		dead := !alive(l.conn) || errors.Is(err, net.ErrClosed)
		if ctx.Err() != nil || !dead || attempt > 0 {
			return nil, fmt.Errorf("tunnel: opening stream to %s: %w", addr, err)
		}
		e.log.Info("link to peer died, redialing", "peer", addr, "peer_id", l.peer.ID, "err", err)
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
	c, peer, err := e.dial(addr)
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
	fallback := e.install(l, c, peer)
	e.mu.Unlock()
	l.stats.connected(peer, c, fallback)
	e.log.Info("tunnel link up", "peer", addr, "peer_id", peer.ID, "member", peer.Name, "network", peer.Network, "transport", c.transport())
}

// install makes c l's connection and reports whether it is a fallback
// link (TCP under TransportAuto), scheduling its first QUIC probe if so.
// e.mu must be held.
func (e *Endpoint) install(l *link, c conn, peer Member) (fallback bool) {
	l.conn, l.peer = c, peer
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
func (e *Endpoint) dial(addr string) (conn, Member, error) {
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.HandshakeTimeout)
	defer cancel()
	if e.cfg.Transport != TransportAuto {
		return e.dialOver(ctx, addr, e.cfg.Transport)
	}
	qctx, qcancel := context.WithTimeout(ctx, e.cfg.FallbackAfter)
	c, peer, err := e.dialOver(qctx, addr, TransportQUIC)
	qcancel()
	if err == nil || errors.Is(err, ErrRejected) || errors.Is(err, ErrWrongPeer) || ctx.Err() != nil {
		return c, peer, err
	}
	e.log.Info("QUIC tunnel link failed, falling back to TCP", "peer", addr, "err", err)
	c, peer, terr := e.dialOver(ctx, addr, TransportTCP)
	if terr != nil {
		return nil, Member{}, fmt.Errorf("over TCP: %w (over QUIC: %w)", terr, err)
	}
	return c, peer, nil
}

// dialOver sets up a link over one transport and returns it, with the
// member it is bound to, once the peer has authorized us.
func (e *Endpoint) dialOver(ctx context.Context, addr string, t Transport) (conn, Member, error) {
	if t == TransportTCP {
		return e.dialTCP(ctx, addr)
	}
	return e.dialQUIC(ctx, addr)
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
	e.log.Info("retiring tunnel link", "peer", addr, "peer_id", l.peer.ID, "streams", l.conn.streams(), "why", why)
	go e.retire(l.conn, why)
	return true
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
	e.replace(addr, old, "link replaced by QUIC", func(ctx context.Context) (conn, Member, error) {
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
	go e.replace(addr, l, "link replaced: it went silent", func(context.Context) (conn, Member, error) {
		return e.dial(addr)
	})
}

// replace sets up a new link to addr with dial and, if old is still the
// pool's link once it is up, puts it in old's place and retires old,
// telling the peer why. The caller has set old.probing and done e.wg.Add.
func (e *Endpoint) replace(addr string, old *link, why string, dial func(context.Context) (conn, Member, error)) {
	defer e.wg.Done()
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.HandshakeTimeout)
	c, peer, err := dial(ctx)
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
	fallback := e.install(l, c, peer)
	close(l.ready)
	e.links[addr] = l
	e.wg.Add(1)
	e.mu.Unlock()
	l.stats.connected(peer, c, fallback)
	e.log.Info("tunnel link replaced", "peer", addr, "peer_id", peer.ID, "transport", c.transport(), "why", why)
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
