package workload

import (
	"context"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/sni"
)

func TestEchoDirect(t *testing.T) {
	leakcheck.Check(t)
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := identity.NewDevCA(td)
	if err != nil {
		t.Fatal(err)
	}
	src := func(sa string) identity.Source {
		s, err := ca.NewSource(spiffeid.RequireFromPath(td, "/ns/demo/sa/"+sa), identity.IssueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	srv, err := NewEchoServer("echo-v1", "127.0.0.1:0", src("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := Client{Source: src("client")}
	c, err := cl.Dial(ctx, srv.Addr(), sni.Key{Host: EchoHost, Port: EchoPort})
	if err != nil {
		t.Fatal(err)
	}
	if c.Server != "echo-v1" || c.SeenAs != "spiffe://cluster.local/ns/demo/sa/client" || c.ServerID != "spiffe://cluster.local/ns/demo/sa/echo" {
		t.Fatalf("greeting: server %q seen as %q, server ID %q", c.Server, c.SeenAs, c.ServerID)
	}
	if got := c.ConnectionState().ServerName; got != "outbound_.9080_._.echo.demo.svc.cluster.local" {
		t.Errorf("SNI %q", got)
	}
	if err := c.Exchange(1 << 20); err != nil {
		t.Fatal(err)
	}
	c.Close()

	// A client of another trust domain is refused by the server.
	other, _ := identity.NewDevCA(spiffeid.RequireTrustDomainFromString("other.example"))
	osrc, _ := other.NewSource(spiffeid.RequireFromString("spiffe://other.example/ns/x/sa/y"), identity.IssueOptions{})
	bad := Client{Source: osrc}
	if c, err := bad.Dial(ctx, srv.Addr(), sni.Key{Host: EchoHost, Port: EchoPort}); err == nil {
		c.Close()
		t.Fatal("a client of an unknown trust domain got through")
	}
	if srv.Accepted() != 2 {
		t.Errorf("accepted %d connections, want 2", srv.Accepted())
	}
	srv.Close()
}

func TestIstioConfig(t *testing.T) {
	y := IstioConfig("net-x", 15443)
	for _, want := range []string{"number: 15443", "mode: AUTO_PASSTHROUGH", "hosts: [echo.demo.svc.cluster.local]", "name: v2"} {
		if !strings.Contains(y, want) {
			t.Errorf("config lacks %q:\n%s", want, y)
		}
	}
}
