package kube

import (
	"fmt"
	"strings"
	"testing"
	"time"

	istionet "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/ewgate/ewgate/discovery"
	networking "istio.io/api/networking/v1alpha3"
)

// Unit tests of the translation on objects built in memory; the source
// itself is tested against a real API server (source_test.go and
// cmd/ewgate's TestKubernetesSource).

func pod(name, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo", Labels: labels},
		Spec:       corev1.PodSpec{ServiceAccountName: "echo", NodeName: "node-a"},
		Status:     corev1.PodStatus{PodIP: ip},
	}
}

func endpoint(ip, podName string, ready, terminating *bool) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ready, Terminating: terminating}}
	if podName != "" {
		e.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: "demo", Name: podName}
	}
	return e
}

func baseSnapshot() *snapshot {
	istio := map[string]string{"security.istio.io/tlsMode": "istio", "app": "echo"}
	with := func(k, v string) map[string]string {
		m := map[string]string{k: v}
		for a, b := range istio {
			m[a] = b
		}
		return m
	}
	return &snapshot{
		services: []*corev1.Service{{
			ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "demo", Annotations: map[string]string{ExportToAnnotation: "., istio-system"}},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
				{Name: "tls-echo", Port: 9080, TargetPort: intstr.FromString("echo")},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
			}},
		}, {
			ObjectMeta: metav1.ObjectMeta{Name: "ext", Namespace: "demo"},
			Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"},
		}},
		slices: []*discoveryv1.EndpointSlice{{
			ObjectMeta:  metav1.ObjectMeta{Name: "echo-1", Namespace: "demo", Labels: map[string]string{ServiceNameLabel: "echo"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("tls-echo"), Port: ptr.To[int32](9443)}},
			Endpoints: []discoveryv1.Endpoint{
				endpoint("10.0.0.1", "v1", nil, nil),
				endpoint("10.0.0.2", "v2", ptr.To(true), nil),
				endpoint("10.0.0.3", "down", ptr.To(false), nil),
				endpoint("10.0.0.4", "bye", ptr.To(false), ptr.To(true)),
				endpoint("10.0.0.5", "unknown-pod", nil, nil),
				endpoint("not-an-ip", "v1", nil, nil),
				endpoint("10.0.0.6", "", nil, nil),
				endpoint("10.0.0.7", "net-b", nil, nil),
			},
		}, {
			ObjectMeta:  metav1.ObjectMeta{Name: "other-1", Namespace: "demo", Labels: map[string]string{ServiceNameLabel: "other"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{endpoint("10.9.9.9", "", nil, nil)},
		}},
		pods: map[string]*corev1.Pod{
			"demo/v1":    pod("v1", "10.0.0.1", with("version", "v1")),
			"demo/v2":    pod("v2", "10.0.0.2", with("version", "v2")),
			"demo/down":  pod("down", "10.0.0.3", istio),
			"demo/bye":   pod("bye", "10.0.0.4", istio),
			"demo/net-b": pod("net-b", "10.0.0.7", with(NetworkLabel, "network-b")),
		},
		nodes: map[string]*corev1.Node{"node-a": {ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{
			discovery.RegionLabel: "eu", discovery.ZoneLabel: "eu-1", discovery.SubzoneLabel: "rack-7"}}}},
		systemNS: &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system", Labels: map[string]string{NetworkLabel: "network-a"}}},
		gateways: []*istionet.Gateway{
			{ObjectMeta: metav1.ObjectMeta{Name: "ew", Namespace: "istio-system"}, Spec: networking.Gateway{
				Selector: map[string]string{"istio": "eastwestgateway"},
				Servers: []*networking.Server{{Port: &networking.Port{Number: 15443, Name: "tls", Protocol: "TLS"},
					Hosts: []string{"*.local"}, Tls: &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_AUTO_PASSTHROUGH}}}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "ingress", Namespace: "istio-system"}, Spec: networking.Gateway{
				Selector: map[string]string{"istio": "ingressgateway"},
				Servers: []*networking.Server{{Port: &networking.Port{Number: 443, Name: "https", Protocol: "HTTPS"},
					Hosts: []string{"*"}, Tls: &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_SIMPLE}}}}},
		},
		rules: []*istionet.DestinationRule{{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "demo"}, Spec: networking.DestinationRule{
			Host: "echo", Subsets: []*networking.Subset{{Name: "v1", Labels: map[string]string{"version": "v1"}}}}}},
	}
}

func translate(t *testing.T, s *snapshot) *discovery.Catalog {
	t.Helper()
	tr := translation{clusterDomain: "cluster.local", network: "node-net", nodeLabels: map[string]string{"istio": "eastwestgateway"}}
	r, err := tr.resources(s)
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.BuildValid(nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTranslateService(t *testing.T) {
	c := translate(t, baseSnapshot())
	if len(c.Gateways) != 1 || c.Gateways[0].Source.Name != "ew" {
		t.Fatalf("gateways %+v: want only the one selecting the node", c.Gateways)
	}
	if len(c.Services) != 1 {
		t.Fatalf("services: %d, want 1 (ExternalName and Services without a Service object are left out)", len(c.Services))
	}
	svc := c.Services[0]
	if svc.Host != "echo.demo.svc.cluster.local" || svc.Source.String() != "kubernetes: Service demo/echo" {
		t.Errorf("host %s source %v", svc.Host, svc.Source)
	}
	if strings.Join(svc.ExportTo, ",") != ".,istio-system" {
		t.Errorf("exportTo %q", svc.ExportTo)
	}
	want := []discovery.Port{{Number: 9080, Name: "tls-echo", Protocol: "TLS"}, {Number: 80, Name: "http", Protocol: "HTTP", TargetPort: 8080}}
	if len(svc.Ports) != len(want) {
		t.Fatalf("ports %+v, want %+v (UDP left out)", svc.Ports, want)
	}
	for i := range want {
		if svc.Ports[i] != want[i] {
			t.Errorf("port %d: %+v, want %+v", i, svc.Ports[i], want[i])
		}
	}
	if len(svc.Subsets) != 1 || svc.Subsets[0].Name != "v1" {
		t.Errorf("subsets %+v: the DestinationRule's short host should complete to the Service", svc.Subsets)
	}
	got := make(map[string]discovery.Endpoint)
	for _, e := range svc.Endpoints {
		got[e.Address] = e
	}
	for addr, why := range map[string]string{"10.0.0.3": "not ready", "10.0.0.4": "terminating", "10.0.0.5": "pod not in the cache", "not-an-ip": "not an IP"} {
		if _, ok := got[addr]; ok {
			t.Errorf("%s is listed: %s", addr, why)
		}
	}
	v1 := got["10.0.0.1"]
	if v1.ServiceAccount != "echo" || v1.Labels["version"] != "v1" || v1.Locality != "eu/eu-1/rack-7" || v1.Network != "network-a" {
		t.Errorf("v1 endpoint %+v", v1)
	}
	if p := v1.TargetPort(svc.Ports[0]); p != 9443 {
		t.Errorf("tls-echo target port %d, want the slice's 9443 (matched by name)", p)
	}
	if p := v1.TargetPort(svc.Ports[1]); p != 8080 {
		t.Errorf("http target port %d, want the Service's numeric targetPort 8080", p)
	}
	if _, ok := got["10.0.0.2"]; !ok {
		t.Error("ready endpoint 10.0.0.2 missing")
	}
	if e := got["10.0.0.7"]; e.Network != "network-b" {
		t.Errorf("pod network label: %q", e.Network)
	}
	if e, ok := got["10.0.0.6"]; !ok || e.Labels != nil || e.Network != "network-a" {
		t.Errorf("endpoint without a pod: %+v %v", e, ok)
	}
}

func TestTranslateNetworkAndLocalityDefaults(t *testing.T) {
	s := baseSnapshot()
	s.systemNS = nil
	s.nodes = nil
	s.pods["demo/v2"].Labels[discovery.LocalityLabel] = "us.us-2.r1"
	c := translate(t, s)
	for _, e := range c.Services[0].Endpoints {
		switch e.Address {
		case "10.0.0.1":
			if e.Network != "node-net" || e.Locality != "" {
				t.Errorf("without system namespace label or node: %+v", e)
			}
		case "10.0.0.2":
			if e.Locality != "us/us-2/r1" {
				t.Errorf("istio-locality label: %q", e.Locality)
			}
		}
	}
}

func TestTranslatePublishNotReady(t *testing.T) {
	ready := discoveryv1.Endpoint{Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Terminating: ptr.To(true)}}
	if dialable(ready, false) {
		t.Error("a terminating endpoint is dialed")
	}
	if !dialable(ready, true) {
		t.Error("publishNotReadyAddresses: a ready terminating endpoint is not dialed")
	}
}

// A resource the gateway cannot use is left out alone; the rest applies.
func TestTranslateLeavesOutBadResources(t *testing.T) {
	s := baseSnapshot()
	s.entries = []*istionet.ServiceEntry{{ObjectMeta: metav1.ObjectMeta{Name: "wild", Namespace: "demo"},
		Spec: networking.ServiceEntry{Hosts: []string{"*.example.com"}}},
		// A host the SNI parser refuses: no client could reach it.
		{ObjectMeta: metav1.ObjectMeta{Name: "numeric", Namespace: "demo"},
			Spec: networking.ServiceEntry{Hosts: []string{"reviews.123"}, Ports: []*networking.ServicePort{{Number: 80, Name: "http"}}}}}
	tr := translation{clusterDomain: "cluster.local", nodeLabels: map[string]string{"istio": "eastwestgateway"}}
	r, err := tr.resources(s)
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.BuildValid(nil)
	if c == nil || len(c.Services) != 1 || len(c.Gateways) != 1 {
		t.Fatalf("catalog %+v", c)
	}
	for _, want := range []string{"kubernetes: ServiceEntry demo/wild", `kubernetes: ServiceEntry demo/numeric: spec.hosts[0]: host "reviews.123" is an IP address`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err %v: want %s", err, want)
		}
	}
}

func TestProtocol(t *testing.T) {
	for _, tt := range []struct {
		port corev1.ServicePort
		want string
	}{
		{corev1.ServicePort{Name: "tls"}, "TLS"},
		{corev1.ServicePort{Name: "http-web"}, "HTTP"},
		{corev1.ServicePort{Name: "grpc-web"}, "GRPC-Web"},
		{corev1.ServicePort{Name: "web", AppProtocol: ptr.To("HTTP2")}, "HTTP2"},
		{corev1.ServicePort{Name: "web"}, "TCP"},
		{corev1.ServicePort{}, "TCP"},
	} {
		if got := protocol(tt.port); got != tt.want {
			t.Errorf("%+v: %s, want %s", tt.port, got, tt.want)
		}
	}
}

// The caches keep only what the translation reads, and it translates the
// same from slimmed objects.
func TestSlimKeepsWhatTranslationReads(t *testing.T) {
	s := baseSnapshot()
	full := translate(t, s)
	for k, p := range s.pods {
		p.Annotations = map[string]string{"big": strings.Repeat("x", 1000)}
		p.Spec.Containers = []corev1.Container{{Name: "app", Image: "app"}}
		o, err := slim(p)
		if err != nil {
			t.Fatal(err)
		}
		sp := o.(*corev1.Pod)
		if sp.Annotations != nil || sp.Spec.Containers != nil {
			t.Fatalf("slim pod keeps %+v", sp)
		}
		s.pods[k] = sp
	}
	for k, n := range s.nodes {
		o, _ := slim(n)
		s.nodes[k] = o.(*corev1.Node)
	}
	slimmed := translate(t, s)
	if fmt.Sprint(full.Services[0].Endpoints) != fmt.Sprint(slimmed.Services[0].Endpoints) {
		t.Errorf("endpoints differ:\n%v\n%v", full.Services[0].Endpoints, slimmed.Services[0].Endpoints)
	}
}

func TestUnchanged(t *testing.T) {
	a := pod("a", "10.0.0.1", map[string]string{"version": "v1"})
	status := a.DeepCopy()
	status.Status.Phase = corev1.PodRunning
	status.ResourceVersion = "2"
	relabelled := a.DeepCopy()
	relabelled.Labels["version"] = "v2"
	moved := a.DeepCopy()
	moved.Spec.NodeName = "node-b"
	slice := &discoveryv1.EndpointSlice{}
	for _, tt := range []struct {
		name     string
		old, cur any
		want     bool
	}{
		{"pod status only", a, status, true},
		{"pod labels", a, relabelled, false},
		{"pod node", a, moved, false},
		{"endpoint slice", slice, slice.DeepCopy(), false},
	} {
		if got := unchanged(tt.old, tt.cur); got != tt.want {
			t.Errorf("%s: unchanged = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// The ewgate.io/export label on a Service is its export choice; one that
// cannot be read keeps the Service in its network (fail closed), routable
// there, and says why.
func TestTranslateExportLabel(t *testing.T) {
	for _, tc := range []struct {
		name        string
		labels      map[string]string
		annotations map[string]string
		want        discovery.Export
		problem     string // "" for none
	}{
		{name: "no label: the node default decides", want: discovery.ExportUnset},
		{name: "true", labels: map[string]string{discovery.ExportLabel: "true"}, want: discovery.ExportYes},
		{name: "false", labels: map[string]string{discovery.ExportLabel: "false"}, want: discovery.ExportNo},
		{name: "unreadable value", labels: map[string]string{discovery.ExportLabel: "yes"}, want: discovery.ExportNo,
			problem: `kubernetes: Service demo/echo: metadata.labels[ewgate.io/export]: "yes": want "true" or "false": not exported to other networks`},
		{name: "written as an annotation", annotations: map[string]string{discovery.ExportLabel: "true"}, want: discovery.ExportNo,
			problem: "metadata.annotations[ewgate.io/export]: ewgate reads it as a label"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := baseSnapshot()
			svc := s.services[0].DeepCopy()
			svc.Labels = tc.labels
			for k, v := range tc.annotations {
				svc.Annotations[k] = v
			}
			s.services[0] = svc
			tr := translation{clusterDomain: "cluster.local", nodeLabels: map[string]string{"istio": "eastwestgateway"}}
			r, err := tr.resources(s)
			switch {
			case tc.problem == "" && err != nil:
				t.Errorf("problem %v, want none", err)
			case tc.problem != "" && (err == nil || !strings.Contains(err.Error(), tc.problem)):
				t.Errorf("problem %v, want %q", err, tc.problem)
			}
			c, err := r.BuildValid(nil)
			if err != nil {
				t.Fatal(err)
			}
			var got *discovery.Service
			for _, d := range c.Services {
				if d.Host == "echo.demo.svc.cluster.local" {
					got = d
				}
			}
			if got == nil {
				t.Fatalf("the Service left the catalog: %+v", c.Services)
			}
			if got.Export != tc.want {
				t.Errorf("export %v, want %v", got.Export, tc.want)
			}
			if len(got.Endpoints) == 0 {
				t.Error("the Service lost its endpoints: it must stay routable in its own network")
			}
		})
	}
}

// VirtualServices reach the catalog oldest first, whatever their names:
// on a server name two of them claim, the older one wins, as in Istio.
func TestTranslateVirtualServicesOldestFirst(t *testing.T) {
	s := baseSnapshot()
	s.gateways = append(s.gateways, &istionet.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "pass", Namespace: "istio-system"}, Spec: networking.Gateway{
		Selector: map[string]string{"istio": "eastwestgateway"},
		Servers: []*networking.Server{{Port: &networking.Port{Number: 15012, Name: "tls-istiod", Protocol: "tls"},
			Hosts: []string{"*"}, Tls: &networking.ServerTLSSettings{Mode: networking.ServerTLSSettings_PASSTHROUGH}}}}})
	vs := func(name string, created time.Time, port uint32) *istionet.VirtualService {
		return &istionet.VirtualService{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "istio-system", CreationTimestamp: metav1.NewTime(created)},
			Spec: networking.VirtualService{Hosts: []string{"*"}, Gateways: []string{"pass"}, Tls: []*networking.TLSRoute{{
				Match: []*networking.TLSMatchAttributes{{SniHosts: []string{"*"}}},
				Route: []*networking.RouteDestination{{Destination: &networking.Destination{Host: "echo.demo.svc.cluster.local", Port: &networking.PortSelector{Number: port}}}},
			}}}}
	}
	now := time.Now()
	s.vs = []*istionet.VirtualService{vs("a-newer", now, 80), vs("b-older", now.Add(-time.Hour), 9080)}
	v, err := translate(t, s).View(discovery.Node{Network: "node-net", Labels: map[string]string{"istio": "eastwestgateway"}, AnyTLSMode: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Passthrough) != 1 {
		t.Fatalf("passthrough listeners %d, want 1", len(v.Passthrough))
	}
	r, ok := v.Passthrough[0].Match("istiod.istio-system.svc")
	if !ok || r.VirtualService.Name != "b-older" || r.Destinations[0].Route.Key.Port != 9080 {
		t.Fatalf("route %+v, want the older VirtualService's", r)
	}
	if len(v.Ignored) != 1 || v.Ignored[0].Source.Name != "a-newer" {
		t.Errorf("ignored %+v, want the newer VirtualService's match", v.Ignored)
	}
}
