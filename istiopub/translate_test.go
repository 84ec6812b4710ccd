package istiopub

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	networking "istio.io/api/networking/v1alpha3"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ewgate/ewgate/peer"
)

// fakeCluster is a Cluster of fixed Services and namespaces (the
// translation's input, not a stand-in for an API server).
type fakeCluster struct {
	services   map[string]map[string]string // namespace/name -> selector
	namespaces []string
}

func (c fakeCluster) Service(ns, name string) (map[string]string, bool) {
	sel, ok := c.services[ns+"/"+name]
	return sel, ok
}

func (c fakeCluster) HasNamespace(ns string) bool { return slices.Contains(c.namespaces, ns) }

const reviews = "reviews.bookinfo.svc.cluster.local"

// gw is a gateway's NodeSummary in network with passthrough address addr,
// reporting services.
func gw(node, network, addr string, services ...peer.ServiceSummary) peer.NodeSummary {
	return peer.NodeSummary{Node: node, Meta: peer.Meta{Network: network, PassthroughAddr: addr},
		Summary: peer.Summary{Network: network, Services: services}}
}

// reviewsSvc is reviews with subsets v1 and v2 on one port, v1 healthy
// counts per locality as given, v2 one in eu/1.
func reviewsSvc(v1 map[string]uint32) peer.ServiceSummary {
	var all, one []peer.LocalityCount
	total := map[string]uint32{"eu/1": 1}
	for loc, n := range v1 {
		one = append(one, peer.LocalityCount{Locality: loc, Count: n})
		total[loc] += n
	}
	slices.SortFunc(one, func(a, b peer.LocalityCount) int { return strings.Compare(a.Locality, b.Locality) })
	for _, loc := range slices.Sorted(maps.Keys(total)) {
		all = append(all, peer.LocalityCount{Locality: loc, Count: total[loc]})
	}
	return peer.ServiceSummary{
		Host: reviews, Namespace: "bookinfo",
		ServiceAccounts: []string{"spiffe://cluster.local/ns/bookinfo/sa/reviews"},
		Ports: []peer.PortSummary{{Port: 9080, Name: "http", Protocol: "HTTP", Subsets: []peer.SubsetSummary{
			{Name: "", Healthy: all},
			{Name: "v1", Healthy: one},
			{Name: "v2", Healthy: []peer.LocalityCount{{Locality: "eu/1", Count: 1}}},
		}}},
		Subsets: []peer.SubsetDefinition{{Name: "v1", Labels: map[string]string{"version": "v1"}}, {Name: "v2", Labels: map[string]string{"version": "v2"}}},
	}
}

// line renders an object as one line for comparison: kind, namespace,
// its labels that matter and its spec's essentials.
func line(o Object) string {
	switch s := o.Spec.(type) {
	case *gatewayv1.GatewaySpec:
		var addrs []string
		for _, a := range s.Addresses {
			addrs = append(addrs, string(*a.Type)+":"+a.Value)
		}
		l := s.Listeners[0]
		return fmt.Sprintf("Gateway %s net=%s class=%s addrs=%v port=%d %s/%s/%s", o.Namespace, o.Labels[labelNetwork],
			s.GatewayClassName, addrs, l.Port, l.Protocol, *l.TLS.Mode, l.TLS.Options[listenerProtocol])
	case *networking.ServiceEntry:
		var ports []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%d/%s/%s", p.Number, p.Name, p.Protocol))
		}
		return fmt.Sprintf("ServiceEntry %s hosts=%v ports=%v %s %s sans=%v exportTo=%v selects=%v", o.Namespace, s.Hosts, ports,
			s.Location, s.Resolution, s.SubjectAltNames, s.ExportTo, s.WorkloadSelector.GetLabels()[LabelService] != "")
	case *networking.WorkloadEntry:
		var labels []string
		for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
			if k != LabelManagedBy && k != LabelService {
				labels = append(labels, k+"="+s.Labels[k])
			}
		}
		return fmt.Sprintf("WorkloadEntry %s net=%s addr=%q loc=%s weight=%d sa=%s labels=%v", o.Namespace, s.Network, s.Address,
			s.Locality, s.Weight, s.ServiceAccount, labels)
	}
	return "?"
}

func TestTranslate(t *testing.T) {
	opts := Options{Network: "net-a", Namespace: "ewgate-system"}
	local := opts
	local.Local = true
	withNS := fakeCluster{namespaces: []string{"bookinfo"}}
	for _, tc := range []struct {
		name      string
		opts      Options
		in        []peer.NodeSummary
		cluster   fakeCluster
		want      []string
		wantSkips []string
	}{
		{
			name: "own network only: nothing",
			opts: opts,
			in:   []peer.NodeSummary{gw("a1", "net-a", "10.0.0.1:15443", reviewsSvc(map[string]uint32{"eu/1": 2}))},
		},
		{
			name: "remote service, its namespace here",
			opts: opts,
			in: []peer.NodeSummary{
				gw("a1", "net-a", "10.0.0.1:15443"),
				gw("b1", "net-b", "192.0.2.1:15443", reviewsSvc(map[string]uint32{"eu/1": 2, "us/2": 3})),
			},
			cluster: withNS,
			want: []string{
				"Gateway ewgate-system net=net-b class=istio-remote addrs=[IPAddress:192.0.2.1] port=15443 TLS/Passthrough/auto-passthrough",
				"ServiceEntry bookinfo hosts=[reviews.bookinfo.svc.cluster.local] ports=[9080/http/HTTP] MESH_INTERNAL STATIC sans=[spiffe://cluster.local/ns/bookinfo/sa/reviews] exportTo=[] selects=true",
				// v1 in eu/1 (2) and us/2 (3), v2 in eu/1 (1); no endpoint outside the subsets.
				`WorkloadEntry bookinfo net=net-b addr="" loc=eu/1 weight=2 sa=reviews labels=[security.istio.io/tlsMode=istio version=v1]`,
				`WorkloadEntry bookinfo net=net-b addr="" loc=us/2 weight=3 sa=reviews labels=[security.istio.io/tlsMode=istio version=v1]`,
				`WorkloadEntry bookinfo net=net-b addr="" loc=eu/1 weight=1 sa=reviews labels=[security.istio.io/tlsMode=istio version=v2]`,
			},
		},
		{
			name: "remote service, namespace not here: the publisher's, with exportTo . kept meaning the service's",
			opts: opts,
			in: []peer.NodeSummary{gw("b1", "net-b", "gw-b.example.com:443", peer.ServiceSummary{
				Host: "db.example.internal", Namespace: "data", ExportTo: []string{"."},
				ServiceAccounts: []string{"spiffe://b.example/ns/data/sa/db"},
				Ports: []peer.PortSummary{{Port: 5432, Name: "Postgres!", Subsets: []peer.SubsetSummary{
					{Name: "", Healthy: []peer.LocalityCount{{Locality: "", Count: 4}}}}}},
			})},
			want: []string{
				"Gateway ewgate-system net=net-b class=istio-remote addrs=[Hostname:gw-b.example.com] port=443 TLS/Passthrough/auto-passthrough",
				"ServiceEntry ewgate-system hosts=[db.example.internal] ports=[5432/port-5432/] MESH_INTERNAL STATIC sans=[spiffe://b.example/ns/data/sa/db] exportTo=[data] selects=true",
				// The service account is in another namespace: the
				// ServiceEntry's subjectAltNames carry it instead.
				`WorkloadEntry ewgate-system net=net-b addr="" loc= weight=4 sa= labels=[security.istio.io/tlsMode=istio]`,
			},
		},
		{
			name: "same-named local Service: only WorkloadEntries it selects, with the endpoints outside the subsets",
			opts: opts,
			in: []peer.NodeSummary{gw("b1", "net-b", "192.0.2.1:15443", func() peer.ServiceSummary {
				s := reviewsSvc(map[string]uint32{"eu/1": 2})
				s.Ports[0].Subsets[0].Healthy[0].Count = 5 // 2 more than v1 and v2
				return s
			}())},
			cluster: fakeCluster{services: map[string]map[string]string{"bookinfo/reviews": {"app": "reviews"}}, namespaces: []string{"bookinfo"}},
			want: []string{
				"Gateway ewgate-system net=net-b class=istio-remote addrs=[IPAddress:192.0.2.1] port=15443 TLS/Passthrough/auto-passthrough",
				`WorkloadEntry bookinfo net=net-b addr="" loc=eu/1 weight=2 sa=reviews labels=[app=reviews security.istio.io/tlsMode=istio]`,
				`WorkloadEntry bookinfo net=net-b addr="" loc=eu/1 weight=2 sa=reviews labels=[app=reviews security.istio.io/tlsMode=istio version=v1]`,
				`WorkloadEntry bookinfo net=net-b addr="" loc=eu/1 weight=1 sa=reviews labels=[app=reviews security.istio.io/tlsMode=istio version=v2]`,
			},
		},
		{
			name:      "same-named local Service without a selector: nothing for it",
			opts:      opts,
			in:        []peer.NodeSummary{gw("b1", "net-b", "192.0.2.1:15443", reviewsSvc(map[string]uint32{"eu/1": 2}))},
			cluster:   fakeCluster{services: map[string]map[string]string{"bookinfo/reviews": nil}},
			want:      []string{"Gateway ewgate-system net=net-b class=istio-remote addrs=[IPAddress:192.0.2.1] port=15443 TLS/Passthrough/auto-passthrough"},
			wantSkips: []string{"has no selector"},
		},
		{
			name: "two gateways of one network: both addresses, counts not added; two ports: two Gateways",
			opts: opts,
			in: []peer.NodeSummary{
				gw("b1", "net-b", "192.0.2.2:15443", reviewsSvc(map[string]uint32{"eu/1": 2})),
				gw("b2", "net-b", "192.0.2.1:15443", reviewsSvc(map[string]uint32{"eu/1": 2})),
				gw("b3", "net-b", "192.0.2.3:8443"),
				gw("b4", "net-b", "bad address"),
			},
			cluster: withNS,
			want: []string{
				"Gateway ewgate-system net=net-b class=istio-remote addrs=[IPAddress:192.0.2.1 IPAddress:192.0.2.2] port=15443 TLS/Passthrough/auto-passthrough",
				"Gateway ewgate-system net=net-b class=istio-remote addrs=[IPAddress:192.0.2.3] port=8443 TLS/Passthrough/auto-passthrough",
				"ServiceEntry bookinfo hosts=[reviews.bookinfo.svc.cluster.local] ports=[9080/http/HTTP] MESH_INTERNAL STATIC sans=[spiffe://cluster.local/ns/bookinfo/sa/reviews] exportTo=[] selects=true",
				`WorkloadEntry bookinfo net=net-b addr="" loc=eu/1 weight=2 sa=reviews labels=[security.istio.io/tlsMode=istio version=v1]`,
				`WorkloadEntry bookinfo net=net-b addr="" loc=eu/1 weight=1 sa=reviews labels=[security.istio.io/tlsMode=istio version=v2]`,
			},
			wantSkips: []string{`passthrough address "bad address"`},
		},
		{
			name: "a service in two networks: one ServiceEntry, entries per network",
			opts: opts,
			in: []peer.NodeSummary{
				gw("b1", "net-b", "192.0.2.1:15443", reviewsSvc(map[string]uint32{"eu/1": 2})),
				gw("c1", "net-c", "198.51.100.1:15443", reviewsSvc(map[string]uint32{"us/1": 7})),
			},
			cluster: withNS,
			want: []string{
				"Gateway ewgate-system net=net-b class=istio-remote addrs=[IPAddress:192.0.2.1] port=15443 TLS/Passthrough/auto-passthrough",
				"Gateway ewgate-system net=net-c class=istio-remote addrs=[IPAddress:198.51.100.1] port=15443 TLS/Passthrough/auto-passthrough",
				"ServiceEntry bookinfo hosts=[reviews.bookinfo.svc.cluster.local] ports=[9080/http/HTTP] MESH_INTERNAL STATIC sans=[spiffe://cluster.local/ns/bookinfo/sa/reviews] exportTo=[] selects=true",
				`WorkloadEntry bookinfo net=net-b addr="" loc=eu/1 weight=2 sa=reviews labels=[security.istio.io/tlsMode=istio version=v1]`,
				`WorkloadEntry bookinfo net=net-b addr="" loc=eu/1 weight=1 sa=reviews labels=[security.istio.io/tlsMode=istio version=v2]`,
				`WorkloadEntry bookinfo net=net-c addr="" loc=eu/1 weight=1 sa=reviews labels=[security.istio.io/tlsMode=istio version=v2]`,
				`WorkloadEntry bookinfo net=net-c addr="" loc=us/1 weight=7 sa=reviews labels=[security.istio.io/tlsMode=istio version=v1]`,
			},
		},
		{
			name: "no healthy endpoint: the ServiceEntry, no WorkloadEntry",
			opts: opts,
			in: []peer.NodeSummary{gw("b1", "net-b", "192.0.2.1:15443", peer.ServiceSummary{Host: reviews, Namespace: "bookinfo",
				Ports: []peer.PortSummary{{Port: 9080, Name: "http", Subsets: []peer.SubsetSummary{{Name: ""}}}}})},
			cluster: withNS,
			want: []string{
				"Gateway ewgate-system net=net-b class=istio-remote addrs=[IPAddress:192.0.2.1] port=15443 TLS/Passthrough/auto-passthrough",
				"ServiceEntry bookinfo hosts=[reviews.bookinfo.svc.cluster.local] ports=[9080/http/] MESH_INTERNAL STATIC sans=[] exportTo=[] selects=true",
			},
		},
		{
			name: "local mode: remote networks' Gateways list this network's gateways",
			opts: local,
			in: []peer.NodeSummary{
				gw("a1", "net-a", "10.0.0.1:15443"),
				gw("a2", "net-a", "10.0.0.2:15443"),
				gw("b1", "net-b", "192.0.2.1:15443"),
			},
			want: []string{"Gateway ewgate-system net=net-b class=istio-remote addrs=[IPAddress:10.0.0.1 IPAddress:10.0.0.2] port=15443 TLS/Passthrough/auto-passthrough"},
		},
		{
			name: "local mode with addresses given",
			opts: Options{Network: "net-a", Namespace: "ewgate-system", Local: true, LocalGateways: []string{"ewgate.ewgate-system.svc:15443"}},
			in:   []peer.NodeSummary{gw("a1", "net-a", "10.0.0.1:15443"), gw("b1", "net-b", "192.0.2.1:15443")},
			want: []string{"Gateway ewgate-system net=net-b class=istio-remote addrs=[Hostname:ewgate.ewgate-system.svc] port=15443 TLS/Passthrough/auto-passthrough"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, skips := Translate(tc.opts, tc.in, tc.cluster)
			var got []string
			for _, o := range objs {
				if o.Labels[LabelManagedBy] != ManagedByValue {
					t.Errorf("%s lacks the ownership label: %v", o.Key(), o.Labels)
				}
				got = append(got, line(o))
			}
			// Objects are sorted by key (names carry hashes), so compare as sets.
			if !sameSet(got, tc.want) {
				t.Errorf("got\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(tc.want, "\n\t"))
			}
			if len(skips) != len(tc.wantSkips) {
				t.Errorf("skipped %q, want %q", skips, tc.wantSkips)
			}
			for i := range min(len(skips), len(tc.wantSkips)) {
				if !strings.Contains(skips[i], tc.wantSkips[i]) {
					t.Errorf("skipped %q, want it to say %q", skips[i], tc.wantSkips[i])
				}
			}
			again, _ := Translate(tc.opts, tc.in, tc.cluster)
			a, _ := json.Marshal(objs)
			b, _ := json.Marshal(again)
			if string(a) != string(b) {
				t.Error("two translations of one input differ")
			}
		})
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// WorkloadEntries of a ServiceEntry carry its selector label; names are
// unique, valid DNS labels, and stable.
func TestTranslateNames(t *testing.T) {
	in := []peer.NodeSummary{
		gw("b1", "Net_B/with a long name that needs to be cut because it does not fit in sixty-three bytes", "192.0.2.1:15443",
			reviewsSvc(map[string]uint32{"eu/1": 2, "us/2": 3})),
	}
	objs, _ := Translate(Options{Network: "net-a", Namespace: "ewgate-system"}, in, fakeCluster{namespaces: []string{"bookinfo"}})
	seen := make(map[string]bool)
	var seName string
	for _, o := range objs {
		if len(o.Name) > 63 || strings.Trim(o.Name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" || strings.HasSuffix(o.Name, "-") {
			t.Errorf("name %q is not a DNS label", o.Name)
		}
		if seen[o.Name] {
			t.Errorf("name %q twice", o.Name)
		}
		seen[o.Name] = true
		if o.Kind == KindServiceEntry {
			seName = o.Name
		}
	}
	for _, o := range objs {
		if o.Kind == KindWorkloadEntry && o.Labels[LabelService] != seName {
			t.Errorf("%s: %s=%q, want the ServiceEntry's name %q", o.Key(), LabelService, o.Labels[LabelService], seName)
		}
	}
	if got := objectName("reviews", "workload", "a", "b"); got != objectName("reviews", "workload", "a", "b") || got == objectName("reviews", "workload", "a", "c") {
		t.Errorf("objectName not stable or not distinct: %s", got)
	}
}
