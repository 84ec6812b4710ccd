package gateway

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/ewgate/ewgate/discovery"
)

// locality is a "region/zone/subzone" split; missing parts are "".
type locality [3]string

func parseLocality(s string) locality {
	var l locality
	for i, p := range strings.SplitN(s, "/", 3) {
		l[i] = p
	}
	return l
}

// matches reports whether l is in the locality pattern p, as Istio
// matches localityLbSetting's: "*" parts match anything, and a pattern
// of fewer parts matches every locality under it.
func (l locality) matches(p string) bool {
	for i, part := range strings.SplitN(p, "/", 3) {
		if part != "*" && part != l[i] {
			return false
		}
	}
	return true
}

// localityPriorities returns the priority of each target relative to the
// gateway's locality self, as Istio's locality failover assigns Envoy
// priorities: 0 the same region, zone and subzone; 1 the same zone; 2
// the same region; then the region lb's failover names for self's, then
// every other. Levels no target has are left out, so the priorities
// returned are 0 to n-1 with n the number of levels.
func localityPriorities(self string, targets []discovery.Target, lb *discovery.LocalityLB) (prio []uint8, levels int) {
	me := parseLocality(self)
	var failoverTo string
	for _, f := range lb.Failover {
		if f.From == me[0] {
			failoverTo = f.To
			break
		}
	}
	prio = make([]uint8, len(targets))
	for i, tg := range targets {
		l := parseLocality(tg.Locality)
		switch {
		case l[0] == me[0] && l[1] == me[1] && l[2] == me[2]:
			prio[i] = 0
		case l[0] == me[0] && l[1] == me[1]:
			prio[i] = 1
		case l[0] == me[0]:
			prio[i] = 2
		case failoverTo != "" && l[0] == failoverTo:
			prio[i] = 3
		default:
			prio[i] = 4
		}
	}
	used := slices.Clone(prio)
	slices.Sort(used)
	used = slices.Compact(used)
	for i, p := range prio {
		n, _ := slices.BinarySearch(used, p)
		prio[i] = uint8(n)
	}
	return prio, len(used)
}

// distributeScale keeps distributed weights integral: a locality's
// share is split over its endpoints in units of 1/distributeScale.
const distributeScale = 1 << 20

// distributedWeights returns each target's weight under lb's distribute
// entry for the gateway's locality self (the first whose from matches):
// each destination pattern's weight split evenly over the localities it
// matches (the first pattern that matches a locality claims it), and a
// locality's share split over its endpoints by their own weights.
// Localities no pattern matches get weight 0, as in Istio. It returns nil
// when no entry is for self.
func distributedWeights(self string, targets []discovery.Target, lb *discovery.LocalityLB) []uint64 {
	me := parseLocality(self)
	i := slices.IndexFunc(lb.Distribute, func(d discovery.LocalityDistribute) bool { return me.matches(d.From) })
	if i < 0 {
		return nil
	}
	to := lb.Distribute[i].To
	patterns := make([]string, 0, len(to))
	for p := range to {
		patterns = append(patterns, p)
	}
	// Most specific first (more parts, fewer wildcards), then by name,
	// so a locality two patterns match is claimed the same way every
	// time.
	vagueness := func(p string) int { return strings.Count(p, "*") - strings.Count(p, "/") }
	slices.SortFunc(patterns, func(a, b string) int { return cmp.Or(cmp.Compare(vagueness(a), vagueness(b)), cmp.Compare(a, b)) })
	claim := make(map[string]string) // locality -> pattern
	localities := make(map[string][]string)
	endpointWeight := make(map[string]uint64) // by locality
	for _, tg := range targets {
		endpointWeight[tg.Locality] += uint64(max(tg.Weight, 1))
		if _, ok := claim[tg.Locality]; ok {
			continue
		}
		l := parseLocality(tg.Locality)
		for _, p := range patterns {
			if l.matches(p) {
				claim[tg.Locality] = p
				localities[p] = append(localities[p], tg.Locality)
				break
			}
		}
	}
	out := make([]uint64, len(targets))
	for i, tg := range targets {
		p, ok := claim[tg.Locality]
		if !ok {
			continue
		}
		share := uint64(to[p]) * distributeScale / uint64(len(localities[p]))
		out[i] = share * uint64(max(tg.Weight, 1)) / endpointWeight[tg.Locality]
	}
	return out
}

// localize returns how the gateway's locality shapes r's endpoints under
// its policy, as Istio's locality load balancing (on by default in its
// mesh config) does: with localityLbSetting.distribute for the gateway's
// locality, each target's weight (0: left out); otherwise, with outlier
// detection (which Istio requires for failover), each target's priority
// and the number of levels. Nil and 0 when the gateway's locality is
// unknown or the rule disables it.
func (g *Gateway) localize(r *discovery.Route) (weights []uint64, prio []uint8, levels int) {
	self := g.cfg.Locality
	lb := r.Policy.LoadBalancer.Locality
	if lb != nil && self == "" && !lb.Disabled {
		g.rlog.Warn(g.log, "locality", "DestinationRule localityLbSetting not applied: the gateway's locality is unknown (--locality)", "route", r.Key.String())
	}
	if self == "" || (lb != nil && lb.Disabled) || len(r.Targets) == 0 {
		return nil, nil, 0
	}
	if lb == nil {
		lb = &discovery.LocalityLB{}
	}
	if len(lb.Distribute) > 0 {
		return distributedWeights(self, r.Targets, lb), nil, 0
	}
	if r.Policy.Outlier == nil {
		return nil, nil, 0
	}
	prio, levels = localityPriorities(self, r.Targets, lb)
	return nil, prio, levels
}

// maxLevels is the most priority levels localityPriorities assigns.
const maxLevels = 5

// overprovisioning is Envoy's default overprovisioning factor, in
// percent: a priority level takes all the traffic while 1/1.4 of its
// endpoints are admitted, and spills the rest to the next.
const overprovisioning = 140

// chooseLevel is choose over priority levels, as Envoy spreads load over
// them: each level takes its admitted share times the overprovisioning
// factor of what the levels before it left, a level is drawn by those
// loads, and if ok admits none of its members (all tried), the next
// levels are tried in order. admitted reports whether a member counts
// as healthy for the loads.
func (c *cluster) chooseLevel(ok, admitted func(int) bool, src uint64) int {
	if c.levels <= 1 {
		return c.choose(ok, src)
	}
	var total, healthy, load [maxLevels]int
	for i := range c.members {
		total[c.prio[i]]++
		if admitted(i) {
			healthy[c.prio[i]]++
		}
	}
	remaining, sum := 100, 0
	for p := range c.levels {
		load[p] = min(remaining, overprovisioning*healthy[p]/total[p])
		remaining -= load[p]
		sum += load[p]
	}
	start := 0
	if sum > 0 {
		for r := rand.IntN(sum); r >= load[start]; start++ {
			r -= load[start]
		}
	}
	for k := range c.levels {
		p := start
		if k > 0 {
			p = k - 1
			if p >= start {
				p = k
			}
		}
		level := uint8(p)
		if i := c.choose(func(i int) bool { return c.prio[i] == level && ok(i) }, src); i >= 0 {
			return i
		}
	}
	return -1
}
