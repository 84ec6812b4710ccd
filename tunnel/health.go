package tunnel

import (
	"fmt"
	"time"
)

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
		e.log.Warn("tunnel link silent: refusing new streams until it is heard again, replaced or closed", "peer", addr, "peer_id", l.peer.ID, "transport", l.conn.transport(), "silent_for", quiet.Round(time.Millisecond))
		e.replaceSilent(addr, l)
	} else if changed {
		e.log.Info("tunnel link heard again", "peer", addr, "peer_id", l.peer.ID)
	}
	return silent
}
