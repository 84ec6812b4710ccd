package discovery

import (
	"fmt"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	v := resolveView(t)
	s := Summarize(v, func(addr string) bool { return addr != "10.0.0.2:9080" })
	got := fmt.Sprint(s)
	want := "{network-a [{reviews.bookinfo.svc.cluster.local bookinfo [] " +
		// Only eligible endpoints of this network give identities.
		"[spiffe://cluster.local/ns/bookinfo/sa/reviews spiffe://cluster.local/ns/bookinfo/sa/reviews-v2] " +
		"[{9080 http HTTP [{ [{r/zone-1 2}]} {v1 [{r/zone-1 1}]} {v2 [{r/zone-1 1}]}]}] " +
		"[{v1 map[version:v1]} {v2 map[version:v2]}]}]}"
	if got != want {
		t.Fatalf("summary\n got %s\nwant %s", got, want)
	}
	if strings.Contains(got, "10.0.0") || strings.Contains(got, "10.1.0") {
		t.Fatal("a summary must never carry endpoint addresses")
	}
	v.Node.TrustDomain = "prod.example"
	if got := Summarize(v, nil).Services[0].ServiceAccounts[0]; got != "spiffe://prod.example/ns/bookinfo/sa/reviews" {
		t.Errorf("with trust domain prod.example: %s", got)
	}
}

// Only services this gateway exposes, exports and defines itself leave
// the network.
func TestSummarizeLeavesOut(t *testing.T) {
	eps := `[{address: 10.0.0.9, labels: {security.istio.io/tlsMode: istio}}]`
	labelled := func(name, value string) string {
		return strings.Replace(serviceEntry("bookinfo", name, name+".bookinfo.svc.cluster.local", eps),
			"  namespace: bookinfo\n", "  namespace: bookinfo\n  labels: {ewgate.io/export: \""+value+"\"}\n", 1)
	}
	c := mustParse(t, ewGateway("gw"),
		serviceEntry("bookinfo", "plain", "plain.bookinfo.svc.cluster.local", eps),
		labelled("in", "true"), labelled("out", "false"),
		serviceEntry("bookinfo", "hidden", "hidden.example.com", eps))
	c = c.Merge([]Definition{{Origin: Origin{Network: "network-b", Gateway: "b1"},
		Service: &ServiceSummary{Host: "remote.bookinfo.svc.cluster.local", Namespace: "bookinfo", Ports: []PortSummary{{Port: 9080}}}}})
	for _, tt := range []struct {
		def  ExportDefault
		want string
	}{
		{"", "in,plain"},
		{ExportAll, "in,plain"},
		{ExportNone, "in"},
	} {
		v, err := c.View(Node{Network: "network-a", Labels: map[string]string{"istio": "eastwestgateway"}, ExportDefault: tt.def})
		if err != nil {
			t.Fatal(err)
		}
		var hosts []string
		for _, s := range Summarize(v, nil).Services {
			hosts = append(hosts, strings.TrimSuffix(s.Host, ".bookinfo.svc.cluster.local"))
		}
		if got := strings.Join(hosts, ","); got != tt.want {
			t.Errorf("export default %q: summarized %s, want %s", tt.def, got, tt.want)
		}
	}
}
