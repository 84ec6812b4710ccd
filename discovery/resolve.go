package discovery

import (
	"cmp"
	"maps"
	"math"
	"slices"

	"github.com/ewgate/ewgate/sni"
)

// RemoteGateway is a live gateway as gossip reports it: where other
// networks reach it, and its summary of its own network. Resolve trusts the
// caller to pass live gateways only.
type RemoteGateway struct {
	Node            string
	Network         string
	PassthroughAddr string // host:port other networks dial
	Summary         Summary
}

// Via says how a resolved target is reached.
type Via string

// Ways to reach a target.
const (
	ViaDirect  Via = "direct"  // an endpoint of the client's own network
	ViaGateway Via = "gateway" // the east-west gateway of the endpoint's network
)

// ResolvedTarget is one address a client should dial, with its weight.
type ResolvedTarget struct {
	Address  string
	Weight   uint32
	Network  string
	Locality string
	Via      Via
	Gateway  string // the gateway's node name when Via is ViaGateway
}

// Resolution is the answer to Resolve.
type Resolution struct {
	Key sni.Key
	// SNI is the server name to send: the same for endpoints and gateways,
	// since gateways route by it.
	SNI     string
	Targets []ResolvedTarget
}

// Resolve says what a client in network from should dial to reach key.
//
// If from is this view's network, the view's eligible endpoints are
// returned directly, with their weights, less those healthy reports false
// for (nil: all healthy). Every other network is reached through its live
// gateways: Istio's split horizon, with two corrections. Only healthy
// endpoints count (Istio counts unhealthy remote endpoints too; its PR 40568
// was never merged), and weights are kept per locality: a network's healthy
// count in each locality is spread over the gateways that serve the key, one
// target per gateway and locality, so locality-aware clients keep exact
// weights (Istio folds them into one per gateway and loses zones: its issue
// 56355). As in Istio, every weight is multiplied by the least common
// multiple of the networks' gateway counts, so that the spreading divides
// exactly: only ratios between weights mean anything. The gateways of one
// network are combined by NetworkHealth: the smallest count wins. Networks with no healthy endpoint are
// left out, and so is network from, whose endpoints its own clients reach
// directly.
//
// It returns a *RouteError with UnknownService when neither this view nor
// any gateway knows the key's service, port and subset.
func (v *View) Resolve(key sni.Key, from string, gateways []RemoteGateway, healthy func(addr string) bool) (*Resolution, error) {
	res := &Resolution{Key: key, SNI: key.SNI()}
	known := false
	if sv, ok := v.services[key.Host]; ok {
		if r, ok := sv.routes[portSubset{key.Port, key.Subset}]; ok {
			known = true
			if from == v.Node.Network {
				for _, t := range r.Targets {
					if healthy == nil || healthy(t.Address) {
						res.Targets = append(res.Targets, ResolvedTarget{Address: t.Address, Weight: t.Weight,
							Network: v.Node.Network, Locality: t.Locality, Via: ViaDirect})
					}
				}
			}
		}
	}
	byNetwork := make(map[string][]*RemoteGateway)
	for i := range gateways {
		g := &gateways[i]
		if _, ok := g.Summary.healthy(key.Host, key.Port, key.Subset); !ok {
			continue // this gateway does not serve the key
		}
		known = true
		if g.Network == from || (g.Network == v.Node.Network && from == v.Node.Network) {
			continue
		}
		byNetwork[g.Network] = append(byNetwork[g.Network], g)
	}
	if !known {
		return nil, &RouteError{Key: key, Reason: UnknownService}
	}
	// Scale every weight by the least common multiple of the networks'
	// gateway counts, as Istio does, so that spreading a count over a
	// network's gateways divides exactly and no gateway gets weight 0.
	scale := uint32(1)
	for _, gws := range byNetwork {
		scale = lcm(scale, uint32(len(gws)))
	}
	for i := range res.Targets {
		res.Targets[i].Weight = mulSat(res.Targets[i].Weight, scale)
	}
	for _, network := range slices.Sorted(maps.Keys(byNetwork)) {
		res.Targets = append(res.Targets, splitHorizon(key, network, byNetwork[network], scale)...)
	}
	return res, nil
}

// splitHorizon spreads a network's healthy endpoint counts, per locality,
// over the gateways that serve the key; scale is a multiple of their
// number.
func splitHorizon(key sni.Key, network string, gws []*RemoteGateway, scale uint32) []ResolvedTarget {
	slices.SortFunc(gws, func(a, b *RemoteGateway) int { return cmp.Compare(a.Node, b.Node) })
	reports := make([][]LocalityCount, len(gws))
	for i, g := range gws {
		reports[i], _ = g.Summary.healthy(key.Host, key.Port, key.Subset)
	}
	var out []ResolvedTarget
	per := scale / uint32(len(gws))
	for _, lc := range NetworkHealth(reports...) {
		for _, g := range gws {
			out = append(out, ResolvedTarget{Address: g.PassthroughAddr, Weight: mulSat(lc.Count, per), Network: network,
				Locality: lc.Locality, Via: ViaGateway, Gateway: g.Node})
		}
	}
	return out
}

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// lcm is the least common multiple of a and b, saturated at MaxUint32.
func lcm(a, b uint32) uint32 { return mulSat(a/gcd(a, b), b) }

// mulSat multiplies in 64 bits and saturates at MaxUint32: a count that
// gossip or a registration made large must not wrap to a small weight.
func mulSat(a, b uint32) uint32 {
	return uint32(min(uint64(a)*uint64(b), math.MaxUint32))
}
