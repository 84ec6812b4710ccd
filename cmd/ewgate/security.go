package main

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/ewgate/ewgate/api"
	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/identity"
)

// addressPolicy is the rule every endpoint address must pass, from the
// settings: the CIDRs and exceptions the operator gave, and this
// gateway's own addresses.
func (s *settings) addressPolicy() (discovery.AddressPolicy, error) {
	cidrs, err := s.endpointCIDRs()
	if err != nil {
		return discovery.AddressPolicy{}, err
	}
	own, err := discovery.OwnAddresses(s.BindAddress, s.PassthroughAdvertise, s.TunnelAddress, s.TunnelAdvertise,
		s.GossipAddress, s.GossipAdvertise, s.APIAddress, s.AdminAddress, s.statusAddress())
	if err != nil {
		return discovery.AddressPolicy{}, fmt.Errorf("--bind-address: %w", err)
	}
	return discovery.AddressPolicy{CIDRs: cidrs, Own: own, AllowLoopback: s.EndpointAllowLoopback, AllowNames: s.EndpointAllowNames}, nil
}

// apiAccess is the API's per-call policy over --api-address.
func (s *settings) apiAccess() api.AccessPolicy {
	return api.AccessPolicy{
		Read:     identity.Policy{IDs: s.APIReadIDs, IDPrefixes: s.APIReadIDPrefixes},
		Register: identity.Policy{IDs: s.APIRegisterIDs, IDPrefixes: s.APIRegisterIDPrefixes},
	}
}

// apiHandshakePolicy is the policy of the API's TLS handshake: every ID
// that may make some call. With no read policy, reads are open to the own
// trust domain, ownTD; registrars named from other trust domains must
// also get through the handshake.
func (s *settings) apiHandshakePolicy(ownTD string) identity.Policy {
	acc := s.apiAccess()
	p := identity.Policy{
		IDs:        append(append([]string(nil), acc.Read.IDs...), acc.Register.IDs...),
		IDPrefixes: append(append([]string(nil), acc.Read.IDPrefixes...), acc.Register.IDPrefixes...),
	}
	if len(acc.Read.IDs) == 0 && len(acc.Read.IDPrefixes) == 0 {
		p.TrustDomains = []string{ownTD}
	}
	return p
}

// checkAdminAddress refuses an admin address other than loopback unless
// --admin-allow-remote says so: the admin server has no authentication.
func (s *settings) checkAdminAddress() error {
	if s.AdminAddress == "" || s.AdminAllowRemote {
		return nil
	}
	host, _, err := net.SplitHostPort(s.AdminAddress)
	if err != nil {
		return fmt.Errorf("--admin-address (adminAddress) %q: %w", s.AdminAddress, err)
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() || host == "localhost" {
		return nil
	}
	return fmt.Errorf("--admin-address (adminAddress) %s is not a loopback address: the admin server has no authentication "+
		"and serves metrics, readiness and debug views of the catalog, members and tunnels; "+
		"bind 127.0.0.1, or set --admin-allow-remote (adminAllowRemote) to expose it deliberately, e.g. for a kubelet probe", s.AdminAddress)
}
