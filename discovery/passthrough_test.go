package discovery

import (
	"fmt"
	"strings"
	"testing"
)

// passGateway is a PASSTHROUGH Gateway istio-system/pass selecting the
// east-west gateway, with the given servers' hosts on ports 15012 and
// 15017.
func passGateway(hosts string) string {
	return doc("Gateway", "istio-system", "pass", `{selector: {istio: eastwestgateway}, servers: [
  {port: {number: 15012, name: tls-a, protocol: TLS}, hosts: `+hosts+`, tls: {mode: PASSTHROUGH}},
  {port: {number: 15017, name: tls-b, protocol: tls}, hosts: `+hosts+`, tls: {mode: PASSTHROUGH}}]}`)
}

// passServices are the destinations of the table below: a.example.com with
// two ports and a subset, b.example.com with one port, c in namespace
// istio-system; their endpoints have no tlsMode label (a passthrough
// destination need not be an Istio workload) and one is in another network.
var passServices = []string{
	doc("ServiceEntry", "istio-system", "a", `{hosts: [a.example.com], ports: [{number: 443, name: https}, {number: 8443, name: alt}],
  endpoints: [{address: 10.0.0.1, labels: {v: one}}, {address: 10.0.0.2, labels: {v: two}}, {address: 10.9.0.1, network: network-b}]}`),
	doc("DestinationRule", "istio-system", "a", `{host: a.example.com, subsets: [{name: one, labels: {v: one}}]}`),
	doc("ServiceEntry", "istio-system", "b", `{hosts: [b.example.com], ports: [{number: 443, name: https}], endpoints: [{address: 10.0.1.1}]}`),
	doc("ServiceEntry", "istio-system", "c", `{hosts: [c.istio-system.svc.cluster.local], ports: [{number: 15012, name: grpc}], endpoints: [{address: 10.0.2.1}]}`),
}

// route describes where a connection goes: "port sni -> host:port/subset
// targets (weight)" per destination, or "none".
func describeRoute(v *View, port uint32, serverName string) string {
	for _, l := range v.Passthrough {
		if l.Port != port {
			continue
		}
		r, ok := l.Match(serverName)
		if !ok {
			return "none"
		}
		var out []string
		for _, d := range r.Destinations {
			var addrs []string
			for _, t := range d.Route.Targets {
				addrs = append(addrs, t.Address)
			}
			s := fmt.Sprintf("%s:%d", d.Route.Key.Host, d.Route.Key.Port)
			if d.Route.Key.Subset != "" {
				s += "/" + d.Route.Key.Subset
			}
			out = append(out, fmt.Sprintf("%s %v w%d", s, addrs, d.Weight))
		}
		return strings.Join(out, ", ")
	}
	return "no listener"
}

// VirtualService tls routes bind to PASSTHROUGH servers and match server
// names as Istio documents and implements them (VirtualService reference,
// TLSRoute and TLSMatchAttributes; pilot's gateway listener builder): the
// VirtualService's gateways and exportTo, the server's hosts, the match's
// port and gateways, Envoy's filter chain order for server names (exact,
// then the longest wildcard suffix, then "*"), first match wins.
func TestPassthroughRouting(t *testing.T) {
	type conn struct {
		port uint32
		sni  string
		want string
	}
	tests := []struct {
		name        string
		serverHosts string
		vs          []string
		conns       []conn
		ignored     []string // substrings of View.Ignored reasons, in order
	}{{
		name:        "expose-istiod: one catch-all per port, destination ports differ",
		serverHosts: `["*"]`,
		vs: []string{doc("VirtualService", "istio-system", "istiod", `{hosts: ["*"], gateways: [pass], tls: [
  {match: [{port: 15012, sniHosts: ["*"]}], route: [{destination: {host: c.istio-system.svc.cluster.local, port: {number: 15012}}}]},
  {match: [{port: 15017, sniHosts: ["*"]}], route: [{destination: {host: a.example.com, port: {number: 443}}}]}]}`)},
		conns: []conn{
			{15012, "istiod.istio-system.svc", "c.istio-system.svc.cluster.local:15012 [10.0.2.1:15012] w1"},
			{15012, "", "c.istio-system.svc.cluster.local:15012 [10.0.2.1:15012] w1"},
			{15017, "anything.example", "a.example.com:443 [10.0.0.1:443 10.0.0.2:443] w1"},
		},
	}, {
		name:        "exact beats wildcard, longest wildcard beats shorter, then *; destination hosts fold case",
		serverHosts: `["*"]`,
		vs: []string{doc("VirtualService", "istio-system", "v", `{hosts: ["*"], gateways: [istio-system/pass], tls: [
  {match: [{sniHosts: ["*"]}], route: [{destination: {host: c.istio-system.svc.cluster.local}}]},
  {match: [{sniHosts: ["*.example.com"]}], route: [{destination: {host: B.Example.COM}}]},
  {match: [{sniHosts: ["*.x.example.com"]}], route: [{destination: {host: a.example.com, port: {number: 8443}}}]},
  {match: [{sniHosts: [a.x.example.com]}], route: [{destination: {host: a.example.com, port: {number: 443}, subset: one}}]}]}`)},
		conns: []conn{
			{15012, "a.x.example.com", "a.example.com:443/one [10.0.0.1:443] w1"},
			{15012, "A.X.Example.COM", "a.example.com:443/one [10.0.0.1:443] w1"},
			{15012, "b.x.example.com", "a.example.com:8443 [10.0.0.1:8443 10.0.0.2:8443] w1"},
			{15012, "deep.b.x.example.com", "a.example.com:8443 [10.0.0.1:8443 10.0.0.2:8443] w1"},
			{15012, "y.example.com", "b.example.com:443 [10.0.1.1:443] w1"},
			{15012, "example.com", "c.istio-system.svc.cluster.local:15012 [10.0.2.1:15012] w1"},
			{15017, "other.org", "c.istio-system.svc.cluster.local:15012 [10.0.2.1:15012] w1"},
		},
	}, {
		name:        "match port and match gateways narrow a rule",
		serverHosts: `["*"]`,
		vs: []string{doc("VirtualService", "istio-system", "v", `{hosts: ["*"], gateways: [pass, other], tls: [
  {match: [{port: 15017, sniHosts: [a.example.com]}, {gateways: [other], sniHosts: [b.example.com]}], route: [{destination: {host: a.example.com, port: {number: 443}}}]},
  {match: [{gateways: [istio-system/pass], sniHosts: [b.example.com]}], route: [{destination: {host: b.example.com}}]}]}`)},
		conns: []conn{
			{15012, "a.example.com", "none"},
			{15017, "a.example.com", "a.example.com:443 [10.0.0.1:443 10.0.0.2:443] w1"},
			{15012, "b.example.com", "b.example.com:443 [10.0.1.1:443] w1"},
		},
	}, {
		name:        "gateway references: short, ./name and legacy FQDN bind; another namespace's or none do not",
		serverHosts: `["*"]`,
		vs: []string{
			doc("VirtualService", "istio-system", "short", `{hosts: ["*"], gateways: [pass], tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {host: b.example.com}}]}]}`),
			doc("VirtualService", "istio-system", "dot", `{hosts: ["*"], gateways: [./pass], tls: [{match: [{sniHosts: [b.example.com]}], route: [{destination: {host: b.example.com}}]}]}`),
			doc("VirtualService", "bookinfo", "legacy", `{hosts: ["*"], gateways: [pass.istio-system.svc.cluster.local], tls: [{match: [{sniHosts: [c.example.com]}], route: [{destination: {host: b.example.com}}]}]}`),
			doc("VirtualService", "bookinfo", "wrongns", `{hosts: ["*"], gateways: [pass], tls: [{match: [{sniHosts: [d.example.com]}], route: [{destination: {host: b.example.com}}]}]}`),
			doc("VirtualService", "istio-system", "mesh", `{hosts: ["*"], tls: [{match: [{sniHosts: [e.example.com]}], route: [{destination: {host: b.example.com}}]}]}`),
		},
		conns: []conn{
			{15012, "a.example.com", "b.example.com:443 [10.0.1.1:443] w1"},
			{15012, "b.example.com", "b.example.com:443 [10.0.1.1:443] w1"},
			{15012, "c.example.com", "b.example.com:443 [10.0.1.1:443] w1"},
			{15012, "d.example.com", "none"},
			{15012, "e.example.com", "none"},
		},
	}, {
		name:        "exportTo: private to another namespace is not seen; naming the gateway's namespace is",
		serverHosts: `["*"]`,
		vs: []string{
			doc("VirtualService", "bookinfo", "private", `{hosts: ["*"], gateways: [istio-system/pass], exportTo: ["."], tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {host: b.example.com}}]}]}`),
			doc("VirtualService", "bookinfo", "named", `{hosts: ["*"], gateways: [istio-system/pass], exportTo: [istio-system], tls: [{match: [{sniHosts: [c.example.com]}], route: [{destination: {host: b.example.com}}]}]}`),
		},
		conns: []conn{
			{15012, "a.example.com", "none"},
			{15012, "c.example.com", "b.example.com:443 [10.0.1.1:443] w1"},
		},
	}, {
		name:        "server hosts: ns/host admits only that namespace's VirtualServices; wildcards meet both ways",
		serverHosts: `["bookinfo/*.example.com", "./a.example.org"]`,
		vs: []string{
			doc("VirtualService", "bookinfo", "in", `{hosts: [x.example.com], gateways: [istio-system/pass], tls: [{match: [{sniHosts: [x.example.com]}], route: [{destination: {host: b.example.com}}]}]}`),
			doc("VirtualService", "other", "out", `{hosts: [y.example.com], gateways: [istio-system/pass], tls: [{match: [{sniHosts: [y.example.com]}], route: [{destination: {host: b.example.com}}]}]}`),
			doc("VirtualService", "istio-system", "local", `{hosts: ["*.example.org"], gateways: [pass], tls: [{match: [{sniHosts: [a.example.org]}], route: [{destination: {host: b.example.com}}]}]}`),
			doc("VirtualService", "bookinfo", "nohost", `{hosts: [z.example.net], gateways: [istio-system/pass], tls: [{match: [{sniHosts: [z.example.net]}], route: [{destination: {host: b.example.com}}]}]}`),
		},
		conns: []conn{
			{15012, "x.example.com", "b.example.com:443 [10.0.1.1:443] w1"},
			{15012, "y.example.com", "none"},
			{15012, "a.example.org", "b.example.com:443 [10.0.1.1:443] w1"},
			{15012, "z.example.net", "none"},
		},
	}, {
		name:        "duplicate server names: the first match wins, private before public, the rest is reported",
		serverHosts: `["*"]`,
		vs: []string{
			doc("VirtualService", "istio-system", "public", `{hosts: ["*"], gateways: [pass], tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {host: b.example.com}}]}]}`),
			doc("VirtualService", "istio-system", "private", `{hosts: ["*"], gateways: [pass], exportTo: ["."], tls: [{match: [{sniHosts: [a.example.com, c.example.com]}], route: [{destination: {host: a.example.com, port: {number: 443}}}]}]}`),
			doc("VirtualService", "istio-system", "later", `{hosts: ["*"], gateways: [pass], tls: [{match: [{sniHosts: [c.example.com, d.example.com]}], route: [{destination: {host: b.example.com}}]}]}`),
		},
		conns: []conn{
			{15012, "a.example.com", "a.example.com:443 [10.0.0.1:443 10.0.0.2:443] w1"},
			{15012, "c.example.com", "a.example.com:443 [10.0.0.1:443 10.0.0.2:443] w1"},
			// The whole later match is skipped, as Istio does.
			{15012, "d.example.com", "none"},
		},
		ignored: []string{"server names [a.example.com] are already routed", "server names [c.example.com] are already routed",
			"server names [a.example.com] are already routed", "server names [c.example.com] are already routed"},
	}, {
		name:        "weights, a short host, the only port, and destinations the catalog lacks",
		serverHosts: `["*"]`,
		vs: []string{doc("VirtualService", "istio-system", "v", `{hosts: ["*"], gateways: [pass], tls: [
  {match: [{sniHosts: [w.example.com]}], route: [{destination: {host: b.example.com}, weight: 80}, {destination: {host: c}, weight: 20}]},
  {match: [{sniHosts: [one.example.com]}], route: [{destination: {host: b.example.com}, weight: 30}]},
  {match: [{sniHosts: [bad.example.com]}], route: [{destination: {host: a.example.com}}, {destination: {host: a.example.com, port: {number: 443}, subset: nope}}, {destination: {host: gone.example.com}}]}]}`)},
		conns: []conn{
			{15012, "w.example.com", "b.example.com:443 [10.0.1.1:443] w80, c.istio-system.svc.cluster.local:15012 [10.0.2.1:15012] w20"},
			{15012, "one.example.com", "b.example.com:443 [10.0.1.1:443] w1"},
			{15012, "bad.example.com", "a.example.com:0 [] w0, a.example.com:443/nope [] w0, gone.example.com:0 [] w0"},
		},
		// Once each, though both ports' listeners name them.
		ignored: []string{"port required: service a.example.com has 2 ports", `no subset "nope"`, "no service gone.example.com"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs := append([]string{passGateway(tt.serverHosts)}, passServices...)
			c := mustParse(t, append(docs, tt.vs...)...)
			v, err := c.View(*istioNode)
			if err != nil {
				t.Fatal(err)
			}
			for _, cn := range tt.conns {
				if got := describeRoute(v, cn.port, cn.sni); got != cn.want {
					t.Errorf("port %d sni %q: %s\n want %s", cn.port, cn.sni, got, cn.want)
				}
			}
			var reasons []string
			for _, ig := range v.Ignored {
				reasons = append(reasons, ig.Reason)
			}
			if len(reasons) != len(tt.ignored) {
				t.Fatalf("ignored = %q, want %d matching %q", reasons, len(tt.ignored), tt.ignored)
			}
			for i, want := range tt.ignored {
				if !strings.Contains(reasons[i], want) {
					t.Errorf("ignored[%d] = %q, want it to contain %q", i, reasons[i], want)
				}
			}
		})
	}
}

// What would be routed wrongly is refused at load, the field named.
func TestVirtualServiceValidation(t *testing.T) {
	tests := []struct{ name, spec, want string }{
		{"no sniHosts", `{hosts: ["*"], gateways: [pass], tls: [{match: [{port: 15012}], route: [{destination: {host: b.example.com}}]}]}`, "spec.tls[0].match[0].sniHosts: at least one host is required"},
		{"no match", `{hosts: ["*"], gateways: [pass], tls: [{route: [{destination: {host: b.example.com}}]}]}`, "spec.tls[0].match: at least one match is required"},
		{"bad sni host", `{hosts: ["*"], gateways: [pass], tls: [{match: [{sniHosts: ["a*.example.com"]}], route: [{destination: {host: b.example.com}}]}]}`, `spec.tls[0].match[0].sniHosts[0]: "a*.example.com"`},
		{"source labels", `{hosts: ["*"], gateways: [pass], tls: [{match: [{sniHosts: [a.example.com], sourceLabels: {app: x}}], route: [{destination: {host: b.example.com}}]}]}`, "spec.tls[0].match[0]: destinationSubnets, sourceLabels and sourceNamespace are not supported"},
		{"no destination host", `{hosts: ["*"], gateways: [pass], tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {port: {number: 443}}}]}]}`, "spec.tls[0].route[0].destination.host: required"},
		{"negative weight", `{hosts: ["*"], gateways: [pass], tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {host: b.example.com}, weight: -1}]}]}`, "spec.tls[0].route[0]: weight must not be negative"},
		{"bad host", `{hosts: ["a/b"], gateways: [pass], tls: []}`, `spec.hosts[0]: "a/b"`},
		// Istio's validation refuses both; "~" is for ServiceEntries.
		{"exportTo nowhere", `{hosts: ["*"], gateways: [pass], exportTo: ["~"], tls: []}`, `spec.exportTo[0]: "~" is for ServiceEntries only`},
		{"exportTo a bad namespace", `{hosts: ["*"], gateways: [pass], exportTo: ["Bookinfo"], tls: []}`, `spec.exportTo[0]: "Bookinfo" is neither`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := parseError(t, passGateway(`["*"]`), doc("VirtualService", "istio-system", "v", tt.spec))
			wantErrContains(t, err, "VirtualService istio-system/v: "+tt.want)
		})
	}
}

// A PASSTHROUGH server needs a TLS protocol, and an AUTO_PASSTHROUGH and a
// PASSTHROUGH server cannot share a port.
func TestPassthroughServerValidation(t *testing.T) {
	err := parseError(t, doc("Gateway", "istio-system", "pass", `{selector: {istio: eastwestgateway}, servers: [
  {port: {number: 15012, protocol: TCP}, hosts: ["*"], tls: {mode: PASSTHROUGH}}]}`))
	wantErrContains(t, err, "Gateway istio-system/pass: spec.servers[0].port.protocol: PASSTHROUGH needs protocol TLS or HTTPS, not \"TCP\"")

	c := mustParse(t, ewGateway("ew"), doc("Gateway", "istio-system", "pass", `{selector: {istio: eastwestgateway}, servers: [
  {port: {number: 15443, protocol: TLS}, hosts: ["*"], tls: {mode: PASSTHROUGH}}]}`))
	_, err = c.View(*istioNode)
	wantErrContains(t, err, "port 15443 is already served by")
}
