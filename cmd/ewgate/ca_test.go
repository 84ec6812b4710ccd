package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runCAForTest runs runCA and returns its error and outputs.
func runCAForTest(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err = runCA(t.Context(), args, &out, &errOut)
	return out.String(), errOut.String(), err
}

// TestCAInitIssue runs "ca init" and "ca issue" and checks the files with
// the real openssl and with a stock crypto/tls mTLS handshake over loopback.
func TestCAInitIssue(t *testing.T) {
	dir := t.TempDir()
	caDir, gw, peer := filepath.Join(dir, "ca"), filepath.Join(dir, "gw"), filepath.Join(dir, "peer")
	const gwID = "spiffe://cluster.local/ns/istio-system/sa/eastwest"
	steps := [][]string{
		{"init", "--trust-domain", "cluster.local", "--out", caDir},
		{"issue", "--ca", caDir, "--spiffe-id", gwID, "--out", gw, "--ttl", "2h", "--dns", "eastwest.example", "--dns", "gw.local"},
		{"issue", "--ca", caDir, "--spiffe-id", "spiffe://cluster.local/ns/istio-system/sa/peer", "--out", peer},
	}
	for _, args := range steps {
		stdout, stderr, err := runCAForTest(t, args...)
		if err != nil {
			t.Fatalf("ca %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		if !strings.HasPrefix(stdout, "wrote ") {
			t.Errorf("ca %s: stdout %q", args[0], stdout)
		}
	}
	for _, f := range []string{"ca/ca.crt", "ca/ca.key", "ca/bundle.pem", "gw/cert.pem", "gw/key.pem", "gw/bundle.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}

	t.Run("openssl", func(t *testing.T) {
		openssl, err := exec.LookPath("openssl")
		if err != nil {
			t.Skip("openssl not installed; install it to check the CA files with openssl verify")
		}
		out, err := exec.Command(openssl, "verify", "-CAfile", filepath.Join(gw, "bundle.pem"), filepath.Join(gw, "cert.pem")).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "cert.pem: OK") {
			t.Fatalf("openssl verify: %v\n%s", err, out)
		}
		out, err = exec.Command(openssl, "x509", "-noout", "-ext", "subjectAltName,keyUsage,extendedKeyUsage,basicConstraints",
			"-in", filepath.Join(gw, "cert.pem")).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl x509: %v\n%s", err, out)
		}
		for _, want := range []string{"URI:" + gwID, "DNS:eastwest.example", "DNS:gw.local", "Digital Signature",
			"TLS Web Server Authentication, TLS Web Client Authentication", "CA:FALSE"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("openssl x509 output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("crypto/tls", func(t *testing.T) {
		pool := x509.NewCertPool()
		bundle, err := os.ReadFile(filepath.Join(caDir, "bundle.pem"))
		if err != nil || !pool.AppendCertsFromPEM(bundle) {
			t.Fatalf("bundle.pem: %v", err)
		}
		gwCert, err := tls.LoadX509KeyPair(filepath.Join(gw, "cert.pem"), filepath.Join(gw, "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		peerCert, err := tls.LoadX509KeyPair(filepath.Join(peer, "cert.pem"), filepath.Join(peer, "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
			MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{gwCert},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		served := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				served <- err
				return
			}
			defer c.Close()
			_, err = io.Copy(c, c)
			served <- err
		}()
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
			MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{peerCert},
			RootCAs: pool, ServerName: "eastwest.example",
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, "ping"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo: %q, %v", buf, err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-served; err != nil && !errors.Is(err, net.ErrClosed) {
			t.Fatal(err)
		}
	})
}

func TestCAErrors(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if _, stderr, err := runCAForTest(t, "init", "--trust-domain", "cluster.local", "--out", caDir); err != nil {
		t.Fatalf("init: %v\n%s", err, stderr)
	}
	tests := []struct {
		name       string
		args       []string
		wantErr    string
		wantStderr string
	}{
		{"no subcommand", nil, "missing subcommand", "ewgate ca init"},
		{"unknown subcommand", []string{"sign"}, `unknown subcommand "sign"`, "ewgate ca issue"},
		{"init without flags", []string{"init"}, "--trust-domain and --out are required", "-trust-domain"},
		{"init bad trust domain", []string{"init", "--trust-domain", "Cluster Local", "--out", dir}, `--trust-domain "Cluster Local"`, ""},
		{"init over an existing CA", []string{"init", "--trust-domain", "cluster.local", "--out", caDir}, "exists; pass --force", ""},
		{"init extra arguments", []string{"init", "--trust-domain", "cluster.local", "--out", dir, "x"}, "unexpected arguments: x", ""},
		{"issue without flags", []string{"issue"}, "--ca, --spiffe-id and --out are required", "-spiffe-id"},
		{"issue without a CA", []string{"issue", "--ca", filepath.Join(dir, "none"), "--spiffe-id", "spiffe://cluster.local/ns/a/sa/b", "--out", dir},
			"ca.crt: no such file", ""},
		{"issue for another trust domain", []string{"issue", "--ca", caDir, "--spiffe-id", "spiffe://other.example/ns/a/sa/b", "--out", dir},
			`not in the CA's trust domain "cluster.local"`, ""},
		{"issue bad ID", []string{"issue", "--ca", caDir, "--spiffe-id", "cluster.local/ns/a", "--out", dir}, `--spiffe-id "cluster.local/ns/a"`, ""},
		{"issue bad TTL", []string{"issue", "--ca", caDir, "--spiffe-id", "spiffe://cluster.local/ns/a/sa/b", "--out", dir, "--ttl", "-1h"},
			"--ttl -1h0m0s: must be positive", ""},
		{"issue help", []string{"issue", "-h"}, flag.ErrHelp.Error(), "-dns value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, err := runCAForTest(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stderr lacks %q:\n%s", tt.wantStderr, stderr)
			}
		})
	}
	t.Run("init --force replaces the CA", func(t *testing.T) {
		if _, stderr, err := runCAForTest(t, "init", "--trust-domain", "cluster.local", "--out", caDir, "--force"); err != nil {
			t.Fatalf("%v\n%s", err, stderr)
		}
	})
	t.Run("help", func(t *testing.T) {
		stdout, _, err := runCAForTest(t, "help")
		if err != nil || !strings.Contains(stdout, "Usage:") {
			t.Fatalf("help: %v\n%s", err, stdout)
		}
	})
}
