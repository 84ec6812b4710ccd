package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/api"
	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/metrics"
	"github.com/ewgate/ewgate/peer"
	"github.com/ewgate/ewgate/tunnel"
)

// gossip connects the node's catalog to the other gateways: it publishes
// the summary of this network, feeds remote gateways to resolution and
// answers the API's membership questions.
type gossip struct {
	node *peer.Node
	cs   *catalogState
	log  *slog.Logger
	// primaryKey is the keyring's primary key at start, nil with
	// --insecure-gossip; tunnels derive their stateless reset key from it.
	primaryKey []byte
	// retireLink, if set before run starts, is called with the tunnel
	// address of each member that stops being alive, and why.
	retireLink func(addr, why string)
	// deriveAdvertise: no --passthrough-advertise, so the advertised
	// address follows the listener on bindAddress.
	deriveAdvertise bool
	bindAddress     string
	underivable     string // last derivation error logged; run's goroutine only
}

// startGossip starts the gossip node described by s, or returns nil when
// --gossip-address is not set. With an identity (id not nil) the node
// announces its SVID's SPIFFE ID, signs its entries with it and accepts
// only entries signed by gateways (gatewayPolicy). The config must be
// loaded: without --passthrough-advertise the address is derived from the
// view's listener.
func startGossip(ctx context.Context, s settings, id identity.Source, cs *catalogState, log *slog.Logger) (*gossip, error) {
	if s.GossipAddress == "" {
		return nil, nil
	}
	cfg, err := peerConfig(s, id)
	if err != nil {
		return nil, err
	}
	g := &gossip{cs: cs, log: log, bindAddress: s.BindAddress, deriveAdvertise: s.PassthroughAdvertise == ""}
	if g.deriveAdvertise {
		if cfg.PassthroughAddr, err = derivePassthrough(s.BindAddress, cs.view.Load()); err != nil {
			return nil, err
		}
		log.Info("gossip: advertising the passthrough listener's address (set --passthrough-advertise for NAT or a load balancer)", "address", cfg.PassthroughAddr)
	}
	cfg.Logger = log
	node, err := peer.Start(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	g.node = node
	if len(cfg.Keys) > 0 {
		g.primaryKey = cfg.Keys[0]
	}
	return g, nil
}

// derivePassthrough is the default of --passthrough-advertise: the bind
// address with the port of the view's only listener. Other networks must
// be able to dial it, so it needs a specific bind address and one
// AUTO_PASSTHROUGH port; else the error says why the flag is needed.
func derivePassthrough(bindAddress string, v *discovery.View) (string, error) {
	ip := net.ParseIP(bindAddress)
	if ip == nil || ip.IsUnspecified() {
		return "", fmt.Errorf("--passthrough-advertise is required with gossip when --bind-address is %q: other networks need an address they can dial (set --bind-address to this host's IP, or --passthrough-advertise to the address in front of it)", bindAddress)
	}
	var ports []uint32
	if v != nil {
		for _, l := range v.Listeners {
			ports = append(ports, l.Port)
		}
	}
	if len(ports) != 1 {
		return "", fmt.Errorf("--passthrough-advertise is required with gossip when the Gateway config does not serve exactly one AUTO_PASSTHROUGH port (it serves %v): say which one other networks dial", ports)
	}
	return net.JoinHostPort(bindAddress, strconv.FormatUint(uint64(ports[0]), 10)), nil
}

// defaultNodeName is the default of --node-name: the host name, the
// network and the gossip port, so that gateways of several networks on one
// host (a laptop, a CI job) do not collide, and a gateway restarting with
// the same flags keeps its name.
func defaultNodeName(s settings) (string, error) {
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("--node-name: no default, the host name is unknown: %w", err)
	}
	_, port, err := net.SplitHostPort(s.GossipAddress)
	if err != nil {
		return "", fmt.Errorf("--gossip-address: %w", err)
	}
	return h + "-" + s.Network + "-" + port, nil
}

// peerConfig maps the gossip settings and the identity (nil: none) to
// peer.Config, reading the keyring file; errors name the flag at fault.
// PassthroughAddr is left empty when --passthrough-advertise is:
// startGossip derives it.
func peerConfig(s settings, id identity.Source) (peer.Config, error) {
	tunnelAddr := s.TunnelAdvertise
	if tunnelAddr == "" {
		tunnelAddr = s.TunnelAddress
	}
	host, port, err := splitHostPort(s.GossipAddress)
	if err != nil {
		return peer.Config{}, fmt.Errorf("--gossip-address: %w", err)
	}
	name := s.NodeName
	if name == "" {
		if name, err = defaultNodeName(s); err != nil {
			return peer.Config{}, err
		}
	}
	cfg := peer.Config{
		Name:              name,
		Network:           s.Network,
		BindAddr:          host,
		BindPort:          port,
		Join:              s.Join,
		Insecure:          s.InsecureGossip,
		MeshID:            s.MeshID,
		Profile:           s.GossipProfile,
		PassthroughAddr:   s.PassthroughAdvertise,
		TunnelAddr:        tunnelAddr,
		ReconnectInterval: time.Duration(s.GossipReconnectInterval),
		ReconnectTimeout:  time.Duration(s.GossipReconnectTimeout),
	}
	if cfg.ReconnectInterval == 0 {
		cfg.ReconnectInterval = -1 // peer's "off"; its 0 means the default
	}
	if s.GossipAdvertise != "" {
		if cfg.AdvertiseAddr, cfg.AdvertisePort, err = splitHostPort(s.GossipAdvertise); err != nil {
			return peer.Config{}, fmt.Errorf("--gossip-advertise: %w", err)
		}
	}
	if s.GossipKeyFile != "" {
		if cfg.Keys, err = peer.LoadKeyring(s.GossipKeyFile); err != nil {
			return peer.Config{}, fmt.Errorf("--gossip-key-file: %w", err)
		}
	}
	if id != nil {
		// One rule for who is a gateway: the tunnels' peer policy.
		pol, err := tunnelPolicy(s, id)
		if err != nil {
			return peer.Config{}, err
		}
		if cfg.AllowGateway, err = gatewayPolicy(pol); err != nil {
			return peer.Config{}, err
		}
		cfg.Identity = id
	}
	return cfg, nil
}

// gatewayPolicy turns the policy of the SPIFFE IDs other gateways may
// present (the tunnels' peer policy) into who may publish gateway entries
// in gossip: one rule for both.
func gatewayPolicy(pol identity.Policy) (func(string) error, error) {
	m, err := identity.NewMatcher(pol)
	if err != nil {
		return nil, fmt.Errorf("gossip: gateway policy: %w", err)
	}
	return func(s string) error {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return err
		}
		if !m.Allows(id) {
			return fmt.Errorf("not allowed by the gateway peer policy (%s)", m)
		}
		return nil
	}, nil
}

// readiness is gossip's part of /readyz: a gateway whose node name another
// live gateway holds is not part of the mesh it believes in.
func (g *gossip) readiness() error { return g.node.Conflict() }

// readvertise follows the listener port after a config change when the
// passthrough address is derived. A config from which no address can be
// derived keeps the last one, with an error logged once per change.
func (g *gossip) readvertise(v *discovery.View) {
	if !g.deriveAdvertise {
		return
	}
	addr, err := derivePassthrough(g.bindAddress, v)
	if err != nil {
		if g.underivable != err.Error() {
			g.underivable = err.Error()
			g.log.Error("gossip: passthrough address unchanged after a config change", "address", g.node.Meta().PassthroughAddr, "err", err)
		}
		return
	}
	g.underivable = ""
	if addr == g.node.Meta().PassthroughAddr {
		return
	}
	if err := g.node.SetPassthroughAddr(addr, 5*time.Second); err != nil {
		g.log.Warn("gossip: new passthrough address not confirmed sent; push/pull will carry it", "address", addr, "err", err)
		return
	}
	g.log.Info("gossip: advertising the passthrough listener's new address", "address", addr)
}

// run publishes this network's summary whenever the view or endpoint
// health changes, forwards gossip changes to resolution watchers, and
// applies keyring edits, until ctx is done.
func (g *gossip) run(ctx context.Context, keyFile string) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var keys []byte
	if keyFile != "" {
		keys, _ = os.ReadFile(keyFile)
	}
	publish := func() {
		v := g.cs.view.Load()
		if v == nil {
			return
		}
		g.readvertise(v)
		if err := g.node.Publish(discovery.Summarize(v, g.cs.gw.Healthy)); err != nil {
			g.log.Error("gossip: summary not published", "err", err)
		}
	}
	publish()
	live := liveTunnels(g.node.Members(), g.node.Name())
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.cs.viewChanged:
			publish()
		case <-g.node.Changed():
			g.cs.applyOtherNetworks(g.liveGateways())
			g.cs.notify()
			if g.retireLink != nil {
				var gone []linkDeparture
				live, gone = tunnelDepartures(live, g.node.Members(), g.node.Name())
				for _, d := range gone {
					g.retireLink(d.addr, d.why)
				}
			}
		case <-tick.C:
			// Ejections change health without changing the view; an
			// unchanged summary is not sent again.
			publish()
			if keyFile != "" {
				keys = g.reloadKeys(keyFile, keys)
			}
		}
	}
}

// reloadKeys rotates the gossip keys when the keyring file changed.
func (g *gossip) reloadKeys(path string, last []byte) []byte {
	data, err := os.ReadFile(path)
	if err != nil || bytes.Equal(data, last) {
		return last
	}
	keys, err := peer.LoadKeyring(path)
	if err == nil {
		err = g.node.SetKeys(keys)
	}
	if err != nil {
		g.log.Error("gossip: keyring not applied; the previous keys stay", "err", err)
		return data
	}
	g.log.Info("gossip: keyring applied", "keys", len(keys))
	return data
}

// stop leaves the cluster so that others withdraw this gateway at once.
func (g *gossip) stop() {
	if err := g.node.Leave(5 * time.Second); err != nil {
		g.log.Warn("gossip: leave", "err", err)
	}
	g.node.Shutdown()
}

// liveGateways returns the live gateways of every network as resolution
// needs them.
func (g *gossip) liveGateways() []discovery.RemoteGateway {
	var out []discovery.RemoteGateway
	for _, ns := range g.node.Summaries() {
		out = append(out, ns.RemoteGateway())
	}
	return out
}

// Member implements tunnel.Members: the live member called name, if it
// is not this gateway. A tunnel link is admitted only if it announces
// the SPIFFE ID the link's dialer presented.
func (g *gossip) Member(name string) (tunnel.Member, bool) {
	for _, m := range g.node.Members() {
		if m.Name == name && m.State == peer.StateAlive && m.Name != g.node.Name() {
			return tunnelMember(m), true
		}
	}
	return tunnel.Member{}, false
}

// MembersAt implements tunnel.Members: the live members other than this
// gateway that announce addr as their tunnel address. A dialed link is
// kept only if its peer presents the SPIFFE ID one of them announces.
func (g *gossip) MembersAt(addr string) []tunnel.Member {
	var out []tunnel.Member
	for _, m := range g.node.Members() {
		if m.Meta.TunnelAddr == addr && m.State == peer.StateAlive && m.Name != g.node.Name() {
			out = append(out, tunnelMember(m))
		}
	}
	return out
}

func tunnelMember(m peer.Member) tunnel.Member {
	return tunnel.Member{Name: m.Name, Network: m.Meta.Network, ID: m.Meta.SPIFFEID}
}

// liveTunnels maps the live members other than self that advertise a
// tunnel address to that address.
func liveTunnels(members []peer.Member, self string) map[string]string {
	out := make(map[string]string)
	for _, m := range members {
		if m.State == peer.StateAlive && m.Meta.TunnelAddr != "" && m.Name != self {
			out[m.Name] = m.Meta.TunnelAddr
		}
	}
	return out
}

// linkDeparture is a tunnel address whose member is no longer alive there.
type linkDeparture struct {
	addr, why string
}

// tunnelDepartures compares live, the result of liveTunnels at the last
// change, with members now. It returns the new live map and, sorted by
// member name, the tunnel addresses that a member stopped serving: it was
// declared dead, left, was forgotten, or moved to another address.
//
// Links to such an address are retired even if another member advertises
// it now (a gateway restarted under a new name): the link may still be to
// the old process, which would hold new streams until the idle timeout,
// while retiring a fresh link only costs a redial.
func tunnelDepartures(live map[string]string, members []peer.Member, self string) (map[string]string, []linkDeparture) {
	now := liveTunnels(members, self)
	state := make(map[string]peer.State, len(members))
	for _, m := range members {
		state[m.Name] = m.State
	}
	var gone []linkDeparture
	for _, name := range slices.Sorted(maps.Keys(live)) {
		addr := live[name]
		switch cur, ok := now[name]; {
		case ok && cur == addr:
			continue
		case ok:
			gone = append(gone, linkDeparture{addr, fmt.Sprintf("gossip: member %s moved its tunnel to %s", name, cur)})
		default:
			why := "gossip: member " + name + " was forgotten"
			if st, known := state[name]; known && st == peer.StateAlive {
				why = "gossip: member " + name + " no longer advertises a tunnel"
			} else if known {
				why = "gossip: member " + name + " is " + st.String()
			}
			gone = append(gone, linkDeparture{addr, why})
		}
	}
	return now, gone
}

// Members implements api.Membership.
func (g *gossip) Members() []api.Member {
	var out []api.Member
	for _, m := range g.node.Members() {
		state := api.MemberAlive
		switch m.State {
		case peer.StateDead:
			state = api.MemberDead
		case peer.StateLeft:
			state = api.MemberLeft
		}
		out = append(out, api.Member{Name: m.Name, Network: m.Meta.Network, PassthroughAddress: m.Meta.PassthroughAddr,
			TunnelAddress: m.Meta.TunnelAddr, SPIFFEID: m.Meta.SPIFFEID, State: state})
	}
	return out
}

// Networks implements api.Membership: each network with live gateways,
// and how many services they offer.
func (g *gossip) Networks() []api.Network {
	gateways := make(map[string]int)
	services := make(map[string]map[string]bool)
	for _, ns := range g.node.Summaries() {
		nw := ns.Meta.Network
		gateways[nw]++
		if services[nw] == nil {
			services[nw] = make(map[string]bool)
		}
		for _, s := range ns.Summary.Services {
			services[nw][s.Host] = true
		}
	}
	var out []api.Network
	for nw, n := range gateways {
		out = append(out, api.Network{Name: nw, Gateways: n, Services: len(services[nw])})
	}
	slices.SortFunc(out, func(a, b api.Network) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Catalog implements api.Membership: each network's service ports and
// subsets as its live gateways report them, counts combined as resolution
// combines them (discovery.NetworkHealth: the smallest wins).
func (g *gossip) Catalog() []api.CatalogEntry {
	type key struct {
		network, host string
		port          uint16
		subset        string
	}
	entries := make(map[key]*api.CatalogEntry)
	reports := make(map[key][][]discovery.LocalityCount)
	for _, ns := range g.node.Summaries() {
		for _, svc := range ns.Summary.Services {
			for _, p := range svc.Ports {
				for _, sub := range p.Subsets {
					k := key{ns.Meta.Network, svc.Host, p.Port, sub.Name}
					e, ok := entries[k]
					if !ok {
						e = &api.CatalogEntry{Network: k.network, Host: k.host, Port: k.port, Subset: k.subset}
						entries[k] = e
					}
					e.Gateways = append(e.Gateways, ns.Node)
					reports[k] = append(reports[k], sub.Healthy)
				}
			}
		}
	}
	out := make([]api.CatalogEntry, 0, len(entries))
	for k, e := range entries {
		e.Healthy = discovery.NetworkHealth(reports[k]...)
		slices.Sort(e.Gateways)
		out = append(out, *e)
	}
	return out
}

// register exports gossip figures as metrics.
func (g *gossip) register(reg *metrics.Registry) {
	stat := func(f func(peer.Stats) float64) func() float64 {
		return func() float64 { return f(g.node.Stats()) }
	}
	reg.GaugeFunc("ewgate_gossip_members_alive", "Gossip members alive (this node included).", stat(func(s peer.Stats) float64 { return float64(s.Alive) }))
	reg.GaugeFunc("ewgate_gossip_members_dead", "Gossip members declared dead, kept for a while.", stat(func(s peer.Stats) float64 { return float64(s.Dead) }))
	reg.GaugeFunc("ewgate_gossip_members_left", "Gossip members that left, kept for a while.", stat(func(s peer.Stats) float64 { return float64(s.Left) }))
	reg.GaugeFunc("ewgate_gossip_catalog_services", "Service entries across the live gateways' summaries.", stat(func(s peer.Stats) float64 { return float64(s.Services) }))
	reg.GaugeFunc("ewgate_gossip_networks", "Networks with a live gateway.", stat(func(s peer.Stats) float64 { return float64(s.Networks) }))
	reg.CounterFunc("ewgate_gossip_bytes_in_total", "Gossip bytes received.", stat(func(s peer.Stats) float64 { return float64(s.BytesIn) }))
	reg.CounterFunc("ewgate_gossip_bytes_out_total", "Gossip bytes sent.", stat(func(s peer.Stats) float64 { return float64(s.BytesOut) }))
	reg.CounterFunc("ewgate_gossip_deltas_sent_total", "Summary changes published as deltas.", stat(func(s peer.Stats) float64 { return float64(s.DeltasSent) }))
	reg.CounterFunc("ewgate_gossip_deltas_applied_total", "Remote deltas applied.", stat(func(s peer.Stats) float64 { return float64(s.DeltasApplied) }))
	reg.CounterFunc("ewgate_gossip_deltas_missed_total", "Remote deltas ignored because their base version was not held; push/pull repairs.", stat(func(s peer.Stats) float64 { return float64(s.DeltaMisses) }))
	reg.CounterFunc("ewgate_gossip_states_too_large_total", "Push/pull catalog states not sent because peers would refuse them.", stat(func(s peer.Stats) float64 { return float64(s.StatesTooLarge) }))
	reg.CounterFunc("ewgate_gossip_push_pulls_total", "Remote catalog states merged.", stat(func(s peer.Stats) float64 { return float64(s.PushPulls) }))
	reg.GaugeFunc("ewgate_gossip_last_push_pull_seconds", "Time to merge the last remote catalog state.", stat(func(s peer.Stats) float64 { return s.LastPushPull.Seconds() }))
	reg.GaugeFunc("ewgate_gossip_reconnect_pending", "Failed gateways (declared dead, not left) being retried.", stat(func(s peer.Stats) float64 { return float64(s.ReconnectPending) }))
	reg.CounterFunc("ewgate_gossip_reconnect_attempts_total", "Reconnect joins tried, one per address: failed gateways, and the seeds while alone.", stat(func(s peer.Stats) float64 { return float64(s.ReconnectAttempts) }))
	reg.CounterFunc("ewgate_gossip_reconnect_successes_total", "Reconnect joins that reached another gateway.", stat(func(s peer.Stats) float64 { return float64(s.ReconnectSuccesses) }))
	rejected := reg.CounterVec("ewgate_gossip_rejected_total", "Gossip input refused, by reason: malformed, too large, another wire version, unsigned or forged entries, implausible versions, inflated counts.", "reason")
	for _, r := range peer.RejectReasons() {
		rejected.Func(r, stat(func(s peer.Stats) float64 { return float64(s.Rejected[r]) }))
	}
	reg.CounterFunc("ewgate_gossip_unverified_total", "Gossip entries ignored until push/pull because their signing chain or origin was not known yet.", stat(func(s peer.Stats) float64 { return float64(s.Unverified) }))
}

func splitHostPort(s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q: want 0-65535", p)
	}
	return host, port, nil
}
