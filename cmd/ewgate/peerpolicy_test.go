package main

import (
	"context"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/ewgate/ewgate/sni"
	"github.com/ewgate/ewgate/tunnel"
)

// TestTunnelPeerPolicy: by default a gateway's tunnels accept, and dial,
// only peers with its own SPIFFE ID (the gateways' service account), not
// every workload of the trust domain; --peer-ids and --peer-id-prefixes
// replace that. Real endpoints and TLS, both ways.
func TestTunnelPeerPolicy(t *testing.T) {
	leakcheck.Check(t)
	ca, err := identity.NewDevCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	source := func(path string) *identity.MemorySource {
		src, err := ca.NewSource(spiffeid.RequireFromPath(ca.TrustDomain(), path), identity.IssueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return src
	}
	const gw, workload = "/ns/istio-system/sa/eastwest", "/ns/demo/sa/sleep"
	gwSrc := source(gw)

	for _, tc := range []struct {
		name string
		s    settings
		want identity.Policy
	}{
		{"default: the gateway's own ID", defaultSettings(), identity.Policy{IDs: []string{"spiffe://cluster.local" + gw}}},
		{"flags replace it", settings{PeerIDs: []string{"spiffe://cluster.local/ns/x/sa/y"}, PeerIDPrefixes: []string{"spiffe://other.example/ns/istio-system"}},
			identity.Policy{IDs: []string{"spiffe://cluster.local/ns/x/sa/y"}, IDPrefixes: []string{"spiffe://other.example/ns/istio-system"}}},
	} {
		got, err := tunnelPolicy(tc.s, gwSrc)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: tunnelPolicy = %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}

	// endpoint starts an endpoint with src's SVID and the default policy,
	// or, for anyone, a policy of the whole trust domain, so that only
	// the other side can refuse.
	endpoint := func(src identity.Source, handler tunnel.Handler, anyone ...bool) *tunnel.Endpoint {
		pol, err := tunnelPolicy(defaultSettings(), src)
		if err != nil {
			t.Fatal(err)
		}
		if len(anyone) > 0 {
			pol = identity.Policy{TrustDomains: []string{"cluster.local"}}
		}
		az, err := identity.NewAuthorizer(pol, nil)
		if err != nil {
			t.Fatal(err)
		}
		ep, err := tunnel.New("127.0.0.1:0", tunnel.Config{Source: src, Authorizer: az, Handler: handler, Transport: tunnel.TransportQUIC})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ep.Close() })
		return ep
	}
	echo := func(_ context.Context, _ tunnel.Header, s *tunnel.Stream) { io.Copy(s, s) }
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	hdr := tunnel.Header{Key: sni.Key{Host: "echo.demo.svc.cluster.local", Port: 9080}, ClientAddr: "127.0.0.1:1"}

	// A workload of the trust domain dials the gateway: refused.
	server := endpoint(gwSrc, echo)
	intruder := endpoint(source(workload), nil, true)
	if _, err := intruder.Dial(ctx, server.Addr().String(), hdr); !errors.Is(err, tunnel.ErrRejected) {
		t.Errorf("a workload SVID dialing a gateway: %v, want ErrRejected", err)
	}
	if n := server.Stats().InboundRejections[string(identity.ReasonNotAllowed)]; n != 1 {
		t.Errorf("gateway InboundRejections %v, want one %s", server.Stats().InboundRejections, identity.ReasonNotAllowed)
	}

	// The gateway dials a workload posing as a gateway: refused.
	fake := endpoint(source(workload), echo, true)
	client := endpoint(source(gw), nil)
	if _, err := client.Dial(ctx, fake.Addr().String(), hdr); err == nil {
		t.Error("a gateway kept a link to a workload SVID")
	}
	if n := len(client.Stats().Peers); n != 1 {
		t.Fatalf("client stats list %d peers, want the one it dialed", n)
	}
	for _, p := range client.Stats().Peers {
		if p.HandshakeFailures[string(identity.ReasonNotAllowed)] != 1 {
			t.Errorf("gateway's outbound stats %+v, want one %s", p, identity.ReasonNotAllowed)
		}
	}

	// Another gateway with the same service account: accepted.
	s, err := client.Dial(ctx, server.Addr().String(), hdr)
	if err != nil {
		t.Fatalf("a gateway dialing a gateway: %v", err)
	}
	defer s.Close()
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(s, b[:]); err != nil || b[0] != 'x' {
		t.Errorf("echo: %q, %v", b, err)
	}
}

// TestRunTunnelsMemberBinding: with real gateways and gossip, a tunnel
// link is bound to the member gossip knows. network-b's gateway refuses a
// link from a gateway SVID naming a member that announces another ID, or
// naming no live member; network-a's gateway refuses a link to network-b's
// advertised tunnel address when the gateway answering there presents
// another gateway's ID, so the client's connection never reaches it.
func TestRunTunnelsMemberBinding(t *testing.T) {
	wa := newWorld(t)
	wa.writeConfig() // the service exists in network-a, with no endpoint here
	wb := newWorldCA(t, wa.ca, "network-b", "v1")
	wb.writeConfig("v1")
	key := gossipKeyFile(t)
	gossipA := loopbackAddr(t)

	// An impostor holding network-c's gateway SVID (in the peer policy)
	// answers at the address network-b's gateway advertises.
	impostorSrc, err := wa.ca.NewSource(spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/gw-c"), identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	impostor, err := tunnel.New("127.0.0.1:0", tunnel.Config{Source: impostorSrc, Handler: func(context.Context, tunnel.Header, *tunnel.Stream) {
		t.Error("the impostor got a stream")
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer impostor.Close()
	wa.run(tunnelArgs(t, wa, key, "a", gossipA)...)
	argsB := append(tunnelArgs(t, wb, key, "b", loopbackAddr(t), gossipA), "--tunnel-advertise", impostor.Addr().String())
	wb.run(argsB...)

	await.True(t, 30*time.Second, "network-a's gateway to refuse the impostor", func() bool {
		if c, err := wa.dial("v1"); err == nil {
			c.Close()
			t.Fatal("a connection reached network-b through the impostor's address")
		}
		_, body, _ := httpGet("http://" + wa.admin + "/debug/tunnels")
		return strings.Contains(body, `"`+tunnel.ReasonWrongPeer+`": `)
	})

	// Links straight to network-b's real tunnel port with network-c's
	// gateway SVID, naming member a (which announces gw-a) or nobody.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for name, reason := range map[string]string{"a": tunnel.ReasonIDMismatch, "nobody": tunnel.ReasonNotMember} {
		ep, err := tunnel.New("127.0.0.1:0", tunnel.Config{Source: impostorSrc, Name: name, Transport: tunnel.TransportQUIC})
		if err != nil {
			t.Fatal(err)
		}
		_, err = ep.Dial(ctx, flagValue(t, argsB, "--tunnel-address"), tunnel.Header{Key: sni.Key{Host: "echo.demo.svc.cluster.local", Port: 9080}, ClientAddr: "127.0.0.1:1"})
		ep.Close()
		if !errors.Is(err, tunnel.ErrRejected) || !strings.Contains(err.Error(), reason) {
			t.Errorf("a link naming member %q: %v, want ErrRejected (%s)", name, err, reason)
		}
	}
	if got := metric(t, wb.admin, "ewgate_tunnel_inbound_rejections_total"); got != 2 {
		t.Errorf("ewgate_tunnel_inbound_rejections_total = %d on network-b, want 2", got)
	}
	_, body, _ := httpGet("http://" + wb.admin + "/debug/tunnels")
	for _, reason := range []string{tunnel.ReasonIDMismatch, tunnel.ReasonNotMember} {
		if !strings.Contains(body, `"`+reason+`": 1`) {
			t.Errorf("network-b's /debug/tunnels lacks one %s:\n%s", reason, body)
		}
	}
}
