package identity

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// parseCertificatesPEM parses every CERTIFICATE block in data, in order. It
// fails if there is none or if data holds anything but certificates.
func parseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(certs) > 0 && len(bytes.TrimSpace(rest)) != 0 {
				return nil, errors.New("trailing data that is not PEM")
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q, want CERTIFICATE", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

// parsePrivateKeyPEM parses the first PEM block of data as a PKCS#8
// ("PRIVATE KEY"), SEC 1 ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY")
// private key.
func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM private key block found")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q, want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
	return signer, nil
}

// checkKeyMatches reports an error if key is not the private key of cert.
func checkKeyMatches(key crypto.Signer, cert *x509.Certificate) error {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return fmt.Errorf("private key does not match the public key of certificate serial %s", cert.SerialNumber.Text(16))
	}
	return nil
}

// parseSVIDPEM parses an SVID from a PEM certificate chain (leaf first) and a
// PEM private key in any format parsePrivateKeyPEM accepts. The result is
// validated as an X.509 SVID (one SPIFFE URI SAN, leaf not a CA, key
// matching).
func parseSVIDPEM(certPEM, keyPEM []byte) (*x509svid.SVID, error) {
	certs, err := parseCertificatesPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate chain: %w", err)
	}
	key, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	if err := checkKeyMatches(key, certs[0]); err != nil {
		return nil, err
	}
	// x509svid.ParseRaw validates the SVID; it wants PKCS#8.
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	var chainDER []byte
	for _, c := range certs {
		chainDER = append(chainDER, c.Raw...)
	}
	svid, err := x509svid.ParseRaw(chainDER, keyDER)
	if err != nil {
		return nil, err
	}
	return svid, nil
}
