package discovery

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/sni"
)

var ewNode = Node{Network: "net-a", Labels: map[string]string{"istio": "eastwestgateway"}}

func TestViewListeners(t *testing.T) {
	c := mustParse(t,
		doc("Gateway", "istio-system", "ew", `{selector: {istio: eastwestgateway}, servers: [
  {port: {number: 15443, protocol: TLS}, hosts: ["*.local"], tls: {mode: AUTO_PASSTHROUGH}},
  {port: {number: 15440, protocol: TLS}, hosts: ["*"], tls: {mode: AUTO_PASSTHROUGH}}]}`),
		doc("Gateway", "istio-system", "ingress", `{selector: {istio: ingressgateway}, servers: [
  {port: {number: 15443, protocol: TLS}, hosts: ["*"], tls: {mode: AUTO_PASSTHROUGH}}]}`),
		doc("Gateway", "istio-system", "everywhere", `{servers: [
  {port: {number: 15444, protocol: TLS}, hosts: ["*"], tls: {mode: AUTO_PASSTHROUGH}}]}`),
	)
	tests := []struct {
		name   string
		labels map[string]string
		want   []string // "port gateway"
	}{
		{"east-west node", map[string]string{"istio": "eastwestgateway", "app": "x"}, []string{"15440 ew", "15443 ew", "15444 everywhere"}},
		{"ingress node", map[string]string{"istio": "ingressgateway"}, []string{"15443 ingress", "15444 everywhere"}},
		{"unlabelled node", nil, []string{"15444 everywhere"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := c.View(Node{Network: "net-a", Labels: tt.labels})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range v.Listeners {
				if l.Port != l.Server.Port {
					t.Errorf("listener port %d, server port %d", l.Port, l.Server.Port)
				}
				got = append(got, fmt.Sprintf("%d %s", l.Port, l.Gateway.Source.Name))
			}
			equal(t, "listeners", got, tt.want)
		})
	}
}

func TestViewPortConflict(t *testing.T) {
	c := mustParse(t, ewGateway("a"), doc("Gateway", "other", "b", `{servers: [`+ewServer+`]}`))
	_, err := c.View(ewNode)
	wantErrContains(t, err, "Gateway other/b", "port 15443", "Gateway istio-system/a")
	// A node that only one of them selects is fine.
	v, err := c.View(Node{Network: "net-a"})
	if err != nil {
		t.Fatalf("View: %v", err)
	}
	if len(v.Listeners) != 1 || v.Listeners[0].Gateway.Source.Name != "b" {
		t.Errorf("listeners = %+v", v.Listeners)
	}
}

// targetCatalog has one service with endpoints in several networks, with and
// without the Istio mTLS label, with subsets v1 and v2.
func targetCatalog(t *testing.T) *Catalog {
	return mustParse(t,
		ewGateway("ew"),
		doc("ServiceEntry", "bookinfo", "reviews", `{
  hosts: [reviews.bookinfo.svc.cluster.local],
  ports: [{number: 9080, name: http}, {number: 9443, name: tls, targetPort: 8443}],
  endpoints: [
    {address: 10.0.0.1, network: net-a, ports: {http: 19080}, labels: {security.istio.io/tlsMode: istio, version: v1}},
    {address: 10.1.0.2, network: net-b, labels: {security.istio.io/tlsMode: istio, version: v1}},
    {address: 10.0.0.3, weight: 5, locality: region/zone, labels: {security.istio.io/tlsMode: istio, version: v2}},
    {address: 10.0.0.4, network: net-a, labels: {version: v1}},
    {address: 10.0.0.5, network: net-a, labels: {security.istio.io/tlsMode: disabled, version: v2}},
    {address: "fd00::6", network: net-a, labels: {security.istio.io/tlsMode: istio, version: v2}},
    {address: reviews-7.vm.example, network: net-a, labels: {security.istio.io/tlsMode: istio, version: v3}}]}`),
		doc("DestinationRule", "bookinfo", "reviews", `{host: reviews, subsets: [
  {name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}, {name: none, labels: {version: v9}}, {name: all}]}`),
	)
}

func targetStrings(r *Route) []string {
	var out []string
	for _, tg := range r.Targets {
		s := fmt.Sprintf("%s w%d", tg.Address, tg.Weight)
		if tg.Locality != "" {
			s += " " + tg.Locality
		}
		out = append(out, s)
	}
	return out
}

func TestViewTargets(t *testing.T) {
	const host = "reviews.bookinfo.svc.cluster.local"
	c := targetCatalog(t)
	anyTLS := Node{Network: "net-a", Labels: ewNode.Labels, AnyTLSMode: true}
	tests := []struct {
		name string
		node Node
		key  sni.Key
		want []string
	}{
		{"all local mTLS endpoints", ewNode, sni.Key{Host: host, Port: 9080}, []string{
			"10.0.0.1:19080 w1", "10.0.0.3:9080 w5 region/zone", "[fd00::6]:9080 w1", "reviews-7.vm.example:9080 w1"}},
		{"targetPort", ewNode, sni.Key{Host: host, Port: 9443}, []string{
			"10.0.0.1:8443 w1", "10.0.0.3:8443 w5 region/zone", "[fd00::6]:8443 w1", "reviews-7.vm.example:8443 w1"}},
		{"subset v1", ewNode, sni.Key{Host: host, Port: 9080, Subset: "v1"}, []string{"10.0.0.1:19080 w1"}},
		{"subset v2", ewNode, sni.Key{Host: host, Port: 9443, Subset: "v2"}, []string{"10.0.0.3:8443 w5 region/zone", "[fd00::6]:8443 w1"}},
		{"subset matching nothing", ewNode, sni.Key{Host: host, Port: 9080, Subset: "none"}, nil},
		{"subset without labels", ewNode, sni.Key{Host: host, Port: 9080, Subset: "all"}, []string{
			"10.0.0.1:19080 w1", "10.0.0.3:9080 w5 region/zone", "[fd00::6]:9080 w1", "reviews-7.vm.example:9080 w1"}},
		{"other network", Node{Network: "net-b", Labels: ewNode.Labels}, sni.Key{Host: host, Port: 9080, Subset: "v1"}, []string{"10.1.0.2:9080 w1"}},
		{"node without network sees only network-less endpoints", Node{Labels: ewNode.Labels}, sni.Key{Host: host, Port: 9080}, []string{"10.0.0.3:9080 w5 region/zone"}},
		{"AnyTLSMode", anyTLS, sni.Key{Host: host, Port: 9080, Subset: "v1"}, []string{"10.0.0.1:19080 w1", "10.0.0.4:9080 w1"}},
		{"AnyTLSMode v2", anyTLS, sni.Key{Host: host, Port: 9080, Subset: "v2"}, []string{"10.0.0.3:9080 w5 region/zone", "10.0.0.5:9080 w1", "[fd00::6]:9080 w1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := c.View(tt.node)
			if err != nil {
				t.Fatal(err)
			}
			r, err := v.Route(0, tt.key)
			if err != nil {
				t.Fatalf("Route(%v): %v", tt.key, err)
			}
			if r.Key != tt.key {
				t.Errorf("route key = %v, want %v", r.Key, tt.key)
			}
			if r.Service == nil || r.Service.Host != host {
				t.Errorf("route service = %+v", r.Service)
			}
			equal(t, "targets", targetStrings(r), tt.want)
		})
	}
}

func TestViewRoutes(t *testing.T) {
	c := targetCatalog(t)
	v, err := c.View(ewNode)
	if err != nil {
		t.Fatal(err)
	}
	// 2 ports x (no subset + 4 subsets), each reachable through Route.
	routes := v.Routes()
	if len(routes) != 10 {
		t.Fatalf("Routes() has %d routes, want 10", len(routes))
	}
	seen := make(map[sni.Key]bool)
	for _, r := range routes {
		if seen[r.Key] {
			t.Errorf("route %v listed twice", r.Key)
		}
		seen[r.Key] = true
		got, err := v.Route(0, r.Key)
		if err != nil || got != r {
			t.Errorf("Route(%v) = %p, %v; want %p", r.Key, got, err, r)
		}
	}
}

func TestViewRouteReasons(t *testing.T) {
	c := mustParse(t,
		doc("Gateway", "istio-system", "ew", `{selector: {istio: eastwestgateway}, servers: [
  {port: {number: 15443, protocol: TLS}, hosts: ["*.local"], tls: {mode: AUTO_PASSTHROUGH}},
  {port: {number: 15444, protocol: TLS}, hosts: ["bookinfo/*.local"], tls: {mode: AUTO_PASSTHROUGH}},
  {port: {number: 15445, protocol: TLS}, hosts: ["./*"], tls: {mode: AUTO_PASSTHROUGH}},
  {port: {number: 15446, protocol: TLS}, hosts: ["*"], tls: {mode: AUTO_PASSTHROUGH}}]}`),
		serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local", `[{address: 10.0.0.1, labels: {security.istio.io/tlsMode: istio}}]`),
		doc("ServiceEntry", "bookinfo", "private", `{hosts: [private.bookinfo.svc.cluster.local], exportTo: ["."], ports: [{number: 9080, name: http}]}`),
		doc("ServiceEntry", "bookinfo", "hidden", `{hosts: [hidden.bookinfo.svc.cluster.local], exportTo: ["~"], ports: [{number: 9080, name: http}]}`),
		doc("ServiceEntry", "bookinfo", "shared", `{hosts: [shared.bookinfo.svc.cluster.local], exportTo: [istio-system], ports: [{number: 9080, name: http}]}`),
		serviceEntry("ext", "api", "api.example.com", ""),
		doc("ServiceEntry", "istio-system", "own", `{hosts: [own.istio-system.svc.cluster.local], exportTo: ["."], ports: [{number: 9080, name: http}]}`),
		serviceEntry("bookinfo", "remote", "remote.bookinfo.svc.cluster.local", `[{address: 10.1.0.1, network: net-b, labels: {security.istio.io/tlsMode: istio}}]`),
		doc("DestinationRule", "bookinfo", "reviews", `{host: reviews, subsets: [{name: v1, labels: {version: v1}}]}`),
	)
	v, err := c.View(ewNode)
	if err != nil {
		t.Fatal(err)
	}
	listener := func(port uint32) int {
		for i, l := range v.Listeners {
			if l.Port == port {
				return i
			}
		}
		t.Fatalf("no listener on port %d", port)
		return -1
	}
	key := func(host string, port uint16, subset string) sni.Key {
		return sni.Key{Host: host, Port: port, Subset: subset}
	}
	const (
		reviews = "reviews.bookinfo.svc.cluster.local"
		remote  = "remote.bookinfo.svc.cluster.local"
		own     = "own.istio-system.svc.cluster.local"
	)
	type routeCase struct {
		name    string
		port    uint32
		key     sni.Key
		want    Reason // "" routes
		targets int
	}
	tests := []routeCase{
		{"routes", 15443, key(reviews, 9080, ""), "", 1},
		{"routes subset", 15443, key(reviews, 9080, "v1"), "", 0},
		{"unknown service", 15443, key("nope.bookinfo.svc.cluster.local", 9080, ""), UnknownService, 0},
		{"host case is not folded", 15443, key("Reviews.bookinfo.svc.cluster.local", 9080, ""), UnknownService, 0},
		{"host not matched by *.local", 15443, key("api.example.com", 9080, ""), HostNotExposed, 0},
		{"exported everywhere, * host", 15446, key("api.example.com", 9080, ""), "", 0},
		{"exportTo . from another namespace", 15443, key("private.bookinfo.svc.cluster.local", 9080, ""), NotExported, 0},
		{"exportTo . beats host mismatch", 15445, key("private.bookinfo.svc.cluster.local", 9080, ""), NotExported, 0},
		{"exportTo ~", 15446, key("hidden.bookinfo.svc.cluster.local", 9080, ""), NotExported, 0},
		{"exportTo the gateway namespace", 15443, key("shared.bookinfo.svc.cluster.local", 9080, ""), "", 0},
		{"exportTo . in the gateway namespace", 15443, key(own, 9080, ""), "", 0},
		{"namespace-qualified host admits its namespace", 15444, key(reviews, 9080, ""), "", 1},
		{"namespace-qualified host refuses others", 15444, key(own, 9080, ""), HostNotExposed, 0},
		{"./* admits the gateway namespace", 15445, key(own, 9080, ""), "", 0},
		{"./* refuses other namespaces", 15445, key(reviews, 9080, ""), HostNotExposed, 0},
		{"unknown port", 15443, key(reviews, 9081, ""), UnknownPort, 0},
		{"unknown port with a known subset", 15443, key(reviews, 9081, "v1"), UnknownPort, 0},
		{"target port is not a service port", 15443, key(reviews, 0, ""), UnknownPort, 0},
		{"unknown subset", 15443, key(reviews, 9080, "v2"), UnknownSubset, 0},
		{"no eligible endpoint here", 15443, key(remote, 9080, ""), "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := v.Route(listener(tt.port), tt.key)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Route(%v) on %d: %v", tt.key, tt.port, err)
				}
				if r == nil || r.Key != tt.key || len(r.Targets) != tt.targets {
					t.Fatalf("Route(%v) = %+v, want key %v with %d targets", tt.key, r, tt.key, tt.targets)
				}
				return
			}
			if r != nil {
				t.Errorf("Route(%v) returned route %+v with error", tt.key, r)
			}
			var re *RouteError
			if !errors.As(err, &re) {
				t.Fatalf("Route(%v) on %d error = %v, want a *RouteError", tt.key, tt.port, err)
			}
			if re.Reason != tt.want || re.Key != tt.key {
				t.Errorf("Route(%v) on %d = %v (key %v), want %v", tt.key, tt.port, re.Reason, re.Key, tt.want)
			}
			if !strings.Contains(err.Error(), string(tt.want)) {
				t.Errorf("error %q does not name reason %q", err, tt.want)
			}
			if !slices.Contains(Reasons(), re.Reason) {
				t.Errorf("reason %q is not in Reasons() %q, which metrics pre-register", re.Reason, Reasons())
			}
		})
	}
	// Every reason is one this table produces: Reasons lists no label
	// that is never counted.
	for _, r := range Reasons() {
		if r == NoTLSRoute {
			continue // PassthroughListener.Match's, TestPassthroughRouting's
		}
		if !slices.ContainsFunc(tests, func(tt routeCase) bool { return tt.want == r }) {
			t.Errorf("Reasons() lists %q, which no case of this test produces", r)
		}
	}
}

// RouteExposed routes through any listener that exposes the service,
// and so agrees with Summarize on what this network offers: a key it
// routes is advertised, and the refusals say why one is not.
func TestViewRouteExposed(t *testing.T) {
	c := mustParse(t,
		doc("Gateway", "istio-system", "ew", `{selector: {istio: eastwestgateway}, servers: [
  {port: {number: 15443, protocol: TLS}, hosts: ["*.example.com"], tls: {mode: AUTO_PASSTHROUGH}},
  {port: {number: 15444, protocol: TLS}, hosts: ["*.local"], tls: {mode: AUTO_PASSTHROUGH}}]}`),
		serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local", `[{address: 10.0.0.1, labels: {security.istio.io/tlsMode: istio}}]`),
		serviceEntry("ext", "api", "api.other.org", ""),
		doc("ServiceEntry", "bookinfo", "private", `{hosts: [private.bookinfo.svc.cluster.local], exportTo: ["."], ports: [{number: 9080, name: http}]}`),
	)
	v, err := c.View(ewNode)
	if err != nil {
		t.Fatal(err)
	}
	advertised := map[string]bool{}
	for _, s := range Summarize(v, nil).Services {
		advertised[s.Host] = true
	}
	tests := []struct {
		name string
		key  sni.Key
		want Reason // "" routes
	}{
		{"exposed by the second listener only", sni.Key{Host: "reviews.bookinfo.svc.cluster.local", Port: 9080}, ""},
		{"unknown port", sni.Key{Host: "reviews.bookinfo.svc.cluster.local", Port: 9081}, UnknownPort},
		{"unknown service", sni.Key{Host: "nope.bookinfo.svc.cluster.local", Port: 9080}, UnknownService},
		{"no listener exposes it", sni.Key{Host: "api.other.org", Port: 9080}, HostNotExposed},
		{"not exported to the gateway's namespace", sni.Key{Host: "private.bookinfo.svc.cluster.local", Port: 9080}, NotExported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := v.RouteExposed(tt.key)
			var re *RouteError
			switch {
			case tt.want == "" && (err != nil || r.Key != tt.key):
				t.Fatalf("RouteExposed(%v) = %+v, %v; want its route", tt.key, r, err)
			case tt.want != "" && (!errors.As(err, &re) || re.Reason != tt.want):
				t.Fatalf("RouteExposed(%v) error %v, want reason %s", tt.key, err, tt.want)
			}
			if routes := err == nil || tt.want == UnknownPort; routes != advertised[tt.key.Host] {
				t.Errorf("RouteExposed routes %s: %v; Summarize advertises it: %v", tt.key.Host, routes, advertised[tt.key.Host])
			}
		})
	}
	if _, err := v.Route(0, tests[0].key); err == nil {
		t.Error("the first listener routes the service too: the test shows nothing")
	}
}

func TestViewEmptyCatalog(t *testing.T) {
	v, err := new(Catalog).View(ewNode)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Listeners) != 0 || len(v.Routes()) != 0 {
		t.Errorf("empty catalog view = %+v", v)
	}
	if v.Node.Network != "net-a" {
		t.Errorf("view node = %+v", v.Node)
	}
}
