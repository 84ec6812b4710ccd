package gateway

import (
	"context"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/workload"
)

// mesh is a test world: a dev CA, mTLS backends that identify themselves
// and echo, and a gateway in front of them.
type mesh struct {
	t   *testing.T
	ca  *identity.DevCA
	gw  *Gateway
	cfg Config
}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	leakcheck.Check(t)
	ca, err := identity.NewDevCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	return &mesh{t: t, ca: ca}
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

// start builds the catalog from YAML and runs a gateway on 127.0.0.1.
func (m *mesh) start(yaml string) {
	m.t.Helper()
	if m.cfg.Logger == nil {
		m.cfg.Logger = slog.New(slog.NewTextHandler(testWriter{m.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	m.cfg.BindAddress = "127.0.0.1"
	m.gw = New(m.cfg)
	m.apply(yaml)
	m.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		m.gw.Shutdown(ctx)
	})
}

func (m *mesh) apply(yaml string) {
	m.t.Helper()
	c, err := discovery.Parse("test.yaml", []byte(yaml), nil)
	if err != nil {
		m.t.Fatal(err)
	}
	v, err := c.View(discovery.Node{Network: "net-a", Labels: map[string]string{"istio": "eastwestgateway"}})
	if err != nil {
		m.t.Fatal(err)
	}
	if err := m.gw.Apply(v); err != nil {
		m.t.Fatal(err)
	}
}

// addr returns the gateway's listener address.
func (m *mesh) addr() string {
	for _, a := range m.gw.Addrs() {
		return a.String()
	}
	m.t.Fatal("gateway has no listener")
	return ""
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

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
