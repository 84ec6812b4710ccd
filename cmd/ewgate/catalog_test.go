package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/gateway"
	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/ewgate/ewgate/sni"
	"github.com/ewgate/ewgate/tunnel"
	"github.com/ewgate/ewgate/workload"
)

// secretHost is a service network-b defines but does not export.
const secretHost = "secret.demo.svc.cluster.local"

// exportedEcho is workload.IstioConfig with the echo ServiceEntry labelled
// ewgate.io/export: "true".
func exportedEcho(network string, port int, e *workload.EchoServer) string {
	return strings.Replace(workload.IstioConfig(network, port, e),
		"metadata: {name: echo, namespace: demo}\nspec:\n  hosts:", "metadata: {name: echo, namespace: demo, labels: {ewgate.io/export: \"true\"}}\nspec:\n  hosts:", 1)
}

// gatewayOnly is the east-west Gateway of workload.IstioConfig without
// any service: a network that defines nothing itself.
func gatewayOnly(port int) string {
	cfg := workload.IstioConfig("unused", port)
	return cfg[:strings.Index(cfg, "---\n")]
}

// secretEntry is a ServiceEntry for secretHost without an export label,
// served by e.
func secretEntry(network string, e *workload.EchoServer) string {
	host, port, _ := net.SplitHostPort(e.Addr())
	return fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secret, namespace: demo}
spec:
  hosts: [%s]
  ports: [{number: 9080, name: tcp-echo, protocol: TCP}]
  endpoints:
  - {address: %s, ports: {tcp-echo: %s}, network: %s, serviceAccount: echo-secret, labels: {app: secret, security.istio.io/tlsMode: istio}}
`, secretHost, host, port, network)
}

// flagValue returns the value following flag name in args.
func flagValue(t *testing.T, args []string, name string) string {
	t.Helper()
	i := slices.Index(args, name)
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("no %s in %q", name, args)
	}
	return args[i+1]
}

// fetchDebugConfig reads a gateway's /debug/config.
func fetchDebugConfig(t *testing.T, admin string) *gateway.DebugConfig {
	t.Helper()
	code, body, err := httpGet("http://" + admin + "/debug/config")
	if err != nil || code != 200 {
		t.Fatalf("/debug/config: %d, %v", code, err)
	}
	var d gateway.DebugConfig
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatalf("/debug/config: %v\n%s", err, body)
	}
	return &d
}

func debugService(d *gateway.DebugConfig, host string) *gateway.DebugService {
	for i := range d.Services {
		if d.Services[i].Host == host {
			return &d.Services[i]
		}
	}
	return nil
}

// dialKey connects a client of w's mesh to the gateway at addr for key.
func dialKey(w *world, addr string, key sni.Key) (*workload.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := workload.Client{Source: w.source("sleep")}
	return cl.Dial(ctx, addr, key)
}

// Three networks, and only network-b defines the service: network-a and
// network-c reach it through their own gateways and a tunnel (local mode)
// and straight at network-b's gateway (remote mode), from gossip alone.
// network-b exports only what opts in (--export-default none): a service
// it does not export never leaves it, and a definition network-b removes
// leaves the other networks.
func TestRunCatalogOnlyOneNetworkDefines(t *testing.T) {
	leakcheck.Check(t)
	wa := newWorld(t)
	wa.writeFile("mesh.yaml", gatewayOnly(wa.port))
	wb := newWorldCA(t, wa.ca, "network-b", "v1", "secret")
	wb.writeFile("mesh.yaml", exportedEcho("network-b", wb.port, wb.echoes["v1"])+secretEntry("network-b", wb.echoes["secret"]))
	wc := newWorldCA(t, wa.ca, "network-c")
	wc.writeFile("mesh.yaml", gatewayOnly(wc.port))
	key := gossipKeyFile(t)
	gossipA := loopbackAddr(t)
	sockA := filepath.Join(t.TempDir(), "a.sock")
	wa.run(append(tunnelArgs(t, wa, key, "a", gossipA), "--api-socket", sockA)...)
	argsB := tunnelArgs(t, wb, key, "b", loopbackAddr(t), gossipA)
	wb.run(append(argsB, "--export-default", "none")...)
	wc.run(tunnelArgs(t, wc, key, "c", loopbackAddr(t), gossipA)...)

	echo := sni.Key{Host: workload.EchoHost, Port: workload.EchoPort, Subset: "v1"}
	for _, w := range []*world{wa, wc} {
		await.True(t, 30*time.Second, w.network+" to learn network-b's definition", func() bool {
			return debugService(fetchDebugConfig(t, w.admin), workload.EchoHost) != nil
		})
		for mode, addr := range map[string]string{"local": w.gwAddr(), "remote": wb.gwAddr()} {
			var c *workload.Conn
			await.True(t, 30*time.Second, w.network+" to reach network-b in "+mode+" mode", func() bool {
				var err error
				c, err = dialKey(w, addr, echo)
				return err == nil
			})
			if c.Server != "echo-v1" || c.SeenAs != "spiffe://cluster.local/ns/demo/sa/sleep" {
				t.Errorf("%s, %s mode: reached %s seen as %s", w.network, mode, c.Server, c.SeenAs)
			}
			// The identity gossip announces is the one the client verified.
			if svc := debugService(fetchDebugConfig(t, w.admin), workload.EchoHost); !slices.Equal(svc.RemoteServiceAccounts, []string{c.ServerID}) {
				t.Errorf("%s: service accounts from gossip %q, the endpoint presented %s", w.network, svc.RemoteServiceAccounts, c.ServerID)
			}
			if err := c.Exchange(1 << 20); err != nil {
				t.Errorf("%s, %s mode: %v", w.network, mode, err)
			}
			c.Close()
		}
		if got := metric(t, w.admin, "ewgate_tunnel_streams_total"); got < 1 {
			t.Errorf("%s: ewgate_tunnel_streams_total = %d after local mode", w.network, got)
		}
		svc := debugService(fetchDebugConfig(t, w.admin), workload.EchoHost)
		want := discovery.Origin{Network: "network-b", Gateway: "b"}
		if svc.From != want.String() || len(svc.Ports) != 1 || svc.Ports[0].From != want || svc.Ports[0].Name != "tcp-echo" ||
			len(svc.Subsets) != 2 || svc.Subsets[0].From != want {
			t.Errorf("%s: /debug/config service %+v, want every part from %s", w.network, svc, want)
		}
		if got := metric(t, w.admin, "ewgate_catalog_remote_services"); got != 1 {
			t.Errorf("%s: ewgate_catalog_remote_services = %d, want 1", w.network, got)
		}
	}
	if got := metric(t, wb.admin, "ewgate_catalog_remote_services"); got != 0 {
		t.Errorf("network-b: ewgate_catalog_remote_services = %d, want 0", got)
	}

	// network-a's Resolve answers for a service it does not define.
	out, err := runEwgate(t, "ctl", "--api", sockA, "resolve", echo.SNI())
	if err != nil || !hasRow(out, "gateway", wb.gwAddr(), "1", "network-b") {
		t.Fatalf("ctl resolve at network-a: %v\n%s", err, out)
	}

	// The service network-b does not export is not in its summary: the
	// other networks refuse it without opening a tunnel stream.
	secret := sni.Key{Host: secretHost, Port: 9080}
	for _, w := range []*world{wa, wc} {
		streams := metric(t, w.admin, "ewgate_tunnel_streams_total")
		refused := metric(t, w.admin, `ewgate_connections_rejected_total{reason="unknown_service"}`)
		if _, err := dialKey(w, w.gwAddr(), secret); err == nil || !strings.Contains(err.Error(), "unrecognized name") {
			t.Errorf("%s: unexported service: %v, want unrecognized name", w.network, err)
		}
		await.True(t, 5*time.Second, w.network+" to count the refusal", func() bool {
			return metric(t, w.admin, `ewgate_connections_rejected_total{reason="unknown_service"}`) == refused+1
		})
		if got := metric(t, w.admin, "ewgate_tunnel_streams_total"); got != streams {
			t.Errorf("%s: tunnel streams %d -> %d for a refused service", w.network, streams, got)
		}
		if svc := debugService(fetchDebugConfig(t, w.admin), secretHost); svc != nil {
			t.Errorf("%s lists the unexported service: %+v", w.network, svc)
		}
	}
	// In remote mode network-b's own gateway refuses it.
	if _, err := dialKey(wa, wb.gwAddr(), secret); err == nil || !strings.Contains(err.Error(), "unrecognized name") {
		t.Errorf("remote mode, unexported service: %v, want unrecognized name", err)
	}

	// A stream forged straight to network-b's tunnel port, by a valid
	// gateway identity (network-a's), is refused by network-b itself.
	forgeStream(t, wa, flagValue(t, argsB, "--tunnel-address"), secret)
	await.True(t, 5*time.Second, "network-b to count not_exported", func() bool {
		return metric(t, wb.admin, `ewgate_connections_rejected_total{reason="not_exported"}`) == 2
	})
	if n := wb.echoes["secret"].Accepted(); n != 0 {
		t.Errorf("the unexported service's endpoint accepted %d connections", n)
	}

	// network-b removes the definition: it leaves the other networks.
	wb.writeFile("mesh.yaml", gatewayOnly(wb.port))
	for _, w := range []*world{wa, wc} {
		await.True(t, 30*time.Second, w.network+" to drop the removed definition", func() bool {
			return debugService(fetchDebugConfig(t, w.admin), workload.EchoHost) == nil
		})
		if _, err := dialKey(w, w.gwAddr(), echo); err == nil || !strings.Contains(err.Error(), "unrecognized name") {
			t.Errorf("%s: removed service: %v, want unrecognized name", w.network, err)
		}
	}
}

// forgeStream opens a tunnel stream for key to the tunnel at addr with
// the identity of network-a's gateway and expects the unrecognized_name
// alert back.
func forgeStream(t *testing.T, wa *world, addr string, key sni.Key) {
	t.Helper()
	src, err := wa.ca.NewSource(spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/gw-a"), identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// It names itself as network-a's gateway, whose ID it presents.
	ep, err := tunnel.New("127.0.0.1:0", tunnel.Config{Source: src, Name: "a", Transport: tunnel.TransportQUIC})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := ep.Dial(ctx, addr, tunnel.Header{Key: key, ClientAddr: "127.0.0.1:1"})
	if err != nil {
		t.Fatalf("forged stream: %v", err)
	}
	defer st.Close()
	// No hello: the receiving gateway refuses on the header's key alone.
	st.CloseWrite()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(st)
	// A plaintext fatal alert record: unrecognized_name (112).
	if want := []byte{21, 3, 3, 0, 2, 2, 112}; !bytes.Equal(got, want) {
		t.Errorf("forged stream answered %x, want the unrecognized_name alert %x", got, want)
	}
}

// network-a and network-b define the service differently (port 9080's name
// and protocol, subset v2's labels): every gateway settles it the same
// way, network-a's definition first as the lowest network name, reports
// it, and still routes; network-c defines nothing.
func TestRunCatalogConflict(t *testing.T) {
	leakcheck.Check(t)
	wa := newWorld(t)
	wa.writeConfig() // the service, without endpoints in network-a
	wb := newWorldCA(t, wa.ca, "network-b", "v1")
	cfgB := workload.IstioConfig("network-b", wb.port, wb.echoes["v1"])
	cfgB = strings.Replace(cfgB, "{number: 9080, name: tcp-echo, protocol: TCP}", "{number: 9080, name: tcp-echo, protocol: HTTP}", 1)
	cfgB = strings.Replace(cfgB, "{name: v2, labels: {version: v2}}", "{name: v2, labels: {version: two}}", 1)
	wb.writeFile("mesh.yaml", cfgB)
	wc := newWorldCA(t, wa.ca, "network-c")
	wc.writeFile("mesh.yaml", gatewayOnly(wc.port))
	key := gossipKeyFile(t)
	gossipA := loopbackAddr(t)
	wa.run(tunnelArgs(t, wa, key, "a", gossipA)...)
	wb.run(tunnelArgs(t, wb, key, "b", loopbackAddr(t), gossipA)...)
	pc := wc.run(tunnelArgs(t, wc, key, "c", loopbackAddr(t), gossipA)...)

	a, b := discovery.Origin{Network: "network-a", Gateway: "a"}, discovery.Origin{Network: "network-b", Gateway: "b"}
	local := discovery.Origin{}
	tests := []struct {
		w          *world
		kept       discovery.Origin
		ignored    discovery.Origin
		keptProto  string
		keptLabels string
	}{
		{wa, local, b, "TCP", "version=v2"},
		{wb, local, a, "HTTP", "version=two"},
		{wc, a, b, "TCP", "version=v2"},
	}
	for _, tt := range tests {
		await.True(t, 30*time.Second, tt.w.network+" to report two conflicts", func() bool {
			return metric(t, tt.w.admin, "ewgate_catalog_conflicts") == 2
		})
		d := fetchDebugConfig(t, tt.w.admin)
		want := []discovery.Conflict{
			{Host: workload.EchoHost, Part: "port 9080", Kept: tt.kept, KeptValue: fmt.Sprintf(`name "tcp-echo" protocol %q`, tt.keptProto),
				Ignored: tt.ignored, IgnoredValue: fmt.Sprintf(`name "tcp-echo" protocol %q`, map[string]string{"TCP": "HTTP", "HTTP": "TCP"}[tt.keptProto])},
			{Host: workload.EchoHost, Part: "subset v2", Kept: tt.kept, KeptValue: tt.keptLabels,
				Ignored: tt.ignored, IgnoredValue: map[string]string{"version=v2": "version=two", "version=two": "version=v2"}[tt.keptLabels]},
		}
		if !slices.Equal(d.Conflicts, want) {
			t.Errorf("%s: conflicts\n got %+v\nwant %+v", tt.w.network, d.Conflicts, want)
		}
		svc := debugService(d, workload.EchoHost)
		if svc == nil || svc.Ports[0].Protocol != tt.keptProto || svc.Ports[0].From != tt.kept {
			t.Errorf("%s: merged service %+v, want port 9080 %s from %s", tt.w.network, svc, tt.keptProto, tt.kept)
		}
	}
	// The conflict is settled, not fatal: network-c reaches network-b's
	// endpoint, which only network-b has.
	await.True(t, 30*time.Second, "network-c to reach network-b in local mode", func() bool {
		c, err := wc.dial("v1")
		if err != nil {
			return false
		}
		defer c.Close()
		return c.Server == "echo-v1" && c.Exchange(64<<10) == nil
	})
	if !strings.Contains(pc.output(), `msg="catalog: networks define a service differently`) {
		t.Error("network-c did not log the conflict")
	}

	// network-b agrees again: the conflicts go, everywhere.
	wb.writeFile("mesh.yaml", workload.IstioConfig("network-b", wb.port, wb.echoes["v1"]))
	for _, w := range []*world{wa, wb, wc} {
		await.True(t, 30*time.Second, w.network+" to clear its conflicts", func() bool {
			return metric(t, w.admin, "ewgate_catalog_conflicts") == 0
		})
	}
}
