package discovery

import "testing"

// TestServiceExportedTo checks that a service is seen wherever
// exportVisibility (TestExportVisibility) makes it anything but hidden,
// relative to the service's own namespace.
func TestServiceExportedTo(t *testing.T) {
	tests := []struct {
		exportTo []string
		from     string
		want     bool
	}{
		{nil, "istio-system", true},
		{[]string{"."}, "bookinfo", true},
		{[]string{"."}, "istio-system", false},
		{[]string{"istio-system"}, "istio-system", true},
		// "~" hides the service even from the namespaces listed with it, as
		// Istio's PushContext reads it.
		{[]string{"~", "istio-system"}, "istio-system", false},
	}
	for _, tt := range tests {
		s := &Service{Host: "reviews.bookinfo.svc.cluster.local", Namespace: "bookinfo", ExportTo: tt.exportTo}
		if got := s.ExportedTo(tt.from); got != tt.want {
			t.Errorf("exportTo %q: ExportedTo(%q) = %v, want %v", tt.exportTo, tt.from, got, tt.want)
		}
	}
}

func TestEndpointTargetPort(t *testing.T) {
	tests := []struct {
		name  string
		ports map[string]uint32
		port  Port
		want  uint32
	}{
		{"number", nil, Port{Number: 9080, Name: "http"}, 9080},
		{"targetPort", nil, Port{Number: 9080, Name: "http", TargetPort: 8080}, 8080},
		{"endpoint port by name beats targetPort", map[string]uint32{"http": 19080}, Port{Number: 9080, Name: "http", TargetPort: 8080}, 19080},
		{"endpoint port by name beats number", map[string]uint32{"http": 19080}, Port{Number: 9080, Name: "http"}, 19080},
		{"other names are ignored", map[string]uint32{"grpc": 19090}, Port{Number: 9080, Name: "http", TargetPort: 8080}, 8080},
		{"zero endpoint port is ignored", map[string]uint32{"http": 0}, Port{Number: 9080, Name: "http"}, 9080},
		{"unnamed port", map[string]uint32{"http": 19080}, Port{Number: 9080}, 9080},
	}
	for _, tt := range tests {
		e := &Endpoint{Address: "10.0.0.1", Ports: tt.ports}
		if got := e.TargetPort(tt.port); got != tt.want {
			t.Errorf("%s: TargetPort = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestSelectorMatches(t *testing.T) {
	node := map[string]string{"istio": "eastwestgateway", "topology.istio.io/network": "net-a"}
	tests := []struct {
		selector map[string]string
		labels   map[string]string
		want     bool
	}{
		{nil, node, true},
		{nil, nil, true},
		{map[string]string{}, nil, true},
		{map[string]string{"istio": "eastwestgateway"}, node, true},
		{map[string]string{"istio": "eastwestgateway", "topology.istio.io/network": "net-a"}, node, true},
		{map[string]string{"istio": "eastwestgateway", "topology.istio.io/network": "net-b"}, node, false},
		{map[string]string{"istio": "ingressgateway"}, node, false},
		{map[string]string{"app": ""}, node, false},
		{map[string]string{"istio": "eastwestgateway"}, nil, false},
	}
	for _, tt := range tests {
		if got := SelectorMatches(tt.selector, tt.labels); got != tt.want {
			t.Errorf("selector %v, labels %v: SelectorMatches = %v, want %v", tt.selector, tt.labels, got, tt.want)
		}
	}
}

func TestServiceSubsetLookup(t *testing.T) {
	s := &Service{Subsets: []Subset{{Name: "v1", Labels: map[string]string{"version": "v1"}}, {Name: "v2"}}}
	if ss, ok := s.Subset("v1"); !ok || ss.Labels["version"] != "v1" {
		t.Errorf("Subset(v1) = %+v, %v", ss, ok)
	}
	if _, ok := s.Subset("v3"); ok {
		t.Error("Subset(v3) found")
	}
	if _, ok := s.Subset(""); ok {
		t.Error(`Subset("") found`)
	}
}

func TestCatalogWithEndpoints(t *testing.T) {
	c := mustParse(t, ewGateway("gw"),
		serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local", `[{address: 10.0.0.1, labels: {security.istio.io/tlsMode: istio}}]`),
		serviceEntry("bookinfo", "ratings", "ratings.bookinfo.svc.cluster.local", ""))
	reg := map[string][]Endpoint{
		"reviews.bookinfo.svc.cluster.local": {{Address: "10.0.0.2", Labels: map[string]string{TLSModeLabel: TLSModeIstio}}},
		"nope.bookinfo.svc.cluster.local":    {{Address: "10.0.0.3"}},
	}
	got, unknown := c.WithEndpoints(reg)
	equal(t, "unknown hosts", unknown, []string{"nope.bookinfo.svc.cluster.local"})
	equal(t, "merged endpoints", endpointAddresses(service(t, got, "reviews.bookinfo.svc.cluster.local")), []string{"10.0.0.1", "10.0.0.2"})
	equal(t, "original untouched", endpointAddresses(service(t, c, "reviews.bookinfo.svc.cluster.local")), []string{"10.0.0.1"})
	if service(t, got, "ratings.bookinfo.svc.cluster.local") != service(t, c, "ratings.bookinfo.svc.cluster.local") {
		t.Error("services without registered endpoints should be shared, not copied")
	}
	if same, _ := c.WithEndpoints(nil); same != c {
		t.Error("no endpoints: want the same catalog")
	}
}
