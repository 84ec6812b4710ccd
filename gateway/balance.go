package gateway

import (
	"errors"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ewgate/ewgate/discovery"
)

// upstream is the live state of one endpoint address, shared by every
// cluster that holds it and kept across config reloads, or of one peer
// gateway's tunnel address.
type upstream struct {
	addr         string
	active       atomic.Int64 // open connections
	failures     atomic.Int64 // consecutive connect failures
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 when not ejected
}

func (u *upstream) ejected(now int64) bool { return u.ejectedUntil.Load() > now }

// cluster is what one connection may be sent to, with weights: a route's
// endpoints, or the gateways of other networks that serve a key through
// tunnels. Both are picked from by the same rule.
type cluster struct {
	route   *discovery.Route
	members []*upstream
	cum     []uint64 // cumulative weights, for weighted random choice
}

func (c *cluster) add(u *upstream, w uint64) {
	var base uint64
	if n := len(c.cum); n > 0 {
		base = c.cum[n-1]
	}
	c.members = append(c.members, u)
	c.cum = append(c.cum, base+w)
}

func (c *cluster) weight(i int) uint64 {
	if i == 0 {
		return c.cum[0]
	}
	return c.cum[i] - c.cum[i-1]
}

// randomIndex picks a member with probability proportional to its weight.
func (c *cluster) randomIndex() int {
	r := rand.Uint64N(c.cum[len(c.cum)-1])
	i, _ := slices.BinarySearchFunc(c.cum, r, func(cum, r uint64) int {
		if cum <= r {
			return -1
		}
		return 1
	})
	return i
}

// pick chooses an endpoint not in tried by weighted power of two choices:
// two weighted random draws, keep the one with fewer active connections per
// unit of weight. Ejected endpoints are avoided while any other remains
// (if all are ejected, they are tried anyway: a guess beats a refusal,
// Envoy's panic mode). It returns -1 when every member was tried.
func (c *cluster) pick(tried []int, now int64) int {
	n := len(c.members)
	if len(tried) >= n {
		return -1
	}
	usable := func(i int) bool { return !slices.Contains(tried, i) }
	healthy := func(i int) bool { return usable(i) && !c.members[i].ejected(now) }
	if n == 1 {
		return 0
	}
	// Random draws find a usable member quickly unless most are excluded;
	// then a scan is exact.
	best := -1
	for attempt, found := 0, 0; attempt < 8 && found < 2; attempt++ {
		i := c.randomIndex()
		if !healthy(i) {
			continue
		}
		found++
		if best < 0 || c.less(i, best) {
			best = i
		}
	}
	if best >= 0 {
		return best
	}
	for _, ok := range []func(int) bool{healthy, usable} {
		for i := range n {
			if ok(i) && (best < 0 || c.less(i, best)) {
				best = i
			}
		}
		if best >= 0 {
			return best
		}
	}
	return -1
}

// less reports whether member i is less loaded than member j, relative to
// their weights.
func (c *cluster) less(i, j int) bool {
	ai, aj := uint64(c.members[i].active.Load()), uint64(c.members[j].active.Load())
	return ai*c.weight(j) < aj*c.weight(i)
}

// result records the outcome of a connect attempt: a success clears the
// failure streak, and EjectAfter failures in a row eject the endpoint for
// EjectFor.
func (g *Gateway) result(u *upstream, err error) {
	if err == nil {
		u.failures.Store(0)
		return
	}
	if localDialError(err) {
		// Out of descriptors, memory or ephemeral ports says nothing
		// about the endpoint: ejecting it would turn a local shortage
		// into an outage.
		return
	}
	if u.failures.Add(1) >= int64(g.cfg.EjectAfter) {
		until := time.Now().Add(g.cfg.EjectFor).UnixNano()
		if u.ejectedUntil.Swap(until) <= time.Now().UnixNano() {
			g.m.Ejections.Inc()
			g.log.Warn("endpoint ejected after consecutive connect failures", "endpoint", u.addr, "failures", u.failures.Load(), "for", g.cfg.EjectFor)
		}
		u.failures.Store(0)
	}
}

// localDialError reports whether a connect failed for want of a local
// resource rather than because of the endpoint.
func localDialError(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
