package main

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"github.com/ewgate/ewgate/internal/await"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/identity"
)

// svidFiles issues an SVID for sa and writes cert.pem, key.pem and
// bundle.pem for command-line clients into a new directory.
func (w *world) svidFiles(sa string) string {
	w.t.Helper()
	svid, err := w.ca.Issue(spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/"+sa), identity.IssueOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	dir := filepath.Join(w.t.TempDir(), sa)
	if err := identity.WriteSVIDFiles(dir, svid, w.ca.Bundle()); err != nil {
		w.t.Fatal(err)
	}
	return dir
}

func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s is not installed (.ci/run installs it)", name)
	}
}

func TestOpenSSLClient(t *testing.T) {
	needTool(t, "openssl")
	w := newWorld(t, "v1", "v2")
	w.writeConfig("v1", "v2")
	w.run()
	certs := w.svidFiles("openssl")
	sniName := "outbound_.9080_.v2_.echo.demo.svc.cluster.local"
	cmd := exec.Command("openssl", "s_client", "-connect", w.gwAddr(), "-servername", sniName, "-alpn", "istio",
		"-cert", filepath.Join(certs, "cert.pem"), "-key", filepath.Join(certs, "key.pem"),
		"-CAfile", filepath.Join(certs, "bundle.pem"), "-verify_return_error", "-quiet", "-no_ign_eof")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	io.WriteString(stdin, "hello from openssl\n")
	await.True(t, 20*time.Second, "openssl to see the echo", func() bool {
		return strings.Contains(out.String(), "hello from openssl")
	})
	stdin.Close()
	cmd.Wait()
	if want := "echo-v2 spiffe://cluster.local/ns/demo/sa/openssl"; !strings.Contains(out.String(), want) {
		t.Fatalf("openssl output lacks %q:\n%s", want, out.String())
	}
}

func TestCurlClient(t *testing.T) {
	needTool(t, "curl")
	w := newWorld(t)
	web := w.source("web")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		TLSConfig: identity.ServerTLSConfig(web, nil),
		Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			id, _ := identity.PeerID(*r.TLS)
			fmt.Fprintf(rw, "web saw %s over %s\n", id, r.TLS.NegotiatedProtocol)
		}),
	}
	srv.TLSConfig.NextProtos = []string{"http/1.1"}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	_, webPort, _ := net.SplitHostPort(ln.Addr().String())
	w.writeFile("web.yaml", fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  servers:
  - port: {number: %d, name: tls, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: ["*.local"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: demo}
spec:
  hosts: [web.demo.svc.cluster.local]
  ports: [{number: 8443, name: https}]
  endpoints:
  - {address: 127.0.0.1, ports: {https: %s}, labels: {security.istio.io/tlsMode: istio}}
`, w.port, webPort))
	// curl cannot offer the istio ALPN, so this gateway also accepts
	// http/1.1 — an operator's explicit choice.
	w.run("--alpn", "istio,http/1.1")

	// The SPIFFE server certificate has no DNS name for curl to check, so
	// curl pins the web server's key instead: the TLS session must reach
	// the web server itself, not the gateway.
	certs := w.svidFiles("curl")
	webPin := pinOf(t, web)
	host := "outbound_.8443_._.web.demo.svc.cluster.local"
	out, err := exec.Command("curl", "-sS", "--http1.1", "--max-time", "20", "-k", "--pinnedpubkey", webPin,
		"--cert", filepath.Join(certs, "cert.pem"), "--key", filepath.Join(certs, "key.pem"),
		"--resolve", fmt.Sprintf("%s:%d:127.0.0.1", host, w.port),
		fmt.Sprintf("https://%s:%d/", host, w.port)).CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	if want := "web saw spiffe://cluster.local/ns/demo/sa/curl over http/1.1"; !strings.Contains(string(out), want) {
		t.Fatalf("curl output %q, want %q", out, want)
	}
}

func pinOf(t *testing.T, src identity.Source) string {
	t.Helper()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(svid.Certificates[0].RawSubjectPublicKeyInfo)
	return "sha256//" + base64.StdEncoding.EncodeToString(sum[:])
}
