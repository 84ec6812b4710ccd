package api

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/conncount"
	"github.com/ewgate/ewgate/internal/leakcheck"
)

// tlsAPI serves srv with SPIFFE mTLS for the mesh's trust domain and
// returns a function that dials it as the workload id.
func tlsAPI(t *testing.T, srv *Server) func(id string) ewgatev1.GatewayServiceClient {
	t.Helper()
	mesh := newCA(t, "ewgate.test")
	serverTLS := identity.ServerTLSConfig(newSource(t, mesh, "spiffe://ewgate.test/ns/istio-system/sa/eastwest"), nil)
	addr := serveTCP(t, srv, func(ctx context.Context, lis net.Listener) error { return srv.ServeTLS(ctx, lis, serverTLS) })
	return func(id string) ewgatev1.GatewayServiceClient {
		c, closer, err := Dial(context.Background(), addr, identity.ClientTLSConfig(newSource(t, mesh, id), nil))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { closer.Close() })
		return c
	}
}

func registerReq(registrar, addr string) *ewgatev1.RegisterEndpointsRequest {
	return &ewgatev1.RegisterEndpointsRequest{Registrar: registrar, Endpoints: []*ewgatev1.Endpoint{{
		ServiceHost: "reviews.bookinfo.svc.cluster.local", Address: addr,
		Ports:  map[string]uint32{"http": 9080},
		Labels: map[string]string{"version": "v1", "security.istio.io/tlsMode": "istio"},
	}}}
}

// TestAccessPolicy: over TLS, registration is denied to every caller the
// policy does not name (by default, to all), reads follow their own
// policy, and each denial is counted; the unix socket may register.
func TestAccessPolicy(t *testing.T) {
	leakcheck.Check(t)
	ctx := context.Background()
	res := newFakeResolver()
	res.set(reviews, reviewsTargets...)

	// The default policy: any caller of the trust domain may read, none
	// may register.
	leases := NewLeases(LeaseConfig{Clock: newFakeClock()})
	srv := NewServer(ServerConfig{Resolver: res, Registry: leases, Network: "net-a"})
	as := tlsAPI(t, srv)
	agent := as("spiffe://ewgate.test/ns/vms/sa/agent")
	if _, err := agent.Resolve(ctx, &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: reviews.SNI()}}); err != nil {
		t.Fatalf("Resolve with the default policy: %v", err)
	}
	const n = 5
	for range n {
		_, err := agent.RegisterEndpoints(ctx, registerReq("vm-1", "10.0.0.7"))
		wantStatus(t, err, codes.PermissionDenied, "")
	}
	_, err := agent.DeregisterEndpoints(ctx, &ewgatev1.DeregisterEndpointsRequest{Registrar: "vm-1"})
	wantStatus(t, err, codes.PermissionDenied, "")
	if got := leases.Snapshot(); len(got) != 0 {
		t.Fatalf("denied registrations were kept: %v", got)
	}
	if got := srv.Denied(); got != n+1 {
		t.Errorf("Denied() = %d, want %d", got, n+1)
	}
	noChange(t, leases, "denied registrations")

	// A policy naming the agents' namespace for registration and the
	// operators' for reads.
	leases = NewLeases(LeaseConfig{Clock: newFakeClock()})
	srv = NewServer(ServerConfig{Resolver: res, Registry: leases, Network: "net-a", Access: AccessPolicy{
		Read:     identity.Policy{IDPrefixes: []string{"spiffe://ewgate.test/ns/ops"}},
		Register: identity.Policy{IDPrefixes: []string{"spiffe://ewgate.test/ns/vms"}},
	}})
	as = tlsAPI(t, srv)
	agent, intruder, ops := as("spiffe://ewgate.test/ns/vms/sa/agent"), as("spiffe://ewgate.test/ns/vms-x/sa/agent"), as("spiffe://ewgate.test/ns/ops/sa/ctl")
	if _, err := agent.RegisterEndpoints(ctx, registerReq("vm-1", "10.0.0.7")); err != nil {
		t.Fatalf("allowed registrar: %v", err)
	}
	_, err = intruder.RegisterEndpoints(ctx, registerReq("vm-2", "10.0.0.8"))
	wantStatus(t, err, codes.PermissionDenied, "")
	_, err = agent.Resolve(ctx, &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: reviews.SNI()}})
	wantStatus(t, err, codes.PermissionDenied, "")
	if _, err := ops.Resolve(ctx, &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: reviews.SNI()}}); err != nil {
		t.Fatalf("allowed reader: %v", err)
	}
	stream, err := agent.WatchResolve(ctx, &ewgatev1.WatchResolveRequest{Target: &ewgatev1.WatchResolveRequest_Sni{Sni: reviews.SNI()}})
	if err == nil {
		_, err = stream.Recv()
	}
	wantStatus(t, err, codes.PermissionDenied, "")
	if got := registrars(leases.Snapshot()); len(got) != 1 || got[0] != "vm-1/10.0.0.7" {
		t.Fatalf("snapshot %v, want vm-1's endpoint only", got)
	}

	// An invalid policy is an error at serve time, not a silent default.
	bad := NewServer(ServerConfig{Access: AccessPolicy{Register: identity.Policy{IDs: []string{"not-an-id"}}}})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.ServeTLS(ctx, lis, serverTLSForTest(t)); err == nil {
		t.Fatal("ServeTLS with an invalid policy: want an error")
	}
}

// serverTLSForTest is a server TLS configuration of a throwaway CA.
func serverTLSForTest(t *testing.T) *tls.Config {
	t.Helper()
	ca := newCA(t, "ewgate.test")
	return identity.ServerTLSConfig(newSource(t, ca, "spiffe://ewgate.test/ns/istio-system/sa/eastwest"), nil)
}

// TestLeaseHijackRefused: a registrar name belongs to the identity that
// took its lease; another allowed caller can neither replace nor withdraw
// it, until the lease runs out.
func TestLeaseHijackRefused(t *testing.T) {
	leakcheck.Check(t)
	ctx := context.Background()
	clock := newFakeClock()
	leases := NewLeases(LeaseConfig{Clock: clock})
	srv := NewServer(ServerConfig{Registry: leases, Access: AccessPolicy{
		Register: identity.Policy{IDPrefixes: []string{"spiffe://ewgate.test/ns/vms"}},
	}})
	as := tlsAPI(t, srv)
	owner, other := as("spiffe://ewgate.test/ns/vms/sa/vm-1"), as("spiffe://ewgate.test/ns/vms/sa/vm-2")

	req := registerReq("vm-1", "10.0.0.7")
	req.LeaseSeconds = 10
	if _, err := owner.RegisterEndpoints(ctx, req); err != nil {
		t.Fatal(err)
	}
	receive(t, "Changed after registration", leases.Changed())
	_, err := other.RegisterEndpoints(ctx, registerReq("vm-1", "10.0.0.66"))
	wantStatus(t, err, codes.PermissionDenied, "")
	_, err = other.DeregisterEndpoints(ctx, &ewgatev1.DeregisterEndpointsRequest{Registrar: "vm-1"})
	wantStatus(t, err, codes.PermissionDenied, "")
	if got := registrars(leases.Snapshot()); len(got) != 1 || got[0] != "vm-1/10.0.0.7" {
		t.Fatalf("snapshot %v after a hijack attempt, want the owner's endpoint", got)
	}
	noChange(t, leases, "refused hijacks")

	// The unix socket's caller is another identity too.
	if _, err := leases.Register(CallerLocal, "vm-1", 0, nil); err == nil {
		t.Fatal("a local caller replaced a lease held over mTLS")
	}
	// The owner renews and withdraws its own lease.
	if _, err := owner.RegisterEndpoints(ctx, req); err != nil {
		t.Fatalf("owner's renewal: %v", err)
	}
	clock.advance(10 * time.Second)
	if _, err := other.RegisterEndpoints(ctx, registerReq("vm-1", "10.0.0.8")); err != nil {
		t.Fatalf("registering a name whose lease ran out: %v", err)
	}
	_, err = owner.DeregisterEndpoints(ctx, &ewgatev1.DeregisterEndpointsRequest{Registrar: "vm-1"})
	wantStatus(t, err, codes.PermissionDenied, "")
	if got := registrars(leases.Snapshot()); len(got) != 1 || got[0] != "vm-1/10.0.0.8" {
		t.Fatalf("snapshot %v, want the new holder's endpoint", got)
	}
}

// TestLocalCallers: the unix socket may register; plaintext loopback TCP
// may read but not register.
func TestLocalCallers(t *testing.T) {
	leakcheck.Check(t)
	ctx := context.Background()
	res := newFakeResolver()
	res.set(reviews, reviewsTargets...)
	leases := NewLeases(LeaseConfig{Clock: newFakeClock()})
	cfg := ServerConfig{Resolver: res, Registry: leases, Network: "net-a"}
	s := serveUnix(t, cfg)
	if _, err := dial(t, s.target).RegisterEndpoints(ctx, registerReq("local-agent", "10.0.0.7")); err != nil {
		t.Fatalf("unix socket registration: %v", err)
	}
	srv := NewServer(cfg)
	tcp := dial(t, serveTCP(t, srv, srv.Serve))
	if _, err := tcp.Resolve(ctx, &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: reviews.SNI()}}); err != nil {
		t.Fatalf("loopback Resolve: %v", err)
	}
	_, err := tcp.RegisterEndpoints(ctx, registerReq("tcp-agent", "10.0.0.8"))
	wantStatus(t, err, codes.PermissionDenied, "")
}

// TestMaxConnections: a listener holds at most MaxConnections
// connections; a caller over the cap is served once another leaves.
func TestMaxConnections(t *testing.T) {
	leakcheck.Check(t)
	res := newFakeResolver()
	res.set(reviews, reviewsTargets...)
	srv := NewServer(ServerConfig{Resolver: res, Network: "net-a", MaxConnections: 1})
	listeners := make(chan *conncount.Listener, 1)
	addr := serveTCP(t, srv, func(ctx context.Context, lis net.Listener) error {
		cl := &conncount.Listener{Listener: lis}
		listeners <- cl
		return srv.Serve(ctx, cl)
	})
	counted := receive(t, "the listener", listeners)
	ctx := context.Background()
	first, closeFirst, err := Dial(ctx, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() {
		c, closer, err := Dial(ctx, addr, nil)
		if err == nil {
			_, err = c.Resolve(ctx, &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: reviews.SNI()}})
			closer.Close()
		}
		second <- err
	}()
	if _, err := first.Resolve(ctx, &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: reviews.SNI()}}); err != nil {
		t.Fatal(err)
	}
	closeFirst.Close()
	if err := receive(t, "the caller over the cap to be served", second); err != nil {
		t.Fatalf("caller over the cap, once the first left: %v", err)
	}
	if got := counted.Most(); got > 1 {
		t.Fatalf("%d connections open at once, cap 1", got)
	}
}
