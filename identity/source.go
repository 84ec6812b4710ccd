package identity

import (
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source supplies this gateway's current X.509 SVID and the trust bundles it
// verifies peers against, one bundle per trust domain (its own and any
// federated ones). Implementations must be safe for concurrent use and may
// return a different SVID or bundle on every call (rotation).
type Source interface {
	// GetX509SVID returns the current SVID.
	x509svid.Source
	// GetX509BundleForTrustDomain returns the bundle for a trust domain, or
	// an error if the source has none for it.
	x509bundle.Source
}

// MemorySource is a [Source] backed by values held in memory. Its SVID and
// bundles can be replaced at any time, which tests use to rotate SVIDs and
// roots. It is safe for concurrent use.
type MemorySource struct {
	mu      sync.RWMutex
	svid    *x509svid.SVID
	bundles *x509bundle.Set
}

// NewMemorySource returns a source serving svid and bundles. Bundles for the
// same trust domain are merged (their roots are all trusted).
func NewMemorySource(svid *x509svid.SVID, bundles ...*x509bundle.Bundle) *MemorySource {
	s := &MemorySource{}
	s.SetX509SVID(svid)
	s.SetBundles(bundles...)
	return s
}

// GetX509SVID returns the current SVID, or an error if none is set.
func (s *MemorySource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil, errors.New("identity: memory source has no SVID")
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain returns the bundle for td, or an error if the
// source has no bundle for it.
func (s *MemorySource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bundles.GetX509BundleForTrustDomain(td)
}

// SetX509SVID replaces the SVID. New handshakes use it; established
// connections keep theirs.
func (s *MemorySource) SetX509SVID(svid *x509svid.SVID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.svid = svid
}

// SetBundles replaces the whole bundle set. Bundles for the same trust
// domain are merged. The bundles are copied, so later changes to them do
// not affect the source.
func (s *MemorySource) SetBundles(bundles ...*x509bundle.Bundle) {
	set := mergeBundles(bundles)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bundles = set
}

// mergeBundles returns a set holding copies of bundles, with the roots of
// bundles for the same trust domain merged into one bundle.
func mergeBundles(bundles []*x509bundle.Bundle) *x509bundle.Set {
	set := x509bundle.NewSet()
	for _, b := range bundles {
		if have, ok := set.Get(b.TrustDomain()); ok {
			for _, root := range b.X509Authorities() {
				have.AddX509Authority(root)
			}
			continue
		}
		set.Add(b.Clone())
	}
	return set
}

// Expiry returns the end of validity (NotAfter) of src's current SVID leaf.
// A metrics layer exports time.Until(Expiry(src)) as the SVID's remaining
// validity.
func Expiry(src x509svid.Source) (time.Time, error) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return time.Time{}, fmt.Errorf("identity: SVID expiry: %w", err)
	}
	if len(svid.Certificates) == 0 {
		return time.Time{}, fmt.Errorf("identity: SVID expiry: SVID %q has no certificate", svid.ID)
	}
	return svid.Certificates[0].NotAfter, nil
}

// PeerID returns the SPIFFE ID of the peer of a connection whose handshake
// used a configuration from [ServerTLSConfig] or [ClientTLSConfig] (and so
// was verified and authorized).
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("identity: connection has no peer certificate")
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: peer SPIFFE ID: %w", err)
	}
	return id, nil
}

// tlsCertificate fetches src's current SVID as a tls.Certificate.
func tlsCertificate(src x509svid.Source) (*tls.Certificate, error) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("identity: get own SVID: %w", err)
	}
	if len(svid.Certificates) == 0 {
		return nil, fmt.Errorf("identity: own SVID %q has no certificate", svid.ID)
	}
	cert := &tls.Certificate{
		Certificate: make([][]byte, 0, len(svid.Certificates)),
		PrivateKey:  svid.PrivateKey,
		Leaf:        svid.Certificates[0],
	}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}
