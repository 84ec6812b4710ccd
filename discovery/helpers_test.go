package discovery

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
)

// doc returns one Istio resource as YAML; ns "" leaves metadata.namespace out
// and spec "" leaves spec out.
func doc(kind, ns, name, spec string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: networking.istio.io/v1\nkind: %s\nmetadata:\n  name: %s\n", kind, name)
	if ns != "" {
		fmt.Fprintf(&b, "  namespace: %s\n", ns)
	}
	if spec != "" {
		fmt.Fprintf(&b, "spec: %s\n", spec)
	}
	return b.String()
}

// ewServer is the AUTO_PASSTHROUGH server of Istio's east-west sample.
const ewServer = `{port: {number: 15443, name: tls, protocol: TLS}, hosts: ["*.local"], tls: {mode: AUTO_PASSTHROUGH}}`

// ewGateway is Istio's east-west Gateway, in namespace istio-system.
func ewGateway(name string) string {
	return doc("Gateway", "istio-system", name, `{selector: {istio: eastwestgateway}, servers: [`+ewServer+`]}`)
}

// serviceEntry returns a ServiceEntry for host with one port 9080 "http" and
// the given endpoints (a YAML flow list, "" for none).
func serviceEntry(ns, name, host, endpoints string) string {
	spec := fmt.Sprintf(`{hosts: [%q], ports: [{number: 9080, name: http, protocol: HTTP}]`, host)
	if endpoints != "" {
		spec += `, endpoints: ` + endpoints
	}
	return doc("ServiceEntry", ns, name, spec+`}`)
}

func join(docs ...string) []byte { return []byte(strings.Join(docs, "---\n")) }

func mustParse(t *testing.T, docs ...string) *Catalog {
	t.Helper()
	c, err := Parse("test.yaml", join(docs...), nil)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c == nil {
		t.Fatal("Parse returned a nil catalog and no error")
	}
	return c
}

// parseError parses docs that must be rejected and returns the error.
func parseError(t *testing.T, docs ...string) error {
	t.Helper()
	c, err := Parse("test.yaml", join(docs...), nil)
	if err == nil {
		t.Fatalf("Parse succeeded (%d gateways, %d services), want an error", len(c.Gateways), len(c.Services))
	}
	if c != nil {
		t.Errorf("Parse returned a catalog along with error %v", err)
	}
	return err
}

func wantErrContains(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("error = nil, want one containing %q", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q\ndoes not contain %q", err, s)
		}
	}
}

func gatewayNames(c *Catalog) []string {
	var names []string
	for _, g := range c.Gateways {
		names = append(names, g.Source.Namespace+"/"+g.Source.Name)
	}
	return names
}

func serviceHosts(c *Catalog) []string {
	var hosts []string
	for _, s := range c.Services {
		hosts = append(hosts, s.Host)
	}
	return hosts
}

func service(t *testing.T, c *Catalog, host string) *Service {
	t.Helper()
	for _, s := range c.Services {
		if s.Host == host {
			return s
		}
	}
	t.Fatalf("no service %q in %q", host, serviceHosts(c))
	return nil
}

func endpointAddresses(s *Service) []string {
	var addrs []string
	for _, e := range s.Endpoints {
		addrs = append(addrs, e.Address)
	}
	return addrs
}

func equal[T comparable](t *testing.T, what string, got, want []T) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s = %+v, want %+v", what, got, want)
	}
}

// logBuffer is a slog destination safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger() (*slog.Logger, *logBuffer) {
	b := new(logBuffer)
	return slog.New(slog.NewTextHandler(b, nil)), b
}
