package discovery

import (
	"fmt"
	"testing"
)

// meshGateways returns one gateway for each of networks networks, each
// defining the same services services (3 ports, 2 subsets): the issue's
// scale case, as one gateway of network-0 sees it.
func meshGateways(networks, services int) []RemoteGateway {
	var gws []RemoteGateway
	for n := range networks {
		network := fmt.Sprintf("network-%d", n)
		s := Summary{Network: network}
		for i := range services {
			ns := fmt.Sprintf("ns-%03d", i%100)
			svc := ServiceSummary{Host: fmt.Sprintf("svc-%05d.%s.svc.cluster.local", i, ns), Namespace: ns,
				ServiceAccounts: []string{fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/svc-%05d", ns, i)},
				Subsets: []SubsetDefinition{{Name: "v1", Labels: map[string]string{"version": "v1"}},
					{Name: "v2", Labels: map[string]string{"version": "v2"}}}}
			for _, p := range []uint16{8080, 8443, 9090} {
				svc.Ports = append(svc.Ports, PortSummary{Port: p, Name: fmt.Sprintf("p%d", p), Protocol: "TCP", Subsets: []SubsetSummary{
					{Healthy: []LocalityCount{{"r/z", 2}}}, {Name: "v1", Healthy: []LocalityCount{{"r/z", 1}}}, {Name: "v2", Healthy: []LocalityCount{{"r/z", 1}}}}})
			}
			s.Services = append(s.Services, svc)
		}
		gws = append(gws, RemoteGateway{Node: network + "-gw", Network: network, PassthroughAddr: "192.0.2.1:15443", Summary: s})
	}
	return gws
}

// What a gossip change costs a gateway: collecting the other networks'
// definitions and finding them unchanged (a health change). Worst case:
// every gateway's entry was replaced (new values, equal definitions), so
// every definition is compared in full; an entry gossip did not replace
// compares by pointer.
func BenchmarkDefinitionsUnchanged(b *testing.B) {
	prev := Definitions("network-0", meshGateways(8, 10_000))
	gws := meshGateways(8, 10_000)
	gws[3].Summary.Services[0].Ports[0].Subsets[0].Healthy[0].Count++
	b.ReportAllocs()
	for b.Loop() {
		if !SameDefinitions(Definitions("network-0", gws), prev) {
			b.Fatal("definitions changed")
		}
	}
}

// What a definition change costs a gateway of network-0, which defines
// nothing itself: merging 7 networks' definitions of 10,000 services and
// building the view the gateway routes by.
func BenchmarkMergeAndView(b *testing.B) {
	gws := meshGateways(8, 10_000)
	defs := Definitions("network-0", gws)
	local, err := Parse("gw.yaml", []byte(ewGateway("gw")), nil)
	if err != nil {
		b.Fatal(err)
	}
	node := Node{Network: "network-0", Labels: map[string]string{"istio": "eastwestgateway"}}
	b.ReportAllocs()
	for b.Loop() {
		v, err := local.Merge(defs).View(node)
		if err != nil || len(v.Services()) != 10_000 || len(v.Conflicts) != 0 {
			b.Fatalf("view: %v", err)
		}
	}
}
