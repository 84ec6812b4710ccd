package discovery

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/ewgate/ewgate/sni"
)

// MeshGateway is the reserved gateway name of Istio's sidecars: a
// VirtualService bound only to it configures no gateway.
const MeshGateway = "mesh"

// VirtualService is the part of one Istio VirtualService a gateway serves:
// its tls routes, for the gateway's PASSTHROUGH servers. Names are resolved
// as Istio resolves them when it reads the resource: gateways to
// "namespace/name", destination hosts to fully qualified names.
type VirtualService struct {
	Source Source
	// Hosts are the VirtualService's hosts, lower case; matched against a
	// server's hosts to bind the VirtualService to that server.
	Hosts []string
	// Gateways are the gateways it is bound to, "namespace/name" or
	// MeshGateway; Istio's default, when the list is empty, is
	// MeshGateway alone.
	Gateways []string
	// ExportTo is the exportTo list; empty means "*".
	ExportTo []string
	// TLS are the spec.tls rules, in order.
	TLS []TLSRule
}

// TLSRule is one entry of a VirtualService's spec.tls.
type TLSRule struct {
	Matches []TLSMatch
	Routes  []RouteDestination
}

// TLSMatch is one entry of a tls rule's match list.
type TLSMatch struct {
	// SNIHosts are the server names matched, lower case: exact names,
	// "*.suffix" wildcards or "*".
	SNIHosts []string
	// Port is the gateway port matched; 0 matches every port.
	Port uint32
	// Gateways, if set, narrow the rule to these gateways
	// ("namespace/name").
	Gateways []string
}

// RouteDestination is one weighted destination of a tls rule.
type RouteDestination struct {
	// Host is the destination service's fully qualified host.
	Host string
	// Port is the service port; 0 means the service's only port.
	Port   uint32
	Subset string
	Weight int32
}

// buildVirtualService translates r, reporting, with the field named, what
// the gateway would serve wrongly. Only tls rules are kept: http and tcp
// rules configure other kinds of servers, which this gateway does not
// serve; they are ignored, with a warning when the VirtualService is bound
// to one of gateways (the Gateways of the catalog).
func (t *translator) buildVirtualService(r Resource[*networking.VirtualService], gateways []*Gateway) *VirtualService {
	spec := r.Spec
	ns := r.Source.Namespace
	vs := &VirtualService{Source: r.Source, ExportTo: spec.GetExportTo()}
	ok := true
	fail := func(format string, args ...any) {
		t.errorf(r.Source, format, args...)
		ok = false
	}
	if err := checkExportTo(vs.ExportTo, ns, false); err != nil {
		fail("spec.%v", err)
	}
	for i, h := range spec.GetHosts() {
		h, err := parseHost(h)
		if err != nil {
			fail("spec.hosts[%d]: %v", i, err)
			continue
		}
		vs.Hosts = append(vs.Hosts, h)
	}
	if len(spec.GetGateways()) == 0 {
		vs.Gateways = []string{MeshGateway}
	}
	for _, g := range spec.GetGateways() {
		vs.Gateways = append(vs.Gateways, resolveGatewayName(g, ns))
	}
	bound := slices.ContainsFunc(gateways, func(g *Gateway) bool { return slices.Contains(vs.Gateways, gatewayName(g)) })
	if bound && (len(spec.GetHttp()) > 0 || len(spec.GetTcp()) > 0) {
		t.warn("config: VirtualService http and tcp rules are not served (the gateway serves tls rules, for PASSTHROUGH servers)",
			"resource", r.Source.String(), "http", len(spec.GetHttp()), "tcp", len(spec.GetTcp()))
	}
	for i, tr := range spec.GetTls() {
		field := fmt.Sprintf("spec.tls[%d]", i)
		var rule TLSRule
		if len(tr.GetMatch()) == 0 {
			fail("%s.match: at least one match is required", field)
		}
		for j, m := range tr.GetMatch() {
			mf := fmt.Sprintf("%s.match[%d]", field, j)
			if len(m.GetSniHosts()) == 0 {
				fail("%s.sniHosts: at least one host is required", mf)
			}
			if m.GetPort() > 65535 {
				fail("%s.port: must be 0-65535", mf)
			}
			match := TLSMatch{Port: m.GetPort()}
			for k, h := range m.GetSniHosts() {
				h, err := parseHost(h)
				if err != nil {
					fail("%s.sniHosts[%d]: %v", mf, k, err)
					continue
				}
				match.SNIHosts = append(match.SNIHosts, h)
			}
			for _, g := range m.GetGateways() {
				match.Gateways = append(match.Gateways, resolveGatewayName(g, ns))
			}
			if len(m.GetDestinationSubnets()) > 0 || len(m.GetSourceLabels()) > 0 || m.GetSourceNamespace() != "" {
				// Each narrows the match; ignoring one would route
				// connections the operator meant to keep out.
				fail("%s: destinationSubnets, sourceLabels and sourceNamespace are not supported", mf)
			}
			rule.Matches = append(rule.Matches, match)
		}
		for j, d := range tr.GetRoute() {
			df := fmt.Sprintf("%s.route[%d].destination", field, j)
			dst := d.GetDestination()
			if dst.GetHost() == "" {
				fail("%s.host: required", df)
				continue
			}
			host, err := sni.ParseHost(resolveShortName(dst.GetHost(), ns, t.domain))
			if err != nil {
				fail("%s.host: %v", df, err)
				continue
			}
			if dst.GetPort().GetNumber() > 65535 {
				fail("%s.port.number: must be 0-65535", df)
				continue
			}
			if d.GetWeight() < 0 {
				fail("%s: weight must not be negative", strings.TrimSuffix(df, ".destination"))
				continue
			}
			rule.Routes = append(rule.Routes, RouteDestination{Host: host, Port: dst.GetPort().GetNumber(), Subset: dst.GetSubset(), Weight: d.GetWeight()})
		}
		vs.TLS = append(vs.TLS, rule)
	}
	if !ok {
		return nil
	}
	return vs
}

// resolveGatewayName turns a VirtualService's gateway reference into
// "namespace/name" as Istio does: "name" and "./name" are in the
// VirtualService's namespace ns, the legacy "name.namespace.svc..." form
// names namespace, and "mesh" stays as it is.
func resolveGatewayName(g, ns string) string {
	if g == MeshGateway {
		return g
	}
	if before, after, found := strings.Cut(g, "/"); found {
		if before == "." {
			return ns + "/" + after
		}
		return g
	}
	name, rest, found := strings.Cut(g, ".")
	if !found {
		return ns + "/" + g
	}
	gwNS, _, _ := strings.Cut(rest, ".")
	return gwNS + "/" + name
}

// resolveShortName completes a destination host without a dot to
// "host.namespace.svc.domain", as Istio does; names with a dot, "*" and IP
// addresses are kept.
func resolveShortName(h, ns, domain string) string {
	if h == "*" || strings.Contains(h, ".") {
		return h
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return h
	}
	return h + "." + ns + ".svc." + domain
}
