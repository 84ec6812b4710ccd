package api

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	ewgatev1 "github.com/ewgate/ewgate/api/ewgate/v1"
	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/sni"
)

// FuzzRegister feeds one registration built from arbitrary fields to
// Leases.Register: it must never panic, and whatever it accepts must be
// an IP address the address policy allows, with a weight under the cap and
// a routable service host; whatever it refuses must be a *FieldError or a
// held lease.
func FuzzRegister(f *testing.F) {
	f.Add("vm-1", "reviews.bookinfo.svc.cluster.local", "10.0.0.7", "http", uint32(9080), "version", "v1", uint32(1), "net-a", "eu/z1")
	f.Add("vm-1", "reviews.bookinfo.svc.cluster.local", "::ffff:127.0.0.1", "http", uint32(9080), "security.istio.io/tlsMode", "istio", uint32(0), "", "")
	f.Add("vm 1", "*.local", "169.254.169.254", "HTTP", uint32(0), "", "x", uint32(4294967295), "net a", "a/b/c/d")
	f.Add("r", "a.example", "metadata.google.internal", "h", uint32(65536), "k", "v", uint32(1001), "n", "r")
	f.Add("r", "a.example", "fe80::1%eth0", "h", uint32(1), "k", "v", uint32(1000), "n", "r")
	f.Add("r", "a.example", "192.0.2.1", "h", uint32(1), "k", "v", uint32(1000), "n", "r")
	f.Fuzz(func(t *testing.T, registrar, host, addr, portName string, port uint32, labelKey, labelValue string, weight uint32, network, locality string) {
		leases := NewLeases(LeaseConfig{Clock: newFakeClock(), Addresses: fuzzPolicy})
		ep := RegisteredEndpoint{ServiceHost: host, Endpoint: discovery.Endpoint{
			Address: addr, Ports: map[string]uint32{portName: port}, Labels: map[string]string{labelKey: labelValue},
			Weight: weight, Network: network, Locality: locality,
		}}
		_, err := leases.Register(CallerLocal, registrar, 0, []RegisteredEndpoint{ep})
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Register: %v, want a *FieldError", err)
			}
			if len(leases.Snapshot()) != 0 {
				t.Fatal("a refused registration was kept")
			}
			return
		}
		if n := len(leases.Snapshot()); n != 1 {
			t.Fatalf("%d endpoints after one accepted", n)
		}
		checkRegistered(t, leases)
	})
}

// fuzzPolicy is the address policy of the registration fuzz targets.
var fuzzPolicy = discovery.AddressPolicy{
	CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("fd00::/8")},
	Own:   []netip.Addr{netip.MustParseAddr("192.0.2.1")},
}

// checkRegistered fails the test unless every endpoint leases holds obeys
// the registration rules: an IP address the policy allows, a weight under
// the cap, a service host the SNI parser reads back.
func checkRegistered(t *testing.T, leases *Leases) {
	t.Helper()
	for _, re := range leases.Snapshot() {
		got := re.Endpoint
		ip, err := netip.ParseAddr(got.Address)
		if err != nil {
			t.Fatalf("accepted address %q is not an IP", got.Address)
		}
		if err := fuzzPolicy.CheckIP(ip); err != nil {
			t.Fatalf("accepted address %q the policy refuses: %v", got.Address, err)
		}
		if got.Weight > DefaultMaxWeight {
			t.Fatalf("accepted weight %d over the cap %d", got.Weight, DefaultMaxWeight)
		}
		if k, err := sni.ParseName(sni.Key{Host: re.ServiceHost, Port: 1}.SNI()); err != nil || k.Host != re.ServiceHost {
			t.Fatalf("accepted service host %q, which the SNI parser reads as %q, %v", re.ServiceHost, k.Host, err)
		}
	}
}

// wantFieldViolation fails the test unless err is an INVALID_ARGUMENT
// status whose BadRequest detail names a field.
func wantFieldViolation(t *testing.T, err error) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("refused with %v, want INVALID_ARGUMENT", err)
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) == 1 && br.GetFieldViolations()[0].GetField() != "" {
			return
		}
	}
	t.Fatalf("refusal %v names no field", err)
}

// FuzzRegisterRequest decodes arbitrary bytes as a RegisterEndpointsRequest
// and passes it to the RegisterEndpoints handler, as gRPC would after the
// access check: it must never panic, refuse only with INVALID_ARGUMENT
// naming a field (never INTERNAL), and keep only endpoints
// that obey the registration rules. Unlike FuzzRegister, requests carry
// any number of endpoints, ports and labels.
func FuzzRegisterRequest(f *testing.F) {
	seed := func(req *ewgatev1.RegisterEndpointsRequest) {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	ep := func(host, addr string, weight uint32) *ewgatev1.Endpoint {
		return &ewgatev1.Endpoint{ServiceHost: host, Address: addr, Ports: map[string]uint32{"http": 9080},
			Labels: map[string]string{"version": "v1"}, Weight: weight, Network: "net-a", Locality: "eu/z1"}
	}
	seed(&ewgatev1.RegisterEndpointsRequest{Registrar: "vm-1", LeaseSeconds: 30, Endpoints: []*ewgatev1.Endpoint{
		ep("reviews.bookinfo.svc.cluster.local", "10.0.0.7", 1), ep("reviews.bookinfo.svc.cluster.local", "fd00::7", 0)}})
	seed(&ewgatev1.RegisterEndpointsRequest{Registrar: "vm-1", Endpoints: []*ewgatev1.Endpoint{ep("reviews.123", "10.0.0.7", 1)}})
	seed(&ewgatev1.RegisterEndpointsRequest{Registrar: "vm-1", Endpoints: []*ewgatev1.Endpoint{ep("a.local", "169.254.169.254", 1<<31)}})
	seed(&ewgatev1.RegisterEndpointsRequest{Registrar: "vm 1", LeaseSeconds: 1 << 30})
	seed(&ewgatev1.RegisterEndpointsRequest{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var req ewgatev1.RegisterEndpointsRequest
		if proto.Unmarshal(data, &req) != nil {
			return // gRPC refuses what does not decode
		}
		leases := NewLeases(LeaseConfig{Clock: newFakeClock(), Addresses: fuzzPolicy})
		svc := &service{srv: NewServer(ServerConfig{Registry: leases})}
		ctx := context.WithValue(context.Background(), callerKey{}, CallerLocal)
		resp, err := svc.RegisterEndpoints(ctx, &req)
		switch status.Code(err) {
		case codes.OK:
			if resp.GetLeaseSeconds() == 0 {
				t.Fatalf("accepted with a lease of 0 s")
			}
		case codes.InvalidArgument:
			wantFieldViolation(t, err)
			if len(leases.Snapshot()) != 0 {
				t.Fatal("a refused registration was kept")
			}
		default:
			t.Fatalf("RegisterEndpoints: %v, want OK or INVALID_ARGUMENT", err)
		}
		checkRegistered(t, leases)
	})
}

// FuzzQuery passes arbitrary Resolve queries, by SNI name or by fields, to
// the validation of Resolve and WatchResolve: it must never panic, refuse
// with INVALID_ARGUMENT naming a field, and accept only keys that a client
// could send as an SNI name and client networks that are short tokens.
func FuzzQuery(f *testing.F) {
	f.Add(true, "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local", "", uint32(0), "", "net-a")
	f.Add(true, "outbound|9080||Reviews.Bookinfo.svc.cluster.local", "", uint32(0), "", "")
	f.Add(false, "", "reviews.bookinfo.svc.cluster.local", uint32(9080), "v1", "net-b")
	f.Add(false, "", "reviews.123", uint32(9080), "", "net-b")
	f.Add(false, "", "REVIEWS.local", uint32(65536), "V1", "net b")
	f.Add(true, "outbound_.0_._.10.1", "", uint32(0), "", "")
	f.Fuzz(func(t *testing.T, bySNI bool, name, host string, port uint32, subset, from string) {
		svc := &service{srv: NewServer(ServerConfig{Network: "net-a"})}
		req := &ewgatev1.ResolveRequest{FromNetwork: from}
		if bySNI {
			req.Target = &ewgatev1.ResolveRequest_Sni{Sni: name}
		} else {
			req.Target = &ewgatev1.ResolveRequest_Service{Service: &ewgatev1.ServiceKey{Host: host, Port: port, Subset: subset}}
		}
		key, network, err := svc.parseQuery(req)
		if err != nil {
			wantFieldViolation(t, err)
			return
		}
		if k, err := sni.ParseName(key.SNI()); err != nil || k != key {
			t.Fatalf("accepted key %+v, which the SNI parser reads as %+v, %v", key, k, err)
		}
		if network == "" || len(network) > maxNameLen || !isToken(network) {
			t.Fatalf("accepted client network %q", network)
		}
		if from != "" && network != from {
			t.Fatalf("client network %q, want the query's %q", network, from)
		}
	})
}
