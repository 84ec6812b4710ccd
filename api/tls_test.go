package api

import (
	"context"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"net"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/identity"
)

func newCA(t *testing.T, td string) *identity.DevCA {
	t.Helper()
	ca, err := identity.NewDevCA(spiffeid.RequireTrustDomainFromString(td))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func newSource(t *testing.T, ca *identity.DevCA, id string) *identity.MemorySource {
	t.Helper()
	src, err := ca.NewSource(spiffeid.RequireFromString(id), identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// TestServeTLS serves the API with SPIFFE mTLS on loopback: a caller of
// the gateway's trust domain gets in, one of another trust domain does not.
func TestServeTLS(t *testing.T) {
	leakcheck.Check(t)
	mesh := newCA(t, "ewgate.test")
	serverAuthz, err := identity.NewAuthorizer(identity.Policy{}, nil) // own trust domain only
	if err != nil {
		t.Fatal(err)
	}
	serverTLS := identity.ServerTLSConfig(newSource(t, mesh, "spiffe://ewgate.test/ns/istio-system/sa/eastwest"), serverAuthz)
	res := newFakeResolver()
	res.set(reviews, reviewsTargets...)
	srv := NewServer(ServerConfig{Resolver: res, Network: "net-a"})
	addr := serveTCP(t, srv, func(ctx context.Context, lis net.Listener) error { return srv.ServeTLS(ctx, lis, serverTLS) })

	// A caller of the mesh's trust domain.
	ctlTLS := identity.ClientTLSConfig(newSource(t, mesh, "spiffe://ewgate.test/ns/istio-system/sa/ctl"), nil)
	c, closer, err := Dial(context.Background(), addr, ctlTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	got, err := c.Resolve(context.Background(), &ewgatev1.ResolveRequest{Target: &ewgatev1.ResolveRequest_Sni{Sni: reviews.SNI()}})
	if err != nil {
		t.Fatal(err)
	}
	wantProto(t, got, reviewsProto)

	// A caller of another trust domain, which itself trusts the mesh, is
	// refused by the server in the handshake.
	other := newCA(t, "other.test")
	otherSrc := newSource(t, other, "spiffe://other.test/ns/default/sa/intruder")
	otherSrc.SetBundles(other.Bundle(), mesh.Bundle())
	otherAuthz, err := identity.NewAuthorizer(identity.Policy{TrustDomains: []string{"ewgate.test"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = Dial(context.Background(), addr, identity.ClientTLSConfig(otherSrc, otherAuthz))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Dial from another trust domain: %v, want Unavailable", err)
	}
	await.True(t, waitTimeout, "the server to count the rejection", func() bool {
		return serverAuthz.Stats().Rejected[identity.ReasonUnknownTrustDomain] == 1
	})

	// Nor does plaintext get in.
	if _, _, err := Dial(context.Background(), addr, nil); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext Dial to the mTLS listener: %v, want Unavailable", err)
	}
}
