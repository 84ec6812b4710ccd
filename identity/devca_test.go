package identity

import (
	"crypto/x509"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestDevCAIssue(t *testing.T) {
	ca := mustCA(t, "cluster.local")
	tests := []struct {
		name      string
		opts      IssueOptions
		wantTTL   time.Duration // NotAfter - NotBefore
		wantDNS   []string
		capAtRoot bool
	}{
		{name: "defaults", wantTTL: DefaultSVIDTTL + backdate},
		{name: "ttl and DNS names", opts: IssueOptions{TTL: time.Hour, DNSNames: []string{"eastwest.example", "gw.local"}},
			wantTTL: time.Hour + backdate, wantDNS: []string{"eastwest.example", "gw.local"}},
		{name: "explicit start", opts: IssueOptions{NotBefore: time.Now().Add(-3 * time.Hour).Truncate(time.Second), TTL: time.Hour},
			wantTTL: time.Hour},
		{name: "capped at the root's expiry", opts: IssueOptions{TTL: 100 * 365 * 24 * time.Hour}, capAtRoot: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svid, err := ca.Issue(mustID(t, gatewayID), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			// The SVID must pass go-spiffe's own SVID validation.
			chain, key, err := svid.MarshalRaw()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := x509svid.ParseRaw(chain, key); err != nil {
				t.Fatalf("not a valid X.509 SVID: %v", err)
			}
			leaf := svid.Certificates[0]
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != gatewayID {
				t.Errorf("URI SANs %v, want exactly %s", leaf.URIs, gatewayID)
			}
			if !slices.Equal(leaf.DNSNames, tt.wantDNS) {
				t.Errorf("DNS SANs %v, want %v", leaf.DNSNames, tt.wantDNS)
			}
			if leaf.IsCA || !leaf.BasicConstraintsValid {
				t.Errorf("IsCA %v, basic constraints %v; want a non-CA leaf", leaf.IsCA, leaf.BasicConstraintsValid)
			}
			if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("key usage %b, want DigitalSignature only", leaf.KeyUsage)
			}
			if want := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}; !slices.Equal(leaf.ExtKeyUsage, want) {
				t.Errorf("ext key usage %v, want %v", leaf.ExtKeyUsage, want)
			}
			if tt.capAtRoot {
				if !leaf.NotAfter.Equal(ca.Certificate().NotAfter) {
					t.Errorf("NotAfter %s, want the root's %s", leaf.NotAfter, ca.Certificate().NotAfter)
				}
			} else if got := leaf.NotAfter.Sub(leaf.NotBefore); got != tt.wantTTL {
				t.Errorf("validity %s, want %s", got, tt.wantTTL)
			}
			if !tt.opts.NotBefore.IsZero() && !leaf.NotBefore.Equal(tt.opts.NotBefore) {
				t.Errorf("NotBefore %s, want %s", leaf.NotBefore, tt.opts.NotBefore)
			}
			if !tt.opts.NotBefore.IsZero() {
				return // validity outside the root's: not verifiable
			}
			if _, _, err := x509svid.Verify(svid.Certificates, ca.Bundle()); err != nil {
				t.Errorf("does not verify against the CA bundle: %v", err)
			}
		})
	}
}

func TestDevCAIssueErrors(t *testing.T) {
	ca := mustCA(t, "cluster.local")
	tests := []struct {
		id      string
		opts    IssueOptions
		wantErr string
	}{
		{"spiffe://other.example/ns/a/sa/b", IssueOptions{}, `not in the CA's trust domain "cluster.local"`},
		{"spiffe://cluster.local", IssueOptions{}, "needs a path"},
		{gatewayID, IssueOptions{TTL: -time.Hour}, "negative TTL"},
	}
	for _, tt := range tests {
		t.Run(tt.wantErr, func(t *testing.T) {
			_, err := ca.Issue(mustID(t, tt.id), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestDevCAFiles writes a CA and an SVID to files, checks them with the real
// openssl and with a crypto/tls mTLS handshake through a FileSource.
func TestDevCAFiles(t *testing.T) {
	leakcheck.Check(t)
	caDir, svidDir := filepath.Join(t.TempDir(), "ca"), filepath.Join(t.TempDir(), "svid")
	if err := mustCA(t, "cluster.local").WriteFiles(caDir); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadDevCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	if ca.TrustDomain().Name() != "cluster.local" {
		t.Fatalf("loaded trust domain %q", ca.TrustDomain())
	}
	svid, err := ca.Issue(mustID(t, gatewayID), IssueOptions{DNSNames: []string{"eastwest.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteSVIDFiles(svidDir, svid, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(caDir, FileCAKey), filepath.Join(svidDir, FileKey)} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v (%v), want 0600", p, fi.Mode().Perm(), err)
		}
	}

	t.Run("openssl", func(t *testing.T) {
		openssl, err := exec.LookPath("openssl")
		if err != nil {
			t.Skip("openssl not installed; install it to check the dev CA's files with openssl verify")
		}
		out, err := exec.Command(openssl, "verify", "-x509_strict", "-CAfile", filepath.Join(svidDir, FileBundle),
			filepath.Join(svidDir, FileCert)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), ": OK") {
			t.Fatalf("openssl verify: %v\n%s", err, out)
		}
		out, err = exec.Command(openssl, "x509", "-noout", "-ext", "subjectAltName",
			"-in", filepath.Join(svidDir, FileCert)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "URI:"+gatewayID) || !strings.Contains(string(out), "DNS:eastwest.example") {
			t.Fatalf("openssl x509 -ext subjectAltName: %v\n%s", err, out)
		}
	})

	t.Run("crypto/tls", func(t *testing.T) {
		src, err := NewFileSource(t.Context(), FileConfig{
			CertFile: filepath.Join(svidDir, FileCert),
			KeyFile:  filepath.Join(svidDir, FileKey),
			Bundles:  []BundleFile{{Path: filepath.Join(svidDir, FileBundle)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		srv := startEchoServer(t, ServerTLSConfig(src, nil))
		if _, err := dial(t, srv.addr(), ClientTLSConfig(mustSource(t, ca, peerID, IssueOptions{}), nil)); err != nil {
			t.Fatal(err)
		}
		if res := srv.result(t); res.err != nil || res.peer.String() != peerID {
			t.Fatalf("server saw %+v", res)
		}
	})
}

func TestLoadDevCAErrors(t *testing.T) {
	ca := mustCA(t, "cluster.local")
	other := mustCA(t, "cluster.local")
	svid, err := ca.Issue(mustID(t, gatewayID), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		setup   func(dir string) error
		wantErr string
	}{
		{"missing", func(string) error { return nil }, "ca.crt: no such file"},
		{"not a CA", func(dir string) error { return writeSVIDAsCA(dir, svid) }, "certificate is not a CA"},
		{"key of another CA", func(dir string) error {
			if err := ca.WriteFiles(dir); err != nil {
				return err
			}
			key, err := marshalPrivateKeyPEM(other.key)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, FileCAKey), key, 0o600)
		}, "ca.key does not belong to"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := tt.setup(dir); err != nil {
				t.Fatal(err)
			}
			_, err := LoadDevCA(dir)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// writeSVIDAsCA writes svid where LoadDevCA looks for a CA.
func writeSVIDAsCA(dir string, svid *x509svid.SVID) error {
	cert, key, err := svid.Marshal()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, FileCACert), cert, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, FileCAKey), key, 0o600)
}
