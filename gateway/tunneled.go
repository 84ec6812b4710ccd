package gateway

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/peer"
	"github.com/ewgate/ewgate/sni"
	"github.com/ewgate/ewgate/tunnel"
)

// TunnelDialer opens tunnel streams to other networks' gateways; a
// *tunnel.Endpoint is one.
type TunnelDialer interface {
	Dial(ctx context.Context, addr string, h tunnel.Header) (*tunnel.Stream, error)
}

// Peers lists the live gateways of the mesh with their summaries and
// tunnel addresses; a *peer.Node is one.
type Peers interface {
	Summaries() []peer.NodeSummary
}

// tunnels is what SetTunnelDialer set up, with the connect state (open
// streams, failures, ejections) of each peer gateway tried.
type tunnels struct {
	d     TunnelDialer
	peers Peers
	mu    sync.Mutex
	state map[string]*upstream // by tunnel address
}

// SetTunnelDialer makes connections whose key has no eligible endpoint in
// this network, or whose service this network does not export, tunneled:
// carried by d to a live gateway of another network whose summary in
// peers has healthy endpoints for the key (for clients that reach only
// their own network's gateway). Gateways are weighted as
// discovery.View.Resolve weighs them and chosen, tried and ejected as
// endpoints are (Config.DialAttempts, EjectAfter, EjectFor). It may be
// called while the gateway serves; a nil d turns tunneling off.
func (g *Gateway) SetTunnelDialer(d TunnelDialer, peers Peers) {
	if d == nil || peers == nil {
		g.tunnels.Store(nil)
		return
	}
	g.tunnels.Store(&tunnels{d: d, peers: peers, state: make(map[string]*upstream)})
}

// cluster returns the live gateways of other networks that have healthy
// endpoints for key and a tunnel address, weighted by the healthy
// endpoints each stands for, as members to pick from.
func (tn *tunnels) cluster(t *table, key sni.Key) (*cluster, error) {
	sums := tn.peers.Summaries()
	gws := make([]discovery.RemoteGateway, 0, len(sums))
	addrs := make(map[string]string, len(sums))
	for _, s := range sums {
		gws = append(gws, s.RemoteGateway())
		if s.Meta.TunnelAddr != "" {
			addrs[s.Node] = s.Meta.TunnelAddr
		}
	}
	res, err := t.view.Resolve(key, t.view.Node.Network, gws, nil)
	if err != nil {
		return nil, err
	}
	// One member per gateway: Resolve gives one target per gateway and
	// locality, and the far gateway picks the endpoint.
	weights := make(map[string]uint64)
	var order []string
	for _, tg := range res.Targets {
		addr := addrs[tg.Gateway]
		if tg.Via != discovery.ViaGateway || addr == "" || tg.Weight == 0 {
			continue
		}
		if _, ok := weights[addr]; !ok {
			order = append(order, addr)
		}
		weights[addr] += uint64(tg.Weight)
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("no live gateway of another network has healthy endpoints for %s", key)
	}
	cl := &cluster{}
	tn.mu.Lock()
	for _, addr := range order {
		u, ok := tn.state[addr]
		if !ok {
			u = &upstream{addr: addr}
			tn.state[addr] = u
		}
		cl.add(u, weights[addr])
	}
	if len(tn.state) > 2*len(addrs)+8 {
		// Gateways come and go: forget those no longer live that hold
		// nothing open.
		live := make(map[string]bool, len(addrs))
		for _, a := range addrs {
			live[a] = true
		}
		for a, u := range tn.state {
			if !live[a] && u.active.Load() == 0 {
				delete(tn.state, a)
			}
		}
	}
	tn.mu.Unlock()
	return cl, nil
}

// dial opens a stream for key to the gateway u stands for, within
// timeout. The header says this is the first tunnel the connection
// crosses.
func (tn *tunnels) dial(timeout time.Duration, u *upstream, key sni.Key, client net.Addr) (end, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// The key is a view of the client's pooled hello buffer (parse): the
	// header, the tunnel's from here, gets a copy.
	h := tunnel.Header{Key: key.Clone()}
	if client != nil {
		h.ClientAddr = client.String()
	}
	st, err := tn.d.Dial(ctx, u.addr, h)
	if err != nil {
		return end{}, err
	}
	return streamEnd(st), nil
}
