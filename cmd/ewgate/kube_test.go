package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/kubetest"
	"github.com/ewgate/ewgate/internal/netnstest"
	"github.com/ewgate/ewgate/sni"
	"github.com/ewgate/ewgate/workload"
)

// cluster is a real kube-apiserver with pods whose servers listen inside a
// network namespace, and an ewgate process reading the API server. Its
// world holds the CA, network and the gateway's ports (its config
// directory stays empty: the cluster is the only source).
type cluster struct {
	*world
	srv  *kubetest.Server
	ns   *netnstest.Namespace
	pods map[string]string // pod name -> its address, inside ns
}

const kubeMesh = `
apiVersion: v1
kind: Namespace
metadata: {name: istio-system, labels: {topology.istio.io/network: %s}}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: echo, namespace: demo}
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-1, topology.istio.io/subzone: rack-7}
---
%s---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: istio-system}
spec:
  # Another proxy's Gateway, with a mode ewgate does not serve: ignored.
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: x}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: demo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`

func newCluster(t *testing.T) *cluster {
	ca, err := identity.NewDevCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	return newClusterCA(t, ca, "network-a")
}

// newClusterCA is newCluster in network, with a CA shared by several
// clusters of one trust domain.
func newClusterCA(t *testing.T, ca *identity.DevCA, network string) *cluster {
	c := &cluster{world: newWorldCA(t, ca, network), srv: kubetest.Start(t), ns: netnstest.New(t), pods: make(map[string]string)}
	c.srv.Create(t, "default", []byte(fmt.Sprintf(kubeMesh, network, workload.EastWestGateway(c.port))))
	return c
}

// pod starts an echo server named name on a new address inside the
// namespace and creates its ready pod, labelled version.
func (c *cluster) pod(name, version string) {
	c.t.Helper()
	addr := c.ns.Addr
	if len(c.pods) > 0 {
		addr = c.ns.AddAddr(c.t)
	}
	ln, err := c.ns.Listen("tcp", net.JoinHostPort(addr.String(), "9080"))
	if err != nil {
		c.t.Fatal(err)
	}
	e := workload.ServeEcho(name, ln, c.source("echo"), nil)
	c.t.Cleanup(func() { e.Close() })
	c.pods[name] = addr.String()
	c.srv.Create(c.t, "demo", []byte(fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: demo
  labels: {app: echo, version: %s, security.istio.io/tlsMode: istio}
spec:
  serviceAccountName: echo
  nodeName: node-a
  containers: [{name: echo, image: echo}]
`, name, version)))
	c.setPodReady(name, true)
}

// setPodReady sets the pod's IP and Ready condition through the status
// subresource, as the kubelet would.
func (c *cluster) setPodReady(name string, ready bool) {
	c.t.Helper()
	status := "False"
	if ready {
		status = "True"
	}
	c.do("PATCH", "/api/v1/namespaces/demo/pods/"+name+"/status", fmt.Sprintf(
		`{"status": {"phase": "Running", "podIP": %q, "podIPs": [{"ip": %q}], "conditions": [{"type": "Ready", "status": %q}]}}`,
		c.pods[name], c.pods[name], status))
}

// service creates a Service with one TLS port.
func (c *cluster) service(name string) {
	c.t.Helper()
	c.srv.Create(c.t, "demo", []byte(fmt.Sprintf(`
apiVersion: v1
kind: Service
metadata: {name: %s, namespace: demo}
spec:
  selector: {app: %s}
  ports: [{name: tls-echo, port: 9080, targetPort: 9080}]
`, name, name)))
}

// slice writes the EndpointSlice of service svc listing the pods, with
// their ready condition, as the EndpointSlice controller would.
func (c *cluster) slice(svc string, ready map[string]bool, create bool) {
	c.t.Helper()
	var eps []string
	for name, r := range ready {
		eps = append(eps, fmt.Sprintf(`{"addresses": [%q], "conditions": {"ready": %v}, "nodeName": "node-a", "targetRef": {"kind": "Pod", "namespace": "demo", "name": %q}}`, c.pods[name], r, name))
	}
	body := fmt.Sprintf(`{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
"metadata": {"name": "%s-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": %q}},
"addressType": "IPv4", "ports": [{"name": "tls-echo", "port": 9080, "protocol": "TCP"}], "endpoints": [%s]}`, svc, svc, strings.Join(eps, ","))
	if create {
		c.do("POST", "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices", body)
	} else {
		c.do("PUT", "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices/"+svc+"-1", body)
	}
}

func (c *cluster) do(method, path, body string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, out, err := c.srv.Do(ctx, method, path, []byte(body))
	if err != nil || code >= 300 {
		c.t.Fatalf("%s %s: %d %s %v", method, path, code, out, err)
	}
}

func (c *cluster) run(extra ...string) *proc {
	c.t.Helper()
	p := startEwgate(c.t, append([]string{"run", "--kubeconfig", c.srv.Kubeconfig, "--network", c.network,
		"--node-labels", "istio=eastwestgateway", "--bind-address", "127.0.0.1",
		"--admin-address", c.admin, "--log-level", "debug"}, extra...)...)
	await.True(c.t, 60*time.Second, "/readyz", func() bool {
		code, _, _ := httpGet("http://" + c.admin + "/readyz")
		return code == http.StatusOK
	})
	return p
}

// reach dials service host's (a Service name, or a FQDN) subset through the gateway and returns the
// name of the echo server that answered, or "" if the gateway refused.
func (c *cluster) reach(host, subset string) string {
	return c.reachVia(c.gwAddr(), host, subset)
}

// reachVia is reach through the gateway at gw.
func (c *cluster) reachVia(gw, host, subset string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := workload.Client{Source: c.source("sleep")}
	if !strings.Contains(host, ".") {
		host += ".demo.svc.cluster.local"
	}
	conn, err := cl.Dial(ctx, gw, sni.Key{Host: host, Port: 9080, Subset: subset})
	if err != nil {
		return ""
	}
	defer conn.Close()
	if conn.SeenAs != "spiffe://cluster.local/ns/demo/sa/sleep" {
		c.t.Errorf("%s saw the client as %s", conn.Server, conn.SeenAs)
	}
	return conn.Server
}

// reaches waits until host's subset routes to exactly the servers want
// (none: refused), sampling a few connections per check.
func (c *cluster) reaches(host, subset string, want ...string) {
	c.t.Helper()
	await.True(c.t, 30*time.Second, fmt.Sprintf("%s subset %q to reach %v", host, subset, want), func() bool {
		got := make(map[string]bool)
		for range 6 {
			got[c.reach(host, subset)] = true
		}
		if len(want) == 0 {
			return len(got) == 1 && got[""]
		}
		if got[""] || len(got) != len(want) {
			return false
		}
		for _, w := range want {
			if !got[w] {
				return false
			}
		}
		return true
	})
}

func readyz(admin string) (int, string) {
	code, body, _ := httpGet("http://" + admin + "/readyz")
	return code, body
}

func TestKubernetesSource(t *testing.T) {
	c := newCluster(t)
	c.pod("echo-v1", "v1")
	c.pod("echo-v2", "v2")
	c.service("echo")
	c.slice("echo", map[string]bool{"echo-v1": true, "echo-v2": true}, true)
	p := c.run()

	if _, body := readyz(c.admin); !strings.Contains(body, "kubernetes: synced") {
		t.Errorf("/readyz: %q", body)
	}
	c.reaches("echo", "v1", "echo-v1")
	c.reaches("echo", "v2", "echo-v2")
	c.reaches("echo", "", "echo-v1", "echo-v2")
	_, cfg, _ := httpGet("http://" + c.admin + "/debug/config")
	for _, want := range []string{`"locality": "eu/eu-1/rack-7"`, `"synced": true`} {
		if !strings.Contains(cfg, want) {
			t.Errorf("/debug/config lacks %s:\n%s", want, cfg)
		}
	}

	t.Run("a host both a file and the cluster define", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(`
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: demo}
spec:
  hosts: [echo.demo.svc.cluster.local]
  ports: [{number: 9080, name: tls-echo}]
`), 0o644)
		adminPort, err := testPorts.pick()
		if err != nil {
			t.Fatal(err)
		}
		admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
		p := startEwgate(t, "run", "-f", dir, "--kubeconfig", c.srv.Kubeconfig, "--network", "network-a",
			"--node-labels", "istio=eastwestgateway", "--bind-address", "127.0.0.1", "--admin-address", admin)
		want := `ServiceEntry demo/echo: spec.hosts: "echo.demo.svc.cluster.local" is already defined by kubernetes: Service demo/echo`
		await.True(t, 30*time.Second, "the conflict on /readyz", func() bool {
			code, body := readyz(admin)
			return code == http.StatusServiceUnavailable && strings.Contains(body, want)
		})
		// The log line can reach the pipe after /readyz turned.
		await.True(t, 30*time.Second, "the log to name both sources", func() bool {
			return strings.Contains(p.output(), `is already defined by kubernetes: Service demo/echo`)
		})
	})
	t.Run("not ready", func(t *testing.T) {
		c.setPodReady("echo-v1", false)
		c.slice("echo", map[string]bool{"echo-v1": false, "echo-v2": true}, false)
		c.reaches("echo", "v1")
		c.reaches("echo", "", "echo-v2")
		c.setPodReady("echo-v1", true)
		c.slice("echo", map[string]bool{"echo-v1": true, "echo-v2": true}, false)
		c.reaches("echo", "v1", "echo-v1")
	})
	t.Run("endpoint removed", func(t *testing.T) {
		c.slice("echo", map[string]bool{"echo-v1": true}, false)
		c.reaches("echo", "v2")
		c.reaches("echo", "", "echo-v1")
		c.slice("echo", map[string]bool{"echo-v1": true, "echo-v2": true}, false)
		c.reaches("echo", "v2", "echo-v2")
	})
	t.Run("label moves a pod between subsets", func(t *testing.T) {
		c.do("PATCH", "/api/v1/namespaces/demo/pods/echo-v2", `{"metadata": {"labels": {"version": "v1"}}}`)
		c.reaches("echo", "v1", "echo-v1", "echo-v2")
		c.reaches("echo", "v2")
		c.do("PATCH", "/api/v1/namespaces/demo/pods/echo-v2", `{"metadata": {"labels": {"version": "v2"}}}`)
		c.reaches("echo", "v2", "echo-v2")
	})
	t.Run("new service", func(t *testing.T) {
		c.pod("other-v1", "v1")
		start := time.Now()
		c.service("other")
		c.slice("other", map[string]bool{"other-v1": true}, true)
		c.reaches("other", "", "other-v1")
		// Indicative only: the poll's own cost is included. The benchmark
		// in docs/benchmarks.md is BenchmarkChangeToRoutable.
		t.Logf("new Service routable %v after its creation", time.Since(start).Round(time.Millisecond))
	})
	t.Run("ServiceEntry and WorkloadEntry", func(t *testing.T) {
		addr := c.ns.AddAddr(t)
		ln, err := c.ns.Listen("tcp", net.JoinHostPort(addr.String(), "9080"))
		if err != nil {
			t.Fatal(err)
		}
		e := workload.ServeEcho("vm-1", ln, c.source("vm"), nil)
		t.Cleanup(func() { e.Close() })
		c.srv.Create(t, "demo", []byte(fmt.Sprintf(`
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: demo}
spec:
  address: %s
  labels: {app: vm, security.istio.io/tlsMode: istio}
  serviceAccount: vm
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm, namespace: demo}
spec:
  hosts: [vm.demo.local]
  ports: [{number: 9080, name: tls, protocol: TLS}]
  workloadSelector: {labels: {app: vm}}
  location: MESH_INTERNAL
  resolution: STATIC
`, addr)))
		c.reaches("vm.demo.local", "", "vm-1")
	})
	t.Run("API server stopped", func(t *testing.T) {
		errs := metric(t, c.admin, `ewgate_source_watch_errors_total{source="kubernetes"}`)
		c.srv.Stop(t)
		await.True(t, 30*time.Second, "not synced on /readyz and the metric", func() bool {
			code, body := readyz(c.admin)
			return code == http.StatusOK && strings.Contains(body, "not synced") &&
				metric(t, c.admin, `ewgate_source_synced{source="kubernetes"}`) == 0
		})
		if got := metric(t, c.admin, `ewgate_source_watch_errors_total{source="kubernetes"}`); got <= errs {
			t.Errorf("watch errors %d, want more than %d", got, errs)
		}
		_, cfg, _ := httpGet("http://" + c.admin + "/debug/config")
		if !strings.Contains(cfg, `"synced": false`) {
			t.Errorf("/debug/config does not say not synced:\n%s", cfg)
		}
		// The last known catalog keeps routing.
		c.reaches("echo", "v1", "echo-v1")
		c.reaches("other", "", "other-v1")

		c.srv.Start(t)
		await.True(t, 90*time.Second, "synced again", func() bool {
			return metric(t, c.admin, `ewgate_source_synced{source="kubernetes"}`) == 1
		})
		c.do("DELETE", "/api/v1/namespaces/demo/services/other", "")
		c.reaches("other", "")
		c.reaches("echo", "v2", "echo-v2")
	})
	if strings.Contains(p.output(), "panic") {
		t.Errorf("ewgate panicked:\n%s", p.output())
	}
}

// Two clusters in two networks, one gateway each reading only its own
// API server, joined by gossip: a client in network-a reaches a Service
// only cluster B has, in remote mode (straight to B's gateway, which it
// learns from A through gossip) and in local mode (through A's own
// gateway and a tunnel to B's), and cluster A needs no definition of it.
func TestKubernetesTwoClusters(t *testing.T) {
	a := newCluster(t)
	b := newClusterCA(t, a.ca, "network-b")
	b.pod("echo-b", "v1")
	b.service("echo")
	b.slice("echo", map[string]bool{"echo-b": true}, true)
	key := gossipKeyFile(t)
	gossipA := loopbackAddr(t)
	sockA := filepath.Join(t.TempDir(), "a.sock")
	// Each gateway is given only its own cluster's kubeconfig (cluster.run
	// passes c.srv.Kubeconfig and nothing else names an API server): A
	// holds no credentials for B's API server, nor B for A's.
	pa := a.run(append(tunnelArgs(t, a.world, key, "a", gossipA), "--api-socket", sockA)...)
	b.run(tunnelArgs(t, b.world, key, "b", loopbackAddr(t), gossipA)...)
	for _, arg := range slices.Concat(pa.cmd.Args, pa.cmd.Env) {
		for _, secret := range []string{b.srv.Kubeconfig, b.srv.Host, b.srv.Token, b.srv.CAFile} {
			if strings.Contains(arg, secret) {
				t.Fatalf("network-a's gateway was given %q, which holds cluster B's API server or its credentials", arg)
			}
		}
	}

	// What A knows of network-b came by gossip.
	await.True(t, 30*time.Second, "network-b's Kubernetes Service in network-a's gossip catalog", func() bool {
		out, _ := runEwgate(t, "ctl", "--api", sockA, "catalog")
		return hasRow(out, "network-b", "echo.demo.svc.cluster.local", "9080", "v1")
	})
	_, members, _ := httpGet("http://" + a.admin + "/debug/members")
	if !strings.Contains(members, b.gwAddr()) {
		t.Fatalf("network-a's members lack network-b's gateway %s:\n%s", b.gwAddr(), members)
	}

	key9080 := sni.Key{Host: "echo.demo.svc.cluster.local", Port: 9080, Subset: "v1"}
	for mode, gw := range map[string]string{"remote": b.gwAddr(), "local": a.gwAddr()} {
		var conn *workload.Conn
		await.True(t, 30*time.Second, "network-a to reach cluster B's Service in "+mode+" mode", func() bool {
			var err error
			conn, err = dialKey(a.world, gw, key9080)
			return err == nil
		})
		if conn.Server != "echo-b" || conn.SeenAs != "spiffe://cluster.local/ns/demo/sa/sleep" {
			t.Errorf("%s mode: reached %s seen as %s", mode, conn.Server, conn.SeenAs)
		}
		// The pod's service account, read from cluster B's API server, is
		// the identity gossip announces and the one the client verified.
		if conn.ServerID != "spiffe://cluster.local/ns/demo/sa/echo" {
			t.Errorf("%s mode: the endpoint presented %s", mode, conn.ServerID)
		}
		if err := conn.Exchange(1 << 20); err != nil {
			t.Errorf("%s mode: %v", mode, err)
		}
		conn.Close()
	}
	if got := metric(t, a.admin, "ewgate_tunnel_streams_total"); got < 1 {
		t.Errorf("network-a: ewgate_tunnel_streams_total = %d after local mode", got)
	}
	svc := debugService(fetchDebugConfig(t, a.admin), "echo.demo.svc.cluster.local")
	if svc == nil || !slices.Equal(svc.RemoteServiceAccounts, []string{"spiffe://cluster.local/ns/demo/sa/echo"}) {
		t.Errorf("network-a's /debug/config for the remote Service: %+v", svc)
	}

	t.Run("an unreadable export label fails closed", func(t *testing.T) {
		b.do("PATCH", "/api/v1/namespaces/demo/services/echo", `{"metadata": {"labels": {"ewgate.io/export": "yes"}}}`)
		await.True(t, 30*time.Second, "cluster B's Service to leave network-a's catalog", func() bool {
			return debugService(fetchDebugConfig(t, a.admin), "echo.demo.svc.cluster.local") == nil
		})
		if _, err := dialKey(a.world, a.gwAddr(), key9080); err == nil || !strings.Contains(err.Error(), "unrecognized name") {
			t.Errorf("local mode to an unexported Service: %v, want unrecognized name", err)
		}
		// Remote mode is refused by B itself. B keeps the Service in its
		// catalog and says why it is not exported.
		if _, err := dialKey(a.world, b.gwAddr(), key9080); err == nil || !strings.Contains(err.Error(), "unrecognized name") {
			t.Errorf("remote mode to an unexported Service: %v, want unrecognized name", err)
		}
		if svc := debugService(fetchDebugConfig(t, b.admin), "echo.demo.svc.cluster.local"); svc == nil {
			t.Errorf("cluster B's /debug/config for its unexported Service: %+v", svc)
		}
		_, cfg, _ := httpGet("http://" + b.admin + "/debug/config")
		if want := `Service demo/echo: metadata.labels[ewgate.io/export]: \"yes\": want \"true\" or \"false\": not exported to other networks`; !strings.Contains(cfg, want) {
			t.Errorf("cluster B's /debug/config lacks %s:\n%s", want, cfg)
		}
		b.do("PATCH", "/api/v1/namespaces/demo/services/echo", `{"metadata": {"labels": {"ewgate.io/export": null}}}`)
		await.True(t, 30*time.Second, "network-a to reach cluster B's Service again in local mode", func() bool {
			conn, err := dialKey(a.world, a.gwAddr(), key9080)
			if err != nil {
				return false
			}
			conn.Close()
			return conn.Server == "echo-b"
		})
	})
}

// expose-istiod from the cluster: a PASSTHROUGH Gateway and its
// VirtualService in istio-system route a remote cluster's TLS, by the
// plain name istiod.istio-system.svc, to the istiod Service's ready
// endpoints (a pod without a sidecar), never terminated.
func TestKubernetesPassthroughToIstiod(t *testing.T) {
	c := newCluster(t)
	addr := c.ns.Addr.String()
	ln, err := c.ns.Listen("tcp", net.JoinHostPort(addr, "15012"))
	if err != nil {
		t.Fatal(err)
	}
	istiod := newTLSStandIn(t, ln, "istiod.istio-system.svc", "istiod-1")
	pass, err := testPorts.pick()
	if err != nil {
		t.Fatal(err)
	}
	c.srv.Create(t, "istio-system", []byte(fmt.Sprintf(`
apiVersion: v1
kind: ServiceAccount
metadata: {name: istiod, namespace: istio-system}
---
apiVersion: v1
kind: Pod
metadata: {name: istiod-1, namespace: istio-system, labels: {app: istiod}}
spec:
  serviceAccountName: istiod
  nodeName: node-a
  containers: [{name: discovery, image: istiod}]
---
apiVersion: v1
kind: Service
metadata: {name: istiod, namespace: istio-system}
spec:
  selector: {app: istiod}
  ports: [{name: https-dns, port: 15012, targetPort: 15012}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istiod-gateway, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - port: {name: tls-istiod, number: %d, protocol: tls}
    tls: {mode: PASSTHROUGH}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: istiod-vs, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [istiod-gateway]
  tls:
  - match: [{port: %d, sniHosts: ["*"]}]
    route: [{destination: {host: istiod.istio-system.svc.cluster.local, port: {number: 15012}}}]
`, pass, pass)))
	c.do("PATCH", "/api/v1/namespaces/istio-system/pods/istiod-1/status", fmt.Sprintf(
		`{"status": {"phase": "Running", "podIP": %q, "podIPs": [{"ip": %q}], "conditions": [{"type": "Ready", "status": "True"}]}}`, addr, addr))
	c.do("POST", "/apis/discovery.k8s.io/v1/namespaces/istio-system/endpointslices", fmt.Sprintf(`{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
"metadata": {"name": "istiod-1", "namespace": "istio-system", "labels": {"kubernetes.io/service-name": "istiod"}},
"addressType": "IPv4", "ports": [{"name": "https-dns", "port": 15012, "protocol": "TCP"}],
"endpoints": [{"addresses": [%q], "conditions": {"ready": true}, "nodeName": "node-a", "targetRef": {"kind": "Pod", "namespace": "istio-system", "name": "istiod-1"}}]}`, addr))
	p := c.run()
	through := net.JoinHostPort("127.0.0.1", fmt.Sprint(pass))
	await.True(t, 30*time.Second, "istiod reached through the PASSTHROUGH port", func() bool {
		return istiod.roundTrip(t, through) == "istiod-1"
	})
	if out := p.output(); strings.Contains(out, "VirtualService rule not served") {
		t.Errorf("rules reported as not served:\n%s", out)
	}
}
