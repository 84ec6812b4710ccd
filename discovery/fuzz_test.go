package discovery

import (
	"testing"

	"github.com/ewgate/ewgate/sni"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("---\n# only a comment\n---\n"))
	f.Add(join(ewGateway("ew"), serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local",
		`[{address: 10.0.0.1, network: net-a, ports: {http: 19080}, labels: {security.istio.io/tlsMode: istio, version: v1}}, {address: "fd00::1"}]`)))
	f.Add(join(
		doc("ServiceEntry", "bookinfo", "r", `{hosts: [r.local], ports: [{number: 80, name: http, targetPort: 8080}], workloadSelector: {labels: {app: r}}}`),
		doc("WorkloadEntry", "bookinfo", "w", `{address: w.vm.example, labels: {app: r, version: v1}, weight: 3}`),
		doc("DestinationRule", "bookinfo", "d", `{host: "*.local", subsets: [{name: v1, labels: {version: v1}}]}`),
	))
	f.Add(join(serviceEntry("bookinfo", "reviews", "reviews.123", `[{address: 10.0.0.1}]`)))
	f.Add([]byte(`{"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "g"}, "spec": {"servers": [{"port": {"number": 1, "protocol": "TLS"}, "hosts": ["./*"], "tls": {"mode": "AUTO_PASSTHROUGH"}}]}}`))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data, nil)
		if (c == nil) == (err == nil) {
			t.Fatalf("Parse = %v, %v: want exactly one of catalog and error", c, err)
		}
		if err != nil {
			return
		}
		// Every host the loader accepts is routable: the SNI parser
		// reads it back from a client's name.
		for _, s := range c.Services {
			if k, err := sni.ParseName(sni.Key{Host: s.Host, Port: 1}.SNI()); err != nil || k.Host != s.Host {
				t.Errorf("service host %q accepted, but the SNI parser reads %q, %v", s.Host, k.Host, err)
			}
		}
		for _, n := range []Node{{Network: "net-a"}, {AnyTLSMode: true}} {
			v, err := c.View(n)
			if err != nil {
				continue
			}
			for li := range v.Listeners {
				for _, r := range v.Routes() {
					if got, err := v.Route(li, r.Key); err == nil && got != r {
						t.Errorf("Route(%v) returned another route", r.Key)
					}
				}
				v.Route(li, sni.Key{Host: "x.local", Port: 1})
			}
		}
	})
}
