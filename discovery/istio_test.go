package discovery

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/sni"
)

func TestParseAPIVersions(t *testing.T) {
	for _, v := range []string{"v1", "v1beta1", "v1alpha3"} {
		t.Run(v, func(t *testing.T) {
			y := strings.Replace(ewGateway("ew"), "networking.istio.io/v1", "networking.istio.io/"+v, 1) +
				"---\n" + strings.Replace(serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local", ""), "networking.istio.io/v1", "networking.istio.io/"+v, 1)
			c := mustParse(t, y)
			equal(t, "gateways", gatewayNames(c), []string{"istio-system/ew"})
			equal(t, "services", serviceHosts(c), []string{"reviews.bookinfo.svc.cluster.local"})
		})
	}
	for _, apiVersion := range []string{"networking.istio.io/v2", "networking.istio.io"} {
		t.Run(apiVersion, func(t *testing.T) {
			y := strings.Replace(ewGateway("ew"), "networking.istio.io/v1", apiVersion, 1)
			err := parseError(t, y)
			wantErrContains(t, err, "test.yaml (document 1)", `apiVersion "`+apiVersion+`"`)
		})
	}
}

func TestParseDocuments(t *testing.T) {
	gw := func(name string, port int) string {
		return doc("Gateway", "istio-system", name, strings.Replace(`{servers: [`+ewServer+`]}`, "15443", strconv.Itoa(port), 1))
	}
	deployment := "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: reviews, namespace: bookinfo}\nspec: {replicas: 1, hostz: typo-ignored}\n"
	tests := []struct {
		name     string
		yaml     string
		gateways []string
		services []string
	}{
		{"one document", gw("a", 1), []string{"istio-system/a"}, nil},
		{"two documents", gw("a", 1) + "---\n" + gw("b", 2), []string{"istio-system/a", "istio-system/b"}, nil},
		{"leading and trailing separators", "---\n" + gw("a", 1) + "---\n", []string{"istio-system/a"}, nil},
		{"comments-only and empty documents", "# header\n---\n" + gw("a", 1) + "---\n# nothing here\n  # indented\n---\n\n---\n" + gw("b", 2), []string{"istio-system/a", "istio-system/b"}, nil},
		{"separator with a comment", gw("a", 1) + "--- # second\n" + gw("b", 2), []string{"istio-system/a", "istio-system/b"}, nil},
		{"separator with trailing blanks", gw("a", 1) + "---  \t\n" + gw("b", 2), []string{"istio-system/a", "istio-system/b"}, nil},
		{"CRLF line endings", strings.ReplaceAll(gw("a", 1)+"---\n"+gw("b", 2), "\n", "\r\n"), []string{"istio-system/a", "istio-system/b"}, nil},
		{"no final newline", strings.TrimSuffix(gw("a", 1), "\n"), []string{"istio-system/a"}, nil},
		{"'---' inside a value is not a separator", gw("a", 1) + "---\n" + doc("ServiceEntry", "ns", "se", "{hosts: [x.local], ports: [{number: 1, name: \"---\"}]}"), []string{"istio-system/a"}, []string{"x.local"}},
		{"other API groups are skipped", deployment + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n---\n" + gw("a", 1), []string{"istio-system/a"}, nil},
		{"Kubernetes Gateway API is another group", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: k}\nspec: {gatewayClassName: x}\n---\n" + gw("a", 1), []string{"istio-system/a"}, nil},
		{"JSON document", `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "se", "namespace": "ns"}, "spec": {"hosts": ["j.local"], "ports": [{"number": 80, "name": "http"}]}}`, nil, []string{"j.local"}},
		{"proto field names are accepted too", doc("ServiceEntry", "ns", "se", "{hosts: [p.local], ports: [{number: 80, name: http, target_port: 8080}], export_to: [.]}"), nil, []string{"p.local"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, tt.yaml)
			equal(t, "gateways", gatewayNames(c), tt.gateways)
			equal(t, "services", serviceHosts(c), tt.services)
		})
	}
}

func TestParseDefaultsNamespace(t *testing.T) {
	c := mustParse(t, doc("Gateway", "", "ew", `{servers: [`+ewServer+`]}`), serviceEntry("", "se", "a.local", ""))
	if got := c.Gateways[0].Source; got != (Source{File: "test.yaml", Kind: "Gateway", Namespace: "default", Name: "ew"}) {
		t.Errorf("gateway source = %+v", got)
	}
	if got := c.Services[0].Namespace; got != "default" {
		t.Errorf("service namespace = %q, want default", got)
	}
	if got := c.Services[0].Source.String(); got != "test.yaml: ServiceEntry default/se" {
		t.Errorf("Source.String() = %q", got)
	}
}

func TestParseSkipsUnusedIstioKindsWithWarning(t *testing.T) {
	log, buf := newLogger()
	vs := doc("VirtualService", "bookinfo", "reviews", `{hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}`)
	sidecar := doc("Sidecar", "bookinfo", "default", `{egress: [{hosts: ["./*"]}]}`)
	c, err := Parse("test.yaml", join(vs, sidecar, ewGateway("ew")), log)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	equal(t, "gateways", gatewayNames(c), []string{"istio-system/ew"})
	out := buf.String()
	for _, want := range []string{"level=WARN", "Sidecar bookinfo/default"} {
		if !strings.Contains(out, want) {
			t.Errorf("log %q does not contain %q", out, want)
		}
	}
	// A VirtualService of the sidecars (bound to no gateway) is not this
	// gateway's business: read, not warned about.
	if strings.Contains(out, "VirtualService") {
		t.Errorf("log %q mentions the sidecars' VirtualService", out)
	}
	// A nil logger must not panic.
	if _, err := Parse("test.yaml", join(vs), nil); err != nil {
		t.Errorf("Parse with nil logger: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml []byte
		want []string
	}{
		{
			name: "broken YAML names file and document",
			yaml: join(ewGateway("ok"), "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: [\n"),
			want: []string{"test.yaml (document 2)", "invalid YAML"},
		},
		{
			name: "duplicate YAML key",
			yaml: join(doc("ServiceEntry", "ns", "se", "\n  hosts: [a.local]\n  hosts: [b.local]\n  ports: [{number: 80, name: http}]")),
			want: []string{"test.yaml (document 1)", "invalid YAML", "hosts"},
		},
		{
			name: "namespace not a DNS label",
			yaml: join(doc("ServiceEntry", "Book_Info", "se", `{hosts: [a.local], ports: [{number: 80, name: http}]}`)),
			want: []string{`ServiceEntry Book_Info/se: metadata.namespace: label "Book_Info"`},
		},
		{
			name: "not a mapping",
			yaml: join("- a\n- b\n"),
			want: []string{"test.yaml (document 1)", "not a Kubernetes resource"},
		},
		{
			name: "missing apiVersion",
			yaml: join("kind: Gateway\nmetadata: {name: x}\n"),
			want: []string{"test.yaml (document 1)", "missing apiVersion or kind"},
		},
		{
			name: "missing kind",
			yaml: join("apiVersion: networking.istio.io/v1\nmetadata: {name: x}\n"),
			want: []string{"test.yaml (document 1)", "missing apiVersion or kind"},
		},
		{
			name: "unknown kind in the Istio group",
			yaml: join(doc("Gatway", "istio-system", "ew", `{servers: []}`)),
			want: []string{"test.yaml: Gatway istio-system/ew", `unknown kind "Gatway"`, "networking.istio.io"},
		},
		{
			name: "unknown spec field",
			yaml: join(doc("ServiceEntry", "bookinfo", "reviews", `{hostz: [reviews.local], ports: [{number: 80, name: http}]}`)),
			want: []string{"test.yaml: ServiceEntry bookinfo/reviews", "spec:", "hostz"},
		},
		{
			name: "unknown nested spec field",
			yaml: join(doc("Gateway", "istio-system", "ew", `{servers: [{port: {number: 15443, protocol: TLS}, hosts: ["*"], tls: {mode: AUTO_PASSTHROUGH, sni: x}}]}`)),
			want: []string{"test.yaml: Gateway istio-system/ew", "spec:", "sni"},
		},
		{
			name: "unknown enum value",
			yaml: join(doc("Gateway", "istio-system", "ew", `{servers: [{port: {number: 15443, protocol: TLS}, hosts: ["*"], tls: {mode: AUTO_PASSTHRU}}]}`)),
			want: []string{"test.yaml: Gateway istio-system/ew", "spec:", "AUTO_PASSTHRU"},
		},
		{
			name: "wrong spec type",
			yaml: join(doc("ServiceEntry", "ns", "se", `{hosts: a.local}`)),
			want: []string{"test.yaml: ServiceEntry ns/se", "spec:"},
		},
		{
			name: "missing metadata.name",
			yaml: join(ewGateway("ok"), "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {namespace: x}\nspec: {hosts: [a.local]}\n"),
			want: []string{"test.yaml (document 2)", "ServiceEntry", "metadata.name is required"},
		},
		{
			name: "same resource twice in one file",
			yaml: join(ewGateway("ew"), ewGateway("ew")),
			want: []string{"test.yaml: Gateway istio-system/ew", "defined more than once"},
		},
		{
			name: "every problem is reported",
			yaml: join(
				doc("Gateway", "istio-system", "a", `{servers: [{port: {number: 1, protocol: TLS}, hosts: ["*"], tls: {mode: SIMPLE}}]}`),
				"a: [\n",
				doc("ServiceEntry", "ns", "b", `{hosts: ["*.wild"], ports: [{number: 80, name: http}]}`),
				doc("DestinationRule", "ns", "c", `{host: x.local, subsets: [{name: V1}]}`),
				doc("Frobnicator", "ns", "d", ""),
			),
			want: []string{
				"Gateway istio-system/a: spec.servers[0].tls.mode",
				"test.yaml (document 2): invalid YAML",
				"ServiceEntry ns/b: spec.hosts[0]",
				"DestinationRule ns/c: spec.subsets[0].name",
				"Frobnicator ns/d",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("test.yaml", tt.yaml, nil)
			if c != nil {
				t.Errorf("Parse returned a catalog with its error")
			}
			wantErrContains(t, err, tt.want...)
		})
	}
}

func TestParseEmptySpec(t *testing.T) {
	// "spec:" with nothing after it is the same as no spec at all.
	for _, spec := range []string{"", "\n", "null", "{}"} {
		y := "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: ew}\n"
		if spec != "" {
			y += "spec: " + spec + "\n"
		}
		err := parseError(t, y)
		wantErrContains(t, err, "test.yaml: Gateway default/ew: spec.servers: at least one server is required")
		if strings.Contains(err.Error(), "syntax error") {
			t.Errorf("spec %q: %v", spec, err)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadFilesDirectory(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a-gateway.yaml"), ewGateway("ew"))
	writeFile(t, filepath.Join(dir, "b-services.yml"), serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local", "")+"---\n"+serviceEntry("bookinfo", "ratings", "ratings.bookinfo.svc.cluster.local", ""))
	writeFile(t, filepath.Join(dir, "c-entry.json"), `{"apiVersion": "networking.istio.io/v1beta1", "kind": "ServiceEntry", "metadata": {"name": "api", "namespace": "ext"}, "spec": {"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "tls"}]}}`)
	// None of these may be read: each would fail the load.
	broken := "kind: [\n"
	writeFile(t, filepath.Join(dir, ".hidden.yaml"), broken)
	writeFile(t, filepath.Join(dir, "..2024_01_01.yaml"), broken)
	writeFile(t, filepath.Join(dir, "notes.txt"), broken)
	writeFile(t, filepath.Join(dir, "a-gateway.yaml~"), broken)
	writeFile(t, filepath.Join(dir, "sub", "nested.yaml"), broken)
	if err := os.Mkdir(filepath.Join(dir, "dir.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}

	c, err := LoadFiles([]string{dir}, nil)
	if err != nil {
		t.Fatalf("LoadFiles: %v", err)
	}
	equal(t, "gateways", gatewayNames(c), []string{"istio-system/ew"})
	// Files are read in name order, documents in file order.
	equal(t, "services", serviceHosts(c), []string{"reviews.bookinfo.svc.cluster.local", "ratings.bookinfo.svc.cluster.local", "api.example.com"})
	if got, want := c.Services[2].Source.File, filepath.Join(dir, "c-entry.json"); got != want {
		t.Errorf("source file = %q, want %q", got, want)
	}

	// Files named explicitly are read whatever their name.
	explicit := filepath.Join(dir, "notes.txt")
	writeFile(t, explicit, ewGateway("from-txt"))
	c, err = LoadFiles([]string{explicit, filepath.Join(dir, "c-entry.json")}, nil)
	if err != nil {
		t.Fatalf("LoadFiles: %v", err)
	}
	equal(t, "gateways", gatewayNames(c), []string{"istio-system/from-txt"})
	equal(t, "services", serviceHosts(c), []string{"api.example.com"})
}

func TestLoadFilesErrors(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	writeFile(t, a, ewGateway("ew")+"---\n"+serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local", ""))
	writeFile(t, b, ewGateway("ew")+"---\n"+serviceEntry("other", "reviews", "Reviews.Bookinfo.svc.cluster.local", ""))
	_, err := LoadFiles([]string{dir}, nil)
	wantErrContains(t, err,
		b+": Gateway istio-system/ew: defined more than once (also in "+a+")",
		b+`: ServiceEntry other/reviews: spec.hosts: "reviews.bookinfo.svc.cluster.local" is already defined by `+a+": ServiceEntry bookinfo/reviews",
	)

	writeFile(t, b, doc("Gateway", "istio-system", "bad", `{servers: [{port: {number: 1, protocol: TLS}, hosts: ["*"], tls: {mode: MUTUAL}}]}`))
	_, err = LoadFiles([]string{a, b}, nil)
	wantErrContains(t, err, b+": Gateway istio-system/bad: spec.servers[0].tls.mode: MUTUAL is not supported")

	writeFile(t, b, "a: [\n")
	_, err = LoadFiles([]string{a, b}, nil)
	wantErrContains(t, err, b+" (document 1): invalid YAML")

	missing := filepath.Join(dir, "missing.yaml")
	_, err = LoadFiles([]string{a, missing}, nil)
	wantErrContains(t, err, missing)

	_, err = LoadFiles(nil, nil)
	wantErrContains(t, err, "no config files")
}

func TestGatewayValidation(t *testing.T) {
	server := func(port, protocol, hosts, tls string) string {
		s := `{port: {number: ` + port + `, name: p, protocol: ` + protocol + `}`
		if hosts != "" {
			s += `, hosts: ` + hosts
		}
		if tls != "" {
			s += `, tls: ` + tls
		}
		return s + `}`
	}
	ap := `{mode: AUTO_PASSTHROUGH}`
	ok := server("15443", "TLS", `["*.local"]`, ap)
	tests := []struct {
		name    string
		servers string
		want    string // "" for valid
	}{
		{"valid", ok, ""},
		{"lower-case protocol", server("15443", "tls", `["*"]`, ap), ""},
		{"two servers", ok + ", " + server("15444", "TLS", `["bookinfo/*.local", "./*", "*/x.ns.svc.cluster.local"]`, ap), ""},
		{"SIMPLE", server("15443", "TLS", `["*"]`, `{mode: SIMPLE}`), "spec.servers[0].tls.mode: SIMPLE is not supported (supported: AUTO_PASSTHROUGH, PASSTHROUGH)"},
		{"MUTUAL", server("15443", "TLS", `["*"]`, `{mode: MUTUAL}`), "spec.servers[0].tls.mode: MUTUAL is not supported"},
		{"ISTIO_MUTUAL", server("15443", "TLS", `["*"]`, `{mode: ISTIO_MUTUAL}`), "spec.servers[0].tls.mode: ISTIO_MUTUAL is not supported"},
		{"OPTIONAL_MUTUAL", server("15443", "TLS", `["*"]`, `{mode: OPTIONAL_MUTUAL}`), "spec.servers[0].tls.mode: OPTIONAL_MUTUAL is not supported"},
		{"missing tls", server("15443", "TLS", `["*"]`, ""), "spec.servers[0].tls.mode: required"},
		{"bad mode in second server", ok + ", " + server("15444", "TLS", `["*"]`, `{mode: SIMPLE}`), "spec.servers[1].tls.mode: SIMPLE"},
		{"no servers", "", "spec.servers: at least one server is required"},
		{"no hosts", server("15443", "TLS", "", ap), "spec.servers[0].hosts: at least one host is required"},
		{"empty hosts", server("15443", "TLS", "[]", ap), "spec.servers[0].hosts: at least one host is required"},
		{"duplicate port", ok + ", " + ok, "spec.servers[1].port.number: port 15443 is already used by spec.servers[0]"},
		{"port 0", server("0", "TLS", `["*"]`, ap), "spec.servers[0].port.number: must be 1-65535"},
		{"port too big", server("65536", "TLS", `["*"]`, ap), "spec.servers[0].port.number: must be 1-65535"},
		{"missing port", `{hosts: ["*"], tls: {mode: AUTO_PASSTHROUGH}}`, "spec.servers[0].port.number"},
		{"protocol HTTPS", server("15443", "HTTPS", `["*"]`, ap), `spec.servers[0].port.protocol: AUTO_PASSTHROUGH needs protocol TLS, not "HTTPS"`},
		{"protocol TCP", server("15443", "TCP", `["*"]`, ap), "spec.servers[0].port.protocol"},
		{"bind", `{port: {number: 15443, protocol: TLS}, hosts: ["*"], bind: 10.0.0.1, tls: {mode: AUTO_PASSTHROUGH}}`, "spec.servers[0].bind: not supported"},
		{"wildcard not a whole label", server("15443", "TLS", `["*foo.local"]`, ap), `spec.servers[0].hosts[0]: host "*foo.local"`},
		{"wildcard in the middle", server("15443", "TLS", `["a.*.local"]`, ap), `spec.servers[0].hosts[0]: host "a.*.local"`},
		{"empty namespace", server("15443", "TLS", `["/x.local"]`, ap), `spec.servers[0].hosts[0]: host "/x.local": empty namespace`},
		{"empty host", server("15443", "TLS", `[""]`, ap), `spec.servers[0].hosts[0]: host "": empty host`},
		{"empty host after namespace", server("15443", "TLS", `["ns/"]`, ap), `spec.servers[0].hosts[0]: host "ns/": empty host`},
		{"second host bad", server("15443", "TLS", `["*.local", "a b"]`, ap), `spec.servers[0].hosts[1]: host "a b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y := doc("Gateway", "istio-system", "ew", `{servers: [`+tt.servers+`]}`)
			if tt.want == "" {
				c := mustParse(t, y)
				equal(t, "gateways", gatewayNames(c), []string{"istio-system/ew"})
				return
			}
			err := parseError(t, y)
			wantErrContains(t, err, "test.yaml: Gateway istio-system/ew: "+tt.want)
		})
	}
}

func TestGatewayParsed(t *testing.T) {
	c := mustParse(t, doc("Gateway", "istio-system", "ew", `{selector: {istio: eastwestgateway, topology.istio.io/network: net-a}, servers: [
  {port: {number: 15443, name: tls, protocol: TLS}, hosts: ["*.LOCAL", "bookinfo/reviews.bookinfo.svc.cluster.local"], tls: {mode: AUTO_PASSTHROUGH}},
  {port: {number: 15444, name: all, protocol: tls}, hosts: ["*"], tls: {mode: AUTO_PASSTHROUGH}}]}`))
	g := c.Gateways[0]
	if len(g.Selector) != 2 || g.Selector["istio"] != "eastwestgateway" || g.Selector["topology.istio.io/network"] != "net-a" {
		t.Errorf("selector = %v", g.Selector)
	}
	if len(g.Servers) != 2 {
		t.Fatalf("servers = %+v", g.Servers)
	}
	s := g.Servers[0]
	if s.Port != 15443 || s.PortName != "tls" || s.Protocol != "TLS" || s.Mode != AutoPassthrough {
		t.Errorf("server 0 = %+v", s)
	}
	equal(t, "hosts", s.Hosts, []HostPattern{{"*", "*.local"}, {"bookinfo", "reviews.bookinfo.svc.cluster.local"}})
	equal(t, "hosts", g.Servers[1].Hosts, []HostPattern{{"*", "*"}})
}

func TestServiceEntry(t *testing.T) {
	c := mustParse(t, doc("ServiceEntry", "bookinfo", "reviews", `{
  hosts: [Reviews.Bookinfo.SVC.cluster.local, reviews.example.com],
  exportTo: [".", istio-system],
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9443, name: tls, protocol: TLS, targetPort: 8443}, {number: 7000}],
  endpoints: [
    {address: 10.0.0.1, ports: {http: 19080}, labels: {app: reviews, security.istio.io/tlsMode: istio}, network: net-a, locality: r/z/s, weight: 3, serviceAccount: reviews},
    {address: "fd00::1"},
    {address: Reviews-V3.Example.COM}]}`))
	equal(t, "services", serviceHosts(c), []string{"reviews.bookinfo.svc.cluster.local", "reviews.example.com"})
	for _, s := range c.Services {
		if s.Namespace != "bookinfo" || s.Source.Name != "reviews" || s.Source.Kind != "ServiceEntry" {
			t.Errorf("%s: namespace %q source %v", s.Host, s.Namespace, s.Source)
		}
		equal(t, "exportTo", s.ExportTo, []string{".", "istio-system"})
		equal(t, "ports", s.Ports, []Port{{Number: 9080, Name: "http", Protocol: "HTTP"}, {Number: 9443, Name: "tls", Protocol: "TLS", TargetPort: 8443}, {Number: 7000}})
		equal(t, "endpoints", endpointAddresses(s), []string{"10.0.0.1", "fd00::1", "reviews-v3.example.com"})
	}
	e := c.Services[0].Endpoints[0]
	if e.Ports["http"] != 19080 || e.Labels["app"] != "reviews" || e.Network != "net-a" || e.Locality != "r/z/s" || e.Weight != 3 || e.ServiceAccount != "reviews" {
		t.Errorf("endpoint = %+v", e)
	}
	if p, ok := c.Services[0].Port(9443); !ok || p.TargetPort != 8443 {
		t.Errorf("Port(9443) = %+v, %v", p, ok)
	}
	if _, ok := c.Services[0].Port(8443); ok {
		t.Error("Port(8443) found: target ports are not service ports")
	}
}

func TestServiceEntryErrors(t *testing.T) {
	se := func(spec string) string { return doc("ServiceEntry", "bookinfo", "se", spec) }
	ports := `ports: [{number: 9080, name: http}]`
	tests := []struct {
		name string
		docs []string
		want []string
	}{
		{"no hosts", []string{se(`{` + ports + `}`)}, []string{"ServiceEntry bookinfo/se: spec.hosts: at least one host is required"}},
		{"wildcard host", []string{se(`{hosts: ["*.example.com"], ` + ports + `}`)}, []string{`ServiceEntry bookinfo/se: spec.hosts[0]: host "*.example.com"`}},
		{"bare wildcard host", []string{se(`{hosts: [a.local, "*"], ` + ports + `}`)}, []string{`ServiceEntry bookinfo/se: spec.hosts[1]: host "*"`}},
		{"IPv4 host", []string{se(`{hosts: [10.0.0.1], ` + ports + `}`)}, []string{`spec.hosts[0]: host "10.0.0.1" is an IP address`}},
		{"IPv6 host", []string{se(`{hosts: ["fd00::1"], ` + ports + `}`)}, []string{`spec.hosts[0]: host "fd00::1" is an IP address`}},
		{"host with underscore", []string{se(`{hosts: [my_svc.local], ` + ports + `}`)}, []string{`spec.hosts[0]: host "my_svc.local"`}},
		{"host too long", []string{se(`{hosts: [` + strings.Repeat("a.", 127) + `local], ` + ports + `}`)}, []string{"spec.hosts[0]", "longer than 253"}},
		// Hosts the SNI parser refuses, which no client could ever reach.
		{"numeric top-level label", []string{se(`{hosts: [reviews.123], ` + ports + `}`)}, []string{`ServiceEntry bookinfo/se: spec.hosts[0]: host "reviews.123" is an IP address`}},
		{"hexadecimal top-level label", []string{se(`{hosts: [a.local, reviews.0x1f], ` + ports + `}`)}, []string{`spec.hosts[1]: host "reviews.0x1f" is an IP address`}},
		{"short IPv4 form", []string{se(`{hosts: ["10.1"], ` + ports + `}`)}, []string{`spec.hosts[0]: host "10.1" is an IP address`}},
		{"endpoint name read as an address", []string{se(`{hosts: [a.local], ` + ports + `, endpoints: [{address: "10.1"}]}`)}, []string{`spec.endpoints[0].address: "10.1"`}},
		// Lists Istio's validation refuses, which istiod would not read as
		// the gateway does.
		{"exportTo nowhere and somewhere", []string{se(`{hosts: [a.local], ` + ports + `, exportTo: ["~", istio-system]}`)}, []string{`ServiceEntry bookinfo/se: spec.exportTo: "*" and "~" cannot be combined`}},
		{"exportTo own namespace twice", []string{se(`{hosts: [a.local], ` + ports + `, exportTo: [".", bookinfo]}`)}, []string{`spec.exportTo[1]: namespace "bookinfo" is listed twice`}},
		{"exportTo not a namespace", []string{se(`{hosts: [a.local], ` + ports + `, exportTo: ["istio-system/x"]}`)}, []string{`spec.exportTo[0]: "istio-system/x" is neither`}},
		{"port 0", []string{se(`{hosts: [a.local], ports: [{number: 0, name: http}]}`)}, []string{"spec.ports[0].number: must be 1-65535"}},
		{"port too big", []string{se(`{hosts: [a.local], ports: [{number: 70000, name: http}]}`)}, []string{"spec.ports[0].number: must be 1-65535"}},
		{"targetPort too big", []string{se(`{hosts: [a.local], ports: [{number: 80, name: http, targetPort: 70000}]}`)}, []string{"spec.ports[0].targetPort: must be 0-65535"}},
		{"duplicate port number", []string{se(`{hosts: [a.local], ports: [{number: 80, name: http}, {number: 80, name: http2}]}`)}, []string{"spec.ports[1].number: port 80 is listed twice"}},
		{"duplicate port name", []string{se(`{hosts: [a.local], ports: [{number: 80, name: http}, {number: 81, name: http}]}`)}, []string{`spec.ports[1].name: name "http" is listed twice`}},
		{"endpoints and workloadSelector", []string{se(`{hosts: [a.local], ` + ports + `, endpoints: [{address: 10.0.0.1}], workloadSelector: {labels: {app: a}}}`)}, []string{"ServiceEntry bookinfo/se: spec.workloadSelector: cannot be combined with spec.endpoints"}},
		{"unix socket endpoint", []string{se(`{hosts: [a.local], ` + ports + `, endpoints: [{address: 10.0.0.1}, {address: "unix:///var/run/a.sock"}]}`)}, []string{`spec.endpoints[1].address: "unix:///var/run/a.sock"`, "unix sockets are not supported"}},
		{"endpoint address with port", []string{se(`{hosts: [a.local], ` + ports + `, endpoints: [{address: "10.0.0.1:80"}]}`)}, []string{`spec.endpoints[0].address: "10.0.0.1:80"`}},
		{"endpoint address not a name", []string{se(`{hosts: [a.local], ` + ports + `, endpoints: [{address: "a b"}]}`)}, []string{`spec.endpoints[0].address: "a b"`}},
		{"endpoint port 0", []string{se(`{hosts: [a.local], ` + ports + `, endpoints: [{address: 10.0.0.1, ports: {http: 0}}]}`)}, []string{"spec.endpoints[0].ports[http]: must be 1-65535"}},
		{"same host in two ServiceEntries", []string{
			doc("ServiceEntry", "a", "one", `{hosts: [x.local], `+ports+`}`),
			doc("ServiceEntry", "b", "two", `{hosts: [X.Local], `+ports+`}`),
		}, []string{`test.yaml: ServiceEntry b/two: spec.hosts: "x.local" is already defined by test.yaml: ServiceEntry a/one`}},
		{"bad selected WorkloadEntry", []string{
			se(`{hosts: [a.local], ` + ports + `, workloadSelector: {labels: {app: a}}}`),
			doc("WorkloadEntry", "bookinfo", "bad", `{address: "unix:///x.sock", labels: {app: a}}`),
		}, []string{`test.yaml: WorkloadEntry bookinfo/bad: spec.address: "unix:///x.sock"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := parseError(t, tt.docs...)
			wantErrContains(t, err, tt.want...)
			if !strings.Contains(err.Error(), "test.yaml: ") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

// TestLoadedHostsAreSNIKeys checks that the loader and the SNI parser
// apply one host rule: every ServiceEntry host the loader accepts parses
// back from a client's SNI name as the catalog's host, and every host it
// refuses, the SNI parser refuses too.
func TestLoadedHostsAreSNIKeys(t *testing.T) {
	for _, h := range []string{
		"reviews.bookinfo.svc.cluster.local", "Reviews.BookInfo.svc.cluster.local", "a", "a-b.c0.d",
		"1.2.3.example", "0x1.example", "host.x0a", "x-1.local", strings.Repeat("a", 63) + ".local",
		strings.Repeat("a.", 126) + "b",
		"reviews.123", "reviews.0x1f", "reviews.0X1F", "10.1", "167772161", "0xa.0.0.1", "010.0.0.1", "10.0.0.1", "fd00::1",
		"*.local", "a..b", "-a.b", "a-.b", "reviews.", strings.Repeat("a", 64) + ".local", strings.Repeat("a.", 127) + "b",
		"my_svc.local", "réviews.local", "rev iews.local",
	} {
		t.Run(h, func(t *testing.T) {
			c, err := Parse("test.yaml", []byte(serviceEntry("bookinfo", "se", h, "")), nil)
			_, sniErr := sni.ParseName(sni.Key{Host: h, Port: 9080}.SNI())
			if err != nil {
				if sniErr == nil {
					t.Errorf("the loader refuses host %q, which the SNI parser accepts: %v", h, err)
				}
				wantErrContains(t, err, "ServiceEntry bookinfo/se: spec.hosts[0]: ")
				return
			}
			for _, svc := range c.Services {
				k, err := sni.ParseName(sni.Key{Host: svc.Host, Port: 9080}.SNI())
				if err != nil || k.Host != svc.Host {
					t.Errorf("the loader accepts host %q as %q, but the SNI parser reads %q, %v", h, svc.Host, k.Host, err)
				}
			}
		})
	}
}

func TestServiceEntryWorkloadSelector(t *testing.T) {
	we := func(ns, name, spec string) string { return doc("WorkloadEntry", ns, name, spec) }
	c := mustParse(t,
		doc("ServiceEntry", "bookinfo", "reviews", `{hosts: [reviews.bookinfo.svc.cluster.local], ports: [{number: 9080, name: http}], workloadSelector: {labels: {app: reviews}}}`),
		doc("ServiceEntry", "bookinfo", "nothing", `{hosts: [nothing.bookinfo.svc.cluster.local], ports: [{number: 9080, name: http}], workloadSelector: {labels: {app: nothing}}}`),
		// Declared after the ServiceEntry: order does not matter.
		we("bookinfo", "r1", `{address: 10.0.0.1, labels: {app: reviews, version: v1}, ports: {http: 19080}, network: net-a, locality: r/z, weight: 2, serviceAccount: sa1}`),
		we("bookinfo", "r2", `{address: Reviews-2.VM.example, labels: {app: reviews, version: v2}}`),
		we("bookinfo", "ratings", `{address: 10.0.0.3, labels: {app: ratings}}`),
		we("bookinfo", "unlabelled", `{address: 10.0.0.4}`),
		we("other", "r3", `{address: 10.0.0.5, labels: {app: reviews}}`),
	)
	reviews := service(t, c, "reviews.bookinfo.svc.cluster.local")
	equal(t, "reviews endpoints", endpointAddresses(reviews), []string{"10.0.0.1", "reviews-2.vm.example"})
	e := reviews.Endpoints[0]
	if e.Ports["http"] != 19080 || e.Labels["version"] != "v1" || e.Network != "net-a" || e.Locality != "r/z" || e.Weight != 2 || e.ServiceAccount != "sa1" {
		t.Errorf("endpoint from WorkloadEntry = %+v", e)
	}
	if eps := service(t, c, "nothing.bookinfo.svc.cluster.local").Endpoints; len(eps) != 0 {
		t.Errorf("nothing endpoints = %+v, want none", eps)
	}
}

func TestDestinationRuleSubsets(t *testing.T) {
	dr := func(ns, name, host, subsets string) string {
		return doc("DestinationRule", ns, name, `{host: "`+host+`", subsets: [`+subsets+`]}`)
	}
	subset := func(name string) string { return `{name: ` + name + `, labels: {version: ` + name + `}}` }
	services := []string{
		serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local", ""),
		serviceEntry("bookinfo", "ratings", "ratings.bookinfo.svc.cluster.local", ""),
		serviceEntry("other", "reviews", "reviews.other.svc.cluster.local", ""),
		serviceEntry("ext", "api", "api.example.com", ""),
	}
	tests := []struct {
		name string
		drs  []string
		want map[string][]string // host -> subset names
	}{
		{"exact host", []string{dr("bookinfo", "r", "reviews.bookinfo.svc.cluster.local", subset("v1")+", "+subset("v2"))},
			map[string][]string{"reviews.bookinfo.svc.cluster.local": {"v1", "v2"}}},
		{"host is case-insensitive", []string{dr("bookinfo", "r", "Reviews.Bookinfo.svc.cluster.local", subset("v1"))},
			map[string][]string{"reviews.bookinfo.svc.cluster.local": {"v1"}}},
		{"short name in the rule's namespace", []string{dr("bookinfo", "r", "reviews", subset("v1"))},
			map[string][]string{"reviews.bookinfo.svc.cluster.local": {"v1"}}},
		{"short name in another namespace", []string{dr("other", "r", "reviews", subset("v3"))},
			map[string][]string{"reviews.other.svc.cluster.local": {"v3"}}},
		{"short name without namespace uses default", []string{dr("", "r", "reviews", subset("v1"))},
			map[string][]string{}},
		{"wildcard", []string{dr("bookinfo", "all", "*.bookinfo.svc.cluster.local", subset("v1"))},
			map[string][]string{"reviews.bookinfo.svc.cluster.local": {"v1"}, "ratings.bookinfo.svc.cluster.local": {"v1"}}},
		{"exact beats wildcard", []string{
			dr("bookinfo", "all", "*.bookinfo.svc.cluster.local", subset("wild")),
			dr("bookinfo", "r", "reviews", subset("exact")),
		}, map[string][]string{"reviews.bookinfo.svc.cluster.local": {"exact"}, "ratings.bookinfo.svc.cluster.local": {"wild"}}},
		{"longest wildcard wins", []string{
			dr("mesh", "any", "*", subset("star")),
			dr("mesh", "local", "*.local", subset("local")),
			dr("mesh", "bookinfo", "*.bookinfo.svc.cluster.local", subset("bookinfo")),
			dr("mesh", "svc", "*.svc.cluster.local", subset("svc")),
		}, map[string][]string{
			"reviews.bookinfo.svc.cluster.local": {"bookinfo"},
			"ratings.bookinfo.svc.cluster.local": {"bookinfo"},
			"reviews.other.svc.cluster.local":    {"svc"},
			"api.example.com":                    {"star"},
		}},
		// parseHost lower-cases the completed name, short part and all.
		{"upper-case short host", []string{dr("bookinfo", "r", "Reviews", subset("v1"))},
			map[string][]string{"reviews.bookinfo.svc.cluster.local": {"v1"}}},
		{"wildcard does not match its own suffix", []string{dr("ext", "w", "*.api.example.com", subset("v1"))},
			map[string][]string{}},
		{"no rule", nil, map[string][]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, append(slices.Clone(services), tt.drs...)...)
			for _, s := range c.Services {
				var names []string
				for _, ss := range s.Subsets {
					names = append(names, ss.Name)
					if ss.Labels["version"] != ss.Name {
						t.Errorf("%s subset %s labels = %v", s.Host, ss.Name, ss.Labels)
					}
				}
				equal(t, s.Host+" subsets", names, tt.want[s.Host])
			}
		})
	}
}

func TestDestinationRuleUnmatchedWarns(t *testing.T) {
	log, buf := newLogger()
	_, err := Parse("test.yaml", join(
		serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local", ""),
		doc("DestinationRule", "bookinfo", "ghost", `{host: ghost, subsets: [{name: v1}]}`),
	), log)
	if err != nil {
		t.Fatal(err)
	}
	if out := buf.String(); !strings.Contains(out, "DestinationRule bookinfo/ghost") || !strings.Contains(out, "level=WARN") {
		t.Errorf("log = %q, want a warning naming DestinationRule bookinfo/ghost", out)
	}
}

func TestDestinationRuleErrors(t *testing.T) {
	dr := func(name, spec string) string { return doc("DestinationRule", "bookinfo", name, spec) }
	tests := []struct {
		name string
		docs []string
		want string
	}{
		{"duplicate subset", []string{dr("r", `{host: reviews, subsets: [{name: v1}, {name: v2}, {name: v1}]}`)}, `DestinationRule bookinfo/r: spec.subsets[2].name: "v1" is listed twice`},
		{"upper-case subset", []string{dr("r", `{host: reviews, subsets: [{name: V1}]}`)}, `DestinationRule bookinfo/r: spec.subsets[0].name: subset "V1"`},
		{"underscore subset", []string{dr("r", `{host: reviews, subsets: [{name: v1}, {name: v_1}]}`)}, `spec.subsets[1].name: subset "v_1"`},
		{"dotted subset", []string{dr("r", `{host: reviews, subsets: [{name: v1.2}]}`)}, `spec.subsets[0].name: subset "v1.2"`},
		{"empty subset", []string{dr("r", `{host: reviews, subsets: [{labels: {a: b}}]}`)}, `spec.subsets[0].name: subset ""`},
		{"subset too long", []string{dr("r", `{host: reviews, subsets: [{name: `+strings.Repeat("v", 64)+`}]}`)}, "spec.subsets[0].name"},
		{"no host", []string{dr("r", `{subsets: [{name: v1}]}`)}, "DestinationRule bookinfo/r: spec.host: required"},
		{"two rules for one host", []string{
			dr("a", `{host: reviews.bookinfo.svc.cluster.local}`),
			dr("b", `{host: reviews}`),
		}, `DestinationRule bookinfo/b: spec.host: "reviews.bookinfo.svc.cluster.local" already has test.yaml: DestinationRule bookinfo/a`},
		{"bad wildcard host", []string{dr("r", `{host: "*foo.local"}`)}, `DestinationRule bookinfo/r: spec.host: "*foo.local"`},
		{"wildcard in the middle", []string{dr("r", `{host: "a.*.local"}`)}, `spec.host: "a.*.local"`},
		{"namespaced host", []string{dr("r", `{host: "ns/reviews.local"}`)}, `spec.host: "ns/reviews.local"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs := append([]string{serviceEntry("bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local", "")}, tt.docs...)
			wantErrContains(t, parseError(t, docs...), "test.yaml: ", tt.want)
		})
	}
}

func TestDestinationRuleBadWildcardDoesNotMatch(t *testing.T) {
	// Regression: "*foo.local" was taken as a suffix and matched
	// "barfoo.local". It is now rejected.
	_, err := Parse("test.yaml", join(
		serviceEntry("ns", "s", "barfoo.local", ""),
		doc("DestinationRule", "ns", "r", `{host: "*foo.local", subsets: [{name: v1}]}`),
	), nil)
	if err == nil {
		t.Fatal("DestinationRule host *foo.local accepted")
	}
}

func TestSplitDocuments(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", []string{""}},
		{"a: 1\n", []string{"a: 1\n"}},
		{"a: 1\n---\nb: 2\n", []string{"a: 1\n", "b: 2\n"}},
		{"---\na: 1\n", []string{"", "a: 1\n"}},
		{"a: 1\n---", []string{"a: 1\n", ""}},
		{"a: 1\n--- # c\nb: 2\n", []string{"a: 1\n", "b: 2\n"}},
		{"a: 1\n---#c\nb: 2\n", []string{"a: 1\n", "b: 2\n"}},
		{"a: 1\r\n---\r\nb: 2\r\n", []string{"a: 1\r\n", "b: 2\r\n"}},
		{"a: 1\n----\nb: 2\n", []string{"a: 1\n----\nb: 2\n"}},
		{"a: 1\n---x\n", []string{"a: 1\n---x\n"}},
		{"a: 1\n --- \n", []string{"a: 1\n --- \n"}},
		{"a: |\n  ---\n", []string{"a: |\n  ---\n"}},
	}
	for _, tt := range tests {
		var got []string
		for _, d := range splitDocuments([]byte(tt.in)) {
			got = append(got, string(d))
		}
		equal(t, "splitDocuments("+strings.ReplaceAll(tt.in, "\n", `\n`)+")", got, tt.want)
	}
}
