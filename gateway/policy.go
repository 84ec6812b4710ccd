package gateway

import (
	"net"
	"time"

	"github.com/ewgate/ewgate/discovery"
)

// applyPolicy makes cl follow p, its route's DestinationRule traffic
// policy, with st the route's live state: the dialer of its connect
// timeout and keep-alive, its idle timeout, and what its load balancer
// needs. Work done here, once per reload, keeps it off the connection
// path.
func (g *Gateway) applyPolicy(cl *cluster, p *discovery.Policy, st *routeState) {
	cl.policy, cl.state, cl.lb = p, st, lbKindOf(p.LoadBalancer)
	if p.ConnectTimeout > 0 || p.Keepalive != nil {
		d := g.dialer
		if p.ConnectTimeout > 0 {
			d.Timeout = p.ConnectTimeout
		}
		if ka := p.Keepalive; ka != nil {
			// Zero fields keep the system's values, as Envoy leaves
			// unset socket options alone.
			d.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: orSystem(ka.Time), Interval: orSystem(ka.Interval), Count: -1}
			if ka.Probes > 0 {
				d.KeepAliveConfig.Count = int(ka.Probes)
			}
		}
		cl.dialer = &d
	}
	if p.IdleTimeout > 0 {
		cl.idle = p.IdleTimeout
	}
	if p.LoadBalancer.Simple == "ROUND_ROBIN" && len(cl.members) > 0 {
		weights := make([]uint64, len(cl.members))
		for i := range weights {
			weights[i] = cl.weight(i)
		}
		cl.cycle = roundRobinCycle(weights)
	}
	if p.LoadBalancer.HashSourceIP {
		cl.addrHash = make([]uint64, len(cl.members))
		for i, u := range cl.members {
			cl.addrHash[i] = hash(u.addr)
		}
	}
}

// orSystem is d, or the value net.KeepAliveConfig reads as "leave the
// system's" for 0.
func orSystem(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

// admit counts a connection against cl's MaxConnections and reports
// whether it is within the cap; a connection admitted is let go with
// leave. Every connection of a route is counted, cap or not, so that the
// count stays right when a reload sets one.
func (cl *cluster) admit() bool {
	if cl.state == nil {
		return true
	}
	n := cl.state.active.Add(1)
	if max := cl.policy.MaxConnections; max > 0 && n > int64(max) {
		cl.state.active.Add(-1)
		return false
	}
	return true
}

// leave ends a connection admit counted.
func (cl *cluster) leave() {
	if cl.state != nil {
		cl.state.active.Add(-1)
	}
}
