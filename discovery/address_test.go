package discovery

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestAddressPolicyCheck(t *testing.T) {
	own := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("127.0.0.1")}
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	tests := []struct {
		name   string
		policy AddressPolicy
		addr   string
		want   string // "" allowed, else a substring of the error
	}{
		{"private IPv4", AddressPolicy{}, "10.0.0.7", ""},
		{"public IPv6", AddressPolicy{}, "2001:db8::7", ""},
		{"loopback", AddressPolicy{}, "127.0.0.1", "loopback"},
		{"loopback elsewhere in 127/8", AddressPolicy{}, "127.3.2.1", "loopback"},
		{"IPv6 loopback", AddressPolicy{}, "::1", "loopback"},
		{"mapped loopback", AddressPolicy{}, "::ffff:127.0.0.1", "loopback"},
		{"loopback allowed", AddressPolicy{AllowLoopback: true}, "127.0.0.1", ""},
		{"own loopback ignored when loopback allowed", AddressPolicy{AllowLoopback: true, Own: own}, "127.0.0.1", ""},
		{"metadata server", AddressPolicy{}, "169.254.169.254", "link-local"},
		{"mapped metadata server", AddressPolicy{}, "::ffff:169.254.169.254", "link-local"},
		{"IPv6 link-local", AddressPolicy{}, "fe80::1", "link-local"},
		{"zone", AddressPolicy{}, "fe80::1%eth0", "zone"},
		{"unspecified", AddressPolicy{}, "0.0.0.0", "unspecified"},
		{"this network", AddressPolicy{}, "0.1.2.3", "unspecified"},
		{"IPv6 unspecified", AddressPolicy{}, "::", "unspecified"},
		{"multicast", AddressPolicy{}, "224.0.0.1", "multicast"},
		{"IPv6 multicast", AddressPolicy{}, "ff02::1", "multicast"},
		{"broadcast", AddressPolicy{}, "255.255.255.255", "broadcast"},
		{"own", AddressPolicy{Own: own}, "192.0.2.1", "address of this gateway"},
		{"own IPv6", AddressPolicy{Own: own}, "2001:db8::1", "address of this gateway"},
		{"not own", AddressPolicy{Own: own}, "192.0.2.2", ""},
		{"inside CIDRs", AddressPolicy{CIDRs: cidrs}, "10.1.2.3", ""},
		{"inside IPv6 CIDRs", AddressPolicy{CIDRs: cidrs}, "fd12::3", ""},
		{"outside CIDRs", AddressPolicy{CIDRs: cidrs}, "192.168.1.1", "outside the endpoint networks configured"},
		{"loopback inside CIDRs still refused", AddressPolicy{CIDRs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}, "127.0.0.1", "loopback"},
		{"DNS name", AddressPolicy{}, "metadata.google.internal", "DNS names are refused"},
		{"DNS name allowed", AddressPolicy{AllowNames: true}, "reviews.vm.example", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.policy.Check(tt.addr)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Check(%q) = %v, want allowed", tt.addr, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Check(%q) = %v, want an error containing %q", tt.addr, err, tt.want)
			case err != nil && !errors.Is(err, ErrAddressRefused):
				t.Fatalf("Check(%q) = %v, does not wrap ErrAddressRefused", tt.addr, err)
			}
		})
	}
}

func TestAddressPolicyControl(t *testing.T) {
	p := AddressPolicy{AllowNames: true}
	if err := p.Control("tcp4", "10.0.0.7:9080", nil); err != nil {
		t.Fatalf("Control(10.0.0.7:9080) = %v", err)
	}
	// A name allowed in the catalog still cannot reach the metadata server.
	if err := p.Control("tcp4", "169.254.169.254:80", nil); !errors.Is(err, ErrAddressRefused) {
		t.Fatalf("Control(169.254.169.254:80) = %v, want refused", err)
	}
	if err := p.Control("tcp", "nonsense", nil); !errors.Is(err, ErrAddressRefused) {
		t.Fatalf("Control(nonsense) = %v, want refused", err)
	}
}

func TestCatalogCheckEndpoints(t *testing.T) {
	c := &Catalog{Services: []*Service{{
		Source:    Source{File: "se.yaml", Kind: "ServiceEntry", Namespace: "ns", Name: "a"},
		Host:      "a.example",
		Endpoints: []Endpoint{{Address: "10.0.0.1"}, {Address: "169.254.169.254"}},
	}}}
	err := c.CheckEndpoints(&AddressPolicy{})
	if err == nil || !strings.Contains(err.Error(), "se.yaml: ServiceEntry ns/a: service a.example endpoint 1") {
		t.Fatalf("CheckEndpoints = %v, want the metadata endpoint named", err)
	}
	c.Services[0].Endpoints = c.Services[0].Endpoints[:1]
	if err := c.CheckEndpoints(&AddressPolicy{}); err != nil {
		t.Fatalf("CheckEndpoints = %v, want nil", err)
	}
}

func TestOwnAddresses(t *testing.T) {
	own, err := OwnAddresses("192.0.2.1", "198.51.100.7:15443", "", "gw.example:15008")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.7")}
	if len(own) != 2 || own[0] != want[0] || own[1] != want[1] {
		t.Fatalf("OwnAddresses = %v, want %v", own, want)
	}
	all, err := OwnAddresses("0.0.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(all, netip.MustParseAddr("127.0.0.1")) {
		t.Fatalf("OwnAddresses(0.0.0.0) = %v, want the host's addresses, loopback among them", all)
	}
	if _, err := OwnAddresses("not-an-ip"); err == nil {
		t.Fatal("OwnAddresses(not-an-ip): want an error")
	}
}
