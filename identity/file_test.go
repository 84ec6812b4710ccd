package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// svidWriter publishes SVID files in a directory, the way an operator or a
// Kubernetes secret volume does.
type svidWriter interface {
	// paths returns the certificate, key and bundle paths to configure.
	paths() (cert, key, bundle string)
	// write publishes the three files.
	write(t *testing.T, cert, key, bundle []byte)
}

// renameWriter replaces each file by an atomic rename, as editors and
// WriteSVIDFiles do.
type renameWriter struct{ dir string }

func (w renameWriter) paths() (string, string, string) {
	return filepath.Join(w.dir, FileCert), filepath.Join(w.dir, FileKey), filepath.Join(w.dir, FileBundle)
}

func (w renameWriter) write(t *testing.T, cert, key, bundle []byte) {
	t.Helper()
	c, k, b := w.paths()
	for _, f := range []struct {
		path string
		data []byte
	}{{b, bundle}, {k, key}, {c, cert}} {
		if err := writeFileAtomic(f.path, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// kubeWriter mimics a Kubernetes secret volume: the files are symlinks
// through "..data", itself a symlink to a timestamped directory that is
// swapped by a rename.
type kubeWriter struct {
	dir string
	gen *int
}

func (w kubeWriter) paths() (string, string, string) {
	return filepath.Join(w.dir, FileCert), filepath.Join(w.dir, FileKey), filepath.Join(w.dir, FileBundle)
}

func (w kubeWriter) write(t *testing.T, cert, key, bundle []byte) {
	t.Helper()
	*w.gen++
	gen := fmt.Sprintf("..gen_%d", *w.gen)
	if err := os.Mkdir(filepath.Join(w.dir, gen), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{FileCert: cert, FileKey: key, FileBundle: bundle} {
		if err := os.WriteFile(filepath.Join(w.dir, gen, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(w.dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	tmp := filepath.Join(w.dir, "..data_tmp")
	if err := os.Symlink(gen, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(w.dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// svidPEM returns the PEM files of svid.
func svidPEM(t *testing.T, svid *x509svid.SVID) (cert, key []byte) {
	t.Helper()
	cert, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestFileSourceReload rewrites the files under a running server: new
// handshakes use the new SVID, an established connection continues, broken
// files leave the last good SVID in force, and a bundle gaining a root is
// picked up.
func TestFileSourceReload(t *testing.T) {
	ca := mustCA(t, "cluster.local")
	tests := []struct {
		name   string
		writer func(dir string) svidWriter
	}{
		{"atomic rename", func(dir string) svidWriter { return renameWriter{dir} }},
		{"kubernetes symlink swap", func(dir string) svidWriter { return kubeWriter{dir, new(int)} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leakcheck.Check(t)
			w := tt.writer(t.TempDir())
			bundlePEM := encodeCertificatesPEM([]*x509.Certificate{ca.Certificate()})
			issue := func() *x509svid.SVID {
				svid, err := ca.Issue(mustID(t, gatewayID), IssueOptions{})
				if err != nil {
					t.Fatal(err)
				}
				return svid
			}
			first := issue()
			cert, key := svidPEM(t, first)
			w.write(t, cert, key, bundlePEM)

			logger, logs := newLogRecorder()
			certPath, keyPath, bundlePath := w.paths()
			src, err := NewFileSource(t.Context(), FileConfig{
				CertFile: certPath, KeyFile: keyPath,
				Bundles: []BundleFile{{Path: bundlePath}},
				Logger:  logger,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := src.Close(); err != nil {
					t.Error(err)
				}
			})
			srv := startEchoServer(t, ServerTLSConfig(src, nil))
			client := mustSource(t, ca, peerID, IssueOptions{})
			serves := func(what string, svid *x509svid.SVID) {
				t.Helper()
				c, err := dial(t, srv.addr(), ClientTLSConfig(client, nil))
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				srv.result(t)
				if got, want := serverSerial(c), svid.Certificates[0].SerialNumber; got.Cmp(want) != 0 {
					t.Fatalf("%s: server presented serial %x, want %x", what, got, want)
				}
			}
			waitServing := func(what string, svid *x509svid.SVID) {
				t.Helper()
				want := svid.Certificates[0].SerialNumber
				waitUntil(t, what, func() bool {
					got, err := src.GetX509SVID()
					return err == nil && got.Certificates[0].SerialNumber.Cmp(want) == 0
				})
			}
			before, err := dial(t, srv.addr(), ClientTLSConfig(client, nil))
			if err != nil {
				t.Fatal(err)
			}
			srv.result(t)

			second := issue()
			cert, key = svidPEM(t, second)
			w.write(t, cert, key, bundlePEM)
			waitServing("the rewritten SVID", second)
			serves("after rewrite", second)
			if err := echo(before, "still open"); err != nil {
				t.Fatalf("connection established before the rewrite: %v", err)
			}

			// Broken files: garbage, then a certificate with another key.
			third := issue()
			thirdCert, _ := svidPEM(t, third)
			for _, bad := range []struct {
				cert, key []byte
				log       string
			}{
				{[]byte("not a certificate"), key, "no PEM CERTIFICATE block found"},
				{thirdCert, key, "private key does not match the public key of certificate serial " +
					third.Certificates[0].SerialNumber.Text(16)},
			} {
				w.write(t, bad.cert, bad.key, bundlePEM)
				waitUntil(t, "the broken files to be reported", func() bool {
					return logs.count("ERROR SVID files changed but do not load; keeping the last good", bad.log) == 1
				})
				serves("with broken files", second)
			}

			// Root rotation through the bundle file.
			newCA := mustCA(t, "cluster.local")
			newPeer := mustSource(t, newCA, peerID, IssueOptions{})
			newPeer.SetBundles(ca.Bundle())
			bothPEM := encodeCertificatesPEM([]*x509.Certificate{ca.Certificate(), newCA.Certificate()})
			cert, key = svidPEM(t, third)
			w.write(t, cert, key, bothPEM)
			waitServing("the third SVID", third)
			if _, err := dial(t, srv.addr(), ClientTLSConfig(newPeer, nil)); err != nil {
				t.Fatalf("peer of a root added to the bundle file: %v", err)
			}
			srv.result(t)
		})
	}
}

func TestNewFileSourceErrors(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	ca := mustCA(t, "cluster.local")
	svid, err := ca.Issue(mustID(t, gatewayID), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteSVIDFiles(dir, svid, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	other, err := ca.Issue(mustID(t, peerID), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	otherCert, _ := svidPEM(t, other)
	mismatched := filepath.Join(dir, "other.pem")
	if err := os.WriteFile(mismatched, otherCert, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, key, bundle := filepath.Join(dir, FileCert), filepath.Join(dir, FileKey), filepath.Join(dir, FileBundle)
	remote := spiffeid.RequireTrustDomainFromString("remote.example")

	tests := []struct {
		name    string
		cfg     FileConfig
		wantErr string
	}{
		{"no files", FileConfig{}, "needs a certificate file and a key file"},
		{"no bundle", FileConfig{CertFile: cert, KeyFile: key}, "at least one trust bundle file"},
		{"missing certificate", FileConfig{CertFile: filepath.Join(dir, "nope.pem"), KeyFile: key, Bundles: []BundleFile{{Path: bundle}}},
			"nope.pem: no such file"},
		{"key of another certificate", FileConfig{CertFile: mismatched, KeyFile: key, Bundles: []BundleFile{{Path: bundle}}},
			"private key does not match"},
		{"no bundle for the own trust domain", FileConfig{CertFile: cert, KeyFile: key, Bundles: []BundleFile{{TrustDomain: remote, Path: bundle}}},
			`no trust bundle for the SVID's own trust domain "cluster.local"`},
		{"bundle not PEM", FileConfig{CertFile: cert, KeyFile: key, Bundles: []BundleFile{{Path: key}}},
			`trust bundle ` + key + ` for "cluster.local": unexpected PEM block "PRIVATE KEY"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := NewFileSource(t.Context(), tt.cfg)
			if err == nil {
				src.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q\ndoes not contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestParseSVIDKeyFormats loads SVID keys in each supported PEM format.
func TestParseSVIDKeyFormats(t *testing.T) {
	ca := mustCA(t, "cluster.local")
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		pub   any
		block *pem.Block
	}{
		{"PKCS#8 EC", ecKey.Public(), &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}},
		{"SEC 1 EC", ecKey.Public(), &pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}},
		{"PKCS#1 RSA", rsaKey.Public(), &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf, err := ca.sign(&x509.Certificate{
				URIs:      []*url.URL{mustID(t, gatewayID).URL()},
				NotBefore: ca.Certificate().NotBefore, NotAfter: ca.Certificate().NotAfter,
				KeyUsage: x509.KeyUsageDigitalSignature,
			}, tt.pub)
			if err != nil {
				t.Fatal(err)
			}
			svid, err := parseSVIDPEM(encodeCertificatesPEM([]*x509.Certificate{leaf}), pem.EncodeToMemory(tt.block))
			if err != nil {
				t.Fatal(err)
			}
			if svid.ID.String() != gatewayID {
				t.Fatalf("ID %q", svid.ID)
			}
		})
	}
}

func TestParseBundleFile(t *testing.T) {
	tests := []struct {
		in      string
		want    BundleFile
		wantErr string
	}{
		{in: "/etc/ewgate/bundle.pem", want: BundleFile{Path: "/etc/ewgate/bundle.pem"}},
		{in: "bundle.pem", want: BundleFile{Path: "bundle.pem"}},
		{in: "remote.example=/etc/remote.pem", want: BundleFile{TrustDomain: spiffeid.RequireTrustDomainFromString("remote.example"), Path: "/etc/remote.pem"}},
		{in: "/etc/a=b/bundle.pem", want: BundleFile{Path: "/etc/a=b/bundle.pem"}},
		{in: "Bad Domain=/x.pem", wantErr: `trust domain "Bad Domain"`},
		{in: "remote.example=", wantErr: "empty path"},
		{in: "", wantErr: "empty path"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseBundleFile(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}
