package gateway

import (
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/sni"
)

// upstream is the live state of one endpoint address, shared by every
// cluster that holds it and kept across config reloads, or of one peer
// gateway's tunnel address.
type upstream struct {
	addr string
	ap   netip.AddrPort // addr for a raw connect; invalid for a name

	active       atomic.Int64 // open connections
	failures     atomic.Int64 // consecutive connect failures
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 when never ejected
	// ejectFor is the length of the last ejection, which a failed probe
	// extends the ejection by (nanoseconds).
	ejectFor atomic.Int64
	// mu serialises ejections, which read and write several fields;
	// the hot paths (active, a success clearing failures) take no lock.
	mu sync.Mutex
	// streak counts ejections in a row under an outlier policy, which
	// lengthen each; an interval admitted forgives one. Guarded by mu.
	streak int
}

func (u *upstream) ejected(now int64) bool { return u.ejectedUntil.Load() > now }

// routeState is the live state of one route that its policy needs,
// shared by the clusters that stand for the route across config reloads
// as upstream state is.
type routeState struct {
	active atomic.Int64  // open connections, against Policy.MaxConnections
	next   atomic.Uint64 // round robin position
}

// routeID names a route's state: the same service port and subset
// routed by an AUTO_PASSTHROUGH and by a PASSTHROUGH listener are two
// clusters in Istio's gateway (sni-dnat and outbound), and so two here.
type routeID struct {
	key         sni.Key
	passthrough bool
}

// cluster is what one connection may be sent to, with weights: a route's
// endpoints, or the gateways of other networks that serve a key through
// tunnels. Both are picked from by the same rule.
type cluster struct {
	route   *discovery.Route
	members []*upstream
	// raw: every member has an address (not a name), which the event
	// loops can connect to themselves.
	raw bool
	cum []uint64 // cumulative weights, for weighted random choice
	// policy is the route's traffic policy; nil for tunnel peers, which
	// the gateway's own rules govern.
	policy *discovery.Policy
	state  *routeState // nil without a policy
	// dialer connects to the members when the policy sets a connect
	// timeout or keep-alive; nil: the gateway's.
	dialer *net.Dialer
	idle   time.Duration // the flows' idle timeout
	lb     lbKind
	// addrHash are the members' address hashes, for source IP hashing.
	addrHash []uint64
	// cycle is the order of round robin, member indexes.
	cycle []uint32
	// target are the indexes in route.Targets of the members, which a
	// locality distribute may leave some of out.
	target []int
	// prio are the members' locality priorities, 0 the nearest, when
	// levels > 1 (locality failover).
	prio   []uint8
	levels int
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

// index returns the member whose weight range holds r, a value below the
// total weight.
func (c *cluster) index(r uint64) int {
	i, _ := slices.BinarySearchFunc(c.cum, r, func(cum, r uint64) int {
		if cum <= r {
			return -1
		}
		return 1
	})
	return i
}

// randomIndex picks a member with probability proportional to its weight.
func (c *cluster) randomIndex() int { return c.index(rand.Uint64N(c.cum[len(c.cum)-1])) }

// outlier returns the route's outlier detection, nil for the gateway's
// built-in rule.
func (c *cluster) outlier() *discovery.Outlier {
	if c.policy == nil {
		return nil
	}
	return c.policy.Outlier
}

// pick chooses a member not in tried by the route's load balancer:
// weighted power of two choices (LEAST_REQUEST and the default), weighted
// round robin, weighted random, or weighted rendezvous hashing of the
// client's address src (consistentHash.useSourceIp), whose next choices
// are the retries. Ejected members are avoided. Under the built-in
// ejection rule, if all are ejected they are tried anyway (a guess beats a
// refusal: Envoy's panic mode, always); under an outlier policy, ejections
// are ignored only while fewer than MinHealthPercent of the members are
// admitted, and never with 0, so a route with every member ejected is
// refused. It returns -1 when no member may be tried.
func (c *cluster) pick(tried []int, now int64, src uint64) int {
	n := len(c.members)
	if len(tried) >= n {
		return -1
	}
	usable := func(i int) bool { return !slices.Contains(tried, i) }
	healthy := func(i int) bool { return usable(i) && !c.members[i].ejected(now) }
	o := c.outlier()
	if o != nil && c.panicking(o, now) {
		return c.chooseLevel(usable, func(int) bool { return true }, src)
	}
	admitted := func(i int) bool { return !c.members[i].ejected(now) }
	if i := c.chooseLevel(healthy, admitted, src); i >= 0 || o != nil {
		return i
	}
	return c.choose(usable, src)
}

// panicking reports whether fewer than o.MinHealthPercent of the members
// are admitted.
func (c *cluster) panicking(o *discovery.Outlier, now int64) bool {
	if o.MinHealthPercent <= 0 {
		return false
	}
	admitted := 0
	for _, u := range c.members {
		if !u.ejected(now) {
			admitted++
		}
	}
	return int64(admitted)*100 < int64(o.MinHealthPercent)*int64(len(c.members))
}

// choose picks among the members ok admits by the route's load balancer,
// or returns -1.
func (c *cluster) choose(ok func(int) bool, src uint64) int {
	switch c.lb {
	case lbHashSourceIP:
		return c.hashed(ok, src)
	case lbRoundRobin:
		return c.roundRobin(ok)
	case lbRandom:
		return c.random(ok, false)
	}
	return c.random(ok, true)
}

// lbKind is a cluster's load balancer, decoded from its policy once per
// config rather than on every pick.
type lbKind uint8

const (
	lbLeastRequest lbKind = iota // the default, and LEAST_REQUEST
	lbRoundRobin
	lbRandom
	lbHashSourceIP
)

// lbKindOf returns the load balancer lb asks for.
func lbKindOf(lb discovery.LoadBalancer) lbKind {
	switch {
	case lb.HashSourceIP:
		return lbHashSourceIP
	case lb.Simple == "ROUND_ROBIN":
		return lbRoundRobin
	case lb.Simple == "RANDOM":
		return lbRandom
	}
	return lbLeastRequest
}

// random draws members by weight; with leastLoaded it keeps the less
// loaded of two draws (power of two choices). Random draws find an
// admitted member quickly unless most are excluded; then a scan is exact.
func (c *cluster) random(ok func(int) bool, leastLoaded bool) int {
	want := 1
	if leastLoaded && len(c.members) > 1 {
		want = 2
	}
	best := -1
	for attempt, found := 0, 0; attempt < 8 && found < want; attempt++ {
		i := c.randomIndex()
		if !ok(i) {
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
	for i := range c.members {
		if ok(i) && (best < 0 || c.less(i, best)) {
			best = i
		}
	}
	return best
}

// roundRobin takes the members in turn, in the order of cl.cycle, and
// skips those ok does not admit.
func (c *cluster) roundRobin(ok func(int) bool) int {
	n := len(c.members)
	start := int(c.cycle[(c.state.next.Add(1)-1)%uint64(len(c.cycle))])
	for k := range n {
		if i := (start + k) % n; ok(i) {
			return i
		}
	}
	return -1
}

// maxCycle bounds a round-robin cycle: larger weights are scaled down.
const maxCycle = 4096

// roundRobinCycle returns one cycle of interleaved weighted round robin
// over members of the given weights: each round serves, in order, the
// members whose weight exceeds the round's number, so that a member of
// weight w has w turns per cycle, spread over it rather than in a row
// (weights 1, 2, 1 give 0 1 2 1), as Envoy's weighted round robin
// spreads them. Weights are reduced by their common divisor and scaled
// to a cycle of at most maxCycle turns, each member keeping one.
func roundRobinCycle(weights []uint64) []uint32 {
	var g, total, top uint64
	for _, w := range weights {
		g = gcd(g, w)
	}
	ws := make([]uint64, len(weights))
	for i, w := range weights {
		ws[i] = w / max(g, 1)
		total += ws[i]
	}
	for i := range ws {
		if total > maxCycle {
			ws[i] = max(uint64(float64(ws[i])*maxCycle/float64(total)), 1)
		}
		top = max(top, ws[i])
	}
	var cycle []uint32
	for round := range top {
		for i, w := range ws {
			if w > round {
				cycle = append(cycle, uint32(i))
			}
		}
	}
	return cycle
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// hashed picks the admitted member of highest weighted rendezvous score
// for src: one source goes to one member while the members do not
// change, and a member that leaves moves only its own sources.
func (c *cluster) hashed(ok func(int) bool, src uint64) int {
	best, bestScore := -1, 0.0
	for i := range c.members {
		if !ok(i) {
			continue
		}
		// A uniform draw in (0, 1) from the pair's hash; -w/ln(u) is
		// the weighted rendezvous score.
		u := (float64(mix(src^c.addrHash[i])>>11) + 0.5) / (1 << 53)
		score := -float64(c.weight(i)) / math.Log(u)
		if best < 0 || score > bestScore {
			best, bestScore = i, score
		}
	}
	return best
}

// mix is splitmix64's finaliser: it spreads every input bit over the
// output.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// hash is FNV-1a of b, mixed.
func hash[T string | []byte](b T) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(b); i++ {
		h = (h ^ uint64(b[i])) * 1099511628211
	}
	return mix(h)
}

// sourceHash hashes the client's IP address (not its port), for
// consistentHash.useSourceIp; 0 when unknown.
func sourceHash(client netip.Addr) uint64 {
	if !client.IsValid() {
		return 0
	}
	ip := client.Unmap().As16()
	return hash(ip[:])
}

// addrIP is a TCP address's IP, without allocating; the zero Addr for
// other addresses.
func addrIP(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort().Addr()
	}
	return netip.Addr{}
}

// less reports whether member i is less loaded than member j, relative to
// their weights.
func (c *cluster) less(i, j int) bool {
	ai, aj := uint64(c.members[i].active.Load()), uint64(c.members[j].active.Load())
	return ai*c.weight(j) < aj*c.weight(i)
}

// result records the outcome of a connect attempt to u, a member of cl:
// a success clears the failure streak; failures in a row eject the
// endpoint, by the route's outlier policy or, without one, the built-in
// rule (EjectAfter failures eject for EjectFor).
func (g *Gateway) result(cl *cluster, u *upstream, err error) {
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
	o := cl.outlier()
	if o == nil {
		if u.failures.Add(1) >= int64(g.cfg.EjectAfter) {
			now := g.now()
			u.ejectFor.Store(int64(g.cfg.EjectFor))
			if u.ejectedUntil.Swap(now+int64(g.cfg.EjectFor)) <= now {
				g.m.Ejections.Inc()
				g.log.Warn("endpoint ejected after consecutive connect failures", "endpoint", u.addr, "failures", u.failures.Load(), "for", g.cfg.EjectFor)
			}
			u.failures.Store(0)
		}
		return
	}
	if o.ConsecutiveErrors == 0 || u.failures.Add(1) < int64(o.ConsecutiveErrors) {
		return
	}
	g.eject(cl, u, o)
}

// eject ejects u under outlier policy o, unless it is ejected already or
// MaxEjectionPercent of cl's members are: the n-th ejection in a row
// lasts o.EjectionTime(n), and each whole Interval the endpoint stayed
// admitted since its last ejection forgives one, as Envoy's interval
// timer decrements the ejection multiplier of a host that is not
// ejected.
func (g *Gateway) eject(cl *cluster, u *upstream, o *discovery.Outlier) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.failures.Store(0)
	now := g.now()
	if u.ejected(now) {
		return
	}
	ejected := 0
	for _, m := range cl.members {
		if m.ejected(now) {
			ejected++
		}
	}
	// As Envoy: ejected as long as the share already ejected is below
	// the cap, so at least one member always can be.
	if int64(ejected)*100 >= int64(o.MaxEjectionPercent)*int64(len(cl.members)) {
		g.m.EjectionsOverMax.Inc()
		g.rlog.Warn(g.log, "eject", "endpoint not ejected: maxEjectionPercent of the route's endpoints are", "endpoint", u.addr,
			"route", cl.route.Key.String(), "ejected", ejected, "max_percent", o.MaxEjectionPercent)
		return
	}
	if last := u.ejectedUntil.Load(); last > 0 && o.Interval > 0 {
		u.streak = max(u.streak-int((now-last)/int64(o.Interval)), 0)
	}
	u.streak++
	d := o.EjectionTime(u.streak)
	u.ejectFor.Store(int64(d))
	u.ejectedUntil.Store(now + int64(d))
	g.m.Ejections.Inc()
	g.log.Warn("endpoint ejected by outlier detection", "endpoint", u.addr, "route", cl.route.Key.String(),
		"consecutive_errors", o.ConsecutiveErrors, "ejection", u.streak, "for", d)
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
