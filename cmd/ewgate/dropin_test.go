package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/sni"
	"github.com/ewgate/ewgate/workload"
)

// istioDir is Istio's multi-network install as published, with an ingress
// gateway's config and an address-less WorkloadEntry next to it.
const istioDir = "../../discovery/testdata/istio-multicluster"

// randomLoopback returns a 127.x.y.z address, so that a test binding
// Istio's fixed ports (15443) does not collide with other processes on
// 127.0.0.1.
func randomLoopback() string {
	return fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(256), 1+rand.IntN(250))
}

// "ewgate run" on the directory of Istio's multi-network install starts,
// serves expose-services' 15443 and warns about expose-istiod's
// PASSTHROUGH servers instead of refusing them.
func TestRunIstioMulticlusterDirectory(t *testing.T) {
	// The directory as published, but with this network's endpoint at a
	// real echo server.
	w := newWorld(t, "v1")
	host, port, _ := net.SplitHostPort(w.echoes["v1"].Addr())
	files, err := filepath.Glob(filepath.Join(istioDir, "*.yaml"))
	if err != nil || len(files) < 4 {
		t.Fatalf("testdata: %v %v", files, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		y := strings.Replace(string(b), "address: 10.0.0.1", "address: "+host+"\n  ports: {tls: "+port+"}", 1)
		w.writeFile(filepath.Base(f), y)
	}
	bind := randomLoopback()
	p := startEwgate(t, "run", "-f", w.dir, "--network", "network-a", "--node-labels", "istio=eastwestgateway",
		"--bind-address", bind, "--admin-address", w.admin, "--log-level", "debug", "--endpoint-allow-loopback")
	await.True(t, 30*time.Second, "/readyz", func() bool {
		code, _, _ := httpGet("http://" + w.admin + "/readyz")
		return code == 200
	})
	// A sidecar's mTLS through 15443 by Istio SNI reaches the endpoint
	// untouched.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := workload.Client{Source: w.source("sleep")}
	c, err := cl.Dial(ctx, net.JoinHostPort(bind, "15443"), sni.Key{Host: "echo.demo.svc.cluster.local", Port: 9080})
	if err != nil {
		t.Fatalf("through 15443: %v\n%s", err, p.output())
	}
	if c.Server != "echo-v1" || c.SeenAs != "spiffe://cluster.local/ns/demo/sa/sleep" {
		t.Errorf("reached %s seen as %s", c.Server, c.SeenAs)
	}
	if err := c.Exchange(1 << 20); err != nil {
		t.Error(err)
	}
	c.Close()
	for _, port := range []string{"15012", "15017"} {
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(bind, port), 5*time.Second); err == nil {
			c.Close()
			t.Errorf("PASSTHROUGH port %s is served", port)
		}
	}
	out := p.output()
	for _, want := range []string{
		`msg="config: PASSTHROUGH server not served`,
		`Gateway default/istiod-gateway" field=spec.servers[0] port=15012`,
		`Gateway default/istiod-gateway" field=spec.servers[1] port=15017`,
		`WorkloadEntry demo/echo-elsewhere" field=spec.address`,
		`Gateway istio-system/bookinfo-gateway"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// statusGet returns the status code of a GET on the status port.
func statusGet(addr, path string) int {
	code, _, err := httpGet("http://" + addr + path)
	if err != nil {
		return 0
	}
	return code
}

// The status port answers /healthz/ready like Istio's gateway: 200 when
// ready, 503 from the start of a drain while the listeners still accept,
// and nothing but readiness. A second gateway on the same status address
// fails to start with an error naming the flag.
func TestRunStatusPort(t *testing.T) {
	bind := randomLoopback()
	status := net.JoinHostPort(bind, "15021")
	p := startEwgate(t, "run", "-f", istioDir, "--network", "network-a", "--node-labels", "istio=eastwestgateway",
		"--bind-address", bind, "--admin-address", "", "--status-address", status, "--drain-delay", "10m")
	await.True(t, 30*time.Second, "status ready", func() bool { return statusGet(status, "/healthz/ready") == 200 })
	for _, path := range []string{"/readyz", "/metrics", "/debug/config"} {
		if code := statusGet(status, path); code != 404 {
			t.Errorf("status port serves %s: %d, want 404", path, code)
		}
	}

	out, err := runEwgate(t, "run", "-f", istioDir, "--network", "network-a", "--node-labels", "istio=eastwestgateway",
		"--bind-address", randomLoopback(), "--admin-address", "", "--status-address", status)
	if err == nil || !strings.Contains(out, "--status-address "+status) || !strings.Contains(out, "address already in use") {
		t.Errorf("second gateway on %s: err=%v, output:\n%s", status, err, out)
	}

	p.cmd.Process.Signal(syscall.SIGTERM)
	await.True(t, 30*time.Second, "status not ready after SIGTERM", func() bool { return statusGet(status, "/healthz/ready") == 503 })
	// Still within the drain delay: new connections are accepted.
	c, err := net.DialTimeout("tcp", net.JoinHostPort(bind, "15443"), 5*time.Second)
	if err != nil {
		t.Fatalf("listener closed while the drain delay runs: %v", err)
	}
	c.Close()
	if !strings.Contains(p.output(), "not ready; listeners close after the drain delay") {
		t.Errorf("no drain delay log:\n%s", p.output())
	}
}

// Before the first config, here a Kubernetes source whose API server does
// not answer, the status port is up and says 503.
func TestRunStatusNotReadyBeforeFirstSync(t *testing.T) {
	dead := loopbackAddr(t) // nothing listens there
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://`+dead+`", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600)
	bind := randomLoopback()
	status := net.JoinHostPort(bind, "15021")
	p := startEwgate(t, "run", "--kubeconfig", kubeconfig, "--network", "network-a", "--node-labels", "istio=eastwestgateway",
		"--bind-address", bind, "--admin-address", "", "--status-address", status)
	await.True(t, 30*time.Second, "status answers", func() bool { return statusGet(status, "/healthz/ready") != 0 })
	if code := statusGet(status, "/healthz/ready"); code != 503 {
		t.Fatalf("/healthz/ready before the first sync: %d, want 503\n%s", code, p.output())
	}
	if code := statusGet(status, "/healthz"); code != 200 {
		t.Errorf("/healthz: %d, want 200", code)
	}
}
