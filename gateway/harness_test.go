package gateway

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/ewgate/ewgate/internal/lowports"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/peer"
	"github.com/ewgate/ewgate/tunnel"
	"github.com/ewgate/ewgate/workload"
)

// mesh is a test world: a dev CA, mTLS backends that identify themselves
// and echo, and a gateway in front of them. On a tunneled path, the
// gateway clients dial (gw, of network net-a) has no endpoint of its own
// and carries every connection through real tunnel endpoints to a second
// gateway (far, of network net-b), in front of the backends.
type mesh struct {
	t    *testing.T
	ca   *identity.DevCA
	path string // pathLocal, pathQUIC or pathTCP
	gw   *Gateway
	cfg  Config
	far  *Gateway // nil on pathLocal
	// epA and epB are the tunnel endpoints of gw and far.
	epA, epB *tunnel.Endpoint
	// farCfg configures far; nil takes cfg.
	farCfg *Config
	// setup, if set, is called with each gateway before it serves.
	setup func(*Gateway)
}

// The paths a connection can take through the mesh.
const (
	pathLocal = "local"
	pathQUIC  = "tunnel-quic"
	pathTCP   = "tunnel-tcp"
)

// allPaths are the paths the forwarding tests run over.
var allPaths = []string{pathLocal, pathQUIC, pathTCP}

func newMesh(t *testing.T) *mesh { return newMeshPath(t, pathLocal) }

func newMeshPath(t *testing.T, path string) *mesh {
	t.Helper()
	leakcheck.Check(t)
	ca, err := identity.NewDevCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	return &mesh{t: t, ca: ca, path: path}
}

// forSides runs f as a subtest for each gateway of each path that a rule
// under test may be set on: the one clients dial (far false) and, on a
// tunneled path, the far one.
func forSides(t *testing.T, f func(t *testing.T, m *mesh, far bool)) {
	for _, path := range allPaths {
		t.Run(path, func(t *testing.T) {
			for _, far := range []bool{false, true} {
				if far && path == pathLocal {
					continue
				}
				t.Run(map[bool]string{false: "gateway", true: "far gateway"}[far], func(t *testing.T) {
					f(t, newMeshPath(t, path), far)
				})
			}
		})
	}
}

// side returns the far gateway if far, else the one clients dial.
func (m *mesh) side(far bool) *Gateway {
	if far {
		return m.far
	}
	return m.gw
}

// forPaths runs f as a subtest over every path.
func forPaths(t *testing.T, f func(t *testing.T, m *mesh)) {
	for _, path := range allPaths {
		t.Run(path, func(t *testing.T) { f(t, newMeshPath(t, path)) })
	}
}

func (m *mesh) source(id string) identity.Source {
	m.t.Helper()
	src, err := m.ca.NewSource(spiffeid.RequireFromString(id), identity.IssueOptions{})
	if err != nil {
		m.t.Fatal(err)
	}
	return src
}

// backend starts an echo server named name (also its endpoint's version
// label) with its own SVID.
func (m *mesh) backend(name string) *workload.EchoServer {
	m.t.Helper()
	b, err := workload.NewEchoServer(name, "127.0.0.1:0", m.source("spiffe://cluster.local/ns/demo/sa/"+name), nil)
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { b.Close() })
	return b
}

// start builds the catalog from YAML and runs a gateway on 127.0.0.1;
// on a tunneled path, the far gateway on 127.0.0.2 and the tunnels.
func (m *mesh) start(yaml string) {
	m.t.Helper()
	if m.cfg.Logger == nil {
		m.cfg.Logger = slog.New(slog.NewTextHandler(testWriter{m.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	m.cfg.BindAddress = "127.0.0.1"
	m.gw = New(m.cfg)
	if m.setup != nil {
		m.setup(m.gw)
	}
	m.t.Cleanup(func() { shutdown(m.gw) })
	if m.path != pathLocal {
		farCfg := m.cfg
		if m.farCfg != nil {
			farCfg = *m.farCfg
		}
		farCfg.Logger = m.cfg.Logger.With("gateway", "far")
		farCfg.BindAddress = "127.0.0.2"
		m.far = New(farCfg)
		if m.setup != nil {
			m.setup(m.far)
		}
		m.t.Cleanup(func() { shutdown(m.far) })
		tr := tunnel.TransportQUIC
		if m.path == pathTCP {
			tr = tunnel.TransportTCP
		}
		m.epB = m.tunnelEndpoint("eastwest-b", tunnel.Config{Handler: m.far.ServeTunnel})
		m.epA = m.tunnelEndpoint("eastwest-a", tunnel.Config{Transport: tr})
		m.gw.SetTunnelDialer(m.epA, farPeers{m, m.epB.Addr().String()})
	}
	m.apply(yaml)
}

// tunnelEndpoint starts a tunnel endpoint on 127.0.0.1 with an SVID of
// service account sa in istio-system.
func (m *mesh) tunnelEndpoint(sa string, cfg tunnel.Config) *tunnel.Endpoint {
	m.t.Helper()
	cfg.Source = m.source("spiffe://cluster.local/ns/istio-system/sa/" + sa)
	cfg.Logger = m.cfg.Logger.With("tunnel", sa)
	ep, err := tunnel.New("127.0.0.1:0", cfg)
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { ep.Close() })
	return ep
}

// farPeers is the gossip view of the mesh's gateway: the far gateway,
// live, with the summary of its current view. A static list, where a
// real peer.Node would carry the same summary: these tests are about the
// data plane, cmd/ewgate's about gossip.
type farPeers struct {
	m    *mesh
	addr string
}

func (p farPeers) Summaries() []peer.NodeSummary {
	t := p.m.far.table.Load()
	if t == nil {
		return nil
	}
	return []peer.NodeSummary{{Node: "gw-b", Meta: peer.Meta{Network: "net-b", TunnelAddr: p.addr},
		Summary: discovery.Summarize(t.view, p.m.far.Healthy)}}
}

func shutdown(g *Gateway) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g.Shutdown(ctx)
}

// apply makes yaml the config of the mesh's gateways. On a tunneled
// path the endpoints move to network net-b, where the far gateway serves
// them; the gateway clients dial keeps the services but none of their
// endpoints.
func (m *mesh) apply(yaml string) {
	m.t.Helper()
	if m.far != nil {
		yaml = strings.ReplaceAll(yaml, "network: net-a", "network: net-b")
		m.applyTo(m.far, "net-b", yaml)
	}
	m.applyTo(m.gw, "net-a", yaml)
}

func (m *mesh) applyTo(g *Gateway, network, yaml string) {
	m.t.Helper()
	if err := g.Apply(m.view(network, yaml)); err != nil {
		m.t.Fatal(err)
	}
}

// view returns the view of network's gateway from the catalog of YAML.
func (m *mesh) view(network, yaml string) *discovery.View {
	m.t.Helper()
	c, err := discovery.Parse("test.yaml", []byte(yaml), nil)
	if err != nil {
		m.t.Fatal(err)
	}
	v, err := c.View(discovery.Node{Network: network, Labels: map[string]string{"istio": "eastwestgateway"}})
	if err != nil {
		m.t.Fatal(err)
	}
	return v
}

// last is the gateway that dials the endpoints: far on a tunneled path.
func (m *mesh) last() *Gateway {
	if m.far != nil {
		return m.far
	}
	return m.gw
}

// addr returns the gateway's listener address.
func (m *mesh) addr() string {
	for _, a := range m.gw.Addrs() {
		return a.String()
	}
	m.t.Fatal("gateway has no listener")
	return ""
}

// startEcho starts the mesh in front of one echo backend, v1, the
// endpoint of subset v1 on a free port (echoYAML), and returns it: the
// world most tests need.
func (m *mesh) startEcho() *workload.EchoServer {
	m.t.Helper()
	b := m.backend("v1")
	m.start(echoYAML(freePort(m.t), b))
	return b
}

// mustDial is dial for a connection the test needs: it fails t if the
// dial fails, and closes the connection when t ends (again, if the test
// closed it: harmless).
func (m *mesh) mustDial(t testing.TB, serverName string, alpn ...string) *workload.Conn {
	t.Helper()
	c, err := m.dial(serverName, alpn...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dial connects a sidecar-like client through the gateway and reads the
// backend's greeting.
func (m *mesh) dial(serverName string, alpn ...string) (*workload.Conn, error) {
	return m.dialVia(nil, serverName, alpn...)
}

func (m *mesh) dialVia(wrap func(net.Conn) net.Conn, serverName string, alpn ...string) (*workload.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := workload.Client{Source: m.source("spiffe://cluster.local/ns/demo/sa/client"), ALPN: alpn, Wrap: wrap}
	if alpn == nil {
		cl.ALPN = []string{}
	}
	return cl.DialName(ctx, m.addr(), serverName)
}

// handlerGoroutines counts the gateways' handler goroutines (handlers):
// the tests' count of them, which the gateway itself does not keep. The
// package's tests do not run in parallel (leakcheck), so these are the
// test's own.
func handlerGoroutines() int { return parked("gateway.(*Gateway).handler(") }

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// echoYAML is workload.IstioConfig for network net-a: backends named v1
// and v2 are the endpoints of subsets v1 and v2.
func echoYAML(port int, backends ...*workload.EchoServer) string {
	return workload.IstioConfig("net-a", port, backends...)
}

// freePort returns a loopback TCP port that was free a moment ago and that
// no test of the package was given before: two ports a test picks before
// binding either (a gateway's two listeners) must differ even when the
// kernel hands the same free port out twice. The port is below the
// ephemeral range (internal/lowports), so that no connection a test makes
// meanwhile can take it; with a custom range that leaves no room there,
// one the kernel hands out for port 0.
func freePort(t testing.TB) int {
	t.Helper()
	givenPorts.Lock()
	defer givenPorts.Unlock()
	given := func(p int) bool { return givenPorts.m[p] }
	if lo, hi, err := lowports.Range(1); err == nil {
		p, err := lowports.Pick(lo, hi, given)
		if err != nil {
			t.Fatal(err)
		}
		givenPorts.m[p] = true
		return p
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !given(p) {
			givenPorts.m[p] = true
			return p
		}
	}
	t.Fatal("no loopback port that was not handed out already")
	return 0
}

// givenPorts are the ports freePort handed out.
var givenPorts = struct {
	sync.Mutex
	m map[int]bool
}{m: make(map[int]bool)}
