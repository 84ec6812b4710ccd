package peer

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Signatures: with an identity, a node signs its entries with its SVID's
// private key, and accepts another origin's entry only when it is signed
// by a chain that verifies against the trust bundle, whose SPIFFE ID
// Config.AllowGateway allows and equals the one the origin member
// announces in its meta. The signature covers the origin's name, the
// version and the digest of the encoded summary (which holds the
// network), so a member holding the gossip key can neither publish under
// another gateway's name nor replay an old summary as a new version.
//
// Entries name their chain by digest; the chain itself travels once per
// exchange: in push/pull states (each distinct chain once), with entries
// and deltas sent over TCP, and in the introduction a node sends every
// member it newly learns of. Broadcasts, which must fit a packet, carry
// the digest only: a receiver that does not hold the chain yet ignores
// the entry (Stats.Unverified) until push/pull or an introduction brings
// it.

// IdentitySource supplies this gateway's SVID, whose key signs its
// entries, and the trust bundles other gateways' chains are verified
// against, one per trust domain. An identity.Source satisfies it.
// Implementations must be safe for concurrent use and may return a new
// SVID on every call (rotation).
type IdentitySource interface {
	x509svid.Source
	x509bundle.Source
}

const (
	// maxSignatureLen bounds a signature: RSA 4096 makes 512 bytes.
	maxSignatureLen = 512
	// maxChains bounds the verified chains a node caches; past it the
	// expired ones go, then arbitrary ones (entries keep theirs).
	maxChains = 4096
	// maxVerified bounds the cache of verified signatures; past it the
	// cache starts again empty.
	maxVerified = 1 << 14
	// resignInterval is how often a node checks whether its SVID rotated,
	// to sign its entry again before the old certificate expires.
	resignInterval = 5 * time.Second
)

// errUnverifiable marks an entry that cannot be verified yet: its chain
// or its origin's announced identity is not known here. It is not a
// rejection: push/pull or the origin's introduction repairs it.
var errUnverifiable = errors.New("not verifiable yet")

// chain is a verified certificate chain of a gateway's SVID.
type chain struct {
	digest   [sha256.Size]byte // of der
	der      []byte            // concatenated DER certificates, leaf first
	id       string            // the leaf's SPIFFE ID
	leaf     *x509.Certificate
	notAfter time.Time // the earliest NotAfter of the chain
}

// signer signs this node's entries and verifies other origins'. It is
// safe for concurrent use.
type signer struct {
	src   IdentitySource
	allow func(spiffeID string) error

	mu       sync.Mutex
	own      *chain // the current SVID's chain, replaced when it rotates
	ownKey   crypto.Signer
	chains   map[[sha256.Size]byte]*chain
	verified map[[sha256.Size]byte]struct{} // digests of verified (message, signature) pairs
}

// newSigner returns a signer for src and the SPIFFE ID of its SVID. A nil
// allow allows only that ID.
func newSigner(src IdentitySource, allow func(string) error) (*signer, string, error) {
	s := &signer{src: src, allow: allow, chains: make(map[[sha256.Size]byte]*chain), verified: make(map[[sha256.Size]byte]struct{})}
	own, _, err := s.current()
	if err != nil {
		return nil, "", err
	}
	if s.allow == nil {
		s.allow = func(id string) error {
			if c, _, err := s.current(); err != nil || c.id != id {
				return fmt.Errorf("only this gateway's own SPIFFE ID %s is allowed (set Config.AllowGateway)", own.id)
			}
			return nil
		}
	}
	return s, own.id, nil
}

// current returns the chain and key of the source's current SVID.
func (s *signer) current() (*chain, crypto.Signer, error) {
	svid, err := s.src.GetX509SVID()
	if err != nil {
		return nil, nil, fmt.Errorf("peer: identity: %w", err)
	}
	if len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return nil, nil, fmt.Errorf("peer: identity: SVID %s has no certificate or key", svid.ID)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.own != nil && s.own.leaf.Equal(svid.Certificates[0]) {
		return s.own, s.ownKey, nil
	}
	var der []byte
	notAfter := svid.Certificates[0].NotAfter
	for _, c := range svid.Certificates {
		der = append(der, c.Raw...)
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	s.own = &chain{digest: sha256.Sum256(der), der: der, id: svid.ID.String(), leaf: svid.Certificates[0], notAfter: notAfter}
	s.ownKey = svid.PrivateKey
	return s.own, s.ownKey, nil
}

// sign signs e with the current SVID.
func (s *signer) sign(e *entry) error {
	sig, c, err := s.signMessage(signedEntry(e.origin, e.version, e.hash))
	if err != nil {
		return fmt.Errorf("peer: sign entry: %w", err)
	}
	e.sig, e.chainDigest, e.chain = sig, c.digest, c
	return nil
}

// signMessage signs msg with the current SVID's key and returns the
// signature and the chain of that SVID.
func (s *signer) signMessage(msg []byte) ([]byte, *chain, error) {
	c, key, err := s.current()
	if err != nil {
		return nil, nil, err
	}
	var sig []byte
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		sig, err = key.Sign(rand.Reader, msg, crypto.Hash(0))
	} else {
		d := sha256.Sum256(msg)
		sig, err = key.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	if err != nil {
		return nil, nil, err
	}
	return sig, c, nil
}

// chainFor returns the verified chain with digest d: a cached one, else
// der (the chain carried with the entry, nil if none) once verified
// against the trust bundle and the gateway policy. A chain neither cached
// nor carried is errUnverifiable.
func (s *signer) chainFor(d [sha256.Size]byte, der []byte, now time.Time) (*chain, reason, error) {
	s.mu.Lock()
	c := s.chains[d]
	if c == nil && s.own != nil && s.own.digest == d {
		c = s.own
	}
	s.mu.Unlock()
	if c != nil && now.Before(c.notAfter) {
		return c, 0, nil
	}
	if der == nil {
		return nil, 0, fmt.Errorf("certificate chain %x: %w", d[:4], errUnverifiable)
	}
	if sha256.Sum256(der) != d {
		return nil, rBadSignature, errors.New("the entry names another certificate chain than the one it carries")
	}
	certs, err := x509.ParseCertificates(der)
	if err != nil || len(certs) == 0 {
		return nil, rUntrustedChain, fmt.Errorf("certificate chain does not parse: %v", err)
	}
	id, _, err := x509svid.Verify(certs, s.src, x509svid.WithTime(now))
	if err != nil {
		return nil, rUntrustedChain, fmt.Errorf("certificate chain of %q: %w", id, err)
	}
	if err := s.allow(id.String()); err != nil {
		return nil, rNotGateway, fmt.Errorf("%s may not speak as a gateway: %w", id, err)
	}
	c = &chain{digest: d, der: bytes.Clone(der), id: id.String(), leaf: certs[0], notAfter: certs[0].NotAfter}
	for _, cert := range certs[1:] {
		if cert.NotAfter.Before(c.notAfter) {
			c.notAfter = cert.NotAfter
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.chains) >= maxChains {
		for k, old := range s.chains {
			if !now.Before(old.notAfter) || len(s.chains) >= maxChains {
				delete(s.chains, k)
			}
		}
	}
	s.chains[d] = c
	return c, 0, nil
}

// verify checks sig, made by c's key over origin's entry at version v
// whose body has digest h. Verified pairs are cached.
func (s *signer) verify(c *chain, origin string, v Version, h [sha256.Size]byte, sig []byte) error {
	return s.verifyMessage(c, signedEntry(origin, v, h), sig)
}

// verifyMessage checks sig, made by c's key over msg. Verified pairs are
// cached.
func (s *signer) verifyMessage(c *chain, msg, sig []byte) error {
	key := sha256.Sum256(append(append(msg, c.digest[:]...), sig...))
	s.mu.Lock()
	_, ok := s.verified[key]
	s.mu.Unlock()
	if ok {
		return nil
	}
	if err := c.leaf.CheckSignature(signatureAlgorithm(c.leaf), msg, sig); err != nil {
		return fmt.Errorf("signature by %s: %w", c.id, err)
	}
	s.mu.Lock()
	if len(s.verified) >= maxVerified {
		clear(s.verified)
	}
	s.verified[key] = struct{}{}
	s.mu.Unlock()
	return nil
}

// signatureAlgorithm is the algorithm sign uses with the leaf's key.
func signatureAlgorithm(leaf *x509.Certificate) x509.SignatureAlgorithm {
	switch leaf.PublicKeyAlgorithm {
	case x509.ECDSA:
		return x509.ECDSAWithSHA256
	case x509.Ed25519:
		return x509.PureEd25519
	case x509.RSA:
		return x509.SHA256WithRSA
	}
	return x509.UnknownSignatureAlgorithm
}

// signedEntry is what an origin signs for its entry: a context string, so
// that no other message of any protocol can be passed off as one, then
// the origin's name, the version and the digest of the body.
func signedEntry(origin string, v Version, h [sha256.Size]byte) []byte {
	var w writer
	w.b = append(w.b, "ewgate gossip entry v3\x00"...)
	w.str(origin)
	w.uvarint(v.Epoch)
	w.uvarint(v.Seq)
	w.b = append(w.b, h[:]...)
	return w.b
}

// signedBye is what an origin signs for its goodbye.
func signedBye(origin string, v Version) []byte {
	var w writer
	w.b = append(w.b, "ewgate gossip bye v3\x00"...)
	w.str(origin)
	w.uvarint(v.Epoch)
	w.uvarint(v.Seq)
	return w.b
}

// authenticByeLocked checks, with an identity, that b is signed by the chain
// that signed the entry held for its origin. n.mu must be held.
func (n *Node) authenticByeLocked(b bye) (reason, error) {
	if n.signer == nil {
		return 0, nil
	}
	if b.sig == nil {
		return rUnsigned, fmt.Errorf("unsigned goodbye from %q", b.origin)
	}
	e := n.store.get(b.origin)
	if e == nil || e.chain == nil {
		return 0, fmt.Errorf("goodbye from %q, whose entry is not held: %w", b.origin, errUnverifiable)
	}
	if err := n.signer.verifyMessage(e.chain, signedBye(b.origin, b.version), b.sig); err != nil {
		return rBadSignature, fmt.Errorf("goodbye from %q: %w", b.origin, err)
	}
	return 0, nil
}

// authenticate checks that origin's entry e may be accepted: a plausible
// version and, when this node has an identity, a valid signature by a
// gateway chain whose SPIFFE ID is the one the origin member announces.
// der is the chain carried with e, nil if none. On success e.chain is
// set. An error is errUnverifiable or comes with the reason to count.
func (n *Node) authenticate(e *entry, der []byte, now time.Time) (reason, error) {
	if err := e.version.plausible(now); err != nil {
		return rVersionImplausible, fmt.Errorf("entry from %q: %w", e.origin, err)
	}
	if n.signer == nil {
		return 0, nil
	}
	if !e.signed() {
		return rUnsigned, fmt.Errorf("unsigned entry from %q: this gateway accepts only entries signed by a gateway's SVID", e.origin)
	}
	c, r, err := n.signer.chainFor(e.chainDigest, der, now)
	if err != nil {
		return r, fmt.Errorf("entry from %q: %w", e.origin, err)
	}
	want, ok := n.announcedID(e.origin)
	switch {
	case !ok:
		return 0, fmt.Errorf("entry from %q, not a member here yet: %w", e.origin, errUnverifiable)
	case want != c.id:
		return rIdentityMismatch, fmt.Errorf("entry from %q signed by %s, but %q announces %q", e.origin, c.id, e.origin, want)
	}
	if err := n.signer.verify(c, e.origin, e.version, e.hash, e.sig); err != nil {
		return rBadSignature, fmt.Errorf("entry from %q: %w", e.origin, err)
	}
	e.chain = c
	return 0, nil
}

// announcedID returns the SPIFFE ID a member announces in its meta.
func (n *Node) announcedID(name string) (string, bool) {
	n.idsMu.Lock()
	defer n.idsMu.Unlock()
	id, ok := n.ids[name]
	return id, ok
}

// setAnnounced records a member's announced SPIFFE ID, from memberlist's
// callbacks: entries that arrive in the same push/pull need it before the
// event loop has applied the join.
func (n *Node) setAnnounced(name, id string) {
	n.idsMu.Lock()
	defer n.idsMu.Unlock()
	n.ids[name] = id
}

// signOwn signs this node's own entry e when the node has an identity.
func (n *Node) signOwn(e *entry) error {
	if n.signer == nil {
		return nil
	}
	return n.signer.sign(e)
}

// resign signs this node's entry again, under a new version, when its
// SVID rotated, and sends it with the new chain to every live member over
// TCP, so that the entry others hold and relay never outlives its
// certificate.
func (n *Node) resign() {
	if n.signer == nil {
		return
	}
	c, _, err := n.signer.current()
	if err != nil {
		n.log.Error("gossip: cannot read this gateway's SVID; its entry keeps its old signature", "err", err)
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	cur := n.store.get(n.cfg.Name)
	if n.isClosed() || cur.chainDigest == c.digest {
		return
	}
	e := newEntry(n.cfg.Name, Version{Epoch: cur.version.Epoch, Seq: cur.version.Seq + 1}, cur.summary, time.Now())
	if err := n.signer.sign(e); err != nil {
		n.log.Error("gossip: cannot sign this gateway's entry with its new SVID", "err", err)
		return
	}
	n.store.put(e)
	n.gen++
	n.log.Info("gossip: entry signed with the rotated SVID", "version", e.version, "expires", c.notAfter)
	n.pendingReliable, n.pendingBase = encodeMessage(kindEntry, encodeEntryMessage(e, c.der)), nil
	n.kickReliable()
}
