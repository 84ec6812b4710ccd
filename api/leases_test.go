package api

import (
	"context"
	"errors"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/leakcheck"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/discovery"
)

// runLeases starts l.Run until the test ends.
func runLeases(t *testing.T, l *Leases) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := receive(t, "Run to return", done); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// noChange fails the test if l signalled a change.
func noChange(t *testing.T, l *Leases, after string) {
	t.Helper()
	select {
	case <-l.Changed():
		t.Fatalf("Changed signalled after %s", after)
	default:
	}
}

func registrars(eps []RegisteredEndpoint) []string {
	var out []string
	for _, ep := range eps {
		out = append(out, ep.Registrar+"/"+ep.Endpoint.Address)
	}
	return out
}

func TestRegisterRenewExpireDeregister(t *testing.T) {
	leakcheck.Check(t)
	clock := newFakeClock()
	leases := NewLeases(LeaseConfig{Clock: clock})
	runLeases(t, leases)
	s := serveUnix(t, ServerConfig{Registry: leases})
	c := dial(t, s.target)
	ctx := context.Background()

	vm1 := &ewgatev1.RegisterEndpointsRequest{Registrar: "vm-1", LeaseSeconds: 10, Endpoints: []*ewgatev1.Endpoint{{
		ServiceHost: "Reviews.Bookinfo.svc.cluster.local",
		Address:     "::ffff:10.0.0.7",
		Ports:       map[string]uint32{"http": 9080},
		Labels:      map[string]string{"version": "v1", "security.istio.io/tlsMode": "istio"},
		Locality:    "eu/z1",
		Weight:      2,
		Network:     "net-a",
	}}}
	resp, err := c.RegisterEndpoints(ctx, vm1)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetLeaseSeconds() != 10 {
		t.Errorf("lease %ds, want 10", resp.GetLeaseSeconds())
	}
	receive(t, "Changed after registration", leases.Changed())
	got := leases.Snapshot()
	want := []RegisteredEndpoint{{Registrar: "vm-1", ServiceHost: "reviews.bookinfo.svc.cluster.local", Endpoint: discovery.Endpoint{
		Address: "10.0.0.7", Ports: map[string]uint32{"http": 9080},
		Labels:   map[string]string{"version": "v1", "security.istio.io/tlsMode": "istio"},
		Locality: "eu/z1", Weight: 2, Network: "net-a",
	}}}
	if len(got) != 1 || got[0].Registrar != want[0].Registrar || got[0].ServiceHost != want[0].ServiceHost || !sameEndpoint(got[0].Endpoint, want[0].Endpoint) {
		t.Fatalf("snapshot %+v, want %+v", got, want)
	}

	// A second registrar with the default lease.
	vm2 := &ewgatev1.RegisterEndpointsRequest{Registrar: "vm-2", Endpoints: []*ewgatev1.Endpoint{{
		ServiceHost: "ratings.bookinfo.svc.cluster.local", Address: "10.0.0.8",
	}}}
	if resp, err := c.RegisterEndpoints(ctx, vm2); err != nil || resp.GetLeaseSeconds() != 30 {
		t.Fatalf("register vm-2: %v, %v; want a 30s lease", resp, err)
	}
	receive(t, "Changed after the second registration", leases.Changed())

	// Renewing with the same endpoints keeps them and signals nothing.
	clock.advance(9 * time.Second)
	if _, err := c.RegisterEndpoints(ctx, vm1); err != nil {
		t.Fatal(err)
	}
	noChange(t, leases, "a renewal")
	clock.advance(9 * time.Second) // 18s: vm-1 renewed at 9s holds until 19s
	if got := registrars(leases.Snapshot()); strings.Join(got, " ") != "vm-1/10.0.0.7 vm-2/10.0.0.8" {
		t.Fatalf("snapshot %v after renewal", got)
	}

	// vm-1 stops renewing: its lease runs out and the sweeper withdraws it.
	clock.advance(time.Second)
	receive(t, "Changed after expiry", leases.Changed())
	if got := registrars(leases.Snapshot()); strings.Join(got, " ") != "vm-2/10.0.0.8" {
		t.Fatalf("snapshot %v after vm-1 expired, want vm-2 only", got)
	}

	// Deregistration withdraws at once, and is idempotent.
	if _, err := c.DeregisterEndpoints(ctx, &ewgatev1.DeregisterEndpointsRequest{Registrar: "vm-2"}); err != nil {
		t.Fatal(err)
	}
	receive(t, "Changed after deregistration", leases.Changed())
	if got := leases.Snapshot(); len(got) != 0 {
		t.Fatalf("snapshot %v after deregistration, want empty", got)
	}
	if _, err := c.DeregisterEndpoints(ctx, &ewgatev1.DeregisterEndpointsRequest{Registrar: "vm-2"}); err != nil {
		t.Fatal(err)
	}
	noChange(t, leases, "deregistering a registrar with nothing")
	_, err = c.DeregisterEndpoints(ctx, &ewgatev1.DeregisterEndpointsRequest{})
	wantStatus(t, err, codes.InvalidArgument, "registrar")
}

// TestLeaseExpiresWithoutSweep: Snapshot hides an expired lease even
// before the sweeper runs, and a deregistration of it still signals.
func TestLeaseExpiresWithoutSweep(t *testing.T) {
	clock := newFakeClock()
	leases := NewLeases(LeaseConfig{Clock: clock})
	ep := RegisteredEndpoint{ServiceHost: "a.example", Endpoint: discovery.Endpoint{Address: "10.0.0.1"}}
	if _, err := leases.Register(CallerLocal, "r", 5*time.Second, []RegisteredEndpoint{ep}); err != nil {
		t.Fatal(err)
	}
	<-leases.Changed()
	clock.advance(5 * time.Second)
	if got := leases.Snapshot(); len(got) != 0 {
		t.Fatalf("snapshot %v after expiry, want empty", got)
	}
	if err := leases.Deregister(CallerLocal, "r"); err != nil {
		t.Fatal(err)
	}
	receive(t, "Changed after deregistering an expired lease", leases.Changed())
}

func TestRegisterLimits(t *testing.T) {
	leakcheck.Check(t)
	leases := NewLeases(LeaseConfig{Clock: newFakeClock(), MaxRegistrars: 1, MaxEndpoints: 2})
	s := serveUnix(t, ServerConfig{Registry: leases})
	c := dial(t, s.target)
	ctx := context.Background()
	ep := &ewgatev1.Endpoint{ServiceHost: "a.example", Address: "10.0.0.1"}
	ep2 := &ewgatev1.Endpoint{ServiceHost: "a.example", Address: "10.0.0.2"}
	ep3 := &ewgatev1.Endpoint{ServiceHost: "a.example", Address: "10.0.0.3"}

	if _, err := c.RegisterEndpoints(ctx, &ewgatev1.RegisterEndpointsRequest{Registrar: "r1", Endpoints: []*ewgatev1.Endpoint{ep, ep2, ep3}}); err == nil {
		t.Fatal("3 endpoints accepted over a limit of 2")
	} else {
		wantStatus(t, err, codes.InvalidArgument, "endpoints")
	}
	if _, err := c.RegisterEndpoints(ctx, &ewgatev1.RegisterEndpointsRequest{Registrar: "r1", Endpoints: []*ewgatev1.Endpoint{ep}}); err != nil {
		t.Fatal(err)
	}
	_, err := c.RegisterEndpoints(ctx, &ewgatev1.RegisterEndpointsRequest{Registrar: "r2"})
	wantStatus(t, err, codes.ResourceExhausted, "")
	if _, err := leases.Register(CallerLocal, "r2", 0, nil); !errors.Is(err, ErrTooManyRegistrars) {
		t.Errorf("Register over the limit: %v, want ErrTooManyRegistrars", err)
	}
	// The registrar holding a lease may still renew.
	if _, err := c.RegisterEndpoints(ctx, &ewgatev1.RegisterEndpointsRequest{Registrar: "r1"}); err != nil {
		t.Errorf("renewal at the limit: %v", err)
	}
}

func TestRegisterValidation(t *testing.T) {
	leakcheck.Check(t)
	leases := NewLeases(LeaseConfig{Clock: newFakeClock(), MaxWeight: 100,
		Addresses: discovery.AddressPolicy{Own: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, AllowNames: true}})
	s := serveUnix(t, ServerConfig{Registry: leases})
	c := dial(t, s.target)

	valid := func() *ewgatev1.Endpoint {
		return &ewgatev1.Endpoint{ServiceHost: "reviews.bookinfo.svc.cluster.local", Address: "10.0.0.7",
			Ports: map[string]uint32{"http": 9080}, Labels: map[string]string{"app": "reviews"}}
	}
	with := func(edit func(*ewgatev1.Endpoint)) []*ewgatev1.Endpoint {
		e := valid()
		edit(e)
		return []*ewgatev1.Endpoint{valid(), e}
	}
	for _, tc := range []struct {
		name  string
		req   *ewgatev1.RegisterEndpointsRequest
		field string
	}{
		{"no registrar", &ewgatev1.RegisterEndpointsRequest{}, "registrar"},
		{"registrar with space", &ewgatev1.RegisterEndpointsRequest{Registrar: "vm 1"}, "registrar"},
		{"registrar too long", &ewgatev1.RegisterEndpointsRequest{Registrar: strings.Repeat("r", 254)}, "registrar"},
		{"lease too long", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", LeaseSeconds: 3601}, "lease_seconds"},
		{"unix address", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "unix:///run/app.sock" })}, "endpoints[1].address"},
		{"unix address without slashes", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "unix:app.sock" })}, "endpoints[1].address"},
		{"address with port", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "10.0.0.7:9080" })}, "endpoints[1].address"},
		{"empty address", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "" })}, "endpoints[1].address"},
		{"unspecified address", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "0.0.0.0" })}, "endpoints[1].address"},
		{"multicast address", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "ff02::1" })}, "endpoints[1].address"},
		{"zoned address", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "fe80::1%eth0" })}, "endpoints[1].address"},
		{"numeric name", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "10.1" })}, "endpoints[1].address"},
		{"URL", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "http://x.example" })}, "endpoints[1].address"},
		{"wildcard service", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.ServiceHost = "*.local" })}, "endpoints[1].service_host"},
		{"IP service", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.ServiceHost = "10.0.0.1" })}, "endpoints[1].service_host"},
		{"no service", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.ServiceHost = "" })}, "endpoints[1].service_host"},
		{"port 0", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Ports["http"] = 0 })}, `endpoints[1].ports["http"]`},
		{"port 65536", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Ports["grpc"] = 65536 })}, `endpoints[1].ports["grpc"]`},
		{"port name", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Ports["HTTP"] = 80 })}, `endpoints[1].ports["HTTP"]`},
		{"label key", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Labels[""] = "x" })}, "endpoints[1].labels"},
		{"label value", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Labels["app"] = "a b" })}, `endpoints[1].labels["app"]`},
		{"locality", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Locality = "a/b/c/d" })}, "endpoints[1].locality"},
		{"duplicate", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Ports = nil })}, "endpoints[1].address"},
		{"loopback", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "127.0.0.1" })}, "endpoints[1].address"},
		{"mapped loopback", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "::ffff:127.0.0.1" })}, "endpoints[1].address"},
		{"metadata server", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "169.254.169.254" })}, "endpoints[1].address"},
		{"the gateway's own address", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "192.0.2.1" })}, "endpoints[1].address"},
		// Names are refused even though the policy allows them for files.
		{"metadata server by name", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Address = "metadata.google.internal" })}, "endpoints[1].address"},
		{"weight over the cap", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Weight = 101 })}, "endpoints[1].weight"},
		{"weight 2^32-1", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Weight = math.MaxUint32 })}, "endpoints[1].weight"},
		{"network", &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: with(func(e *ewgatev1.Endpoint) { e.Network = "net a" })}, "endpoints[1].network"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.RegisterEndpoints(context.Background(), tc.req)
			wantStatus(t, err, codes.InvalidArgument, tc.field)
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("message %q does not name %s", err, tc.field)
			}
		})
	}
	// Nothing invalid was kept, nothing was signalled.
	if got := leases.Snapshot(); len(got) != 0 {
		t.Errorf("snapshot %v after invalid registrations, want empty", got)
	}
	noChange(t, leases, "invalid registrations")

	// The request is not modified by normalization, and Snapshot's result
	// belongs to the caller.
	req := &ewgatev1.RegisterEndpointsRequest{Registrar: "r", Endpoints: []*ewgatev1.Endpoint{valid()}}
	sent := proto.Clone(req)
	if _, err := c.RegisterEndpoints(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(req, sent) {
		t.Error("request modified")
	}
	snap := leases.Snapshot()
	snap[0].Endpoint.Labels["app"] = "changed"
	if leases.Snapshot()[0].Endpoint.Labels["app"] != "reviews" {
		t.Error("modifying a snapshot changed the registry")
	}
}
