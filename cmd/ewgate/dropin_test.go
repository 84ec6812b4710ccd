package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
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

// "ewgate run" on the directory of Istio's multi-network install starts
// and serves both of its files: expose-services' 15443 (a sidecar's mTLS
// by Istio SNI) and expose-istiod's PASSTHROUGH 15012 and 15017 (a
// remote cluster's TLS to istiod by plain SNI, routed by the
// VirtualService to istiod's Service, never terminated), next to an
// unrelated ingress Gateway and an address-less WorkloadEntry.
func TestRunIstioMulticlusterDirectory(t *testing.T) {
	// The directory as published, but with this network's endpoint at a
	// real echo server, and istiod's Service (which the directory
	// expects the cluster to have) at two TLS servers standing in for
	// istiod's xDS and webhook ports.
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
	xds, webhook := newTLSStandIn(t, loopbackListener(t), "istiod.istio-system.svc", "xds"), newTLSStandIn(t, loopbackListener(t), "istiod.istio-system.svc", "webhook")
	_, xdsPort, _ := net.SplitHostPort(xds.addr)
	_, webhookPort, _ := net.SplitHostPort(webhook.addr)
	// istiod has no sidecar: its endpoints carry no tlsMode label.
	w.writeFile("istiod.yaml", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: istiod, namespace: istio-system}
spec:
  hosts: [istiod.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 15012, name: https-dns, protocol: TLS}
  - {number: 443, name: https-webhook, protocol: TLS, targetPort: 15017}
  endpoints:
  - {address: 127.0.0.1, ports: {https-dns: `+xdsPort+`, https-webhook: `+webhookPort+`}}
`)
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
	// A remote cluster's TLS to istiod through 15012 and 15017 reaches the
	// stand-in for each port, whose certificate the client verifies: the
	// gateway passed the handshake through.
	for _, tc := range []struct {
		port string
		want *tlsStandIn
	}{{"15012", xds}, {"15017", webhook}} {
		if got := tc.want.roundTrip(t, net.JoinHostPort(bind, tc.port)); got != tc.want.name {
			t.Errorf("port %s reached %q, want %q\n%s", tc.port, got, tc.want.name, p.output())
		}
	}
	out := p.output()
	for _, want := range []string{
		`WorkloadEntry demo/echo-elsewhere" field=spec.address`,
		`Gateway istio-system/bookinfo-gateway"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The directory's VirtualService routes only to istiod: nothing of it
	// is left out.
	if strings.Contains(out, "VirtualService rule not served") {
		t.Errorf("rules reported as not served:\n%s", out)
	}
	if strings.Contains(out, "level=ERROR") {
		t.Errorf("errors logged:\n%s", out)
	}
}

// tlsStandIn is a TLS server with a certificate for one DNS name that
// answers each connection with its name, for passthrough tests: a client
// that verifies the certificate knows its TLS reached this server.
type tlsStandIn struct {
	name string
	addr string
	pool *x509.CertPool
}

// loopbackListener listens on a free port of 127.0.0.1.
func loopbackListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// newTLSStandIn serves TLS on ln as the stand-in called name.
func newTLSStandIn(t *testing.T, raw net.Listener, dnsName, name string) *tlsStandIn {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{dnsName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	s := &tlsStandIn{name: name, pool: x509.NewCertPool()}
	s.pool.AddCert(leaf)
	ln := tls.NewListener(raw, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}}})
	t.Cleanup(func() { ln.Close() })
	s.addr = ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				var b [5]byte
				if _, err := io.ReadFull(c, b[:]); err == nil && string(b[:]) == "hello" {
					c.Write([]byte(name))
				}
			}()
		}
	}()
	return s
}

// roundTrip connects to addr with the stand-in's server name, verifies its
// certificate, and returns what the server answered ("" on failure,
// logged).
func (s *tlsStandIn) roundTrip(t *testing.T, addr string) string {
	t.Helper()
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{ServerName: "istiod.istio-system.svc", RootCAs: s.pool}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Logf("TLS to %s: %v", addr, err)
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Logf("write to %s: %v", addr, err)
		return ""
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Logf("read from %s: %v", addr, err)
	}
	return string(b)
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
	// The status port turns 503 before the line is logged.
	await.True(t, 10*time.Second, "drain delay log", func() bool {
		return strings.Contains(p.output(), "not ready; listeners close after the drain delay")
	})
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
