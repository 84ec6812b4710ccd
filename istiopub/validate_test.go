package istiopub

import (
	"strings"
	"testing"

	networking "istio.io/api/networking/v1alpha3"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/config/schema/resource"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ewgate/ewgate/peer"
)

// istioValidate runs Istio's own validation (istio.io/istio's
// pkg/config/validation, through the schema istiod and its webhook use)
// on o, and returns its warnings.
func istioValidate(t *testing.T, o Object) []string {
	t.Helper()
	schemas := map[Kind]resource.Schema{
		KindGateway:       collections.KubernetesGateway,
		KindServiceEntry:  collections.ServiceEntry,
		KindWorkloadEntry: collections.WorkloadEntry,
	}
	s := schemas[o.Kind]
	cfg := config.Config{
		Meta: config.Meta{GroupVersionKind: s.GroupVersionKind(), Name: o.Name, Namespace: o.Namespace,
			Labels: o.Labels, Annotations: o.Annotations},
		Spec: o.Spec,
	}
	warn, err := s.ValidateConfig(cfg)
	if err != nil {
		t.Errorf("Istio refuses %s: %v", o.Key(), err)
	}
	var out []string
	if warn != nil {
		for _, w := range strings.Split(warn.Error(), "\n") {
			if w = strings.TrimSpace(w); w != "" {
				out = append(out, w)
			}
		}
	}
	return out
}

// Every object of every translation case passes Istio's validation;
// the only warning is the one Istio gives every address-less
// WorkloadEntry of a network, which is what cross-network entries are.
// Istio does not validate Gateway API Gateways itself (the CRD's schema
// does, and the publisher's tests write them to a real API server), so
// checkRemoteGateway checks what istiod needs to learn a network's
// gateways from one.
func TestIstioValidation(t *testing.T) {
	inputs := [][]peer.NodeSummary{
		{
			gw("b1", "net-b", "192.0.2.1:15443", reviewsSvc(map[string]uint32{"eu/1": 2, "us/2/rack-1": 3})),
			gw("b2", "net-b", "gw-b.example.com:8443", reviewsSvc(map[string]uint32{"eu/1": 2})),
			gw("c1", "net-c", "[2001:db8::1]:15443", peer.ServiceSummary{
				Host: "db.example.internal", Namespace: "data", ExportTo: []string{".", "other"},
				ServiceAccounts: []string{"spiffe://c.example/ns/data/sa/db", "spiffe://c.example/ns/ewgate-system/sa/x"},
				Ports: []peer.PortSummary{
					{Port: 5432, Name: "tcp-postgres", Protocol: "TCP", Subsets: []peer.SubsetSummary{{Healthy: []peer.LocalityCount{{Count: 4}}}}},
					{Port: 9000, Name: "", Protocol: "", Subsets: []peer.SubsetSummary{{Healthy: []peer.LocalityCount{{Count: 4}}}}},
				},
			}),
		},
	}
	clusters := []fakeCluster{
		{namespaces: []string{"bookinfo"}},
		{},
		{services: map[string]map[string]string{"bookinfo/reviews": {"app": "reviews"}}, namespaces: []string{"bookinfo"}},
	}
	n := 0
	for _, in := range inputs {
		for _, c := range clusters {
			for _, opts := range []Options{{Network: "net-a", Namespace: "ewgate-system"}, {Network: "net-a", Namespace: "ewgate-system", Local: true, LocalGateways: []string{"10.0.0.1:15443"}}} {
				objs, _ := Translate(opts, in, c)
				for _, o := range objs {
					n++
					for _, w := range istioValidate(t, o) {
						if o.Kind != KindWorkloadEntry || !strings.Contains(w, "address is unset with network") {
							t.Errorf("Istio warns of %s: %s", o.Key(), w)
						}
					}
					if o.Kind == KindGateway {
						checkRemoteGateway(t, o)
					}
				}
			}
		}
	}
	if n < 20 {
		t.Fatalf("only %d objects validated", n)
	}
}

// The check is real: Istio refuses what it should.
func TestIstioValidationRefuses(t *testing.T) {
	objs, _ := Translate(Options{Network: "net-a", Namespace: "ewgate-system"},
		[]peer.NodeSummary{gw("b1", "net-b", "192.0.2.1:15443", reviewsSvc(map[string]uint32{"eu/1": 2}))}, fakeCluster{})
	for _, o := range objs {
		if o.Kind != KindWorkloadEntry {
			continue
		}
		bad := o.Spec.(*networking.WorkloadEntry).DeepCopy()
		bad.Network = ""
		s := collections.WorkloadEntry
		cfg := config.Config{Meta: config.Meta{GroupVersionKind: s.GroupVersionKind(), Name: o.Name, Namespace: o.Namespace}, Spec: bad}
		if _, err := s.ValidateConfig(cfg); err == nil {
			t.Error("Istio accepts a WorkloadEntry without address or network")
		}
		return
	}
	t.Fatal("no WorkloadEntry")
}

// checkRemoteGateway checks o against the conditions under which istiod
// (pilot/pkg/serviceregistry/kube/controller/network.go,
// handleGatewayResource, and kube.IsAutoPassthrough) takes a Gateway's
// addresses as a network's gateways: the network label, class
// istio-remote, every address with a type, and a TLS listener whose
// option gateway.istio.io/listener-protocol is auto-passthrough. Istio's
// function itself is not called: it lives in a package that pulls in
// all of istiod's model (600 more packages to build).
func checkRemoteGateway(t *testing.T, o Object) {
	t.Helper()
	spec := o.Spec.(*gatewayv1.GatewaySpec)
	if o.Labels["topology.istio.io/network"] == "" || spec.GatewayClassName != "istio-remote" || len(spec.Addresses) == 0 {
		t.Errorf("%s: istiod would not read it as a remote network's gateway: labels %v, class %s, %d addresses",
			o.Key(), o.Labels, spec.GatewayClassName, len(spec.Addresses))
	}
	for _, a := range spec.Addresses {
		if a.Type == nil || (*a.Type != gatewayv1.IPAddressType && *a.Type != gatewayv1.HostnameAddressType) {
			t.Errorf("%s: address %s without a type istiod reads", o.Key(), a.Value)
		}
	}
	for _, l := range spec.Listeners {
		if l.TLS == nil || l.TLS.Options["gateway.istio.io/listener-protocol"] != "auto-passthrough" {
			t.Errorf("%s: listener %s is not auto-passthrough", o.Key(), l.Name)
		}
	}
}
