package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/istiopub"
)

// istioObjects returns, per object the publisher wrote in c's API server
// of resource (group/version/plural), its namespace and the spec fields
// the test checks, one line each, sorted.
func (c *cluster) istioObjects(resource string) []string {
	c.t.Helper()
	path := "/apis/" + resource + "?labelSelector=" + url.QueryEscape(istiopub.LabelManagedBy+"="+istiopub.ManagedByValue)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, body, err := c.srv.Do(ctx, http.MethodGet, path, nil)
	if err != nil || code != http.StatusOK {
		c.t.Fatalf("GET %s: %d %s %v", path, code, body, err)
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Namespace string
				Labels    map[string]string
			}
			Spec struct {
				// Gateway
				GatewayClassName string
				Addresses        []struct{ Type, Value string }
				Listeners        []struct {
					Port int
					TLS  struct {
						Mode    string
						Options map[string]string
					}
				}
				// ServiceEntry
				Hosts           []string
				SubjectAltNames []string
				// WorkloadEntry
				Network, Locality, ServiceAccount string
				Weight                            int
				Labels                            map[string]string
			}
		}
	}
	if err := json.Unmarshal(body, &list); err != nil {
		c.t.Fatal(err)
	}
	var out []string
	for _, it := range list.Items {
		s := it.Spec
		switch {
		case s.GatewayClassName != "":
			l := s.Listeners[0]
			out = append(out, fmt.Sprintf("%s %s network=%s %v %d %s %s", it.Metadata.Namespace, s.GatewayClassName,
				it.Metadata.Labels["topology.istio.io/network"], s.Addresses, l.Port, l.TLS.Mode, l.TLS.Options["gateway.istio.io/listener-protocol"]))
		case len(s.Hosts) > 0:
			out = append(out, fmt.Sprintf("%s %v %v", it.Metadata.Namespace, s.Hosts, s.SubjectAltNames))
		default:
			out = append(out, fmt.Sprintf("%s network=%s locality=%s sa=%s version=%s tlsMode=%s weight=%d", it.Metadata.Namespace,
				s.Network, s.Locality, s.ServiceAccount, s.Labels["version"], s.Labels["security.istio.io/tlsMode"], s.Weight))
		}
	}
	slices.Sort(out)
	return out
}

// expectIstio waits until the publisher's objects of resource in c are
// exactly want.
func (c *cluster) expectIstio(what, resource string, want ...string) {
	c.t.Helper()
	var got []string
	defer func() {
		if c.t.Failed() {
			c.t.Logf("%s: last seen in cluster A:\n\t%s\nwant\n\t%s", resource, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
		}
	}()
	await.True(c.t, 60*time.Second, what, func() bool {
		got = c.istioObjects(resource)
		return slices.Equal(got, want)
	})
}

// Two clusters, one gateway each, joined by gossip; A's gateway publishes
// to A's API server what it learns of network-b: the istio-remote Gateway,
// and for B's Service (none of that name in A) a ServiceEntry and one
// WorkloadEntry per subset and locality, weighted by B's ready pods, with
// B's pods' service account. Scaling B's pods changes the weight,
// deleting B's Service removes its entries, and killing B's gateway
// withdraws network-b once the grace period has passed.
func TestPublishToIstio(t *testing.T) {
	a := newCluster(t)
	b := newClusterCA(t, a.ca, "network-b")
	a.srv.Create(t, "", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: ewgate-system}\n"))
	b.pod("echo-b1", "v1")
	b.service("echo")
	b.slice("echo", map[string]bool{"echo-b1": true}, true)
	key := gossipKeyFile(t)
	gossipA := loopbackAddr(t)
	const grace = 3 * time.Second
	pa := a.run(append(tunnelArgs(t, a.world, key, "a", gossipA), "--publish-to-istio", "--publish-grace", grace.String(),
		"--api-socket", filepath.Join(t.TempDir(), "a.sock"))...)
	pb := b.run(tunnelArgs(t, b.world, key, "b", loopbackAddr(t), gossipA)...)

	host, port, _ := net.SplitHostPort(b.gwAddr())
	const (
		gateways        = "gateway.networking.k8s.io/v1/gateways"
		serviceEntries  = "networking.istio.io/v1/serviceentries"
		workloadEntries = "networking.istio.io/v1/workloadentries"
	)
	wantGateway := fmt.Sprintf("ewgate-system istio-remote network=network-b [{IPAddress %s}] %s Passthrough auto-passthrough", host, port)
	a.expectIstio("network-b's gateway", gateways, wantGateway)
	a.expectIstio("B's Service", serviceEntries, "demo [echo.demo.svc.cluster.local] [spiffe://cluster.local/ns/demo/sa/echo]")
	a.expectIstio("B's pod", workloadEntries,
		"demo network=network-b locality=eu/eu-1/rack-7 sa=echo version=v1 tlsMode=istio weight=1")
	if code, body := readyz(a.admin); code != http.StatusOK {
		t.Errorf("A's /readyz: %d %s", code, body)
	}
	_, debug, _ := httpGet("http://" + a.admin + "/debug/istio")
	if !strings.Contains(debug, `"leading": true`) {
		t.Errorf("A's /debug/istio does not say it leads:\n%s", debug)
	}
	if got := metric(t, a.admin, "ewgate_istio_publisher_leading"); got != 1 {
		t.Errorf("ewgate_istio_publisher_leading = %d", got)
	}

	t.Run("pods scaled", func(t *testing.T) {
		b.pod("echo-b2", "v1")
		b.pod("echo-b3", "v2")
		b.slice("echo", map[string]bool{"echo-b1": true, "echo-b2": true, "echo-b3": true}, false)
		a.expectIstio("three pods", workloadEntries,
			"demo network=network-b locality=eu/eu-1/rack-7 sa=echo version=v1 tlsMode=istio weight=2",
			"demo network=network-b locality=eu/eu-1/rack-7 sa=echo version=v2 tlsMode=istio weight=1")
		b.setPodReady("echo-b2", false)
		b.slice("echo", map[string]bool{"echo-b1": true, "echo-b2": false, "echo-b3": true}, false)
		a.expectIstio("one v1 pod not ready", workloadEntries,
			"demo network=network-b locality=eu/eu-1/rack-7 sa=echo version=v1 tlsMode=istio weight=1",
			"demo network=network-b locality=eu/eu-1/rack-7 sa=echo version=v2 tlsMode=istio weight=1")
	})
	t.Run("Service deleted", func(t *testing.T) {
		b.do("DELETE", "/api/v1/namespaces/demo/services/echo", "")
		a.expectIstio("no entries", workloadEntries)
		a.expectIstio("no ServiceEntry", serviceEntries)
		a.expectIstio("network-b's gateway kept", gateways, wantGateway)
	})
	t.Run("gateway killed", func(t *testing.T) {
		killed := time.Now()
		pb.cmd.Process.Kill()
		a.expectIstio("network-b withdrawn", gateways)
		// The contract, not a timing threshold: not before the grace period.
		if d := time.Since(killed); d < grace {
			t.Errorf("network-b withdrawn %v after its gateway was killed, before the %v grace period", d, grace)
		}
	})
	if strings.Contains(pa.output(), "panic") {
		t.Errorf("A panicked:\n%s", pa.output())
	}
}

// The publisher's settings, from flags and from --config, and the
// refusals that name the flag and the key.
func TestPublishSettings(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(config, []byte("network: n\nfiles: [x]\npublishToIstio: true\npublishLocal: true\npublishLocalGateways: [ewgate.ewgate-system.svc:15443]\npublishGrace: 30s\npublishNamespace: mesh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := parseSettings([]string{"--config", config}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := publishSettings{PublishToIstio: true, PublishNamespace: "mesh", PublishLocal: true,
		PublishLocalGateways: []string{"ewgate.ewgate-system.svc:15443"}, PublishGrace: duration(30 * time.Second)}
	if !reflect.DeepEqual(s.publishSettings, want) {
		t.Errorf("from --config: %+v, want %+v", s.publishSettings, want)
	}
	s, err = parseSettings([]string{"--network", "n", "-f", "x"}, io.Discard)
	if err != nil || s.PublishToIstio || s.PublishGrace != duration(istiopub.DefaultGrace) {
		t.Errorf("defaults: %+v, %v", s.publishSettings, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--publish-grace", "-1s"}, "--publish-grace (publishGrace) -1s: want 0 or more"},
		{[]string{"--publish-local-gateways", "a:1"}, "--publish-local-gateways (publishLocalGateways) without --publish-local"},
		{[]string{"--publish-local", "--publish-local-gateways", "nope"}, `--publish-local-gateways (publishLocalGateways) "nope"`},
	} {
		_, err := parseSettings(append([]string{"--network", "n", "-f", "x"}, tc.args...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	s.PublishToIstio = true
	if _, err := newPublisher(s, nil, nil); err == nil || !strings.Contains(err.Error(), "needs gossip") {
		t.Errorf("without gossip: %v", err)
	}
}
