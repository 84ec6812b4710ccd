package kube

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	istionet "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ewgate/ewgate/discovery"
	networking "istio.io/api/networking/v1alpha3"
)

// Labels and annotations the translation reads, with Istio's meaning.
const (
	// NetworkLabel names the network of a pod, or of every pod when set on
	// the system namespace.
	NetworkLabel = "topology.istio.io/network"
	// ExportToAnnotation on a Service is its exportTo list, comma-separated.
	ExportToAnnotation = "networking.istio.io/exportTo"
	// ServiceNameLabel ties an EndpointSlice to its Service.
	ServiceNameLabel = discoveryv1.LabelServiceName
)

// SourceName is the Source.File of everything the Kubernetes source
// translates.
const SourceName = "kubernetes"

// snapshot is the state of the informers at one moment: what a
// translation reads. Maps are keyed by "namespace/name" (nodes by name).
type snapshot struct {
	services  []*corev1.Service
	slices    []*discoveryv1.EndpointSlice
	pods      map[string]*corev1.Pod
	nodes     map[string]*corev1.Node
	systemNS  *corev1.Namespace // nil when absent
	gateways  []*istionet.Gateway
	entries   []*istionet.ServiceEntry
	workloads []*istionet.WorkloadEntry
	rules     []*istionet.DestinationRule
	vs        []*istionet.VirtualService
}

// translation holds what a translation needs besides the snapshot.
type translation struct {
	clusterDomain string
	network       string            // the node's network: pods' default
	nodeLabels    map[string]string // Gateways must select them
}

// resources translates a snapshot into discovery's resources. Istio's
// custom resources pass through unchanged (Resources.Build gives them the
// file source's meaning), except Gateways that do not select this node:
// a cluster holds other proxies' Gateways (ingress ones with modes the
// gateway does not serve), which are not this node's business, as they
// are not an Istio proxy's. The error (nil if none) lists the Services
// kept with a part of them read the safe way because it could not be
// read as written, for the operator to fix.
func (t *translation) resources(s *snapshot) (*discovery.Resources, error) {
	r := &discovery.Resources{ClusterDomain: t.clusterDomain}
	for _, g := range sorted(s.gateways) {
		if !discovery.SelectorMatches(g.Spec.GetSelector(), t.nodeLabels) {
			continue
		}
		r.Gateways = append(r.Gateways, discovery.Resource[*networking.Gateway]{Source: source("Gateway", g.Namespace, g.Name), Spec: &g.Spec})
	}
	for _, e := range sorted(s.entries) {
		r.ServiceEntries = append(r.ServiceEntries, discovery.Resource[*networking.ServiceEntry]{Source: source("ServiceEntry", e.Namespace, e.Name), Labels: e.Labels, Annotations: e.Annotations, Spec: &e.Spec})
	}
	for _, w := range sorted(s.workloads) {
		r.WorkloadEntries = append(r.WorkloadEntries, discovery.Resource[*networking.WorkloadEntry]{Source: source("WorkloadEntry", w.Namespace, w.Name), Spec: &w.Spec})
	}
	for _, d := range sorted(s.rules) {
		r.DestinationRules = append(r.DestinationRules, discovery.Resource[*networking.DestinationRule]{Source: source("DestinationRule", d.Namespace, d.Name), Spec: &d.Spec})
	}
	// Istio considers VirtualServices oldest first: on a server name two
	// of them claim, the older one wins.
	vss := sorted(s.vs)
	slices.SortStableFunc(vss, func(a, b *istionet.VirtualService) int {
		return a.CreationTimestamp.Compare(b.CreationTimestamp.Time)
	})
	for _, v := range vss {
		r.VirtualServices = append(r.VirtualServices, discovery.Resource[*networking.VirtualService]{Source: source("VirtualService", v.Namespace, v.Name), Spec: &v.Spec})
	}
	bySvc := make(map[string][]*discoveryv1.EndpointSlice)
	for _, es := range s.slices {
		if name := es.Labels[ServiceNameLabel]; name != "" {
			k := es.Namespace + "/" + name
			bySvc[k] = append(bySvc[k], es)
		}
	}
	var problems []error
	for _, svc := range sorted(s.services) {
		d, err := t.service(s, svc, bySvc[svc.Namespace+"/"+svc.Name])
		if err != nil {
			problems = append(problems, err)
		}
		if d != nil {
			r.Services = append(r.Services, d)
		}
	}
	return r, errors.Join(problems...)
}

// service translates one Service and its EndpointSlices, or returns nil
// for a Service the gateway does not route to. The error says what of a
// Service it returns was read the safe way.
func (t *translation) service(s *snapshot, svc *corev1.Service, slices []*discoveryv1.EndpointSlice) (*discovery.Service, error) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		// Istio makes these MeshExternal, and an east-west gateway builds
		// no routes for mesh-external services; their only endpoint would
		// be a DNS name the API did not resolve.
		return nil, nil
	}
	d := &discovery.Service{
		Source:    source("Service", svc.Namespace, svc.Name),
		Host:      svc.Name + "." + svc.Namespace + ".svc." + t.clusterDomain,
		Namespace: svc.Namespace,
		ExportTo:  exportTo(svc.Annotations[ExportToAnnotation]),
	}
	// A Service whose ewgate.io/export label cannot be read stays in its
	// network: failing closed is the safe reading of an unclear choice.
	// It stays routable in its own network, unlike a bad resource that
	// BuildValid leaves out, since its own clients lose nothing by it.
	exp, exportErr := discovery.ParseExport(svc.Labels, svc.Annotations)
	if exportErr != nil {
		exp = discovery.ExportNo
		exportErr = fmt.Errorf("%s: %w: not exported to other networks", d.Source, exportErr)
	}
	d.Export = exp
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue // the gateway forwards TCP only, as Istio's sni-dnat clusters
		}
		dp := discovery.Port{Number: uint32(p.Port), Name: p.Name, Protocol: protocol(p)}
		if p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal > 0 {
			dp.TargetPort = uint32(p.TargetPort.IntVal)
		}
		d.Ports = append(d.Ports, dp)
	}
	seen := make(map[string]bool)
	for _, es := range sorted(slices) {
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue // FQDN slices name hosts, not addresses the API vouches for
		}
		ports := make(map[string]uint32)
		for _, p := range es.Ports {
			if p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
				continue
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			ports[name] = uint32(*p.Port)
		}
		for _, e := range es.Endpoints {
			if !dialable(e, svc.Spec.PublishNotReadyAddresses) || len(e.Addresses) == 0 {
				continue
			}
			addr, err := netip.ParseAddr(e.Addresses[0])
			if err != nil || seen[addr.String()] {
				continue
			}
			ep, ok := t.endpoint(s, svc, e, addr, ports)
			if !ok {
				continue
			}
			seen[addr.String()] = true
			d.Endpoints = append(d.Endpoints, ep)
		}
	}
	return d, exportErr
}

// dialable is Istio's endpoint health filter: an endpoint is dialed when
// ready (unset means ready) and not terminating. publishNotReadyAddresses
// asks for every endpoint the controller lists ready, as Istio honours it.
func dialable(e discoveryv1.Endpoint, publishNotReady bool) bool {
	ready := e.Conditions.Ready == nil || *e.Conditions.Ready
	if !ready {
		return false
	}
	terminating := e.Conditions.Terminating != nil && *e.Conditions.Terminating
	return !terminating || publishNotReady
}

// endpoint translates one EndpointSlice endpoint. An endpoint that names a
// pod the cache does not hold yet is left out until the pod arrives (its
// labels decide tlsMode and subsets); one that names no pod has no labels.
func (t *translation) endpoint(s *snapshot, svc *corev1.Service, e discoveryv1.Endpoint, addr netip.Addr, ports map[string]uint32) (discovery.Endpoint, bool) {
	ep := discovery.Endpoint{Address: addr.String(), Ports: ports, Network: t.defaultNetwork(s)}
	ref := e.TargetRef
	if ref == nil || ref.Kind != "Pod" {
		return ep, true
	}
	ns := cmp.Or(ref.Namespace, svc.Namespace)
	pod, ok := s.pods[ns+"/"+ref.Name]
	if !ok {
		return ep, false
	}
	ep.Labels = pod.Labels
	ep.ServiceAccount = cmp.Or(pod.Spec.ServiceAccountName, "default")
	if n := pod.Labels[NetworkLabel]; n != "" {
		ep.Network = n
	}
	nodeName := pod.Spec.NodeName
	if nodeName == "" && e.NodeName != nil {
		nodeName = *e.NodeName
	}
	var nodeLabels map[string]string
	if n := s.nodes[nodeName]; n != nil {
		nodeLabels = n.Labels
	}
	ep.Locality = discovery.LocalityFromLabels(pod.Labels, nodeLabels)
	return ep, true
}

// defaultNetwork is the network of a pod without the network label: the
// system namespace's label, else the node's own network.
func (t *translation) defaultNetwork(s *snapshot) string {
	if s.systemNS != nil {
		if n := s.systemNS.Labels[NetworkLabel]; n != "" {
			return n
		}
	}
	return t.network
}

// exportTo parses the exportTo annotation; empty means "*".
func exportTo(v string) []string {
	var out []string
	for _, e := range strings.Split(v, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// istioProtocols are Istio's protocol names, found in a port's appProtocol
// or as the prefix of its name ("http-web"), as Istio infers them.
var istioProtocols = map[string]string{
	"http": "HTTP", "http2": "HTTP2", "https": "HTTPS", "grpc": "GRPC", "grpc-web": "GRPC-Web",
	"tcp": "TCP", "tls": "TLS", "mongo": "Mongo", "redis": "Redis", "mysql": "MySQL",
}

// protocol is a Service port's Istio protocol: its appProtocol, else the
// prefix of its name, else TCP.
func protocol(p corev1.ServicePort) string {
	if p.AppProtocol != nil {
		if v, ok := istioProtocols[strings.ToLower(*p.AppProtocol)]; ok {
			return v
		}
	}
	name := strings.ToLower(p.Name)
	if v, ok := istioProtocols[name]; ok {
		return v
	}
	if prefix, _, ok := strings.Cut(name, "-"); ok {
		if v, ok := istioProtocols[prefix]; ok {
			return v
		}
	}
	return "TCP"
}

func source(kind, ns, name string) discovery.Source {
	return discovery.Source{File: SourceName, Kind: kind, Namespace: ns, Name: name}
}

// object is what sorted needs of an API object.
type object interface {
	GetNamespace() string
	GetName() string
}

// sorted returns objs ordered by namespace and name, so that a catalog
// does not depend on the order informers return objects in.
func sorted[T object](objs []T) []T {
	out := slices.Clone(objs)
	slices.SortFunc(out, func(a, b T) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
	return out
}
