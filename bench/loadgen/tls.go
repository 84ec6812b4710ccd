package main

import (
	"crypto/tls"
	"flag"
	"fmt"

	"github.com/ewgate/ewgate/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The identities of the TLS mode, as Istio would name them: the client is
// a sidecar of service account "sleep", the sink a sidecar of "echo".
var (
	benchTrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	clientID         = spiffeid.RequireFromPath(benchTrustDomain, "/ns/demo/sa/sleep")
	sinkID           = spiffeid.RequireFromPath(benchTrustDomain, "/ns/demo/sa/echo")
)

// runCA implements "loadgen ca -dir D": a development CA (ECDSA P-256,
// trust domain cluster.local) written to D, from which the client and the
// TLS sink each issue their own SVID at start.
func runCA(args []string) error {
	fs := flag.NewFlagSet("ca", flag.ContinueOnError)
	dir := fs.String("dir", "", "`directory` to write ca.crt and ca.key to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("-dir is required")
	}
	ca, err := identity.NewDevCA(benchTrustDomain)
	if err != nil {
		return err
	}
	return ca.WriteFiles(*dir)
}

// mtlsConfig loads the CA in dir and returns a TLS 1.3 mTLS configuration
// presenting a new SVID for id: a server one (client certificate required)
// or a client one, each verifying the peer against the CA. Session tickets
// are off on both ends, so every connection is a full handshake, as the
// first connection of each sidecar pair is.
func mtlsConfig(dir string, id spiffeid.ID, server bool, alpn string) (*tls.Config, error) {
	ca, err := identity.LoadDevCA(dir)
	if err != nil {
		return nil, err
	}
	src, err := ca.NewSource(id, identity.IssueOptions{})
	if err != nil {
		return nil, err
	}
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
