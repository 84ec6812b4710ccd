package api

import (
	"context"
	"fmt"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	reflectiongrpc "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/sni"
)

var reviews = sni.Key{Host: "reviews.bookinfo.svc.cluster.local", Port: 9080, Subset: "v1"}

var reviewsTargets = []discovery.ResolvedTarget{
	{Address: "10.0.0.7", Weight: 2, Network: "net-a", Locality: "eu/z1", Via: discovery.ViaDirect},
	{Address: "192.0.2.10:15443", Weight: 3, Network: "net-b", Locality: "us/z2", Via: discovery.ViaGateway, Gateway: "gw-b1"},
}

var reviewsProto = &ewgatev1.ResolveResponse{
	Sni:     "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local",
	Service: &ewgatev1.ServiceKey{Host: "reviews.bookinfo.svc.cluster.local", Port: 9080, Subset: "v1"},
	Targets: []*ewgatev1.Target{
		{Address: "10.0.0.7", Weight: 2, Network: "net-a", Locality: "eu/z1", Via: ewgatev1.Via_VIA_DIRECT},
		{Address: "192.0.2.10:15443", Weight: 3, Network: "net-b", Locality: "us/z2", Via: ewgatev1.Via_VIA_GATEWAY, Gateway: "gw-b1"},
	},
}

func wantProto(t *testing.T, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Fatalf("got  %s\nwant %s", protojson.Format(got), protojson.Format(want))
	}
}

func TestResolve(t *testing.T) {
	leakcheck.Check(t)
	res := newFakeResolver()
	res.set(reviews, reviewsTargets...)
	s := serveUnix(t, ServerConfig{Resolver: res, Network: "net-a"})
	c := dial(t, s.target)
	ctx := context.Background()

	for _, req := range []*ewgatev1.ResolveRequest{
		{Target: &ewgatev1.ResolveRequest_Sni{Sni: "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local"}, FromNetwork: "net-c"},
		{Target: &ewgatev1.ResolveRequest_Sni{Sni: "outbound|9080|v1|Reviews.Bookinfo.svc.cluster.local"}, FromNetwork: "net-c"},
		{Target: &ewgatev1.ResolveRequest_Service{Service: &ewgatev1.ServiceKey{Host: "REVIEWS.bookinfo.svc.cluster.local", Port: 9080, Subset: "v1"}}, FromNetwork: "net-c"},
	} {
		got, err := c.Resolve(ctx, req)
		if err != nil {
			t.Fatalf("Resolve(%v): %v", req, err)
		}
		wantProto(t, got, reviewsProto)
		if from := res.lastFrom(); from != "net-c" {
			t.Errorf("resolved from %q, want net-c", from)
		}
	}

	// An empty from_network is the gateway's own.
	if _, err := c.Resolve(ctx, &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: reviews.SNI()}}); err != nil {
		t.Fatal(err)
	}
	if from := res.lastFrom(); from != "net-a" {
		t.Errorf("resolved from %q, want the server's network net-a", from)
	}

	for _, tc := range []struct {
		name  string
		req   *ewgatev1.ResolveRequest
		code  codes.Code
		field string
	}{
		{"not an SNI", &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: "reviews.bookinfo"}}, codes.InvalidArgument, "sni"},
		{"IP host", &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: "outbound_.80_._.10.0.0.1"}}, codes.InvalidArgument, "sni"},
		{"no target", &ewgatev1.ResolveRequest{}, codes.InvalidArgument, "sni"},
		{"port 0", &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Service{Service: &ewgatev1.ServiceKey{Host: "a.b", Port: 0}}}, codes.InvalidArgument, "service.port"},
		{"port too large", &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Service{Service: &ewgatev1.ServiceKey{Host: "a.b", Port: 65536}}}, codes.InvalidArgument, "service.port"},
		{"wildcard host", &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Service{Service: &ewgatev1.ServiceKey{Host: "*.local", Port: 80}}}, codes.InvalidArgument, "service.host"},
		{"bad subset", &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Service{Service: &ewgatev1.ServiceKey{Host: "a.b", Port: 80, Subset: "V_1"}}}, codes.InvalidArgument, "service.subset"},
		{"bad network", &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: reviews.SNI()}, FromNetwork: "a b"}, codes.InvalidArgument, "from_network"},
		{"unknown service", &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: "outbound_.9080_._.ratings.bookinfo.svc.cluster.local"}}, codes.NotFound, ""},
		{"unknown subset", &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: "outbound_.9080_.v9_.reviews.bookinfo.svc.cluster.local"}}, codes.NotFound, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Resolve(ctx, tc.req)
			wantStatus(t, err, tc.code, tc.field)
		})
	}
}

func TestResolveNeedsNetwork(t *testing.T) {
	leakcheck.Check(t)
	s := serveUnix(t, ServerConfig{Resolver: newFakeResolver()}) // no Network
	c := dial(t, s.target)
	_, err := c.Resolve(context.Background(), &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: reviews.SNI()}})
	wantStatus(t, err, codes.InvalidArgument, "from_network")
}

func TestResolverErrorIsInternal(t *testing.T) {
	leakcheck.Check(t)
	res := newFakeResolver()
	res.err = fmt.Errorf("catalog: %w", os.ErrClosed)
	s := serveUnix(t, ServerConfig{Resolver: res, Network: "net-a"})
	c := dial(t, s.target)
	_, err := c.Resolve(context.Background(), &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: reviews.SNI()}})
	wantStatus(t, err, codes.Internal, "")
}

func TestUnconfiguredRPCsAreUnimplemented(t *testing.T) {
	leakcheck.Check(t)
	s := serveUnix(t, ServerConfig{})
	c := dial(t, s.target)
	ctx := context.Background()
	_, err := c.Resolve(ctx, &ewgatev1.ResolveRequest{})
	wantStatus(t, err, codes.Unimplemented, "")
	_, err = c.ListMembers(ctx, &ewgatev1.ListMembersRequest{})
	wantStatus(t, err, codes.Unimplemented, "")
	_, err = c.RegisterEndpoints(ctx, &ewgatev1.RegisterEndpointsRequest{Registrar: "x"})
	wantStatus(t, err, codes.Unimplemented, "")
}

func TestListMembersAndNetworks(t *testing.T) {
	leakcheck.Check(t)
	m := &fakeMembership{
		members: []Member{
			{Name: "gw-b1", Network: "net-b", PassthroughAddress: "192.0.2.10:15443", TunnelAddress: "192.0.2.10:15008",
				SPIFFEID: "spiffe://ewgate.test/ns/istio-system/sa/eastwest", State: MemberDead},
			{Name: "gw-a1", Network: "net-a", PassthroughAddress: "192.0.2.1:15443", State: MemberAlive},
			{Name: "gw-a2", Network: "net-a", State: "confused"},
		},
		networks: []Network{{Name: "net-b", Gateways: 0, Services: 3}, {Name: "net-a", Gateways: 2, Services: 5}},
		catalog: []CatalogEntry{
			{Network: "net-b", Host: "reviews.bookinfo.svc.cluster.local", Port: 9080, Subset: "v1",
				Healthy: []discovery.LocalityCount{{Locality: "r/z", Count: 2}}, Gateways: []string{"gw-b1"}},
			{Network: "net-a", Host: "reviews.bookinfo.svc.cluster.local", Port: 9080, Gateways: []string{"gw-a1", "gw-a2"}},
		},
	}
	s := serveUnix(t, ServerConfig{Membership: m})
	c := dial(t, s.target)
	ctx := context.Background()

	members, err := c.ListMembers(ctx, &ewgatev1.ListMembersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	wantProto(t, members, &ewgatev1.ListMembersResponse{Members: []*ewgatev1.Member{
		{Name: "gw-a1", Network: "net-a", PassthroughAddress: "192.0.2.1:15443", State: ewgatev1.MemberState_MEMBER_STATE_ALIVE},
		{Name: "gw-a2", Network: "net-a", State: ewgatev1.MemberState_MEMBER_STATE_UNSPECIFIED},
		{Name: "gw-b1", Network: "net-b", PassthroughAddress: "192.0.2.10:15443", TunnelAddress: "192.0.2.10:15008",
			SpiffeId: "spiffe://ewgate.test/ns/istio-system/sa/eastwest", State: ewgatev1.MemberState_MEMBER_STATE_DEAD},
	}})

	networks, err := c.ListNetworks(ctx, &ewgatev1.ListNetworksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	wantProto(t, networks, &ewgatev1.ListNetworksResponse{Networks: []*ewgatev1.Network{
		{Name: "net-a", Gateways: 2, Services: 5}, {Name: "net-b", Services: 3},
	}})

	catalog, err := c.ListCatalog(ctx, &ewgatev1.ListCatalogRequest{})
	if err != nil {
		t.Fatal(err)
	}
	wantProto(t, catalog, &ewgatev1.ListCatalogResponse{Entries: []*ewgatev1.CatalogEntry{
		{Network: "net-a", Host: "reviews.bookinfo.svc.cluster.local", Port: 9080, Gateways: []string{"gw-a1", "gw-a2"}},
		{Network: "net-b", Host: "reviews.bookinfo.svc.cluster.local", Port: 9080, Subset: "v1",
			Healthy: []*ewgatev1.LocalityCount{{Locality: "r/z", Count: 2}}, Gateways: []string{"gw-b1"}},
	}})
}

func TestHealthAndReflection(t *testing.T) {
	leakcheck.Check(t)
	s := serveUnix(t, ServerConfig{})
	conn, err := grpc.NewClient(s.target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	for _, svc := range []string{"", "ewgate.v1.GatewayService"} {
		resp, err := healthgrpc.NewHealthClient(conn).Check(ctx, &healthgrpc.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthgrpc.HealthCheckResponse_SERVING {
			t.Errorf("health of %q: %v, %v; want SERVING", svc, resp, err)
		}
	}

	stream, err := reflectiongrpc.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectiongrpc.ServerReflectionRequest{
		MessageRequest: &reflectiongrpc.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, svc := range resp.GetListServicesResponse().GetService() {
		names = append(names, svc.GetName())
	}
	for _, want := range []string{"ewgate.v1.GatewayService", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, want %s among them", names, want)
		}
	}
	// The descriptors are there too, so that grpcurl can call the API.
	if err := stream.Send(&reflectiongrpc.ServerReflectionRequest{
		MessageRequest: &reflectiongrpc.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "ewgate.v1.GatewayService"},
	}); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("file containing ewgate.v1.GatewayService: %v, %v", resp, err)
	}
	stream.CloseSend()
}

func TestServeUnixReplacesStaleSocket(t *testing.T) {
	leakcheck.Check(t)
	path := filepath.Join(t.TempDir(), "api.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close() // leaves the file, as a crashed process would

	srv := NewServer(ServerConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeUnix(ctx, path) }()
	await.True(t, waitTimeout, "the new socket", func() bool {
		_, closer, err := Dial(ctx, path, nil)
		if err == nil {
			closer.Close()
		}
		return err == nil
	})

	// A second server may not take over a socket in use.
	if err := NewServer(ServerConfig{}).ServeUnix(ctx, path); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second ServeUnix on a live socket: %v, want an in-use error", err)
	}
	cancel()
	if err := receive(t, "ServeUnix to return", done); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

// stubListener is a listener on an address that no test really listens on.
type stubListener struct {
	net.Listener
	addr net.Addr
}

func (l stubListener) Addr() net.Addr { return l.addr }
func (l stubListener) Close() error   { return nil }

func TestPlaintextOnlyLocal(t *testing.T) {
	leakcheck.Check(t)
	srv := NewServer(ServerConfig{})
	for _, addr := range []net.Addr{
		&net.TCPAddr{IP: net.IPv4zero, Port: 9090},
		&net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 9090},
		&net.TCPAddr{IP: net.IPv6unspecified, Port: 9090},
	} {
		err := srv.Serve(context.Background(), stubListener{addr: addr})
		if err == nil || !strings.Contains(err.Error(), "ServeTLS") {
			t.Errorf("Serve on %s: %v, want a refusal pointing to ServeTLS", addr, err)
		}
	}
	for _, target := range []string{"192.0.2.1:9090", "gw.example:9090", "[2001:db8::1]:9090"} {
		if _, _, err := Dial(context.Background(), target, nil); err == nil || !strings.Contains(err.Error(), "plaintext") {
			t.Errorf("Dial(%s) without TLS: %v, want a refusal", target, err)
		}
	}
}

func TestServeLoopbackTCP(t *testing.T) {
	leakcheck.Check(t)
	res := newFakeResolver()
	res.set(reviews, reviewsTargets...)
	srv := NewServer(ServerConfig{Resolver: res, Network: "net-a"})
	addr := serveTCP(t, srv, srv.Serve)
	c := dial(t, addr)
	got, err := c.Resolve(context.Background(), &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: reviews.SNI()}})
	if err != nil {
		t.Fatal(err)
	}
	wantProto(t, got, reviewsProto)
}
