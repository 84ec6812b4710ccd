package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Policy says which authenticated peers may connect. A peer is allowed if
// its SPIFFE ID matches any entry of any list. The zero Policy allows only
// the gateway's own trust domain (that of its current SVID). A non-zero
// Policy replaces that default: list the own trust domain too if it should
// stay allowed.
//
// Whatever the policy, a peer is first verified against the trust bundle of
// its own trust domain; a trust domain without a bundle is never accepted.
type Policy struct {
	// TrustDomains allows every ID of these trust domains, e.g.
	// "cluster.local".
	TrustDomains []string
	// IDPrefixes allows IDs equal to a prefix or below it on a path segment
	// boundary: "spiffe://cluster.local/ns/istio-system" allows
	// ".../ns/istio-system/sa/eastwest" but not ".../ns/istio-system-x".
	IDPrefixes []string
	// IDs allows these exact SPIFFE IDs.
	IDs []string
}

// Reason classifies why a peer was rejected. Its values are stable and
// suitable as metric label values.
type Reason string

// Rejection reasons.
const (
	// ReasonBadCertificate: no certificate, or one that does not parse.
	ReasonBadCertificate Reason = "bad_certificate"
	// ReasonNoSPIFFEID: the leaf has no URI SAN, several, or one that is not
	// a valid SPIFFE ID.
	ReasonNoSPIFFEID Reason = "no_spiffe_id"
	// ReasonCALeaf: the leaf is a CA or may sign certificates or CRLs.
	ReasonCALeaf Reason = "ca_leaf"
	// ReasonExpired: the leaf or a certificate of its chain is expired or
	// not yet valid.
	ReasonExpired Reason = "expired"
	// ReasonUnknownTrustDomain: no trust bundle is configured for the
	// peer's trust domain.
	ReasonUnknownTrustDomain Reason = "unknown_trust_domain"
	// ReasonUntrusted: the chain does not verify against the bundle of the
	// peer's trust domain.
	ReasonUntrusted Reason = "untrusted"
	// ReasonNotAllowed: the peer is authenticated but the policy does not
	// allow its ID.
	ReasonNotAllowed Reason = "not_allowed"
)

// numReasons is the number of Reason values.
const numReasons = 7

// Reasons returns every rejection reason, for pre-registering metric labels.
// The order is stable.
func Reasons() []Reason {
	return []Reason{
		ReasonBadCertificate, ReasonNoSPIFFEID, ReasonCALeaf, ReasonExpired,
		ReasonUnknownTrustDomain, ReasonUntrusted, ReasonNotAllowed,
	}
}

// RejectError is the error returned (and seen by crypto/tls as the handshake
// error) when a peer is rejected.
type RejectError struct {
	// PeerID is the SPIFFE ID the peer's leaf claims, or "" if it has none.
	// It is not verified unless Reason is ReasonNotAllowed.
	PeerID string
	// Reason classifies the rejection.
	Reason Reason
	// Err describes the problem in detail.
	Err error
}

// Error returns a message naming the peer, the reason and the detail.
func (e *RejectError) Error() string {
	peer := "peer without SPIFFE ID"
	if e.PeerID != "" {
		peer = "peer " + e.PeerID
	}
	return fmt.Sprintf("identity: rejected %s: %s: %v", peer, e.Reason, e.Err)
}

// Unwrap returns Err.
func (e *RejectError) Unwrap() error { return e.Err }

// Stats is a snapshot of an [Authorizer]'s counters.
type Stats struct {
	// Accepted counts peers verified and allowed.
	Accepted uint64
	// Rejected counts rejections by reason; every Reason is present.
	Rejected map[Reason]uint64
}

// Authorizer verifies peer certificates against a [Source]'s trust bundles
// and applies a [Policy]. It counts and logs every rejection. One Authorizer
// is meant to be shared by the server and client configurations of a
// component so that its counters cover both ends. It is safe for concurrent
// use.
type Authorizer struct {
	log      *slog.Logger
	match    *Matcher
	accepted atomic.Uint64
	rejected [numReasons]atomic.Uint64 // indexed like Reasons()
}

// Matcher tells whether an authenticated SPIFFE ID is allowed by a
// [Policy], with no default: the zero Policy matches no ID. Servers use it
// to authorize each call of an already authenticated peer (the API allows
// endpoint registration to fewer callers than resolution). It is safe for
// concurrent use.
type Matcher struct {
	trustDomains []spiffeid.TrustDomain
	prefixes     []string // "spiffe://td/path", without trailing slash
	ids          []spiffeid.ID
}

// NewMatcher returns a Matcher for pol. It fails if an entry of pol is not
// a valid trust domain name or SPIFFE ID.
func NewMatcher(pol Policy) (*Matcher, error) {
	m := new(Matcher)
	for _, s := range pol.TrustDomains {
		td, err := spiffeid.TrustDomainFromString(s)
		if err != nil {
			return nil, fmt.Errorf("identity: policy trust domain %q: %w", s, err)
		}
		m.trustDomains = append(m.trustDomains, td)
	}
	for _, s := range pol.IDPrefixes {
		id, err := spiffeid.FromString(strings.TrimSuffix(s, "/"))
		if err != nil {
			return nil, fmt.Errorf("identity: policy ID prefix %q: %w", s, err)
		}
		m.prefixes = append(m.prefixes, id.String())
	}
	for _, s := range pol.IDs {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return nil, fmt.Errorf("identity: policy ID %q: %w", s, err)
		}
		m.ids = append(m.ids, id)
	}
	return m, nil
}

// Empty reports whether the policy has no entry, so that it matches no ID.
func (m *Matcher) Empty() bool {
	return len(m.trustDomains) == 0 && len(m.prefixes) == 0 && len(m.ids) == 0
}

// Allows reports whether id matches an entry of the policy.
func (m *Matcher) Allows(id spiffeid.ID) bool {
	if slices.Contains(m.trustDomains, id.TrustDomain()) || slices.Contains(m.ids, id) {
		return true
	}
	s := id.String()
	for _, p := range m.prefixes {
		if s == p || strings.HasPrefix(s, p+"/") {
			return true
		}
	}
	return false
}

// String summarizes the policy's size for error messages.
func (m *Matcher) String() string {
	return fmt.Sprintf("%d trust domains, %d ID prefixes, %d IDs", len(m.trustDomains), len(m.prefixes), len(m.ids))
}

// NewAuthorizer returns an Authorizer enforcing pol. It fails if an entry of
// pol is not a valid trust domain name or SPIFFE ID. Rejections are logged at
// warn level on logger; nil discards logs.
func NewAuthorizer(pol Policy, logger *slog.Logger) (*Authorizer, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := NewMatcher(pol)
	if err != nil {
		return nil, err
	}
	a := &Authorizer{log: logger, match: m}
	return a, nil
}

// Stats returns a snapshot of the counters.
func (a *Authorizer) Stats() Stats {
	s := Stats{Accepted: a.accepted.Load(), Rejected: make(map[Reason]uint64, numReasons)}
	for i, r := range Reasons() {
		s.Rejected[r] = a.rejected[i].Load()
	}
	return s
}

// Authorize verifies a peer's certificate chain (leaf first, as presented in
// the handshake) against the bundle of the peer's own trust domain taken
// from src, then applies the policy; with the zero Policy the allowed trust
// domain is that of src's current SVID. It returns the peer's SPIFFE ID, or
// a *[RejectError] after counting and logging the rejection.
func (a *Authorizer) Authorize(src Source, chain []*x509.Certificate) (spiffeid.ID, error) {
	id, err := a.authorize(src, chain, time.Now())
	if err != nil {
		var rej *RejectError
		if errors.As(err, &rej) {
			if i := slices.Index(Reasons(), rej.Reason); i >= 0 {
				a.rejected[i].Add(1)
			}
			a.log.Warn("rejected peer", "peer_id", rej.PeerID, "reason", string(rej.Reason), "err", rej.Err)
		}
		return spiffeid.ID{}, err
	}
	a.accepted.Add(1)
	a.log.Debug("accepted peer", "peer_id", id.String())
	return id, nil
}

func (a *Authorizer) authorize(src Source, chain []*x509.Certificate, now time.Time) (spiffeid.ID, error) {
	if len(chain) == 0 {
		return spiffeid.ID{}, &RejectError{Reason: ReasonBadCertificate, Err: errors.New("peer presented no certificate")}
	}
	leaf := chain[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return spiffeid.ID{}, &RejectError{PeerID: uriSANs(leaf), Reason: ReasonNoSPIFFEID,
			Err: fmt.Errorf("leaf certificate (subject %q) has no valid SPIFFE URI SAN: %w", leaf.Subject, err)}
	}
	reject := func(r Reason, err error) (spiffeid.ID, error) {
		return spiffeid.ID{}, &RejectError{PeerID: id.String(), Reason: r, Err: err}
	}
	switch {
	case leaf.IsCA:
		return reject(ReasonCALeaf, errors.New("leaf certificate is a CA (basic constraints CA:TRUE)"))
	case leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return reject(ReasonCALeaf, errors.New("leaf certificate may sign certificates or CRLs (key usage keyCertSign/cRLSign)"))
	case now.After(leaf.NotAfter):
		return reject(ReasonExpired, fmt.Errorf("leaf certificate expired at %s (%s ago)",
			leaf.NotAfter.UTC().Format(time.RFC3339), now.Sub(leaf.NotAfter).Round(time.Second)))
	case now.Before(leaf.NotBefore):
		return reject(ReasonExpired, fmt.Errorf("leaf certificate not valid before %s (check clocks)",
			leaf.NotBefore.UTC().Format(time.RFC3339)))
	}
	td := id.TrustDomain()
	bundle, err := src.GetX509BundleForTrustDomain(td)
	if err != nil {
		return reject(ReasonUnknownTrustDomain, fmt.Errorf("unknown trust domain %q: no trust bundle configured for it: %w", td, err))
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:         certPool(bundle.X509Authorities()),
		Intermediates: certPool(chain[1:]),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		CurrentTime:   now,
	})
	if err != nil {
		var invalid x509.CertificateInvalidError
		if errors.As(err, &invalid) && invalid.Reason == x509.Expired {
			return reject(ReasonExpired, fmt.Errorf("certificate chain: %w", err))
		}
		return reject(ReasonUntrusted, fmt.Errorf("chain does not verify against the trust bundle of %q (%d roots): %w",
			td, len(bundle.X509Authorities()), err))
	}
	if err := a.allowed(src, id); err != nil {
		return reject(ReasonNotAllowed, err)
	}
	return id, nil
}

// allowed applies the policy to an authenticated ID.
func (a *Authorizer) allowed(src Source, id spiffeid.ID) error {
	if a.match.Empty() {
		own, err := src.GetX509SVID()
		if err != nil {
			return fmt.Errorf("cannot determine own trust domain for the default policy: %w", err)
		}
		if !id.MemberOf(own.ID.TrustDomain()) {
			return fmt.Errorf("trust domain %q is not allowed: the default policy allows only the own trust domain %q",
				id.TrustDomain(), own.ID.TrustDomain())
		}
		return nil
	}
	if a.match.Allows(id) {
		return nil
	}
	return fmt.Errorf("ID is not allowed by the policy (%s)", a.match)
}

func certPool(certs []*x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool
}

// uriSANs returns the certificate's URI SANs for messages.
func uriSANs(cert *x509.Certificate) string {
	s := make([]string, len(cert.URIs))
	for i, u := range cert.URIs {
		s[i] = u.String()
	}
	return strings.Join(s, ",")
}
