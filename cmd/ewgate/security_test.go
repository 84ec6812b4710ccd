package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ewgate/ewgate/api"
	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/workload"
)

// TestRunRegistrationPolicy: over --api-address, a workload of the trust
// domain that --api-register-ids does not name cannot register, so none
// of N connections reaches its endpoint; the named registrar can, and
// another identity cannot take its lease over.
func TestRunRegistrationPolicy(t *testing.T) {
	w := newWorld(t, "v1", "v2", "v3")
	w.writeConfig("v1")
	apiAddr := w.runWithAPI("--api-register-ids", "spiffe://cluster.local/ns/demo/sa/vm-agent")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := func(sa string) ewgatev1.GatewayServiceClient {
		c, closer, err := api.Dial(ctx, apiAddr, identity.ClientTLSConfig(w.source(sa), nil))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { closer.Close() })
		return c
	}
	register := func(c ewgatev1.GatewayServiceClient, registrar, version string) error {
		host, port, _ := net.SplitHostPort(w.echoes[version].Addr())
		var p uint32
		fmt.Sscan(port, &p)
		_, err := c.RegisterEndpoints(ctx, &ewgatev1.RegisterEndpointsRequest{
			Registrar: registrar, LeaseSeconds: 60,
			Endpoints: []*ewgatev1.Endpoint{{ServiceHost: workload.EchoHost, Address: host, Weight: 1000,
				Ports: map[string]uint32{"tcp-echo": p}, Labels: map[string]string{"version": "v2", "security.istio.io/tlsMode": "istio"}}},
		})
		return err
	}

	intruder, agent := client("intruder"), client("vm-agent")
	if err := register(intruder, "agent-1", "v3"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("registration by an identity the policy does not name: %v, want PermissionDenied", err)
	}
	const n = 20
	reached := 0
	for range n {
		if c, err := w.dial("v2"); err == nil {
			reached++
			c.Close()
		}
	}
	if reached != 0 {
		t.Fatalf("%d of %d connections reached a registration the policy denies", reached, n)
	}

	if err := register(agent, "agent-1", "v2"); err != nil {
		t.Fatalf("registration by the named registrar: %v", err)
	}
	await.True(t, 10*time.Second, "the registered endpoint to serve subset v2", func() bool {
		c, err := w.dial("v2")
		if err != nil {
			return false
		}
		defer c.Close()
		return c.Server == "echo-v2"
	})
	// A caller that cannot register is not helped by a name already taken;
	// neither is the same name under an over-capped weight.
	if err := register(intruder, "agent-1", "v3"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("hijack of agent-1: %v, want PermissionDenied", err)
	}
	for range n {
		c, err := w.dial("v2")
		if err != nil {
			t.Fatalf("subset v2 after a refused hijack: %v", err)
		}
		if c.Server != "echo-v2" {
			t.Fatalf("subset v2 reached %s after a refused hijack, want echo-v2", c.Server)
		}
		c.Close()
	}
	_, body, err := httpGet("http://" + w.admin + "/metrics")
	if err != nil || !strings.Contains(body, "ewgate_api_denied_total 2") {
		t.Fatalf("metrics: %v, want ewgate_api_denied_total 2 in:\n%s", err, body)
	}
}

// TestRunRefusesForbiddenFileEndpoints: a config file whose endpoint is
// the metadata server, loopback (without the flag) or outside
// --endpoint-cidrs does not start the gateway, and says why.
func TestRunRefusesForbiddenFileEndpoints(t *testing.T) {
	w := newWorld(t, "v1")
	w.writeConfig("v1") // its endpoint is on 127.0.0.1
	for _, tt := range []struct {
		name  string
		extra []string
		want  string
	}{
		{"loopback", nil, "127.0.0.1 is a loopback address"},
		{"outside the CIDRs", []string{"--endpoint-allow-loopback", "--endpoint-cidrs", "10.0.0.0/8"}, "outside the endpoint networks configured"},
		{"bad CIDR", []string{"--endpoint-cidrs", "10.0.0.0/33"}, "--endpoint-cidrs"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"run", "-f", w.dir, "--network", "network-a", "--admin-address", "", "--bind-address", "127.0.0.1"}, tt.extra...)
			out, err := runEwgate(t, args...)
			if err == nil || !strings.Contains(out, tt.want) {
				t.Fatalf("err=%v, want %q in output:\n%s", err, tt.want, out)
			}
		})
	}
	w.writeFile("mesh.yaml", strings.ReplaceAll(workload.IstioConfig(w.network, w.port, w.echoes["v1"]), "127.0.0.1", "169.254.169.254"))
	out, err := runEwgate(t, "run", "-f", w.dir, "--network", "network-a", "--admin-address", "", "--bind-address", "127.0.0.1")
	if err == nil || !strings.Contains(out, "169.254.169.254 is a link-local address") {
		t.Fatalf("err=%v, want the metadata endpoint refused:\n%s", err, out)
	}
}

// TestAdminAddressLoopbackOnly: a non-loopback admin address is refused,
// naming the flag that allows it; loopback and the explicit allowance
// pass; pprof is off unless asked for.
func TestAdminAddressLoopbackOnly(t *testing.T) {
	for _, tt := range []struct {
		addr  string
		allow bool
		want  string // "" accepted
	}{
		{"127.0.0.1:15446", false, ""},
		{"[::1]:15446", false, ""},
		{"localhost:15446", false, ""},
		{"0.0.0.0:15446", false, "--admin-allow-remote"},
		{":15446", false, "--admin-allow-remote"},
		{"10.0.0.1:15446", false, "is not a loopback address"},
		{"0.0.0.0:15446", true, ""},
	} {
		s := defaultSettings()
		s.AdminAddress, s.AdminAllowRemote = tt.addr, tt.allow
		err := s.check()
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("admin address %q (allow remote %v): %v, want %q", tt.addr, tt.allow, err, tt.want)
		}
	}

	w := newWorld(t, "v1")
	w.writeConfig("v1")
	w.run()
	if code, _, err := httpGet("http://" + w.admin + "/debug/pprof/"); err != nil || code != 404 {
		t.Fatalf("pprof without --admin-pprof: %d %v, want 404", code, err)
	}
	w2 := newWorld(t, "v1")
	w2.writeConfig("v1")
	w2.run("--admin-pprof")
	if code, _, err := httpGet("http://" + w2.admin + "/debug/pprof/"); err != nil || code != 200 {
		t.Fatalf("pprof with --admin-pprof: %d %v, want 200", code, err)
	}
}

// TestRunAPIMetrics: a caller that the API's TLS handshake refuses (its
// ID is in no API policy) never reaches the access policy, so
// ewgate_api_denied_total does not see it; the handshake's own counter
// does, by reason. A reader's watch shows in ewgate_api_watchers.
func TestRunAPIMetrics(t *testing.T) {
	w := newWorld(t, "v1")
	w.writeConfig("v1")
	apiAddr := w.runWithAPI("--api-read-ids", "spiffe://cluster.local/ns/demo/sa/reader")
	metric := func(name string) string {
		_, body, err := httpGet("http://" + w.admin + "/metrics")
		if err != nil {
			return err.Error()
		}
		for line := range strings.Lines(body) {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return strings.TrimSpace(v)
			}
		}
		return "absent"
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Dial checks the server's health, which the refused handshake fails.
	_, closer, err := api.Dial(ctx, apiAddr, identity.ClientTLSConfig(w.source("intruder"), nil))
	if err == nil {
		closer.Close()
		t.Fatal("an ID no API policy names got through the handshake")
	}
	await.True(t, 10*time.Second, "the refused handshake counted", func() bool {
		v := metric(`ewgate_api_handshakes_rejected_total{reason="not_allowed"}`)
		return v != "0" && v != "absent"
	})

	c, closer, err := api.Dial(ctx, apiAddr, identity.ClientTLSConfig(w.source("reader"), nil))
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	stream, err := c.WatchResolve(ctx, &ewgatev1.WatchResolveRequest{
		Target: &ewgatev1.WatchResolveRequest_Sni{Sni: "outbound_.9080_._." + workload.EchoHost}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if v := metric("ewgate_api_watchers"); v != "1" {
		t.Errorf("ewgate_api_watchers = %s with one watch open, want 1", v)
	}
}
