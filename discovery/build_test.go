package discovery

import (
	"slices"
	"strings"
	"testing"
)

// registry is a catalog of one registry service, as the Kubernetes source
// builds it.
func registry(t *testing.T, host string) *Catalog {
	t.Helper()
	r := &Resources{ClusterDomain: "example.org", Services: []*Service{{
		Source: Source{File: "kubernetes", Kind: "Service", Namespace: "bookinfo", Name: "reviews"},
		Host:   host, Namespace: "bookinfo",
		Ports:     []Port{{Number: 9080, Name: "http"}},
		Endpoints: []Endpoint{{Address: "10.0.0.1", Labels: map[string]string{"version": "v1"}}},
	}}}
	c, err := r.Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestMerge(t *testing.T) {
	files, err := Parse("mesh.yaml", []byte(ewGateway("ew")+"---\n"+
		doc("DestinationRule", "bookinfo", "reviews", `{host: reviews, subsets: [{name: v1, labels: {version: v1}}]}`)), nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Merge(nil, files, registry(t, "reviews.bookinfo.svc.example.org"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Gateways) != 1 || len(c.Services) != 1 {
		t.Fatalf("merged %d gateways, %d services", len(c.Gateways), len(c.Services))
	}
	if ss := c.Services[0].Subsets; len(ss) != 1 || ss[0].Name != "v1" {
		t.Errorf("a file's DestinationRule, completed with the registry's cluster domain, gives subsets %+v", ss)
	}
	if one, err := Merge(nil, nil, files); err != nil || one != files {
		t.Errorf("Merge of one catalog: %p %v, want it unchanged", one, err)
	}
	if _, err := Merge(nil, &Catalog{}, files); err == nil {
		t.Error("a catalog not made by Build merged")
	}
}

// A host a file and the cluster both define is an error naming both.
func TestMergeConflict(t *testing.T) {
	files, err := Parse("mesh.yaml", []byte(serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.example.org", "")), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Merge(nil, files, registry(t, "reviews.bookinfo.svc.example.org"))
	want := `mesh.yaml: ServiceEntry bookinfo/reviews: spec.hosts: "reviews.bookinfo.svc.example.org" is already defined by kubernetes: Service bookinfo/reviews`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("err %v, want %s", err, want)
	}
}

func TestBuildValidLeavesOutOnlyTheBad(t *testing.T) {
	var l loader
	l.addFile("x.yaml", []byte(ewGateway("ew")+"---\n"+
		doc("Gateway", "istio-system", "bad", `{servers: [{port: {number: 443, protocol: HTTPS}, hosts: ["*"], tls: {mode: SIMPLE}}]}`)+"---\n"+
		serviceEntry("a", "ok", "ok.local", "")+"---\n"+
		serviceEntry("a", "dup", "ok.local", "")))
	if len(l.errs) > 0 {
		t.Fatal(l.errs)
	}
	if _, err := l.res.Build(nil); err == nil {
		t.Fatal("Build accepted bad resources")
	}
	c, err := l.res.BuildValid(nil)
	if c == nil || len(c.Gateways) != 1 || c.Gateways[0].Source.Name != "ew" || len(c.Services) != 1 || c.Services[0].Source.Name != "ok" {
		t.Fatalf("catalog %+v", c)
	}
	for _, want := range []string{"Gateway istio-system/bad", "ServiceEntry a/dup"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err %v lacks %s", err, want)
		}
	}
	// What it kept merges cleanly.
	if _, err := Merge(nil, c, registry(t, "other.local")); err != nil {
		t.Error(err)
	}
}

// TestBuildValidSkipsUnroutableHosts gives BuildValid, as the Kubernetes
// source does, a Service and a ServiceEntry whose hosts the SNI parser
// refuses: each is left out with a problem naming its host field, and the
// rest is kept.
func TestBuildValidSkipsUnroutableHosts(t *testing.T) {
	svc := func(name, host string) *Service {
		return &Service{Source: Source{File: "kubernetes", Kind: "Service", Namespace: "bookinfo", Name: name},
			Host: host, Namespace: "bookinfo", Ports: []Port{{Number: 9080, Name: "http"}}}
	}
	var l loader
	l.addFile("kubernetes", []byte(serviceEntry("bookinfo", "numeric", "reviews.123", "")+"---\n"+
		serviceEntry("bookinfo", "ok", "ok.local", "")))
	if len(l.errs) > 0 {
		t.Fatal(l.errs)
	}
	l.res.Services = []*Service{svc("short-ip", "10.1"), svc("hex", "ratings.bookinfo.svc.0x1f"), svc("reviews", "Reviews.bookinfo.svc.cluster.local")}

	if _, err := l.res.Build(nil); err == nil {
		t.Fatal("Build accepted hosts the SNI parser refuses")
	}
	c, err := l.res.BuildValid(nil)
	if c == nil {
		t.Fatalf("BuildValid kept nothing: %v", err)
	}
	var hosts []string
	for _, s := range c.Services {
		hosts = append(hosts, s.Host)
	}
	if want := []string{"reviews.bookinfo.svc.cluster.local", "ok.local"}; !slices.Equal(hosts, want) {
		t.Errorf("kept hosts %q, want %q", hosts, want)
	}
	wantErrContains(t, err,
		`ServiceEntry bookinfo/numeric: spec.hosts[0]: host "reviews.123" is an IP address`,
		`Service bookinfo/short-ip: host: host "10.1" is an IP address`,
		`Service bookinfo/hex: host: host "ratings.bookinfo.svc.0x1f" is an IP address`)
}
