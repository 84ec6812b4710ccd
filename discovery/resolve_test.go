package discovery

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/sni"
)

// resolveView is network-a's view of reviews.bookinfo with two v1
// endpoints (zone-1, zone-2, weights 1 and 3) and one v2 endpoint.
func resolveView(t *testing.T) *View {
	t.Helper()
	c := mustParse(t, ewGateway("gw"),
		serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local", `[
  {address: 10.0.0.1, network: network-a, locality: r/zone-1, serviceAccount: reviews, labels: {version: v1, security.istio.io/tlsMode: istio}},
  {address: 10.0.0.2, network: network-a, locality: r/zone-2, weight: 3, serviceAccount: reviews, labels: {version: v1, security.istio.io/tlsMode: istio}},
  {address: 10.0.0.3, network: network-a, locality: r/zone-1, serviceAccount: reviews-v2, labels: {version: v2, security.istio.io/tlsMode: istio}},
  {address: 10.1.0.1, network: network-b, serviceAccount: elsewhere, labels: {version: v2, security.istio.io/tlsMode: istio}},
  {address: 10.0.0.4, network: network-a, serviceAccount: plaintext, labels: {version: v2}}]`),
		doc("DestinationRule", "bookinfo", "reviews", `{host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}`))
	v, err := c.View(Node{Network: "network-a", Labels: map[string]string{"istio": "eastwestgateway"}})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// gw is a remote gateway whose summary has reviews port 9080 with the given
// per-locality counts for subset "" and v1 ("loc=n,loc=n").
func gw(node, network, counts string) RemoteGateway {
	var lcs []LocalityCount
	for _, part := range strings.Split(counts, ",") {
		if part == "" {
			continue
		}
		var n uint32
		loc, num, _ := strings.Cut(part, "=")
		fmt.Sscan(num, &n)
		lcs = append(lcs, LocalityCount{Locality: loc, Count: n})
	}
	return RemoteGateway{Node: node, Network: network, PassthroughAddr: node + ":15443", Summary: Summary{
		Network: network,
		Services: []ServiceSummary{{Host: "reviews.bookinfo.svc.cluster.local", Ports: []PortSummary{{Port: 9080,
			Subsets: []SubsetSummary{{Name: "", Healthy: lcs}, {Name: "v1", Healthy: lcs}}}}}},
	}}
}

func TestResolve(t *testing.T) {
	v := resolveView(t)
	v1 := sni.Key{Host: "reviews.bookinfo.svc.cluster.local", Port: 9080, Subset: "v1"}
	all := sni.Key{Host: "reviews.bookinfo.svc.cluster.local", Port: 9080}
	tests := []struct {
		name     string
		key      sni.Key
		from     string
		gateways []RemoteGateway
		down     []string // unhealthy local addresses
		want     []string // "via address network locality weight"
	}{
		{name: "local client gets local endpoints with their weights", key: v1, from: "network-a",
			want: []string{"direct 10.0.0.1:9080 network-a r/zone-1 1", "direct 10.0.0.2:9080 network-a r/zone-2 3"}},
		{name: "unhealthy local endpoints are left out", key: v1, from: "network-a", down: []string{"10.0.0.2:9080"},
			want: []string{"direct 10.0.0.1:9080 network-a r/zone-1 1"}},
		{name: "remote network split over its two gateways; all weights scaled by 2", key: v1, from: "network-a",
			gateways: []RemoteGateway{gw("b1", "network-b", "z=6"), gw("b2", "network-b", "z=6")},
			want: []string{"direct 10.0.0.1:9080 network-a r/zone-1 2", "direct 10.0.0.2:9080 network-a r/zone-2 6",
				"gateway b1:15443 network-b z 6", "gateway b2:15443 network-b z 6"}},
		{name: "a huge count scaled by another network's three gateways saturates instead of wrapping to 2", key: all, from: "network-c",
			gateways: []RemoteGateway{gw("b1", "network-b", "z=1431655766"), gw("d1", "network-d", "z=3"), gw("d2", "network-d", "z=3"), gw("d3", "network-d", "z=3")},
			want:     []string{"gateway b1:15443 network-b z 4294967295", "gateway d1:15443 network-d z 3", "gateway d2:15443 network-d z 3", "gateway d3:15443 network-d z 3"}},
		{name: "one endpoint behind two gateways: both carry it", key: all, from: "network-c",
			gateways: []RemoteGateway{gw("b1", "network-b", "z=1"), gw("b2", "network-b", "z=1")},
			want:     []string{"gateway b1:15443 network-b z 1", "gateway b2:15443 network-b z 1"}},
		{name: "networks with 2 and 3 gateways: scaled by 6, totals 6x their counts", key: all, from: "network-a",
			gateways: []RemoteGateway{gw("b1", "network-b", "z=1"), gw("b2", "network-b", "z=1"),
				gw("c1", "network-c", "z=2"), gw("c2", "network-c", "z=2"), gw("c3", "network-c", "z=2")},
			want: []string{"direct 10.0.0.1:9080 network-a r/zone-1 6", "direct 10.0.0.2:9080 network-a r/zone-2 18",
				"direct 10.0.0.3:9080 network-a r/zone-1 6",
				"gateway b1:15443 network-b z 3", "gateway b2:15443 network-b z 3",
				"gateway c1:15443 network-c z 4", "gateway c2:15443 network-c z 4", "gateway c3:15443 network-c z 4"}},
		{name: "a dead gateway (not passed) leaves its share to the live one", key: all, from: "network-c",
			gateways: []RemoteGateway{gw("b2", "network-b", "z=6")},
			want:     []string{"gateway b2:15443 network-b z 6"}},
		{name: "odd counts divide exactly", key: all, from: "network-c",
			gateways: []RemoteGateway{gw("b1", "network-b", "z=5"), gw("b2", "network-b", "z=5")},
			want:     []string{"gateway b1:15443 network-b z 5", "gateway b2:15443 network-b z 5"}},
		{name: "localities keep their own weights", key: all, from: "network-c",
			gateways: []RemoteGateway{gw("b1", "network-b", "r/z1=3,r/z2=1"), gw("b2", "network-b", "r/z1=3,r/z2=1")},
			want: []string{"gateway b1:15443 network-b r/z1 3", "gateway b2:15443 network-b r/z1 3",
				"gateway b1:15443 network-b r/z2 1", "gateway b2:15443 network-b r/z2 1"}},
		{name: "a network with no healthy endpoint is left out", key: all, from: "network-a",
			gateways: []RemoteGateway{gw("b1", "network-b", ""), gw("c1", "network-c", "z=2")},
			want: []string{"direct 10.0.0.1:9080 network-a r/zone-1 1", "direct 10.0.0.2:9080 network-a r/zone-2 3",
				"direct 10.0.0.3:9080 network-a r/zone-1 1", "gateway c1:15443 network-c z 2"}},
		{name: "gateways that disagree: the smaller count wins", key: all, from: "network-c",
			gateways: []RemoteGateway{gw("b1", "network-b", "z=2"), gw("b2", "network-b", "z=4")},
			want:     []string{"gateway b1:15443 network-b z 2", "gateway b2:15443 network-b z 2"}},
		{name: "an ejection on one gateway of a network is an ejection for all", key: all, from: "network-c",
			gateways: []RemoteGateway{gw("b1", "network-b", ""), gw("b2", "network-b", "z=1"), gw("c1", "network-c", "z=1")},
			want:     []string{}},
		{name: "per locality: a locality one gateway lacks is out", key: all, from: "network-a",
			gateways: []RemoteGateway{gw("b1", "network-b", "r/z1=3,r/z2=1"), gw("b2", "network-b", "r/z1=2")},
			want: []string{"direct 10.0.0.1:9080 network-a r/zone-1 2", "direct 10.0.0.2:9080 network-a r/zone-2 6",
				"direct 10.0.0.3:9080 network-a r/zone-1 2", "gateway b1:15443 network-b r/z1 2", "gateway b2:15443 network-b r/z1 2"}},
		{name: "a client's own network is never reached through its gateways", key: all, from: "network-b",
			gateways: []RemoteGateway{gw("b1", "network-b", "z=2"), gw("a1", "network-a", "r/zone-1=2,r/zone-2=1")},
			want:     []string{"gateway a1:15443 network-a r/zone-1 2", "gateway a1:15443 network-a r/zone-2 1"}},
		{name: "a service known only remotely", key: sni.Key{Host: "reviews.bookinfo.svc.cluster.local", Port: 9080, Subset: "v1"}, from: "network-c",
			gateways: []RemoteGateway{gw("b1", "network-b", "z=1")},
			want:     []string{"gateway b1:15443 network-b z 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			healthy := func(addr string) bool { return !slices.Contains(tt.down, addr) }
			res, err := v.Resolve(tt.key, tt.from, tt.gateways, healthy)
			if err != nil {
				t.Fatal(err)
			}
			if res.SNI != tt.key.SNI() {
				t.Errorf("SNI %q, want %q", res.SNI, tt.key.SNI())
			}
			var got []string
			for _, r := range res.Targets {
				got = append(got, fmt.Sprintf("%s %s %s %s %d", r.Via, r.Address, r.Network, r.Locality, r.Weight))
			}
			equal(t, "targets", got, tt.want)
		})
	}
}

func TestResolveUnknown(t *testing.T) {
	v := resolveView(t)
	for _, key := range []sni.Key{
		{Host: "nope.bookinfo.svc.cluster.local", Port: 9080},
		{Host: "reviews.bookinfo.svc.cluster.local", Port: 1},
		{Host: "reviews.bookinfo.svc.cluster.local", Port: 9080, Subset: "v9"},
	} {
		_, err := v.Resolve(key, "network-a", []RemoteGateway{gw("b1", "network-b", "z=1")}, nil)
		var re *RouteError
		if !errors.As(err, &re) || re.Reason != UnknownService {
			t.Errorf("Resolve(%v) = %v, want unknown_service", key, err)
		}
	}
}

func TestNetworkHealth(t *testing.T) {
	lc := func(pairs ...any) []LocalityCount {
		var out []LocalityCount
		for i := 0; i < len(pairs); i += 2 {
			out = append(out, LocalityCount{Locality: pairs[i].(string), Count: uint32(pairs[i+1].(int))})
		}
		return out
	}
	tests := []struct {
		name    string
		reports [][]LocalityCount
		want    []LocalityCount
	}{
		{"no reports", nil, nil},
		{"one report is itself", [][]LocalityCount{lc("a", 2, "b", 1)}, lc("a", 2, "b", 1)},
		{"minimum per locality", [][]LocalityCount{lc("a", 2, "b", 3), lc("a", 1, "b", 5)}, lc("a", 1, "b", 3)},
		{"missing locality counts 0", [][]LocalityCount{lc("a", 2, "b", 3), lc("b", 5)}, lc("b", 3)},
		{"an empty report empties it", [][]LocalityCount{lc("a", 2), nil, lc("a", 4)}, nil},
		{"order does not matter", [][]LocalityCount{lc("b", 5), lc("a", 2, "b", 3)}, lc("b", 3)},
	}
	for _, tt := range tests {
		got := NetworkHealth(tt.reports...)
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: NetworkHealth(%v) = %v, want %v", tt.name, tt.reports, got, tt.want)
		}
	}
	// The inputs are not modified.
	r := lc("a", 2, "b", 3)
	NetworkHealth(r, lc("a", 1))
	if !slices.Equal(r, lc("a", 2, "b", 3)) {
		t.Errorf("NetworkHealth modified its first report: %v", r)
	}
}

func TestWeightArithmeticSaturates(t *testing.T) {
	tests := []struct {
		name string
		got  uint32
		want uint32
	}{
		{"small product", mulSat(3, 4), 12},
		{"product over 32 bits saturates, not wraps to 2", mulSat(1_431_655_766, 3), math.MaxUint32},
		{"max times max", mulSat(math.MaxUint32, math.MaxUint32), math.MaxUint32},
		{"lcm", lcm(4, 6), 12},
		{"lcm of large coprimes saturates", lcm(65_537, 65_539), math.MaxUint32},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, tt.got, tt.want)
		}
	}
}
