package gateway

import (
	"bytes"
	"context"
	"errors"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/ewgate/ewgate/workload"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/sni"
)

const echoSNI = "outbound_.9080_._.echo.demo.svc.cluster.local"

func TestForwardByteExact(t *testing.T) {
	m := newMesh(t)
	b := m.backend("v1")
	m.start(echoYAML(freePort(t), b))
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Exchange(8 << 20); err != nil {
		t.Fatal(err)
	}
	c.Close()
	await.True(t, 5*time.Second, "connection to finish", func() bool { return m.gw.Active() == 0 })
	if got := m.gw.m.Forwarded.Value(); got != 1 {
		t.Errorf("forwarded = %d, want 1", got)
	}
	if up, down := m.gw.m.BytesUp.Value(), m.gw.m.BytesDown.Value(); up < 8<<20 || down < 8<<20 {
		t.Errorf("byte counters up=%d down=%d, want >= 8 MiB each", up, down)
	}
}

func TestClientIdentityReachesBackend(t *testing.T) {
	m := newMesh(t)
	b := m.backend("v1")
	m.start(echoYAML(freePort(t), b))
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Server != "v1" || c.SeenAs != "spiffe://cluster.local/ns/demo/sa/client" {
		t.Fatalf("backend %q saw peer %q; want v1 and the client's own SPIFFE ID", c.Server, c.SeenAs)
	}
	if c.ServerID != "spiffe://cluster.local/ns/demo/sa/v1" {
		t.Fatalf("client saw server %q, want the backend's SVID: the gateway must not terminate TLS", c.ServerID)
	}
}

func TestSubsetRouting(t *testing.T) {
	m := newMesh(t)
	v1, v2 := m.backend("v1"), m.backend("v2")
	m.start(echoYAML(freePort(t), v1, v2))
	for _, subset := range []string{"v1", "v2"} {
		for range 5 {
			c, err := m.dial(sni.Key{Host: "echo.demo.svc.cluster.local", Port: 9080, Subset: subset}.SNI(), "istio")
			if err != nil {
				t.Fatal(err)
			}
			if name := c.Server; name != subset {
				t.Errorf("subset %s routed to %s", subset, name)
			}
			c.Close()
		}
	}
	// Without a subset, load spreads over both.
	seen := map[string]bool{}
	for i := 0; i < 40 && len(seen) < 2; i++ {
		c, err := m.dial(echoSNI, "istio")
		if err != nil {
			t.Fatal(err)
		}
		seen[c.Server] = true
		c.Close()
	}
	if len(seen) != 2 {
		t.Errorf("40 connections without subset reached only %v", seen)
	}
}

func TestRefusedWithoutDial(t *testing.T) {
	m := newMesh(t)
	b := m.backend("v1")
	port := freePort(t)
	m.start(echoYAML(port, b) + `---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: demo}
spec:
  hosts: [private.demo.svc.cluster.local]
  exportTo: ["."]
  ports: [{number: 9080, name: tcp}]
  endpoints:
  - {address: 127.0.0.1, ports: {tcp: ` + b.Addr()[strings.LastIndex(b.Addr(), ":")+1:] + `}, labels: {security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain, namespace: demo}
spec:
  hosts: [plain.demo.svc.cluster.local]
  ports: [{number: 9080, name: tcp}]
  endpoints:
  - {address: 127.0.0.1, ports: {tcp: ` + b.Addr()[strings.LastIndex(b.Addr(), ":")+1:] + `}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secret, namespace: demo, labels: {ewgate.io/export: "false"}}
spec:
  hosts: [secret.demo.svc.cluster.local]
  ports: [{number: 9080, name: tcp}]
  endpoints:
  - {address: 127.0.0.1, ports: {tcp: ` + b.Addr()[strings.LastIndex(b.Addr(), ":")+1:] + `}, labels: {security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other, namespace: demo}
spec:
  hosts: [other.example.com]
  ports: [{number: 9080, name: tcp}]
  endpoints:
  - {address: 127.0.0.1, ports: {tcp: ` + b.Addr()[strings.LastIndex(b.Addr(), ":")+1:] + `}, labels: {security.istio.io/tlsMode: istio}}
`)
	tests := []struct {
		name, sni string
		alpn      []string
		reason    string
		alert     string
	}{
		{"unknown service", "outbound_.9080_._.nope.demo.svc.cluster.local", []string{"istio"}, "unknown_service", "unrecognized name"},
		{"unknown port", "outbound_.9999_._.echo.demo.svc.cluster.local", []string{"istio"}, "unknown_port", "unrecognized name"},
		{"unknown subset", "outbound_.9080_.v9_.echo.demo.svc.cluster.local", []string{"istio"}, "unknown_subset", "unrecognized name"},
		{"exportTo hides it from the gateway namespace", "outbound_.9080_._.private.demo.svc.cluster.local", []string{"istio"}, "not_exported", "unrecognized name"},
		{"host outside the server's hosts", "outbound_.9080_._.other.example.com", []string{"istio"}, "host_not_exposed", "unrecognized name"},
		{"labelled ewgate.io/export false", "outbound_.9080_._.secret.demo.svc.cluster.local", []string{"istio"}, "not_exported", "unrecognized name"},
		{"endpoints without tlsMode istio", "outbound_.9080_._.plain.demo.svc.cluster.local", []string{"istio"}, "no_endpoints", "handshake failure"},
		{"IP literal host", "outbound_.9080_._.127.0.0.1", []string{"istio"}, "bad_sni", "unrecognized name"},
		{"not an Istio name", "echo.demo.svc.cluster.local", []string{"istio"}, "bad_sni", "unrecognized name"},
		{"no SNI", "", []string{"istio"}, "no_sni", "unrecognized name"},
		{"no Istio ALPN", echoSNI, []string{"h2", "http/1.1"}, "alpn", "no application protocol"},
		{"no ALPN", echoSNI, nil, "alpn", "no application protocol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := m.gw.m.Rejected(tt.reason)
			c, err := m.dial(tt.sni, tt.alpn...)
			if err == nil {
				c.Close()
				t.Fatal("handshake succeeded; want refusal")
			}
			if !strings.Contains(err.Error(), tt.alert) {
				t.Errorf("client error %q, want TLS alert %q", err, tt.alert)
			}
			await.True(t, 5*time.Second, "reject counter", func() bool { return m.gw.m.Rejected(tt.reason) == before+1 })
		})
	}
	// A stream another network's gateway carries here for the service
	// this network does not export is refused again here.
	t.Run("tunneled stream for a service not exported", func(t *testing.T) {
		before := m.gw.m.Rejected("not_exported")
		client, far := tcpPair(t)
		done := make(chan error, 1)
		go func() { done <- m.gw.ServeTunnel(sni.Key{Host: "secret.demo.svc.cluster.local", Port: 9080}, far) }()
		client.SetReadDeadline(time.Now().Add(time.Minute))
		got, err := io.ReadAll(client)
		if err != nil || !bytes.Equal(got, alertRecord(alertUnrecognizedName)) {
			t.Errorf("answer %x, %v; want the unrecognized_name alert", got, err)
		}
		client.Close()
		if err := <-done; err == nil {
			t.Error("ServeTunnel returned nil for a refused stream")
		}
		if n := m.gw.m.Rejected("not_exported"); n != before+1 {
			t.Errorf("rejected{reason=not_exported} = %d, want %d", n, before+1)
		}
	})
	if n := b.Accepted(); n != 0 {
		t.Fatalf("backend accepted %d connections; refusals must not dial", n)
	}
}

func TestHelloSplitAcrossSegmentsAndRecords(t *testing.T) {
	m := newMesh(t)
	b := m.backend("v1")
	m.start(echoYAML(freePort(t), b))
	tests := []struct {
		name string
		wrap func(net.Conn) net.Conn
	}{
		{"1-byte TCP writes", workload.Trickle(1)},
		{"7-byte TLS records", workload.Refragment(7)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := m.dialVia(tt.wrap, echoSNI, "istio")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Exchange(64 << 10); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestBadClients(t *testing.T) {
	m := newMesh(t)
	b := m.backend("v1")
	m.cfg.Peek = sni.Peeker{Timeout: 300 * time.Millisecond}
	m.start(echoYAML(freePort(t), b))
	tests := []struct {
		name   string
		send   []byte
		reason string
	}{
		{"slowloris", []byte{22, 3, 1, 2, 0, 1, 0}, "hello_timeout"},
		{"garbage", []byte("\x00\x01garbage\xff"), "hello_not_tls"},
		{"1 MiB of plaintext HTTP", []byte("GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Pad: y\r\n", 100<<10)), "hello_not_tls"},
		{"SSLv2 hello", []byte{0x80, 0x2e, 0x01, 0x00, 0x02}, "hello_sslv2"},
		{"truncated", []byte{22, 3, 1, 0, 200, 1, 0, 0, 196}, "hello_truncated"},
		{"health check: connect and close", nil, "no_data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := m.gw.m.Rejected(tt.reason)
			c, err := net.Dial("tcp", m.addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			go func() {
				c.Write(tt.send)
				if tt.reason == "hello_truncated" || tt.reason == "no_data" {
					c.(*net.TCPConn).CloseWrite()
				}
			}()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
				t.Fatalf("want the gateway to close the connection, got %v", err)
			}
			await.True(t, 5*time.Second, "reject counter "+tt.reason, func() bool { return m.gw.m.Rejected(tt.reason) == before+1 })
		})
	}
	if n := b.Accepted(); n != 0 {
		t.Fatalf("backend accepted %d connections", n)
	}
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "reset") || strings.Contains(err.Error(), "broken pipe"))
}

func TestReloadKeepsOpenConnections(t *testing.T) {
	m := newMesh(t)
	v1, v2 := m.backend("v1"), m.backend("v2")
	port := freePort(t)
	m.start(echoYAML(port, v1))
	open, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if name := open.Server; name != "v1" {
		t.Fatalf("before reload: routed to %s", name)
	}
	m.apply(echoYAML(port, v2))
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	if name := c.Server; name != "v2" {
		t.Fatalf("after reload: routed to %s, want v2", name)
	}
	c.Close()
	// The connection opened before the reload still works both ways.
	if _, err := open.Write([]byte("still here\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := open.ReadLine(); err != nil || line != "still here" {
		t.Fatalf("old connection after reload: %q, %v", line, err)
	}
}

func TestDrain(t *testing.T) {
	m := newMesh(t)
	b := m.backend("v1")
	m.start(echoYAML(freePort(t), b))
	addr := m.addr()
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- m.gw.Shutdown(ctx)
	}()
	await.True(t, 5*time.Second, "listener to close", func() bool {
		probe, err := net.Dial("tcp", addr)
		if err == nil {
			probe.Close()
		}
		return err != nil
	})
	if m.gw.Ready() {
		t.Error("draining gateway reports ready")
	}
	// The open connection keeps working while draining.
	c.Write([]byte("draining\n"))
	if line, err := c.ReadLine(); err != nil || line != "draining" {
		t.Fatalf("open connection during drain: %q, %v", line, err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a connection open", err)
	default:
	}
	c.Close()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown after the last connection closed: %v", err)
	}
}

func TestDrainTimeoutCutsConnections(t *testing.T) {
	m := newMesh(t)
	b := m.backend("v1")
	m.start(echoYAML(freePort(t), b))
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := m.gw.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want deadline exceeded", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) && !strings.Contains(err.Error(), "EOF") {
		t.Fatalf("cut connection: %v", err)
	}
}

func TestRetryAndEjectDeadEndpoint(t *testing.T) {
	m := newMesh(t)
	live := m.backend("v1")
	dead := m.backend("v2")
	dead.Close() // its port now refuses connections
	m.cfg.EjectAfter = 2
	m.start(echoYAML(freePort(t), live, dead))
	for range 20 {
		c, err := m.dial(echoSNI, "istio")
		if err != nil {
			t.Fatalf("connection failed although a live endpoint exists: %v", err)
		}
		if name := c.Server; name != "v1" {
			t.Fatalf("routed to %s", name)
		}
		c.Close()
	}
	d := m.gw.Debug()
	var ejected bool
	for _, r := range d.Routes {
		for _, e := range r.Endpoints {
			if e.Address == dead.Addr() && e.Ejected {
				ejected = true
			}
		}
	}
	if !ejected || m.gw.m.Ejections.Value() == 0 {
		t.Fatalf("dead endpoint not ejected: %+v", d.Routes)
	}
}

func TestAllEndpointsDown(t *testing.T) {
	m := newMesh(t)
	dead := m.backend("v1")
	dead.Close()
	m.start(echoYAML(freePort(t), dead))
	_, err := m.dial(echoSNI, "istio")
	if err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Fatalf("dial = %v, want a TLS internal error alert", err)
	}
	await.True(t, 5*time.Second, "reject counter", func() bool { return m.gw.m.Rejected(RejectUnavailable) == 1 })
}

func TestIdleTimeout(t *testing.T) {
	m := newMesh(t)
	b := m.backend("v1")
	m.cfg.IdleTimeout = 200 * time.Millisecond
	m.start(echoYAML(freePort(t), b))
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
		t.Fatalf("idle connection: %v, want closed by the gateway", err)
	}
	if got := m.gw.m.IdleClosed.Value(); got != 1 {
		t.Fatalf("idle closes = %d, want 1", got)
	}
}

func TestConnectionLimit(t *testing.T) {
	m := newMesh(t)
	b := m.backend("v1")
	m.cfg.MaxConnections = 1
	m.start(echoYAML(freePort(t), b))
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := m.dial(echoSNI, "istio"); err == nil {
		t.Fatal("second connection accepted over a limit of 1")
	}
	await.True(t, 5*time.Second, "over_limit count", func() bool { return m.gw.m.Rejected(RejectOverLimit) == 1 })
}

// tcpRemote is a RemoteDialer that carries every connection to one TCP
// address: the far side of a tunnel stream, with the same half-close
// contract, without the tunnel.
type tcpRemote struct{ addr string }

func (r tcpRemote) DialRemote(ctx context.Context, _ sni.Key, _ net.Addr) (HalfConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", r.addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// shutdownCuts runs a Shutdown whose deadline passes while connections
// are open, and checks that it cuts them all and returns.
func shutdownCuts(t *testing.T, gw *Gateway) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- gw.Shutdown(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want deadline exceeded", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Shutdown still waiting for its connections a minute after its deadline")
	}
	if gw.Active() != 0 {
		t.Fatalf("%d connections still active after a cut drain", gw.Active())
	}
}

// A drain that times out must cut every flow, including one whose client
// half-closed while the other side stays silent, to an endpoint of this
// network or carried to another: nothing else would wake it.
func TestDrainTimeoutCutsHalfClosedFlows(t *testing.T) {
	for _, remote := range []bool{false, true} {
		t.Run(map[bool]string{false: "local endpoint", true: "other network"}[remote], func(t *testing.T) {
			leakcheck.Check(t)
			hello := recordHello(t, echoSNI)
			far := newRawBackend(t, len(hello), nil)
			var gw *Gateway
			var addr string
			if remote {
				gw, addr = benchGateway(t, "")
				gw.SetRemote(tcpRemote{far.ln.Addr().String()})
			} else {
				gw, addr = benchGateway(t, far.ln.Addr().String())
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(hello)
			c.(*net.TCPConn).CloseWrite()
			await.True(t, 5*time.Second, "connection to reach the far side", func() bool { return far.count() == 1 })
			shutdownCuts(t, gw)
		})
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// A connection carried here from another network that cannot be served
// gets the TLS alert a local client would, sent back through the tunnel
// (here a TCP connection standing in for the stream), and is counted.
func TestServeTunnelRefusals(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := closed.Addr().String()
	closed.Close()
	tests := []struct {
		name     string
		endpoint string // "" for none
		host     string
		reason   string
		alert    byte
	}{
		{"unknown service", "", "nope.demo.svc.cluster.local", "unknown_service", alertUnrecognizedName},
		{"no endpoint", "", "echo.demo.svc.cluster.local", RejectNoEndpoints, alertHandshakeFailure},
		{"endpoint down", deadAddr, "echo.demo.svc.cluster.local", RejectUnavailable, alertInternalError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leakcheck.Check(t)
			gw, _ := benchGateway(t, tt.endpoint)
			client, far := tcpPair(t)
			done := make(chan error, 1)
			go func() { done <- gw.ServeTunnel(sni.Key{Host: tt.host, Port: 9080}, far) }()
			client.Write(recordHello(t, echoSNI))
			client.SetReadDeadline(time.Now().Add(time.Minute))
			got, err := io.ReadAll(client)
			if err != nil {
				t.Fatalf("reading the answer: %v", err)
			}
			if want := alertRecord(tt.alert); !bytes.Equal(got, want) {
				t.Errorf("answer %x, want the alert record %x", got, want)
			}
			client.Close()
			if err := <-done; err == nil {
				t.Error("ServeTunnel returned nil for a refused connection")
			}
			if n := gw.m.Rejected(tt.reason); n != 1 {
				t.Errorf("rejected{reason=%q} = %d, want 1", tt.reason, n)
			}
		})
	}
}

// A service this network does not export keeps its local endpoints from
// the gateway's clients, but another network that exports it may still
// serve them through a tunnel; with none, the refusal says not_exported.
func TestNotExportedGoesRemoteOnly(t *testing.T) {
	m := newMesh(t)
	local, far := m.backend("v1"), m.backend("far")
	port := freePort(t)
	m.start(echoYAML(port, local) + `---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secret, namespace: demo, labels: {ewgate.io/export: "false"}}
spec:
  hosts: [secret.demo.svc.cluster.local]
  ports: [{number: 9080, name: tcp}]
  endpoints:
  - {address: 127.0.0.1, ports: {tcp: ` + local.Addr()[strings.LastIndex(local.Addr(), ":")+1:] + `}, labels: {security.istio.io/tlsMode: istio}}
`)
	const secretSNI = "outbound_.9080_._.secret.demo.svc.cluster.local"
	m.gw.SetRemote(tcpRemote{far.Addr()})
	c, err := m.dial(secretSNI, "istio")
	if err != nil {
		t.Fatal(err)
	}
	if c.Server != "far" {
		t.Errorf("reached %s, want the other network's endpoint", c.Server)
	}
	if err := c.Exchange(64 << 10); err != nil {
		t.Error(err)
	}
	c.Close()

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	m.gw.SetRemote(tcpRemote{closed.Addr().String()})
	if _, err := m.dial(secretSNI, "istio"); err == nil || !strings.Contains(err.Error(), "unrecognized name") {
		t.Fatalf("no other network serves it: %v, want unrecognized name", err)
	}
	await.True(t, 5*time.Second, "not_exported count", func() bool { return m.gw.m.Rejected("not_exported") == 1 })
	if n := local.Accepted(); n != 0 {
		t.Errorf("the unexported local endpoint accepted %d connections", n)
	}
}
