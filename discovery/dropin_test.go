package discovery

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

var istioNode = &Node{Network: "network-a", Labels: map[string]string{"istio": "eastwestgateway"}}

// Istio's own multi-network install, with an ingress gateway's config in
// the same directory, loads for the east-west gateway: it serves the
// AUTO_PASSTHROUGH server, warns about what it does not serve, and ignores
// what configures other proxies.
func TestLoadIstioMulticlusterDirectory(t *testing.T) {
	b := new(logBuffer)
	log := slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := LoadFilesFor([]string{"testdata/istio-multicluster"}, istioNode, log)
	if err != nil {
		t.Fatalf("LoadFilesFor: %v", err)
	}
	equal(t, "gateways", gatewayNames(c), []string{"default/istiod-gateway", "default/cross-network-gateway"})
	v, err := c.View(*istioNode)
	if err != nil {
		t.Fatal(err)
	}
	var ports []uint32
	for _, l := range v.Listeners {
		ports = append(ports, l.Port)
	}
	equal(t, "listener ports", ports, []uint32{15443})
	var pass []string
	for _, l := range v.Passthrough {
		for _, r := range l.Routes {
			for _, d := range r.Destinations {
				pass = append(pass, fmt.Sprintf("%d %v %s -> %s:%d", l.Port, r.SNIHosts, r.Field, d.Route.Key.Host, d.Route.Key.Port))
			}
		}
	}
	equal(t, "passthrough routes", pass, []string{
		"15012 [*] spec.tls[0].match[0] -> istiod.istio-system.svc.cluster.local:15012",
		"15017 [*] spec.tls[1].match[0] -> istiod.istio-system.svc.cluster.local:443",
	})
	// The directory has no istiod service: the routes are kept, the
	// operator told why they have nowhere to go.
	if len(v.Ignored) == 0 || !strings.Contains(v.Ignored[0].Reason, "no service istiod.istio-system.svc.cluster.local") {
		t.Errorf("ignored = %+v, want the missing istiod service named", v.Ignored)
	}
	equal(t, "echo endpoints", endpointAddresses(service(t, c, "echo.demo.svc.cluster.local")), []string{"10.0.0.1"})

	out := b.String()
	for _, want := range []string{
		`level=WARN msg="config: WorkloadEntry without an address is not dialed" resource="`,
		`WorkloadEntry demo/echo-elsewhere" field=spec.address network=network-b`,
		`level=DEBUG msg="config: Gateway does not select this node, ignored"`,
		`Gateway istio-system/bookinfo-gateway"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "VirtualService istio-system/bookinfo") {
		t.Errorf("the ingress gateway's VirtualService is warned about:\n%s", out)
	}
	if n := strings.Count(out, "echo-elsewhere"); n != 1 {
		t.Errorf("address-less WorkloadEntry logged %d times, want once:\n%s", n, out)
	}

	// Without a node every Gateway is validated, and the ingress one is
	// not the gateway's to serve.
	_, err = LoadFiles([]string{"testdata/istio-multicluster"}, nil)
	wantErrContains(t, err, "Gateway istio-system/bookinfo-gateway: spec.servers[0].tls.mode: SIMPLE is not supported (supported: AUTO_PASSTHROUGH")
}

// A Gateway that selects the node with a mode the gateway would serve
// wrongly stays an error, naming the field and the supported modes.
func TestSelectingGatewayWithUnsupportedMode(t *testing.T) {
	for _, mode := range []string{"SIMPLE", "MUTUAL", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"} {
		t.Run(mode, func(t *testing.T) {
			var l loader
			l.res.Node = istioNode
			l.addFile("test.yaml", join(doc("Gateway", "istio-system", "ew", `{selector: {istio: eastwestgateway}, servers: [
  {port: {number: 15443, protocol: TLS}, hosts: ["*.local"], tls: {mode: AUTO_PASSTHROUGH}},
  {port: {number: 8443, protocol: tls}, hosts: ["*"], tls: {mode: `+mode+`}}]}`)))
			_, err := l.build()
			wantErrContains(t, err, "test.yaml: Gateway istio-system/ew: spec.servers[1].tls.mode: "+mode+" is not supported (supported: AUTO_PASSTHROUGH, PASSTHROUGH)")
		})
	}
}

// A node's Gateway selection: an empty selector selects every node, as in
// Istio, so its problems are this node's.
func TestNodeSkipsOnlyUnselectedGateways(t *testing.T) {
	bad := `servers: [{port: {number: 443, protocol: HTTPS}, hosts: ["*"], tls: {mode: SIMPLE}}]`
	tests := []struct {
		name, selector string
		wantErr        bool
	}{
		{"other selector", `selector: {istio: ingressgateway}, `, false},
		{"one label of two missing", `selector: {istio: eastwestgateway, app: other}, `, false},
		{"matching selector", `selector: {istio: eastwestgateway}, `, true},
		{"empty selector", ``, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l loader
			l.res.Node = istioNode
			l.addFile("test.yaml", join(doc("Gateway", "istio-system", "gw", `{`+tt.selector+bad+`}`)))
			c, err := l.build()
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tt.wantErr)
			}
			if err == nil && len(c.Gateways) != 0 {
				t.Errorf("gateways = %v, want none", gatewayNames(c))
			}
		})
	}
}

// Endpoints without an address are left out with a warning, in
// ServiceEntries and WorkloadEntries alike; the rest is served.
func TestEndpointWithoutAddressSkipped(t *testing.T) {
	log, b := newLogger()
	var l loader
	l.log = log
	l.addFile("test.yaml", join(
		doc("ServiceEntry", "bookinfo", "inline", `{hosts: [a.local], ports: [{number: 9080, name: http}], endpoints: [{network: net-b}, {address: 10.0.0.2}]}`),
		doc("ServiceEntry", "bookinfo", "sel1", `{hosts: [b.local], ports: [{number: 9080, name: http}], workloadSelector: {labels: {app: b}}}`),
		doc("ServiceEntry", "bookinfo", "sel2", `{hosts: [c.local], ports: [{number: 9080, name: http}], workloadSelector: {labels: {app: b}}}`),
		doc("WorkloadEntry", "bookinfo", "remote", `{network: net-b, labels: {app: b}}`),
	))
	c, err := l.build()
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "a.local endpoints", endpointAddresses(service(t, c, "a.local")), []string{"10.0.0.2"})
	equal(t, "b.local endpoints", endpointAddresses(service(t, c, "b.local")), nil)
	out := b.String()
	if !strings.Contains(out, `ServiceEntry bookinfo/inline" field=spec.endpoints[0].address network=net-b`) {
		t.Errorf("no warning for the inline endpoint:\n%s", out)
	}
	if n := strings.Count(out, "WorkloadEntry bookinfo/remote"); n != 1 {
		t.Errorf("WorkloadEntry selected twice warned %d times, want once:\n%s", n, out)
	}
}

// Istio's directory merged with a registry's catalog (files and the
// Kubernetes source together): the ingress Gateway the files' load
// skipped stays skipped.
func TestMergeKeepsNodeSelection(t *testing.T) {
	files, err := LoadFilesFor([]string{"testdata/istio-multicluster"}, istioNode, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Merge(nil, files, registry(t, "reviews.bookinfo.svc.example.org"))
	if err != nil {
		t.Fatalf("Merge: %v", err)
	}
	equal(t, "gateways", gatewayNames(c), []string{"default/istiod-gateway", "default/cross-network-gateway"})
	if len(c.Services) != 2 {
		t.Errorf("merged services %v", serviceHosts(c))
	}
}

// A file load's warnings are logged once: rebuilding it in merges (each
// change of the Kubernetes source) does not repeat them; the next load
// does.
func TestWarningsOncePerLoad(t *testing.T) {
	log, b := newLogger()
	files, err := LoadFilesFor([]string{"testdata/istio-multicluster"}, istioNode, log)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := Merge(log, files, registry(t, "reviews.bookinfo.svc.example.org")); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int { return strings.Count(b.String(), "WorkloadEntry without an address") }
	if n := count(); n != 1 {
		t.Errorf("after a load and three merges, %d address warnings, want 1:\n%s", n, b)
	}
	if _, err := LoadFilesFor([]string{"testdata/istio-multicluster"}, istioNode, log); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Errorf("after a second load, %d address warnings, want 2", n)
	}
}
