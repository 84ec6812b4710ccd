package main

import (
	"crypto/tls"
	"fmt"
	"path/filepath"

	"github.com/ewgate/ewgate/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// mtlsConfig loads the SVID in dir, as "ewgate ca issue --out DIR" writes
// it (cert.pem, key.pem, bundle.pem), and returns a TLS 1.3 mTLS
// configuration presenting it: a server one (client certificate required)
// or a client one, each verifying the peer against the bundle, for the
// SVID's own trust domain. Session tickets are off on both ends, so every
// connection is a full handshake, as the first connection of each sidecar
// pair is.
func mtlsConfig(dir string, server bool, alpn string) (*tls.Config, error) {
	svid, err := x509svid.Load(filepath.Join(dir, identity.FileCert), filepath.Join(dir, identity.FileKey))
	if err != nil {
		return nil, fmt.Errorf("SVID in %s (ewgate ca issue --out): %w", dir, err)
	}
	bundle, err := x509bundle.Load(svid.ID.TrustDomain(), filepath.Join(dir, identity.FileBundle))
	if err != nil {
		return nil, fmt.Errorf("trust bundle in %s: %w", dir, err)
	}
	src := identity.NewMemorySource(svid, bundle)
	var cfg *tls.Config
	if server {
		cfg = identity.ServerTLSConfig(src, nil)
	} else {
		cfg = identity.ClientTLSConfig(src, nil)
	}
	cfg.SessionTicketsDisabled = true
	cfg.NextProtos = []string{alpn}
	return cfg, nil
}
