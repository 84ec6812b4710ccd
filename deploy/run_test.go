package deploy_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ewgate/ewgate/internal/kubetest"
)

// TestNodeFileRunsWithTheServiceAccount runs the real ewgate binary with
// overlays/network-a/node/ewgate-0.yaml, as the pod does, against a real
// API server with nothing but a token of the ServiceAccount that rbac.yaml
// binds, and the Gateway of istio/ applied as a resource: the file's keys
// are accepted, the Kubernetes source syncs under that ClusterRole, and
// the gateway becomes ready with the Gateway's listener and the cluster's
// Services as routes. Only the addresses are changed (to a loopback
// address of the test's own, with free ports): the file's are the kind
// example's.
func TestNodeFileRunsWithTheServiceAccount(t *testing.T) {
	s := kube.Get(t)
	applyRBAC(t, s)
	s.Ensure(t, "", []byte(`apiVersion: v1
kind: Namespace
metadata:
  name: istio-system
  labels: {topology.istio.io/network: network-a}
---
apiVersion: v1
kind: Namespace
metadata: {name: run-test}
---
apiVersion: v1
kind: Service
metadata: {name: helloworld, namespace: run-test}
spec:
  ports: [{name: http, port: 5000}]
`))
	s.Ensure(t, "", read(t, "istio/cross-network-gateway.yaml"))

	dir := t.TempDir()
	bin := filepath.Join(dir, "ewgate")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/ewgate").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/ewgate: %v\n%s", err, out)
	}
	kubeconfig := serviceAccountKubeconfig(t, s, dir)
	for _, args := range [][]string{
		{"ca", "init", "--trust-domain", "cluster.local", "--out", filepath.Join(dir, "ca")},
		{"ca", "issue", "--ca", filepath.Join(dir, "ca"), "--spiffe-id", "spiffe://cluster.local/ns/ewgate-system/sa/ewgate", "--out", filepath.Join(dir, "svid")},
	} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("ewgate %v: %v\n%s", args, err, out)
		}
	}
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(filepath.Join(dir, "gossip.key"), []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	var node map[string]any
	if err := yaml.Unmarshal(read(t, "overlays/network-a/node/ewgate-0.yaml"), &node); err != nil {
		t.Fatal(err)
	}
	ip := loopbackIP(t)
	admin, gossip, tunnel := freePort(t, ip), freePort(t, ip), freePort(t, ip)
	for k, v := range map[string]any{
		"bindAddress":          ip,
		"adminAddress":         admin,
		"gossipAddress":        gossip,
		"gossipAdvertise":      gossip,
		"join":                 []string{},
		"gossipKeyFile":        filepath.Join(dir, "gossip.key"),
		"passthroughAdvertise": net.JoinHostPort(ip, "15443"),
		"tunnelAddress":        tunnel,
		"tunnelAdvertise":      tunnel,
		"apiSocket":            filepath.Join(dir, "api.sock"),
	} {
		if _, ok := node[k]; !ok {
			t.Fatalf("node file has no %s: update this test", k)
		}
		node[k] = v
	}
	b, _ := yaml.Marshal(node)
	if err := os.WriteFile(filepath.Join(dir, "node.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}

	// The StatefulSet's arguments, and the kubeconfig standing in for the
	// pod's in-cluster credentials (the same token, the same RBAC).
	var sts statefulSet
	unmarshal(t, "base/statefulset.yaml", &sts)
	var args []string
	for _, a := range sts.Spec.Template.Spec.Containers[0].Args {
		a = strings.Replace(a, "/etc/ewgate/node/$(POD_NAME).yaml", filepath.Join(dir, "node.yaml"), 1)
		a = strings.Replace(a, "/etc/ewgate/svid/", filepath.Join(dir, "svid")+"/", 1)
		args = append(args, a)
		if a == "run" {
			args = append(args, "--kubeconfig", kubeconfig)
		}
	}
	cmd := exec.Command(bin, args...)
	logPath := filepath.Join(dir, "ewgate.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("ewgate %v:\n%s", args, b)
		}
	}()

	get := func(path string) (int, string) {
		c := http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + admin + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, body := get("/readyz")
		if code == http.StatusOK {
			break
		}
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("ewgate exited before it was ready: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 60s: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}

	_, body := get("/debug/config")
	var cfg struct {
		Listeners []struct {
			Port    int
			Gateway string
			Mode    string
		}
		Routes []struct{ SNI string }
	}
	if err := json.Unmarshal([]byte(body), &cfg); err != nil {
		t.Fatalf("/debug/config: %v: %s", err, body)
	}
	if len(cfg.Listeners) != 1 || cfg.Listeners[0].Port != 15443 || cfg.Listeners[0].Mode != "AUTO_PASSTHROUGH" ||
		!strings.Contains(cfg.Listeners[0].Gateway, "istio-system/cross-network-gateway") {
		t.Errorf("listeners %+v, want 15443 AUTO_PASSTHROUGH from istio-system/cross-network-gateway", cfg.Listeners)
	}
	found := false
	for _, r := range cfg.Routes {
		found = found || r.SNI == "outbound_.5000_._.helloworld.run-test.svc.cluster.local"
	}
	if !found {
		t.Errorf("no route for the Service helloworld.run-test: %+v", cfg.Routes)
	}

	// The probes' status port, on the node's bindAddress by default.
	status := "http://" + net.JoinHostPort(ip, "15021") + "/healthz/ready"
	statusCode := func() int {
		c := http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get(status)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := statusCode(); code != http.StatusOK {
		t.Errorf("%s: %d, want 200", status, code)
	}

	// SIGTERM, as the kubelet sends after preStop: not ready first, while
	// the listener still accepts for drainDelay, then a clean drain and
	// exit.
	cmd.Process.Signal(syscall.SIGTERM)
	deadline = time.Now().Add(30 * time.Second)
	for statusCode() != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("status port still ready 30s after SIGTERM")
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	if c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "15443"), 5*time.Second); err != nil {
		t.Errorf("15443 refused during the drain delay: %v", err)
	} else {
		c.Close()
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Error("still running 60s after SIGTERM")
	}
}

// serviceAccountKubeconfig writes a kubeconfig for s with a fresh token of
// the gateway's ServiceAccount (TokenRequest, as the kubelet gets it for
// the pod) and returns its path.
func serviceAccountKubeconfig(t *testing.T, s *kubetest.Server, dir string) string {
	t.Helper()
	code, resp, err := s.Do(context.Background(), http.MethodPost,
		fmt.Sprintf("/api/v1/namespaces/%s/serviceaccounts/%s/token", saNamespace, saName),
		[]byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}`))
	if err != nil || code != http.StatusCreated {
		t.Fatalf("TokenRequest: HTTP %d, %v: %s", code, err, resp)
	}
	var tr struct{ Status struct{ Token string } }
	if err := json.Unmarshal(resp, &tr); err != nil || tr.Status.Token == "" {
		t.Fatalf("TokenRequest: %v: %s", err, resp)
	}
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	kc := map[string]any{
		"apiVersion":      "v1",
		"kind":            "Config",
		"clusters":        []any{map[string]any{"name": "c", "cluster": map[string]any{"server": s.Host, "certificate-authority-data": ca}}},
		"users":           []any{map[string]any{"name": "ewgate", "user": map[string]any{"token": tr.Status.Token}}},
		"contexts":        []any{map[string]any{"name": "c", "context": map[string]any{"cluster": "c", "user": "ewgate"}}},
		"current-context": "c",
	}
	b, _ := json.Marshal(kc)
	path := filepath.Join(dir, "serviceaccount.kubeconfig")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// loopbackIP returns a random address of 127.0.0.0/8 (all of it is
// loopback on Linux), so that the gateway's fixed listener port 15443 does
// not meet another test's.
func loopbackIP(t *testing.T) string {
	t.Helper()
	var b [3]byte
	for i := range b {
		n, err := rand.Int(rand.Reader, big.NewInt(253))
		if err != nil {
			t.Fatal(err)
		}
		b[i] = byte(n.Int64() + 1)
	}
	return fmt.Sprintf("127.%d.%d.%d", b[0], b[1], b[2])
}

// freePort returns ip:port with a port that is free now, for TCP and UDP.
func freePort(t *testing.T, ip string) string {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return ""
}
