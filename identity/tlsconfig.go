package identity

import (
	"crypto/tls"
	"log/slog"
)

// ServerTLSConfig returns a TLS 1.3 server configuration for the accepting
// end of a SPIFFE mTLS link. Every handshake presents src's current SVID (so
// a rotated SVID is used by new connections while established ones keep
// theirs), requires a client certificate, and accepts the client only if
// az.Authorize does, verifying it against the bundle of the client's own
// trust domain. The check also runs on resumed sessions, so a removed root
// or a narrowed policy applies to them too.
//
// The caller sets NextProtos and may adjust other fields that do not concern
// authentication. If az is nil, an Authorizer with the zero Policy (own trust
// domain only) and no logger is used. src must not be nil.
func ServerTLSConfig(src Source, az *Authorizer) *tls.Config {
	az = orDefault(az)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return tlsCertificate(src)
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := az.Authorize(src, cs.PeerCertificates)
			return err
		},
	}
}

// ClientTLSConfig returns a TLS 1.3 client configuration for the dialing end
// of a SPIFFE mTLS link. Every handshake presents src's current SVID and
// accepts the server only if az.Authorize does. The server certificate is
// verified against SPIFFE bundles, not by host name, so ServerName is free to
// carry routing SNI.
//
// The caller sets NextProtos and ServerName. If az is nil, an Authorizer
// with the zero Policy and no logger is used. src must not be nil.
func ClientTLSConfig(src Source, az *Authorizer) *tls.Config {
	az = orDefault(az)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Verification is done by VerifyConnection against SPIFFE bundles;
		// web PKI verification of the host name does not apply.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return tlsCertificate(src)
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := az.Authorize(src, cs.PeerCertificates)
			return err
		},
	}
}

func orDefault(az *Authorizer) *Authorizer {
	if az != nil {
		return az
	}
	return &Authorizer{log: slog.New(slog.DiscardHandler), match: new(Matcher)}
}
