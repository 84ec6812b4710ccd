package api

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/ewgate/ewgate/discovery"
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
	policy := discovery.AddressPolicy{
		CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("fd00::/8")},
		Own:   []netip.Addr{netip.MustParseAddr("192.0.2.1")},
	}
	f.Fuzz(func(t *testing.T, registrar, host, addr, portName string, port uint32, labelKey, labelValue string, weight uint32, network, locality string) {
		leases := NewLeases(LeaseConfig{Clock: newFakeClock(), Addresses: policy})
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
		snap := leases.Snapshot()
		if len(snap) != 1 {
			t.Fatalf("snapshot %v after one accepted endpoint", snap)
		}
		got := snap[0].Endpoint
		ip, perr := netip.ParseAddr(got.Address)
		if perr != nil {
			t.Fatalf("accepted address %q is not an IP", got.Address)
		}
		if err := policy.CheckIP(ip); err != nil {
			t.Fatalf("accepted address %q the policy refuses: %v", got.Address, err)
		}
		if got.Weight > DefaultMaxWeight {
			t.Fatalf("accepted weight %d over the cap %d", got.Weight, DefaultMaxWeight)
		}
		if _, err := dnsName(snap[0].ServiceHost); err != nil {
			t.Fatalf("accepted service host %q: %v", snap[0].ServiceHost, err)
		}
	})
}
