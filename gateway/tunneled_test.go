package gateway

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/peer"
	"github.com/ewgate/ewgate/sni"
	"github.com/ewgate/ewgate/tunnel"
	"github.com/ewgate/ewgate/workload"
)

// peersFunc lists gateways for SetTunnelDialer from a function: a static
// gossip view, the data plane's input (see farPeers).
type peersFunc func() []peer.NodeSummary

func (f peersFunc) Summaries() []peer.NodeSummary { return f() }

// withCounts returns s with every healthy count set to n, in place.
func withCounts(s discovery.Summary, n uint32) discovery.Summary {
	for i := range s.Services {
		for j := range s.Services[i].Ports {
			for k := range s.Services[i].Ports[j].Subsets {
				sub := &s.Services[i].Ports[j].Subsets[k]
				sub.Healthy = []discovery.LocalityCount{{Count: n}}
			}
		}
	}
	return s
}

// The gateways of other networks are weighted by the healthy endpoints
// they report, as resolution weighs them, and only those with a tunnel
// address and endpoints for the key are members.
func TestTunnelClusterWeights(t *testing.T) {
	m := newMeshPath(t, pathTCP)
	m.startEcho()
	far := func() discovery.Summary { return discovery.Summarize(m.far.table.Load().view, nil) }
	sums := []peer.NodeSummary{
		{Node: "b1", Meta: peer.Meta{Network: "net-b", TunnelAddr: "10.0.0.1:15008"}, Summary: withCounts(far(), 3)},
		{Node: "c1", Meta: peer.Meta{Network: "net-c", TunnelAddr: "10.0.0.2:15008"}, Summary: withCounts(far(), 1)},
		{Node: "c2", Meta: peer.Meta{Network: "net-c", TunnelAddr: "10.0.0.3:15008"}, Summary: withCounts(far(), 1)},
		{Node: "d1", Meta: peer.Meta{Network: "net-d"}, Summary: withCounts(far(), 5)},                                              // no tunnel
		{Node: "e1", Meta: peer.Meta{Network: "net-e", TunnelAddr: "10.0.0.4:15008"}, Summary: discovery.Summary{Network: "net-e"}}, // no service
	}
	for i := range sums {
		sums[i].Summary.Network = sums[i].Meta.Network
	}
	m.gw.SetTunnelDialer(m.epA, peersFunc(func() []peer.NodeSummary { return sums }))
	key := sni.Key{Host: workload.EchoHost, Port: workload.EchoPort}
	cl, err := m.gw.tunnels.Load().cluster(m.gw.table.Load(), key)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for i, u := range cl.members {
		got[u.addr] = cl.weight(i)
	}
	// net-c's two gateways share its one endpoint: weights scale by 2.
	want := map[string]uint64{"10.0.0.1:15008": 6, "10.0.0.2:15008": 1, "10.0.0.3:15008": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("members %v, want %v", got, want)
	}
	if _, err := m.gw.tunnels.Load().cluster(m.gw.table.Load(), sni.Key{Host: workload.EchoHost, Port: workload.EchoPort, Subset: "v9"}); err == nil {
		t.Error("a key no gateway serves has members")
	}
}

// A tunneled connection tries other gateways when one fails to open a
// stream, up to DialAttempts, and the failing one is ejected as a failing
// endpoint is.
func TestTunnelRetriesAcrossGateways(t *testing.T) {
	m := newMeshPath(t, pathTCP)
	m.cfg.EjectAfter = 2
	m.startEcho()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := closed.Addr().String()
	closed.Close()
	live := m.epB.Addr().String()
	gws := func(withLive bool) peersFunc {
		return func() []peer.NodeSummary {
			s := discovery.Summarize(m.far.table.Load().view, nil)
			out := []peer.NodeSummary{{Node: "b0-dead", Meta: peer.Meta{Network: "net-b", TunnelAddr: dead}, Summary: withCounts(s, 1000)}}
			if withLive {
				out = append(out, peer.NodeSummary{Node: "b1", Meta: peer.Meta{Network: "net-b", TunnelAddr: live}, Summary: withCounts(s, 1)})
			}
			return out
		}
	}
	m.gw.SetTunnelDialer(m.epA, gws(true))
	for range 10 {
		c, err := m.dial(echoSNI, "istio")
		if err != nil {
			t.Fatalf("connection failed although a live gateway serves the key: %v", err)
		}
		c.Close()
	}
	if m.gw.m.ConnectErrors.Value() == 0 || m.gw.m.Ejections.Value() != 1 {
		t.Errorf("connect errors %d, ejections %d: want the dead gateway tried and ejected", m.gw.m.ConnectErrors.Value(), m.gw.m.Ejections.Value())
	}
	ejected := map[string]bool{}
	for _, p := range m.gw.Debug().TunnelPeers {
		ejected[p.Address] = p.Ejected
	}
	if want := map[string]bool{dead: true, live: false}; fmt.Sprint(ejected) != fmt.Sprint(want) {
		t.Errorf("debug tunnel peers ejected %v, want %v", ejected, want)
	}
	m.gw.SetTunnelDialer(m.epA, gws(false))
	if _, err := m.dial(echoSNI, "istio"); err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Fatalf("only a dead gateway: %v, want a TLS internal error alert", err)
	}
	await.True(t, 5*time.Second, "upstream_unavailable count", func() bool { return m.gw.m.Rejected(RejectUnavailable) == 1 })
}

// streamTo opens a tunnel stream to the far gateway as another network's
// gateway would, sends a ClientHello and returns what comes back.
func (m *mesh) streamTo(h tunnel.Header) []byte {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := m.epA.Dial(ctx, m.epB.Addr().String(), h)
	if err != nil {
		m.t.Fatal(err)
	}
	defer st.Close()
	st.Write(recordHello(m.t, echoSNI))
	st.SetReadDeadline(time.Now().Add(time.Minute))
	got, err := io.ReadAll(st)
	if err != nil {
		m.t.Fatalf("reading the answer: %v", err)
	}
	return got
}

// A stream carried here that cannot be served gets the TLS alert a local
// client would, sent back through the tunnel, and is counted by reason,
// over both transports; that includes a stream that already crossed a
// tunnel.
func TestServeTunnelRefusals(t *testing.T) {
	for _, path := range []string{pathQUIC, pathTCP} {
		t.Run(path, func(t *testing.T) {
			m := newMeshPath(t, path)
			b := m.backend("v1")
			closed, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			dead := closed.Addr().String()
			closed.Close()
			m.start(echoYAML(freePort(t), b) +
				serviceEntry("secret", `, labels: {ewgate.io/export: "false"}`, portOf(b.Addr()), "net-a") +
				serviceEntry("down", "", portOf(dead), "net-a") +
				serviceEntry("empty", "", "", ""))
			echo := sni.Key{Host: workload.EchoHost, Port: workload.EchoPort}
			tests := []struct {
				name   string
				h      tunnel.Header
				reason string
				alert  byte
			}{
				{"unknown service", tunnel.Header{Key: sni.Key{Host: "nope.demo.svc.cluster.local", Port: 9080}}, "unknown_service", alertUnrecognizedName},
				{"unknown subset", tunnel.Header{Key: sni.Key{Host: workload.EchoHost, Port: 9080, Subset: "v9"}}, "unknown_subset", alertUnrecognizedName},
				{"not exported", tunnel.Header{Key: sni.Key{Host: "secret.demo.svc.cluster.local", Port: 9080}}, "not_exported", alertUnrecognizedName},
				{"no endpoint", tunnel.Header{Key: sni.Key{Host: "empty.demo.svc.cluster.local", Port: 9080}}, RejectNoEndpoints, alertHandshakeFailure},
				{"endpoint down", tunnel.Header{Key: sni.Key{Host: "down.demo.svc.cluster.local", Port: 9080}}, RejectUnavailable, alertInternalError},
				{"crossed a tunnel already", tunnel.Header{Key: echo, Hops: 1}, RejectTooManyHops, alertInternalError},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					before := m.far.m.Rejected(tt.reason)
					if got, want := m.streamTo(tt.h), alertRecord(tt.alert); !bytes.Equal(got, want) {
						t.Errorf("answer %x, want the alert record %x", got, want)
					}
					await.True(t, 5*time.Second, "reject count", func() bool { return m.far.m.Rejected(tt.reason) == before+1 })
				})
			}
			if n := b.Accepted(); n != 0 {
				t.Errorf("backend accepted %d connections; refusals must not reach it", n)
			}
			await.True(t, 5*time.Second, "refused streams to be released", func() bool { return m.far.Active() == 0 })
		})
	}
}

// A stream carried here routes through any listener that exposes its
// service, the rule by which the summary advertises it; not through the
// first listener alone.
func TestServeTunnelRoutesByExposingListener(t *testing.T) {
	m := newMeshPath(t, pathQUIC)
	b := m.startEcho()
	p1, p2 := freePort(t), freePort(t)
	if p1 > p2 {
		p1, p2 = p2, p1
	}
	// The first listener serves other hosts only.
	twoListeners := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network-gateway, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - port: {number: %d, name: tls-other, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: ["*.example.com"]
  - port: {number: %d, name: tls, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: ["*.local"]
`, p1, p2)
	yaml := workload.IstioConfig("net-b", p2, b)
	m.applyTo(m.far, "net-b", twoListeners+yaml[strings.Index(yaml, "---"):])
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatalf("a tunneled connection for a service the far gateway advertises: %v", err)
	}
	defer c.Close()
	if c.Server != "v1" {
		t.Errorf("reached %q, want v1", c.Server)
	}
}

// A service this network does not export keeps its local endpoints from
// the gateway's clients, but another network that exports it may still
// serve them through a tunnel; with none, the refusal says not_exported.
func TestNotExportedGoesTunneledOnly(t *testing.T) {
	m := newMeshPath(t, pathQUIC)
	local, far := m.backend("v1"), m.backend("far")
	port := freePort(t)
	secret := func(network string, e *workload.EchoServer, export bool) string {
		return serviceEntry("secret", fmt.Sprintf(`, labels: {ewgate.io/export: "%v"}`, export), portOf(e.Addr()), network)
	}
	m.start(echoYAML(port) + secret("net-a", local, false))
	m.applyTo(m.far, "net-b", workload.IstioConfig("net-b", port)+secret("net-b", far, true))
	const secretSNI = "outbound_.9080_._.secret.demo.svc.cluster.local"
	c := m.mustDial(t, secretSNI, "istio")
	if c.Server != "far" {
		t.Errorf("reached %s, want the other network's endpoint", c.Server)
	}
	if err := c.Exchange(64 << 10); err != nil {
		t.Error(err)
	}
	c.Close()

	m.applyTo(m.far, "net-b", workload.IstioConfig("net-b", port))
	if _, err := m.dial(secretSNI, "istio"); err == nil || !strings.Contains(err.Error(), "unrecognized name") {
		t.Fatalf("no other network serves it: %v, want unrecognized name", err)
	}
	await.True(t, 5*time.Second, "not_exported count", func() bool { return m.gw.m.Rejected("not_exported") == 1 })
	if n := local.Accepted(); n != 0 {
		t.Errorf("the unexported local endpoint accepted %d connections", n)
	}
}

// serviceEntry is the YAML of ServiceEntry name.demo.svc.cluster.local,
// port 9080, meta appended to its metadata, and an endpoint of network
// on 127.0.0.1:port unless port is "".
func serviceEntry(name, meta, port, network string) string {
	y := `---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ` + name + `, namespace: demo` + meta + `}
spec:
  hosts: [` + name + `.demo.svc.cluster.local]
  ports: [{number: 9080, name: tcp}]
`
	if port != "" {
		y += "  endpoints:\n  - {address: 127.0.0.1, ports: {tcp: " + port + "}, network: " + network + ", labels: {security.istio.io/tlsMode: istio}}\n"
	}
	return y
}

// portOf returns the port of a host:port address.
func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}
