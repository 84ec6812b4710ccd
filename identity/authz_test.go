package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ewgate/ewgate/internal/leakcheck"
)

const (
	gatewayID = "spiffe://cluster.local/ns/istio-system/sa/eastwest"
	peerID    = "spiffe://cluster.local/ns/istio-system/sa/peer"
)

// craftLeaf signs tmpl with ca for a new P-256 key and returns it as a TLS
// certificate, bypassing the checks of DevCA.Issue.
func craftLeaf(t *testing.T, ca *DevCA, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Minute)
		tmpl.NotAfter = time.Now().Add(time.Hour)
	}
	leaf, err := ca.sign(tmpl, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return rawCertificate(key, leaf)
}

// issued returns an SVID of ca for id as a TLS certificate.
func issued(t *testing.T, ca *DevCA, id string, opts IssueOptions) tls.Certificate {
	t.Helper()
	svid, err := ca.Issue(mustID(t, id), opts)
	if err != nil {
		t.Fatal(err)
	}
	return rawCertificate(svid.PrivateKey, svid.Certificates...)
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestServerAuthorization connects clients presenting various certificates
// to a server over real TLS and checks what the server accepts, the error
// of each rejection, the counters and the log.
func TestServerAuthorization(t *testing.T) {
	leakcheck.Check(t)
	local := mustCA(t, "cluster.local")
	remote := mustCA(t, "remote.example")
	evil := mustCA(t, "evil.example")
	rogue := mustCA(t, "cluster.local") // same trust domain, root not in any bundle

	tests := []struct {
		name    string
		policy  Policy
		client  func(t *testing.T) tls.Certificate
		wantID  string // accepted with this ID
		reason  Reason // or rejected for this reason
		wantErr string // with this text in the error
	}{{
		name:   "own trust domain by default",
		client: func(t *testing.T) tls.Certificate { return issued(t, local, peerID, IssueOptions{}) },
		wantID: peerID,
	}, {
		name:   "federated trust domain allowed by policy",
		policy: Policy{TrustDomains: []string{"cluster.local", "remote.example"}},
		client: func(t *testing.T) tls.Certificate {
			return issued(t, remote, "spiffe://remote.example/ns/istio-system/sa/eastwest", IssueOptions{})
		},
		wantID: "spiffe://remote.example/ns/istio-system/sa/eastwest",
	}, {
		name:   "exact ID allowed",
		policy: Policy{IDs: []string{peerID}},
		client: func(t *testing.T) tls.Certificate { return issued(t, local, peerID, IssueOptions{}) },
		wantID: peerID,
	}, {
		name:   "ID under an allowed prefix",
		policy: Policy{IDPrefixes: []string{"spiffe://cluster.local/ns/istio-system/"}},
		client: func(t *testing.T) tls.Certificate { return issued(t, local, peerID, IssueOptions{}) },
		wantID: peerID,
	}, {
		name:   "unknown trust domain",
		policy: Policy{TrustDomains: []string{"evil.example", "cluster.local"}},
		client: func(t *testing.T) tls.Certificate {
			return issued(t, evil, "spiffe://evil.example/ns/x/sa/y", IssueOptions{})
		},
		reason:  ReasonUnknownTrustDomain,
		wantErr: `unknown trust domain "evil.example": no trust bundle configured`,
	}, {
		name: "federated trust domain outside the default policy",
		client: func(t *testing.T) tls.Certificate {
			return issued(t, remote, "spiffe://remote.example/ns/istio-system/sa/eastwest", IssueOptions{})
		},
		reason:  ReasonNotAllowed,
		wantErr: `trust domain "remote.example" is not allowed: the default policy allows only the own trust domain "cluster.local"`,
	}, {
		name:   "ID outside the policy",
		policy: Policy{IDPrefixes: []string{"spiffe://cluster.local/ns/istio-system"}, IDs: []string{gatewayID}},
		client: func(t *testing.T) tls.Certificate {
			return issued(t, local, "spiffe://cluster.local/ns/istio-system-x/sa/y", IssueOptions{})
		},
		reason:  ReasonNotAllowed,
		wantErr: "peer spiffe://cluster.local/ns/istio-system-x/sa/y: not_allowed: ID is not allowed by the policy",
	}, {
		name: "expired SVID",
		client: func(t *testing.T) tls.Certificate {
			return issued(t, local, peerID, IssueOptions{NotBefore: time.Now().Add(-2 * time.Hour), TTL: time.Hour})
		},
		reason:  ReasonExpired,
		wantErr: "leaf certificate expired at",
	}, {
		name: "SVID not yet valid",
		client: func(t *testing.T) tls.Certificate {
			return issued(t, local, peerID, IssueOptions{NotBefore: time.Now().Add(time.Hour), TTL: time.Hour})
		},
		reason:  ReasonExpired,
		wantErr: "leaf certificate not valid before",
	}, {
		name: "no URI SAN",
		client: func(t *testing.T) tls.Certificate {
			return craftLeaf(t, local, &x509.Certificate{DNSNames: []string{"peer.example"}, KeyUsage: x509.KeyUsageDigitalSignature})
		},
		reason:  ReasonNoSPIFFEID,
		wantErr: "rejected peer without SPIFFE ID: no_spiffe_id: leaf certificate (subject \"O=ewgate dev\") has no valid SPIFFE URI SAN: certificate contains no URI SAN",
	}, {
		name: "URI SAN that is not SPIFFE",
		client: func(t *testing.T) tls.Certificate {
			return craftLeaf(t, local, &x509.Certificate{URIs: []*url.URL{mustURL(t, "https://peer.example/x")}})
		},
		reason:  ReasonNoSPIFFEID,
		wantErr: "has no valid SPIFFE URI SAN",
	}, {
		name: "CA-flagged leaf",
		client: func(t *testing.T) tls.Certificate {
			return craftLeaf(t, local, &x509.Certificate{URIs: []*url.URL{mustID(t, peerID).URL()}, IsCA: true,
				KeyUsage: x509.KeyUsageDigitalSignature})
		},
		reason:  ReasonCALeaf,
		wantErr: "leaf certificate is a CA",
	}, {
		name: "leaf allowed to sign certificates",
		client: func(t *testing.T) tls.Certificate {
			return craftLeaf(t, local, &x509.Certificate{URIs: []*url.URL{mustID(t, peerID).URL()},
				KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign})
		},
		reason:  ReasonCALeaf,
		wantErr: "may sign certificates",
	}, {
		name:    "root not in the bundle",
		client:  func(t *testing.T) tls.Certificate { return issued(t, rogue, peerID, IssueOptions{}) },
		reason:  ReasonUntrusted,
		wantErr: `chain does not verify against the trust bundle of "cluster.local"`,
	}, {
		name:   "ID of one trust domain signed by another's root",
		policy: Policy{TrustDomains: []string{"cluster.local", "remote.example"}},
		client: func(t *testing.T) tls.Certificate {
			return craftLeaf(t, local, &x509.Certificate{URIs: []*url.URL{mustID(t, "spiffe://remote.example/ns/a/sa/b").URL()},
				KeyUsage: x509.KeyUsageDigitalSignature})
		},
		reason:  ReasonUntrusted,
		wantErr: `trust bundle of "remote.example"`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logger, logs := newLogRecorder()
			az := mustAuthorizer(t, tt.policy, logger)
			src := mustSource(t, local, gatewayID, IssueOptions{})
			src.SetBundles(local.Bundle(), remote.Bundle())
			srv := startEchoServer(t, ServerTLSConfig(src, az))

			// The client trusts the server, so only the server decides.
			clientCfg := &tls.Config{
				MinVersion:         tls.VersionTLS13,
				InsecureSkipVerify: true,
				Certificates:       []tls.Certificate{tt.client(t)},
			}
			_, dialErr := dial(t, srv.addr(), clientCfg)
			res := srv.result(t)
			stats := az.Stats()

			if tt.wantID != "" {
				if res.err != nil || dialErr != nil {
					t.Fatalf("want accepted; server error: %v; client error: %v", res.err, dialErr)
				}
				if res.peer.String() != tt.wantID {
					t.Errorf("peer ID %q, want %q", res.peer, tt.wantID)
				}
				if stats.Accepted != 1 {
					t.Errorf("accepted counter %d, want 1", stats.Accepted)
				}
				return
			}
			if dialErr == nil {
				t.Error("client round trip succeeded on a rejected connection")
			}
			rej := asReject(t, res.err)
			if rej.Reason != tt.reason {
				t.Errorf("reason %q, want %q (error: %v)", rej.Reason, tt.reason, rej)
			}
			if !strings.Contains(res.err.Error(), tt.wantErr) {
				t.Errorf("error %q\ndoes not contain %q", res.err, tt.wantErr)
			}
			for _, r := range Reasons() {
				want := uint64(0)
				if r == tt.reason {
					want = 1
				}
				if stats.Rejected[r] != want {
					t.Errorf("rejected[%s] = %d, want %d", r, stats.Rejected[r], want)
				}
			}
			if stats.Accepted != 0 {
				t.Errorf("accepted counter %d, want 0", stats.Accepted)
			}
			if n := logs.count("WARN rejected peer", "reason="+string(tt.reason), "peer_id="+rej.PeerID); n != 1 {
				t.Errorf("want one rejection log line with peer ID and reason, got %d in:\n%s", n, logs)
			}
		})
	}
}

// TestClientAuthorization checks that the dialing end verifies and
// authorizes the server.
func TestClientAuthorization(t *testing.T) {
	leakcheck.Check(t)
	local := mustCA(t, "cluster.local")
	evil := mustCA(t, "evil.example")
	client := mustSource(t, local, peerID, IssueOptions{})

	tests := []struct {
		name    string
		server  *MemorySource
		policy  Policy
		reason  Reason
		wantErr string
	}{
		{"allowed", mustSource(t, local, gatewayID, IssueOptions{}), Policy{IDs: []string{gatewayID}}, "", ""},
		{"server ID outside the policy", mustSource(t, local, peerID, IssueOptions{}), Policy{IDs: []string{gatewayID}},
			ReasonNotAllowed, "rejected peer " + peerID + ": not_allowed"},
		{"server from an unknown trust domain", mustSource(t, evil, "spiffe://evil.example/ns/a/sa/b", IssueOptions{}), Policy{},
			ReasonUnknownTrustDomain, `unknown trust domain "evil.example"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.server.SetBundles(local.Bundle())
			srv := startEchoServer(t, ServerTLSConfig(tt.server, nil))
			az := mustAuthorizer(t, tt.policy, nil)
			cfg := ClientTLSConfig(client, az)
			cfg.ServerName = "outbound_.15443_._.eastwest.istio-system.svc.cluster.local" // routing SNI, not verified
			_, err := dial(t, srv.addr(), cfg)
			if tt.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				if res := srv.result(t); res.err != nil || res.peer.String() != peerID {
					t.Fatalf("server saw %+v", res)
				}
				return
			}
			if rej := asReject(t, err); rej.Reason != tt.reason {
				t.Errorf("reason %q, want %q", rej.Reason, tt.reason)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
			if got := az.Stats().Rejected[tt.reason]; got != 1 {
				t.Errorf("rejected[%s] = %d, want 1", tt.reason, got)
			}
		})
	}
}

// TestRootRotation rotates a trust domain's root: while the bundle holds the
// old and the new root, peers of both connect; once the old root is removed
// from the same source, only peers of the new one do, and a connection
// established before keeps working.
func TestRootRotation(t *testing.T) {
	leakcheck.Check(t)
	oldCA := mustCA(t, "cluster.local")
	newCA := mustCA(t, "cluster.local")

	server := mustSource(t, oldCA, gatewayID, IssueOptions{})
	server.SetBundles(oldCA.Bundle(), newCA.Bundle()) // step 1: trust both roots
	az := mustAuthorizer(t, Policy{}, nil)
	srv := startEchoServer(t, ServerTLSConfig(server, az))

	oldPeer := mustSource(t, oldCA, peerID, IssueOptions{})
	newPeer := mustSource(t, newCA, peerID, IssueOptions{})
	for _, p := range []*MemorySource{oldPeer, newPeer} {
		p.SetBundles(oldCA.Bundle(), newCA.Bundle())
	}

	established, err := dial(t, srv.addr(), ClientTLSConfig(oldPeer, nil))
	if err != nil {
		t.Fatalf("peer of the old root, bundle with both roots: %v", err)
	}
	srv.result(t)
	if _, err := dial(t, srv.addr(), ClientTLSConfig(newPeer, nil)); err != nil {
		t.Fatalf("peer of the new root, bundle with both roots: %v", err)
	}
	srv.result(t)

	// Step 2: the server is re-issued by the new root; step 3: the old
	// root leaves its bundle.
	svid, err := newCA.Issue(mustID(t, gatewayID), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	server.SetX509SVID(svid)
	server.SetBundles(newCA.Bundle())

	if _, err := dial(t, srv.addr(), ClientTLSConfig(oldPeer, nil)); err == nil {
		t.Fatal("peer of the removed root connected")
	}
	if rej := asReject(t, srv.result(t).err); rej.Reason != ReasonUntrusted {
		t.Fatalf("peer of the removed root: reason %q, want %q", rej.Reason, ReasonUntrusted)
	}
	c, err := dial(t, srv.addr(), ClientTLSConfig(newPeer, nil))
	if err != nil {
		t.Fatalf("peer of the new root after the old root was removed: %v", err)
	}
	srv.result(t)
	if got := serverSerial(c); got.Cmp(svid.Certificates[0].SerialNumber) != 0 {
		t.Errorf("server presented serial %x, want the re-issued %x", got, svid.Certificates[0].SerialNumber)
	}
	if err := echo(established, "still there"); err != nil {
		t.Errorf("connection established before the rotation: %v", err)
	}
}

func TestNewAuthorizerRejectsBadPolicy(t *testing.T) {
	tests := []struct {
		name    string
		policy  Policy
		wantErr string
	}{
		{"trust domain", Policy{TrustDomains: []string{"Not A Domain"}}, `policy trust domain "Not A Domain"`},
		{"prefix", Policy{IDPrefixes: []string{"https://cluster.local/ns"}}, `policy ID prefix "https://cluster.local/ns"`},
		{"ID", Policy{IDs: []string{"spiffe://cluster.local/ns/../x"}}, `policy ID "spiffe://cluster.local/ns/../x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewAuthorizer(tt.policy, nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestAuthorizeWithoutCertificate(t *testing.T) {
	ca := mustCA(t, "cluster.local")
	az := mustAuthorizer(t, Policy{}, nil)
	_, err := az.Authorize(mustSource(t, ca, gatewayID, IssueOptions{}), nil)
	if rej := asReject(t, err); rej.Reason != ReasonBadCertificate {
		t.Fatalf("reason %q, want %q", rej.Reason, ReasonBadCertificate)
	}
	if got := az.Stats().Rejected[ReasonBadCertificate]; got != 1 {
		t.Fatalf("counter %d, want 1", got)
	}
}

func TestMatcher(t *testing.T) {
	m, err := NewMatcher(Policy{
		TrustDomains: []string{"other.example"},
		IDPrefixes:   []string{"spiffe://cluster.local/ns/vms/"},
		IDs:          []string{"spiffe://cluster.local/ns/istio-system/sa/agent"},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		id   string
		want bool
	}{
		{"spiffe://other.example/anything", true},
		{"spiffe://cluster.local/ns/vms", true},
		{"spiffe://cluster.local/ns/vms/sa/vm-agent", true},
		{"spiffe://cluster.local/ns/vms-x/sa/vm-agent", false},
		{"spiffe://cluster.local/ns/istio-system/sa/agent", true},
		{"spiffe://cluster.local/ns/istio-system/sa/agent2", false},
		{"spiffe://cluster.local/ns/default/sa/default", false},
	}
	for _, tt := range tests {
		if got := m.Allows(spiffeid.RequireFromString(tt.id)); got != tt.want {
			t.Errorf("Allows(%s) = %v, want %v", tt.id, got, tt.want)
		}
	}
	if m.Empty() {
		t.Error("Empty() = true for a policy with entries")
	}
	zero, err := NewMatcher(Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if !zero.Empty() || zero.Allows(spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")) {
		t.Error("the zero policy's Matcher must match nothing")
	}
	if _, err := NewMatcher(Policy{IDs: []string{"http://x"}}); err == nil {
		t.Error("NewMatcher accepted an ID that is not a SPIFFE ID")
	}
}
