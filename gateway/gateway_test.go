package gateway

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/workload"

	"github.com/ewgate/ewgate/sni"
)

const echoSNI = "outbound_.9080_._.echo.demo.svc.cluster.local"

func TestClientIdentityReachesBackend(t *testing.T) {
	m := newMesh(t)
	m.startEcho()
	c := m.mustDial(t, echoSNI, "istio")
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
			c := m.mustDial(t, sni.Key{Host: "echo.demo.svc.cluster.local", Port: 9080, Subset: subset}.SNI(), "istio")
			if name := c.Server; name != subset {
				t.Errorf("subset %s routed to %s", subset, name)
			}
			c.Close()
		}
	}
	// Without a subset, load spreads over both.
	seen := map[string]bool{}
	for i := 0; i < 40 && len(seen) < 2; i++ {
		c := m.mustDial(t, echoSNI, "istio")
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
	if n := b.Accepted(); n != 0 {
		t.Fatalf("backend accepted %d connections; refusals must not dial", n)
	}
}

func TestHelloSplitAcrossSegmentsAndRecords(t *testing.T) {
	m := newMesh(t)
	m.startEcho()
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
	m.cfg.Peek = sni.Peeker{Timeout: 300 * time.Millisecond}
	b := m.startEcho()
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
	open := m.mustDial(t, echoSNI, "istio")
	if name := open.Server; name != "v1" {
		t.Fatalf("before reload: routed to %s", name)
	}
	m.apply(echoYAML(port, v2))
	c := m.mustDial(t, echoSNI, "istio")
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
