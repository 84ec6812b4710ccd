package discovery

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
)

// AddressPolicy says which endpoint addresses a gateway may hold in its
// catalog and dial, whatever source they come from (config files,
// registrations through the API, Kubernetes). It exists because an
// endpoint address is an instruction to dial: an endpoint at 127.0.0.1 or
// 169.254.169.254 turns the gateway into a proxy to its own host's
// services or the cloud metadata server.
//
// The zero AddressPolicy refuses loopback, link-local, unspecified,
// multicast and broadcast addresses and DNS names, and allows every other
// IP. It is a plain value, safe to copy and to use concurrently.
type AddressPolicy struct {
	// CIDRs, if not empty, are the only networks endpoint addresses may
	// be in, e.g. the pod and VM networks of this gateway's network. The
	// refused classes below stay refused even inside them.
	CIDRs []netip.Prefix
	// Own are the gateway's own IP addresses (those it binds and
	// advertises): an endpoint there would make the gateway dial itself
	// or a port of its own host. Loopback addresses in Own are ignored;
	// AllowLoopback governs them.
	Own []netip.Addr
	// AllowLoopback admits 127.0.0.0/8 and ::1: only for demos and tests
	// on one host, where every workload listens on loopback.
	AllowLoopback bool
	// AllowNames admits DNS names as endpoint addresses (Istio's
	// ServiceEntry resolution DNS). What a name resolves to is checked
	// when it is dialed, by [AddressPolicy.Control]; registrations through
	// the API never carry names, whatever this says.
	AllowNames bool
}

// ErrAddressRefused is wrapped by every error of [AddressPolicy.Check].
var ErrAddressRefused = errors.New("endpoint address refused")

// Check reports whether an endpoint address (an IP without port, or a DNS
// name) is allowed. Its error wraps [ErrAddressRefused] and says which
// rule refused the address and, where one exists, the setting that
// changes it.
func (p *AddressPolicy) Check(addr string) error {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		if p.AllowNames {
			return nil
		}
		return fmt.Errorf("%w: %q is not an IP address: DNS names are refused, since what they resolve to is not known until dialed (allow them for config files with --endpoint-allow-names)", ErrAddressRefused, addr)
	}
	return p.CheckIP(ip)
}

// CheckIP is [AddressPolicy.Check] for an address already parsed.
func (p *AddressPolicy) CheckIP(ip netip.Addr) error {
	if ip.Zone() != "" {
		return fmt.Errorf("%w: %s has an IPv6 zone", ErrAddressRefused, ip)
	}
	ip = ip.Unmap() // ::ffff:127.0.0.1 is 127.0.0.1 to the kernel
	refuse := func(what, hint string) error {
		if hint != "" {
			hint = " (" + hint + ")"
		}
		return fmt.Errorf("%w: %s is %s%s", ErrAddressRefused, ip, what, hint)
	}
	switch {
	case ip.IsLoopback():
		if !p.AllowLoopback {
			return refuse("a loopback address", "only for tests on one host: --endpoint-allow-loopback")
		}
	case ip.IsUnspecified() || (ip.Is4() && ip.As4()[0] == 0):
		return refuse("an unspecified address (0.0.0.0/8 or ::)", "")
	case ip.IsLinkLocalUnicast():
		return refuse("a link-local address (169.254.0.0/16, fe80::/10), where cloud metadata servers answer", "")
	case ip.IsMulticast():
		return refuse("a multicast address", "")
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return refuse("the broadcast address", "")
	}
	for _, own := range p.Own {
		if own.Unmap() == ip && !ip.IsLoopback() {
			return refuse("an address of this gateway", "a gateway never dials itself")
		}
	}
	if len(p.CIDRs) == 0 {
		return nil
	}
	for _, c := range p.CIDRs {
		if c.Contains(ip) {
			return nil
		}
	}
	return refuse("outside the endpoint networks configured", "--endpoint-cidrs "+prefixList(p.CIDRs))
}

// Control checks the address a socket is about to connect to, for
// net.Dialer.Control: it refuses what [AddressPolicy.CheckIP] refuses, so
// that a DNS name cannot resolve to an address the policy forbids.
func (p *AddressPolicy) Control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: dial %s %q: %v", ErrAddressRefused, network, address, err)
	}
	return p.CheckIP(ap.Addr())
}

// CheckEndpoints applies p to the endpoints of every service of c. Its
// error names the resource and the endpoint at fault, for a config that
// is then rejected as a whole.
func (c *Catalog) CheckEndpoints(p *AddressPolicy) error {
	var errs []error
	for _, svc := range c.Services {
		for i, ep := range svc.Endpoints {
			if err := p.Check(ep.Address); err != nil {
				errs = append(errs, fmt.Errorf("%s: service %s endpoint %d: %w", svc.Source, svc.Host, i, err))
			}
		}
	}
	return errors.Join(errs...)
}

// OwnAddresses returns the IPs a gateway binding bind (an IP, possibly
// unspecified) and advertising the host:port values in advertised is
// reachable at, for AddressPolicy.Own. An unspecified bind address stands
// for every address of the host's interfaces.
func OwnAddresses(bind string, advertised ...string) ([]netip.Addr, error) {
	var own []netip.Addr
	ip, err := netip.ParseAddr(bind)
	switch {
	case bind == "":
	case err != nil:
		return nil, fmt.Errorf("discovery: bind address %q: %w", bind, err)
	case ip.IsUnspecified():
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return nil, fmt.Errorf("discovery: list the host's addresses: %w", err)
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if x, ok := netip.AddrFromSlice(n.IP); ok {
					own = append(own, x.Unmap())
				}
			}
		}
	default:
		own = append(own, ip.Unmap())
	}
	for _, hp := range advertised {
		if hp == "" {
			continue
		}
		host, _, err := net.SplitHostPort(hp)
		if err != nil {
			host = hp
		}
		if x, err := netip.ParseAddr(host); err == nil {
			own = append(own, x.Unmap())
		}
	}
	return own, nil
}

func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// WithoutRefused returns a catalog like c without the endpoints p refuses,
// and an error naming each one left out. It is for sources that apply
// what is valid instead of rejecting everything (the Kubernetes source,
// as istiod does): one pod's address must not hold back a cluster's
// changes. c is not modified.
func (c *Catalog) WithoutRefused(p *AddressPolicy) (*Catalog, error) {
	err := c.CheckEndpoints(p)
	if err == nil {
		return c, nil
	}
	out := *c
	out.Services = make([]*Service, len(c.Services))
	for i, svc := range c.Services {
		out.Services[i] = svc
		if !slices.ContainsFunc(svc.Endpoints, func(ep Endpoint) bool { return p.Check(ep.Address) != nil }) {
			continue
		}
		cp := *svc
		cp.Endpoints = slices.DeleteFunc(slices.Clone(svc.Endpoints), func(ep Endpoint) bool { return p.Check(ep.Address) != nil })
		out.Services[i] = &cp
	}
	return &out, err
}
