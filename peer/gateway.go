package peer

import "github.com/ewgate/ewgate/discovery"

// RemoteGateway returns s as resolution takes a live gateway
// (discovery.View.Resolve): its node name, network, passthrough address
// and summary.
func (s NodeSummary) RemoteGateway() discovery.RemoteGateway {
	return discovery.RemoteGateway{Node: s.Node, Network: s.Meta.Network, PassthroughAddr: s.Meta.PassthroughAddr, Summary: s.Summary}
}
