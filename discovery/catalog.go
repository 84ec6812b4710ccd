// Package discovery holds the gateway's catalog: the services, ports, subsets
// and endpoints it may route to, the Gateway servers it must listen for, and
// the translation that fills it from Istio resources (Resources.Build),
// whether they come from YAML files (LoadFiles) or from the Kubernetes API
// (package discovery/kube).
//
// A Catalog is immutable once built: a reload builds a new one and swaps it
// in, so readers never lock.
package discovery

import (
	"fmt"
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"
)

// Istio's labels and defaults the catalog relies on.
const (
	// TLSModeLabel marks endpoints that terminate Istio mTLS themselves.
	TLSModeLabel = "security.istio.io/tlsMode"
	// TLSModeIstio is the TLSModeLabel value of mTLS-capable endpoints.
	TLSModeIstio = "istio"
	// DefaultNamespace is the namespace of a resource whose metadata names none,
	// as with kubectl.
	DefaultNamespace = "default"
)

// Catalog is a consistent set of gateways and services, typically everything
// loaded from one set of files. The zero value is an empty catalog.
type Catalog struct {
	// Gateways are the Istio Gateway resources, in load order.
	Gateways []*Gateway
	// Services are the ServiceEntry resources with their endpoints resolved
	// (inline endpoints and WorkloadEntries chosen by workloadSelector) and
	// their DestinationRule subsets attached, in load order; a registry's
	// services (Resources.Services) come first.
	Services []*Service
	// VirtualServices are the VirtualService resources whose tls rules
	// route the PASSTHROUGH servers of Gateways, in load order.
	VirtualServices []*VirtualService
	// Conflicts are the disagreements between networks' definitions that
	// Merge settled; empty in a catalog built from config alone.
	Conflicts []Conflict

	// resources is what Build made the catalog from, for Merge.
	resources *Resources
}

// Source names where a resource was defined, for error messages and
// /debug/config.
type Source struct {
	// File is the file the resource came from, or the name of the source
	// that is not a file, e.g. "kubernetes".
	File      string
	Kind      string // kind, e.g. "Gateway" or, from Kubernetes, "Service"
	Namespace string
	Name      string
}

// String returns "file: Kind namespace/name".
func (s Source) String() string {
	return fmt.Sprintf("%s: %s %s/%s", s.File, s.Kind, s.Namespace, s.Name)
}

// Origin says which network's gateway defined a part of a service (the
// service itself, a port, a subset) in a merged catalog: the zero Origin
// is this gateway's own config, any other one a summary gossiped by
// gateway Gateway of network Network.
type Origin struct {
	Network string
	Gateway string // the gateway's node name
}

// Remote reports whether o is another network's gateway.
func (o Origin) Remote() bool { return o.Gateway != "" }

// String returns "local" or "network N via gateway G".
func (o Origin) String() string {
	if !o.Remote() {
		return "local"
	}
	return "network " + o.Network + " via gateway " + o.Gateway
}

// MarshalText returns String, so that debug JSON says where a part came
// from in words.
func (o Origin) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// UnmarshalText parses what MarshalText writes.
func (o *Origin) UnmarshalText(b []byte) error {
	s := string(b)
	if s == "local" {
		*o = Origin{}
		return nil
	}
	rest, ok := strings.CutPrefix(s, "network ")
	network, gateway, ok2 := strings.Cut(rest, " via gateway ")
	if !ok || !ok2 || network == "" || gateway == "" {
		return fmt.Errorf("origin %q: want \"local\" or \"network N via gateway G\"", s)
	}
	*o = Origin{Network: network, Gateway: gateway}
	return nil
}

// Gateway is one Istio Gateway resource.
type Gateway struct {
	Source Source
	// Selector is matched against the node's labels; an empty selector
	// matches every node, as in Istio.
	Selector map[string]string
	Servers  []Server
}

// Selects reports whether the gateway applies to a node with the given labels.
func (g *Gateway) Selects(nodeLabels map[string]string) bool {
	return SelectorMatches(g.Selector, nodeLabels)
}

// TLSMode is a server's tls.mode, using Istio's enum names.
type TLSMode string

// The tls modes the gateway honours.
const (
	// AutoPassthrough routes by the Istio SNI of an mTLS connection
	// (outbound_.<port>_.<subset>_.<host>), with no VirtualService.
	AutoPassthrough TLSMode = "AUTO_PASSTHROUGH"
	// Passthrough routes by the plain server name, as the tls rules of
	// the VirtualServices bound to the server say.
	Passthrough TLSMode = "PASSTHROUGH"
)

// Server is one entry of a Gateway's servers list.
type Server struct {
	Port     uint32
	PortName string
	Protocol string
	Hosts    []HostPattern
	Mode     TLSMode
}

// Service is one ServiceEntry host with its ports, subsets and endpoints. A
// ServiceEntry listing several hosts yields one Service per host.
type Service struct {
	Source Source
	// Host is the fully qualified service name, lower case.
	Host string
	// Namespace is the namespace of the ServiceEntry.
	Namespace string
	// ExportTo is the ServiceEntry's exportTo list; empty means "*".
	ExportTo []string
	// Export is the service's own choice, from its ExportLabel, of
	// whether its endpoints may be reached from other networks.
	Export    Export
	Ports     []Port
	Subsets   []Subset
	Endpoints []Endpoint
	// Origin is where the service was defined: zero for this gateway's
	// own config; another network's gateway for a service only other
	// networks define (it has no endpoints here). See [Catalog.Merge].
	Origin Origin
	// RemoteAccounts are the SPIFFE IDs of the service's endpoints in
	// other networks, sorted, as their gateways report them.
	RemoteAccounts []string
	// policy is the trafficPolicy of the service's DestinationRule.
	policy *networking.TrafficPolicy
}

// Port is a service port.
type Port struct {
	Number     uint32
	Name       string
	Protocol   string
	TargetPort uint32 // 0: the endpoint's port of the same name, else Number
	// Origin is where the port was defined; a port only other networks
	// define routes only to them.
	Origin Origin
}

// Subset is a named DestinationRule subset of a service.
type Subset struct {
	Name   string
	Labels map[string]string
	// policy is the subset's own trafficPolicy.
	policy *networking.TrafficPolicy
	// Origin is where the subset was defined; a subset only other
	// networks define routes only to them.
	Origin Origin
}

// Endpoint is one workload instance of a service.
type Endpoint struct {
	// Address is an IP address or a DNS name, never with a port.
	Address string
	// Ports maps service port names to the endpoint's port for them.
	Ports    map[string]uint32
	Labels   map[string]string
	Network  string
	Locality string
	// Weight is the endpoint's load balancing weight; 0 means 1.
	Weight         uint32
	ServiceAccount string
}

// Port returns the service port with the given number.
func (s *Service) Port(number uint32) (Port, bool) {
	for _, p := range s.Ports {
		if p.Number == number {
			return p, true
		}
	}
	return Port{}, false
}

// Subset returns the named subset.
func (s *Service) Subset(name string) (Subset, bool) {
	for _, ss := range s.Subsets {
		if ss.Name == name {
			return ss, true
		}
	}
	return Subset{}, false
}

// ExportedTo reports whether the service is visible from namespace ns
// under Istio's exportTo rules (exportVisibility).
func (s *Service) ExportedTo(ns string) bool {
	return exportVisibility(s.ExportTo, s.Namespace, ns) != hidden
}

// TargetPort returns the port on endpoint e that serves service port p: the
// endpoint's own port for p's name, else p's target port, else p's number, as
// Istio resolves it.
func (e *Endpoint) TargetPort(p Port) uint32 {
	if n, ok := e.Ports[p.Name]; ok && n != 0 {
		return n
	}
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.Number
}

// SelectorMatches reports whether labels hold every label of selector
// with its value, as Istio's selectors (Gateway selector, workloadSelector,
// subset labels) match: an empty selector matches any labels.
func SelectorMatches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// WithEndpoints returns a catalog like c in which the services named by
// extra's keys (service hosts) also have extra's endpoints, as registered
// through the API by agents that feed a gateway without files. c is not
// modified. Hosts c does not define are returned, sorted, for the caller
// to report: an endpoint never creates a service.
func (c *Catalog) WithEndpoints(extra map[string][]Endpoint) (*Catalog, []string) {
	if len(extra) == 0 {
		return c, nil
	}
	cp := *c // every other field as it is
	out := &cp
	out.Services = make([]*Service, len(c.Services))
	used := make(map[string]bool, len(extra))
	for i, svc := range c.Services {
		eps, ok := extra[svc.Host]
		if !ok {
			out.Services[i] = svc
			continue
		}
		used[svc.Host] = true
		cp := *svc
		cp.Endpoints = append(slices.Clip(svc.Endpoints), eps...)
		out.Services[i] = &cp
	}
	var unknown []string
	for h := range extra {
		if !used[h] {
			unknown = append(unknown, h)
		}
	}
	slices.Sort(unknown)
	return out, unknown
}
