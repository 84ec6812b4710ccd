package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ewgate/ewgate/gateway"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/metrics"
	"github.com/ewgate/ewgate/tunnel"
)

// tunnels is the gateway's tunnel endpoint, over QUIC (or its TCP
// fallback) to the other networks' gateways: the gateway carries through
// it connections this network cannot serve (gateway.SetTunnelDialer) and
// serves those other gateways carry here (gateway.ServeTunnel).
type tunnels struct {
	ep  *tunnel.Endpoint
	log *slog.Logger
}

// startTunnels listens for tunnels on s.TunnelAddress, UDP for QUIC and TCP
// on the same port for the fallback, and dials them as s.TunnelTransport
// says. Links are authenticated with the node's SVID; a peer's ID must be
// in the peer policy (tunnelPolicy), and each link is bound to the live
// gossip member that announces that ID: the one its dialer names, or the
// one announcing the dialed address.
func startTunnels(s settings, id identity.Source, gw *gateway.Gateway, g *gossip, log *slog.Logger) (*tunnels, error) {
	if id == nil || g == nil {
		return nil, errors.New("--tunnel-address needs an identity (--spiffe-socket or --svid-cert...) and gossip (--gossip-address): links are mTLS between live members")
	}
	transport, err := tunnel.ParseTransport(s.TunnelTransport)
	if err != nil {
		return nil, fmt.Errorf("--tunnel-transport: %w", err)
	}
	t := &tunnels{log: log}
	var resetKey *[32]byte
	if g.primaryKey != nil {
		resetKey = statelessResetKey(g.primaryKey, g.node.Name())
	} else {
		log.Info("tunnel: no QUIC stateless reset key, since gossip has no key (--insecure-gossip): after a restart of this gateway, peers keep their stale links until the idle timeout or gossip ends them")
	}
	pol, err := tunnelPolicy(s, id)
	if err != nil {
		return nil, err
	}
	az, err := identity.NewAuthorizer(pol, log.With("component", "tunnel"))
	if err != nil {
		return nil, fmt.Errorf("--peer-ids, --peer-id-prefixes: %w", err)
	}
	ep, err := tunnel.New(s.TunnelAddress, tunnel.Config{
		Source:             id,
		Authorizer:         az,
		Name:               g.node.Name(),
		Members:            g,
		Transport:          transport,
		MaxIdleTimeout:     time.Duration(s.TunnelIdleTimeout),
		MaxIncomingStreams: s.TunnelMaxStreams,
		MaxLinksPerPeer:    s.TunnelMaxLinksPerPeer,
		MaxHandshakes:      s.TunnelMaxHandshakes,
		MaxTCPLinkMemory:   s.TunnelTCPLinkMemory,
		StatelessResetKey:  resetKey,
		Handler:            gw.ServeTunnel,
		Logger:             log,
	})
	if err != nil {
		return nil, err
	}
	t.ep = ep
	log.Info("tunnels listening", "address", ep.Addr().String(), "transport", transport, "peer_ids", pol.IDs, "peer_id_prefixes", pol.IDPrefixes)
	return t, nil
}

// tunnelPolicy is the SPIFFE IDs tunnel peers may present, both ways:
// those of --peer-ids and --peer-id-prefixes, or by default this
// gateway's own ID alone, the gateways' service account (Istio gives every
// east-west gateway of a mesh the same one), rather than every workload
// of the trust domain.
func tunnelPolicy(s settings, id identity.Source) (identity.Policy, error) {
	if len(s.PeerIDs) > 0 || len(s.PeerIDPrefixes) > 0 {
		return identity.Policy{IDs: s.PeerIDs, IDPrefixes: s.PeerIDPrefixes}, nil
	}
	svid, err := id.GetX509SVID()
	if err != nil {
		return identity.Policy{}, fmt.Errorf("tunnel peer policy: this gateway's SVID: %w", err)
	}
	return identity.Policy{IDs: []string{svid.ID.String()}}, nil
}

// resetKeyLabel separates the stateless reset key from any other use of
// the gossip key; bump the version to change the derivation.
const resetKeyLabel = "ewgate tunnel QUIC stateless reset key v1"

// statelessResetKey derives the tunnel endpoint's QUIC stateless reset key
// as HMAC-SHA256(gossipKey, label 0x00 nodeName). A gateway restarted with
// the same name and primary gossip key gets the same key, so it can reset
// the links its predecessor left behind: peers then drop them at once
// instead of sending new streams into them until the idle timeout. The
// key must be secret (whoever has it can end this gateway's links), which
// the gossip key is; the node name keeps gateways' keys apart, so that a
// packet that reaches the wrong gateway cannot end a live link.
func statelessResetKey(gossipKey []byte, nodeName string) *[32]byte {
	mac := hmac.New(sha256.New, gossipKey)
	mac.Write([]byte(resetKeyLabel))
	mac.Write([]byte{0})
	mac.Write([]byte(nodeName))
	var k [32]byte
	mac.Sum(k[:0])
	return &k
}

// memberDown retires the outbound link to a gossip member's tunnel address
// when gossip says the member is gone: a dead peer's link would otherwise
// take new streams until its idle timeout, and a restarted peer's stale
// one would fail them. The next connection dials a fresh link; streams
// already open keep their link, so a member declared dead by mistake
// loses nothing.
func (t *tunnels) memberDown(addr, why string) {
	if !t.ep.RetireLink(addr, why) {
		t.log.Debug("tunnel: no link to retire", "peer", addr, "why", why)
	}
}

func (t *tunnels) close() { t.ep.Close() }

// register exports tunnel totals as metrics; per-peer figures are in
// /debug/tunnels.
func (t *tunnels) register(reg *metrics.Registry) {
	sum := func(f func(p tunnel.PeerStats) float64) func() float64 {
		return func() float64 {
			var total float64
			for _, p := range t.ep.Stats().Peers {
				total += f(p)
			}
			return total
		}
	}
	reg.GaugeFunc("ewgate_tunnel_peers_connected", "Tunnel links up, both directions.", sum(func(p tunnel.PeerStats) float64 {
		if p.Connected {
			return 1
		}
		return 0
	}))
	// Two gauges rather than one labelled family: the registry has no
	// labelled func metrics.
	for _, tr := range []tunnel.Transport{tunnel.TransportQUIC, tunnel.TransportTCP} {
		reg.GaugeFunc("ewgate_tunnel_links_"+string(tr), "Tunnel links up over "+strings.ToUpper(string(tr))+", both directions.", sum(func(p tunnel.PeerStats) float64 {
			if p.Connected && p.Transport == tr {
				return 1
			}
			return 0
		}))
	}
	reg.CounterFunc("ewgate_tunnel_silences_total", "Times an outbound tunnel link heard nothing from its peer for two keep-alive periods; new connections then try other gateways until it is heard again or closes.", sum(func(p tunnel.PeerStats) float64 { return float64(p.Silences) }))
	reg.CounterFunc("ewgate_tunnel_fallbacks_total", "Outbound tunnel links set up over TCP because QUIC did not connect (--tunnel-transport auto).", sum(func(p tunnel.PeerStats) float64 { return float64(p.Fallbacks) }))
	reg.GaugeFunc("ewgate_tunnel_streams_open", "Tunnel streams open.", sum(func(p tunnel.PeerStats) float64 { return float64(p.StreamsOpen) }))
	reg.CounterFunc("ewgate_tunnel_streams_total", "Tunnel streams opened since start.", sum(func(p tunnel.PeerStats) float64 { return float64(p.StreamsTotal) }))
	reg.CounterFunc("ewgate_tunnel_bytes_sent_total", "Bytes sent on tunnel streams.", sum(func(p tunnel.PeerStats) float64 { return float64(p.BytesSent) }))
	reg.CounterFunc("ewgate_tunnel_bytes_received_total", "Bytes received on tunnel streams.", sum(func(p tunnel.PeerStats) float64 { return float64(p.BytesReceived) }))
	reg.CounterFunc("ewgate_tunnel_inbound_rejections_total", "Inbound tunnel links refused, all reasons (by reason in /debug/tunnels): peer policy, member binding, link and handshake caps.", func() float64 {
		var n uint64
		for _, c := range t.ep.Stats().InboundRejections {
			n += c
		}
		return float64(n)
	})
	reg.CounterFunc("ewgate_tunnel_accept_errors_total", "Failed accepts on the tunnel port (such as too many open files), each retried after a backoff.", func() float64 { return float64(t.ep.Stats().AcceptErrors) })
	reg.CounterFunc("ewgate_tunnel_handshake_failures_total", "Tunnel handshakes that failed, all reasons.", sum(func(p tunnel.PeerStats) float64 {
		var n uint64
		for _, c := range p.HandshakeFailures {
			n += c
		}
		return float64(n)
	}))
}
