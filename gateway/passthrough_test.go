package gateway

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/workload"
)

// A PASSTHROUGH listener routes by the plain server name, as its
// VirtualService's tls rules say, with no ALPN required; the client's TLS
// reaches the endpoint whole (the backend sees the client's identity). A
// name no rule matches is refused with unrecognized_name and counted under
// no_tls_route, without a dial.
func TestPassthroughListener(t *testing.T) {
	m := newMesh(t)
	v1, v2 := m.backend("v1"), m.backend("v2")
	port, pass := freePort(t), freePort(t)
	m.start(echoYAML(port, v1, v2) + fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: pass, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - {port: {number: %d, name: tls, protocol: TLS}, hosts: ["*"], tls: {mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pass, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [pass]
  tls:
  - match: [{sniHosts: [echo.example.com]}]
    route: [{destination: {host: %s, subset: v2}}]
  - match: [{sniHosts: ["*.example.com"]}]
    route: [{destination: {host: %s, subset: v1}}]
`, pass, workload.EchoHost, workload.EchoHost))
	addr := m.gw.Addrs()[uint32(pass)].String()
	dial := func(serverName string) (*workload.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cl := workload.Client{Source: m.source("spiffe://cluster.local/ns/demo/sa/client"), ALPN: []string{}}
		return cl.DialName(ctx, addr, serverName)
	}
	for sni, want := range map[string]string{"echo.example.com": "v2", "other.example.com": "v1"} {
		c, err := dial(sni)
		if err != nil {
			t.Fatalf("%s: %v", sni, err)
		}
		if c.Server != want || c.SeenAs != "spiffe://cluster.local/ns/demo/sa/client" {
			t.Errorf("%s reached %s seen as %s, want %s seen as the client", sni, c.Server, c.SeenAs, want)
		}
		if err := c.Exchange(256 << 10); err != nil {
			t.Errorf("%s: %v", sni, err)
		}
		c.Close()
	}
	before, accepted := m.gw.m.Rejected("no_tls_route"), v1.Accepted()+v2.Accepted()
	if c, err := dial("echo.example.org"); err == nil {
		c.Close()
		t.Fatal("a name no rule matches was forwarded")
	} else if !strings.Contains(err.Error(), "unrecognized name") {
		t.Errorf("client error %q, want the unrecognized_name alert", err)
	}
	await.True(t, 5*time.Second, "no_tls_route counted", func() bool { return m.gw.m.Rejected("no_tls_route") == before+1 })
	if n := v1.Accepted() + v2.Accepted(); n != accepted {
		t.Errorf("backends accepted %d more connections; a refusal must not dial", n-accepted)
	}
	// The AUTO_PASSTHROUGH listener beside it is unchanged.
	c, err := m.dial(echoSNI, "istio")
	if err != nil {
		t.Fatalf("AUTO_PASSTHROUGH: %v", err)
	}
	c.Close()
}
