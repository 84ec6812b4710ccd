package discovery

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/sni"
)

const reviews = "reviews.bookinfo.svc.cluster.local"

// remoteGW is gateway node of network with one service definition.
func remoteGW(node, network string, svc ServiceSummary) RemoteGateway {
	return RemoteGateway{Node: node, Network: network, PassthroughAddr: node + ":15443",
		Summary: Summary{Network: network, Services: []ServiceSummary{svc}}}
}

func reviewsDef(portName, proto string, v1Labels map[string]string, accounts ...string) ServiceSummary {
	return ServiceSummary{Host: reviews, Namespace: "bookinfo", ServiceAccounts: accounts,
		Ports:   []PortSummary{{Port: 9080, Name: portName, Protocol: proto, Subsets: []SubsetSummary{{Name: "", Healthy: []LocalityCount{{"", 1}}}}}},
		Subsets: []SubsetDefinition{{Name: "v1", Labels: v1Labels}}}
}

func TestMergeRemoteOnlyService(t *testing.T) {
	local := mustParse(t, ewGateway("gw"))
	gws := []RemoteGateway{
		remoteGW("b1", "network-b", reviewsDef("http", "HTTP", map[string]string{"version": "v1"}, "spiffe://cluster.local/ns/bookinfo/sa/reviews")),
		remoteGW("a2", "network-a", reviewsDef("other", "TCP", nil)), // own network: ignored
	}
	m := local.Merge(Definitions("network-a", gws))
	if len(local.Services) != 0 {
		t.Fatal("Merge modified its receiver")
	}
	svc := service(t, m, reviews)
	if svc.Origin != (Origin{"network-b", "b1"}) || svc.Namespace != "bookinfo" || len(svc.Endpoints) != 0 {
		t.Fatalf("merged service = %+v", svc)
	}
	equal(t, "ports", svc.Ports, []Port{{Number: 9080, Name: "http", Protocol: "HTTP", Origin: Origin{"network-b", "b1"}}})
	equal(t, "accounts", svc.RemoteAccounts, []string{"spiffe://cluster.local/ns/bookinfo/sa/reviews"})
	if len(m.Conflicts) != 0 {
		t.Errorf("conflicts: %+v", m.Conflicts)
	}
	v, err := m.View(Node{Network: "network-a", Labels: map[string]string{"istio": "eastwestgateway"}})
	if err != nil {
		t.Fatal(err)
	}
	// Admitted by the local Gateway's hosts, routed to other networks only.
	r, err := v.Route(0, sni.Key{Host: reviews, Port: 9080, Subset: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Targets) != 0 || r.Origin != (Origin{"network-b", "b1"}) {
		t.Errorf("route = %+v", r)
	}
	if s := Summarize(v, nil); len(s.Services) != 0 {
		t.Errorf("a remote definition was summarized again: %+v", s)
	}
	res, err := v.Resolve(sni.Key{Host: reviews, Port: 9080}, "network-a", gws, nil)
	if err != nil || len(res.Targets) != 1 || res.Targets[0].Gateway != "b1" {
		t.Errorf("Resolve = %+v, %v", res, err)
	}
}

// exportTo as seen from the local Gateway's namespace applies to remote
// definitions too.
func TestMergeExportTo(t *testing.T) {
	def := reviewsDef("http", "HTTP", nil)
	def.ExportTo = []string{"."}
	m := mustParse(t, ewGateway("gw")).Merge(Definitions("network-a", []RemoteGateway{remoteGW("b1", "network-b", def)}))
	v, err := m.View(Node{Network: "network-a", Labels: map[string]string{"istio": "eastwestgateway"}})
	if err != nil {
		t.Fatal(err)
	}
	var re *RouteError
	if _, err := v.Route(0, sni.Key{Host: reviews, Port: 9080}); !errors.As(err, &re) || re.Reason != NotExported {
		t.Fatalf("Route = %v, want not_exported (exportTo \".\" of namespace bookinfo, Gateway in istio-system)", err)
	}
}

func TestMergeConflicts(t *testing.T) {
	localYAML := []string{ewGateway("gw"),
		doc("ServiceEntry", "bookinfo", "reviews", `{hosts: [`+reviews+`], ports: [{number: 9080, name: http, protocol: HTTP}],
  endpoints: [{address: 10.0.0.1, labels: {version: v1, security.istio.io/tlsMode: istio}}]}`),
		doc("DestinationRule", "bookinfo", "reviews", `{host: reviews, subsets: [{name: v1, labels: {version: v1}}]}`)}
	b := remoteGW("b1", "network-b", reviewsDef("tcp", "TCP", map[string]string{"version": "one"}))
	b.Summary.Services[0].Ports = append(b.Summary.Services[0].Ports, PortSummary{Port: 9443, Name: "tls", Protocol: "TLS"})
	b.Summary.Services[0].Subsets = append(b.Summary.Services[0].Subsets, SubsetDefinition{Name: "v3", Labels: map[string]string{"version": "v3"}})
	c := remoteGW("c1", "network-c", reviewsDef("grpc", "GRPC", map[string]string{"version": "v1"}))
	c.Summary.Services[0].Namespace = "other"

	tests := []struct {
		name  string
		local bool
		gws   []RemoteGateway
		want  []string // "part: kept value (origin) over ignored value (origin)"
		ports []string // "number name protocol origin"
	}{
		{"local wins", true, []RemoteGateway{c, b}, []string{
			`port 9080: name "http" protocol "HTTP" (local) over name "tcp" protocol "TCP" (network network-b via gateway b1)`,
			`subset v1: version=v1 (local) over version=one (network network-b via gateway b1)`,
			`namespace: bookinfo (local) over other (network network-c via gateway c1)`,
			`port 9080: name "http" protocol "HTTP" (local) over name "grpc" protocol "GRPC" (network network-c via gateway c1)`,
		}, []string{"9080 http HTTP local", "9443 tls TLS network network-b via gateway b1"}},
		// Without a local definition the lowest network name wins, in any
		// order of arrival.
		{"lowest network wins", false, []RemoteGateway{c, b}, []string{
			`namespace: bookinfo (network network-b via gateway b1) over other (network network-c via gateway c1)`,
			`port 9080: name "tcp" protocol "TCP" (network network-b via gateway b1) over name "grpc" protocol "GRPC" (network network-c via gateway c1)`,
			`subset v1: version=one (network network-b via gateway b1) over version=v1 (network network-c via gateway c1)`,
		}, []string{"9080 tcp TCP network network-b via gateway b1", "9443 tls TLS network network-b via gateway b1"}},
		{"lowest network wins, other order", false, []RemoteGateway{b, c}, []string{
			`namespace: bookinfo (network network-b via gateway b1) over other (network network-c via gateway c1)`,
			`port 9080: name "tcp" protocol "TCP" (network network-b via gateway b1) over name "grpc" protocol "GRPC" (network network-c via gateway c1)`,
			`subset v1: version=one (network network-b via gateway b1) over version=v1 (network network-c via gateway c1)`,
		}, []string{"9080 tcp TCP network network-b via gateway b1", "9443 tls TLS network network-b via gateway b1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := mustParse(t, ewGateway("gw"))
			if tt.local {
				base = mustParse(t, localYAML...)
			}
			m := base.Merge(Definitions("network-a", tt.gws))
			var got []string
			for _, c := range m.Conflicts {
				got = append(got, fmt.Sprintf("%s: %s (%s) over %s (%s)", c.Part, c.KeptValue, c.Kept, c.IgnoredValue, c.Ignored))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("conflicts\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(tt.want, "\n     "))
			}
			var ports []string
			for _, p := range service(t, m, reviews).Ports {
				ports = append(ports, fmt.Sprintf("%d %s %s %s", p.Number, p.Name, p.Protocol, p.Origin))
			}
			equal(t, "ports", ports, tt.ports)
			if !tt.local {
				return
			}
			// Remote-only parts never route to this network's endpoints.
			v, err := m.View(Node{Network: "network-a", Labels: map[string]string{"istio": "eastwestgateway"}})
			if err != nil {
				t.Fatal(err)
			}
			for key, want := range map[sni.Key]int{
				{Host: reviews, Port: 9080, Subset: "v1"}: 1,
				{Host: reviews, Port: 9443}:               0,
				{Host: reviews, Port: 9080, Subset: "v3"}: 0,
			} {
				r, err := v.Route(0, key)
				if err != nil || len(r.Targets) != want {
					t.Errorf("Route(%v) = %+v, %v; want %d targets", key, r, err, want)
				}
			}
			s := Summarize(v, nil)
			if len(s.Services) != 1 || len(s.Services[0].Ports) != 1 || len(s.Services[0].Subsets) != 1 {
				t.Errorf("the summary carries parts other networks defined: %+v", s)
			}
		})
	}
}

func TestSameDefinitions(t *testing.T) {
	a := reviewsDef("http", "HTTP", map[string]string{"version": "v1"})
	healthier := reviewsDef("http", "HTTP", map[string]string{"version": "v1"})
	healthier.Ports[0].Subsets[0].Healthy[0].Count = 5
	relabelled := reviewsDef("http", "HTTP", map[string]string{"version": "v2"})
	defs := func(s ServiceSummary) []Definition {
		return Definitions("network-a", []RemoteGateway{remoteGW("b1", "network-b", s)})
	}
	if !SameDefinitions(defs(a), defs(healthier)) {
		t.Error("a health change counted as a definition change")
	}
	if SameDefinitions(defs(a), defs(relabelled)) {
		t.Error("a relabelled subset counted as the same definition")
	}
}

func TestOriginText(t *testing.T) {
	for _, o := range []Origin{{}, {Network: "network-b", Gateway: "gw-b-1"}} {
		b, _ := o.MarshalText()
		var got Origin
		if err := got.UnmarshalText(b); err != nil || got != o {
			t.Errorf("%q: round trip = %+v, %v", b, got, err)
		}
	}
	var o Origin
	if err := o.UnmarshalText([]byte("network x")); err == nil {
		t.Error(`"network x" parsed`)
	}
}

// Two gateways of one network that disagree for a while (a config
// rollout) are settled by gateway name, whichever arrived first.
func TestMergeGatewaysOfOneNetwork(t *testing.T) {
	b1 := remoteGW("b1", "network-b", reviewsDef("http", "HTTP", nil))
	b2 := remoteGW("b2", "network-b", reviewsDef("http", "HTTP2", nil))
	for _, gws := range [][]RemoteGateway{{b1, b2}, {b2, b1}} {
		m := mustParse(t, ewGateway("gw")).Merge(Definitions("network-a", gws))
		p := service(t, m, reviews).Ports[0]
		if p.Protocol != "HTTP" || p.Origin.Gateway != "b1" || len(m.Conflicts) != 1 || m.Conflicts[0].Ignored.Gateway != "b2" {
			t.Errorf("order %s, %s: port %+v, conflicts %+v", gws[0].Node, gws[1].Node, p, m.Conflicts)
		}
	}
}
