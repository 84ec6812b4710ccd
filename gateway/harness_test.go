package gateway

import (
	"context"
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/identity"
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
	checkLeaks(t)
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

// backend is an mTLS server that writes its name and the client's SPIFFE ID
// on a line, then echoes until the client half-closes, then half-closes.
type backend struct {
	name     string
	ln       net.Listener
	accepted atomic.Int64 // TCP connections accepted, handshake or not
}

func (m *mesh) backend(name string) *backend {
	m.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		m.t.Fatal(err)
	}
	cfg := identity.ServerTLSConfig(m.source("spiffe://cluster.local/ns/demo/sa/"+name), nil)
	cfg.NextProtos = []string{"istio"}
	b := &backend{name: name, ln: ln}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			go b.serve(tls.Server(c, cfg))
		}
	}()
	m.t.Cleanup(func() { ln.Close(); <-done })
	return b
}

func (b *backend) serve(c *tls.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.Handshake(); err != nil {
		return
	}
	peer, _ := identity.PeerID(c.ConnectionState())
	fmt.Fprintf(c, "%s %s\n", b.name, peer)
	io.Copy(c, c)
	c.CloseWrite()
}

func (b *backend) addr() string { return b.ln.Addr().String() }

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

// dial connects a client with the given SNI and ALPN through the gateway
// and completes the mTLS handshake with the backend.
func (m *mesh) dial(sniName string, alpn ...string) (*tls.Conn, error) {
	return m.dialVia(nil, sniName, alpn...)
}

func (m *mesh) dialVia(wrap func(net.Conn) net.Conn, sniName string, alpn ...string) (*tls.Conn, error) {
	raw, err := net.Dial("tcp", m.addr())
	if err != nil {
		return nil, err
	}
	cfg := identity.ClientTLSConfig(m.source("spiffe://cluster.local/ns/demo/sa/client"), nil)
	cfg.ServerName = sniName
	cfg.NextProtos = alpn
	var c net.Conn = raw
	if wrap != nil {
		c = wrap(raw)
	}
	tc := tls.Client(c, cfg)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

// greeting reads the backend's first line: its name and the client ID it saw.
func greeting(t *testing.T, c *tls.Conn) (name, peer string) {
	t.Helper()
	line, err := bufio.NewReader(io.LimitReader(c, 200)).ReadString('\n')
	if err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	name, peer, _ = strings.Cut(strings.TrimSpace(line), " ")
	return name, peer
}

// readLine reads one line byte by byte, so no byte after it is consumed.
func readLine(c net.Conn) (string, error) {
	var sb strings.Builder
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			return sb.String(), err
		}
		if b[0] == '\n' {
			return sb.String(), nil
		}
		sb.WriteByte(b[0])
	}
}

// exchange sends n random bytes, half-closes, reads the echo to EOF and
// reports whether both directions were byte-exact.
func exchange(t *testing.T, c *tls.Conn, n int) {
	t.Helper()
	if _, err := readLine(c); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.MultiWriter(c, sent), rand.Reader, int64(n))
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got := sha256.New()
	m, err := io.Copy(got, c)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("send: %v", err)
	}
	if m != int64(n) || string(got.Sum(nil)) != string(sent.Sum(nil)) {
		t.Fatalf("echo mismatch: got %d bytes sha256 %x, sent %d sha256 %x", m, got.Sum(nil), n, sent.Sum(nil))
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("timed out after %v waiting for %s\n%s", d, what, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkLeaks fails the test if goroutines or file descriptors opened during
// it are still there (after polling) when it ends.
func checkLeaks(t *testing.T) {
	g0, f0 := runtime.NumGoroutine(), openFDs()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			// Go pools splice pipes in a sync.Pool and closes them from a
			// finalizer: collect twice so pooled pipes do not count.
			runtime.GC()
			runtime.GC()
			g, f := runtime.NumGoroutine(), openFDs()
			if g <= g0 && f <= f0 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("leak: goroutines %d -> %d, fds %d -> %d\n%s", g0, g, f0, f, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

const gatewayYAML = `
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network-gateway, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - port: {number: %d, name: tls, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: ["*.local"]
`

// echoYAML is a ServiceEntry "echo.demo.svc.cluster.local" port 9080 with
// subsets v1 and v2 and one endpoint per backend, labelled by its name.
func echoYAML(port int, backends ...*backend) string {
	var eps strings.Builder
	for _, b := range backends {
		host, p, _ := net.SplitHostPort(b.addr())
		fmt.Fprintf(&eps, "  - address: %s\n    ports: {tcp: %s}\n    network: net-a\n    labels: {version: %s, security.istio.io/tlsMode: istio}\n", host, p, b.name)
	}
	return fmt.Sprintf(gatewayYAML, port) + `---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: demo}
spec:
  hosts: [echo.demo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: tcp, protocol: TCP}]
  endpoints:
` + eps.String() + `---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: demo}
spec:
  host: echo.demo.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
