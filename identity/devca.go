package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// File names written by [DevCA.WriteFiles] and [WriteSVIDFiles].
const (
	FileCACert = "ca.crt"     // root certificate, PEM
	FileCAKey  = "ca.key"     // root private key, PEM PKCS#8, mode 0600
	FileCert   = "cert.pem"   // SVID chain, leaf first, PEM
	FileKey    = "key.pem"    // SVID private key, PEM PKCS#8, mode 0600
	FileBundle = "bundle.pem" // trust bundle (root certificates), PEM
)

const (
	// devCARootTTL is how long a development root stays valid.
	devCARootTTL = 10 * 365 * 24 * time.Hour
	// DefaultSVIDTTL is the validity of an SVID issued with a zero
	// IssueOptions.TTL.
	DefaultSVIDTTL = 24 * time.Hour
	// backdate is subtracted from NotBefore to tolerate clock skew between
	// networks.
	backdate = time.Minute
)

// DevCA is a self-signed development certificate authority for one trust
// domain. It issues X.509 SVIDs for tests, demos and newcomers who have no
// SPIRE; production deployments should use a real SPIFFE issuer.
//
// A DevCA is immutable and safe for concurrent use.
type DevCA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
}

// NewDevCA creates a development CA for td with a new self-signed ECDSA P-256
// root that is valid for ten years. The root carries the trust domain's
// SPIFFE ID (spiffe://<td>) as its URI SAN.
func NewDevCA(td spiffeid.TrustDomain) (*DevCA, error) {
	if td.IsZero() {
		return nil, errors.New("identity: dev CA needs a trust domain")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: generate dev CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"ewgate dev CA"},
			CommonName:   fmt.Sprintf("ewgate dev CA %s %x", td, serial.Bytes()[:4]),
		},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(devCARootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("identity: create dev CA root for %q: %w", td, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: parse dev CA root: %w", err)
	}
	return &DevCA{td: td, cert: cert, key: key}, nil
}

// LoadDevCA loads a CA written by [DevCA.WriteFiles] from dir (files ca.crt
// and ca.key). The trust domain is taken from the root's SPIFFE URI SAN.
func LoadDevCA(dir string) (*DevCA, error) {
	certPath := filepath.Join(dir, FileCACert)
	keyPath := filepath.Join(dir, FileCAKey)
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("identity: load dev CA: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("identity: load dev CA: %w", err)
	}
	certs, err := parseCertificatesPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: load dev CA %s: %w", certPath, err)
	}
	cert := certs[0]
	if !cert.IsCA {
		return nil, fmt.Errorf("identity: load dev CA %s: certificate is not a CA", certPath)
	}
	if len(cert.URIs) != 1 {
		return nil, fmt.Errorf("identity: load dev CA %s: want exactly one spiffe://<trust domain> URI SAN, found %d", certPath, len(cert.URIs))
	}
	td, err := spiffeid.TrustDomainFromURI(cert.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("identity: load dev CA %s: trust domain from URI SAN: %w", certPath, err)
	}
	key, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: load dev CA %s: %w", keyPath, err)
	}
	if err := checkKeyMatches(key, cert); err != nil {
		return nil, fmt.Errorf("identity: load dev CA: %s does not belong to %s: %w", keyPath, certPath, err)
	}
	return &DevCA{td: td, cert: cert, key: key}, nil
}

// TrustDomain returns the trust domain the CA issues SVIDs for.
func (ca *DevCA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Certificate returns the CA's root certificate. The caller must not modify
// it.
func (ca *DevCA) Certificate() *x509.Certificate { return ca.cert }

// Bundle returns a new trust bundle for the CA's trust domain holding the
// CA's root. Callers may add roots to it (for example during a root
// rotation) without affecting the CA.
func (ca *DevCA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

// IssueOptions tune [DevCA.Issue]. The zero value issues an SVID valid for
// [DefaultSVIDTTL] from now (backdated one minute for clock skew).
type IssueOptions struct {
	// TTL is the validity period. Zero means DefaultSVIDTTL. The end of
	// validity is capped at the root's expiry.
	TTL time.Duration
	// DNSNames are added as DNS SANs besides the SPIFFE ID.
	DNSNames []string
	// NotBefore, if set, starts validity there instead of now, and validity
	// ends at NotBefore+TTL. Tests use it to issue expired or nearly expired
	// SVIDs.
	NotBefore time.Time
}

// Issue issues an X.509 SVID for id with a new ECDSA P-256 key. id must be
// in the CA's trust domain and have a non-root path. The leaf has exactly one
// URI SAN (id), KeyUsage DigitalSignature, ExtKeyUsage ServerAuth and
// ClientAuth, and is not a CA. The returned chain holds only the leaf (the CA
// has no intermediates).
func (ca *DevCA) Issue(id spiffeid.ID, opts IssueOptions) (*x509svid.SVID, error) {
	if !id.MemberOf(ca.td) {
		return nil, fmt.Errorf("identity: issue %q: not in the CA's trust domain %q", id, ca.td)
	}
	if id.Path() == "" {
		return nil, fmt.Errorf("identity: issue %q: an SVID's SPIFFE ID needs a path (for example /ns/<ns>/sa/<sa>)", id)
	}
	ttl := opts.TTL
	switch {
	case ttl == 0:
		ttl = DefaultSVIDTTL
	case ttl < 0:
		return nil, fmt.Errorf("identity: issue %q: negative TTL %s", id, ttl)
	}
	now := time.Now()
	notBefore, notAfter := now.Add(-backdate), now.Add(ttl)
	if !opts.NotBefore.IsZero() {
		notBefore, notAfter = opts.NotBefore, opts.NotBefore.Add(ttl)
	}
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: issue %q: generate key: %w", id, err)
	}
	leaf, err := ca.sign(&x509.Certificate{
		URIs:        []*url.URL{id.URL()},
		DNSNames:    opts.DNSNames,
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, key.Public())
	if err != nil {
		return nil, fmt.Errorf("identity: issue %q: %w", id, err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}, nil
}

// sign completes tmpl (serial, subject, basic constraints) and signs it with
// the CA's root. Fields already set in tmpl are kept, so tests can craft
// deliberately invalid leaves.
func (ca *DevCA) sign(tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	if len(tmpl.Subject.Organization) == 0 {
		tmpl.Subject.Organization = []string{"ewgate dev"}
	}
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse signed certificate: %w", err)
	}
	return cert, nil
}

// NewSource issues an SVID for id (see [DevCA.Issue]) and returns a
// [MemorySource] serving it with the CA's bundle. It is a shortcut for tests.
func (ca *DevCA) NewSource(id spiffeid.ID, opts IssueOptions) (*MemorySource, error) {
	svid, err := ca.Issue(id, opts)
	if err != nil {
		return nil, err
	}
	return NewMemorySource(svid, ca.Bundle()), nil
}

// WriteFiles writes the CA to dir, creating dir if needed: ca.crt (root
// certificate), ca.key (PKCS#8 key, mode 0600) and bundle.pem (the trust
// bundle, here the root alone). Files are replaced atomically.
func (ca *DevCA) WriteFiles(dir string) error {
	keyPEM, err := marshalPrivateKeyPEM(ca.key)
	if err != nil {
		return fmt.Errorf("identity: write dev CA: %w", err)
	}
	certPEM := encodeCertificatesPEM([]*x509.Certificate{ca.cert})
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("identity: write dev CA: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{FileCAKey, keyPEM, 0o600},
		{FileCACert, certPEM, 0o644},
		{FileBundle, certPEM, 0o644},
	} {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("identity: write dev CA: %w", err)
		}
	}
	return nil
}

// WriteSVIDFiles writes svid and bundle to dir, creating dir if needed:
// cert.pem (the SVID chain, leaf first), key.pem (PKCS#8, mode 0600) and
// bundle.pem (bundle's roots). Each file is replaced atomically by a rename,
// bundle first and certificate last, so a [FileSource] watching dir never
// reads a partly written file.
func WriteSVIDFiles(dir string, svid *x509svid.SVID, bundle *x509bundle.Bundle) error {
	keyPEM, err := marshalPrivateKeyPEM(svid.PrivateKey)
	if err != nil {
		return fmt.Errorf("identity: write SVID %q: %w", svid.ID, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("identity: write SVID %q: %w", svid.ID, err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{FileBundle, encodeCertificatesPEM(bundle.X509Authorities()), 0o644},
		{FileKey, keyPEM, 0o600},
		{FileCert, encodeCertificatesPEM(svid.Certificates), 0o644},
	} {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("identity: write SVID %q: %w", svid.ID, err)
		}
	}
	return nil
}

// writeFileAtomic writes data to a temporary file in path's directory and
// renames it over path.
func writeFileAtomic(path string, data []byte, mode os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("identity: generate serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}

func encodeCertificatesPEM(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func marshalPrivateKeyPEM(key crypto.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
