package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ewgate/ewgate/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const caUsage = `Usage:
  ewgate ca init  --trust-domain NAME --out DIR [--force]
  ewgate ca issue --ca DIR --spiffe-id ID --out DIR [--ttl 24h] [--dns NAME]...

A development SPIFFE certificate authority, so that tests, demos and labs
need nothing else: a self-signed ECDSA P-256 root for one trust domain, and
X.509 SVIDs issued from it. Use SPIRE or your own PKI in production.

init   creates a root valid for ten years and writes DIR/ca.crt (root
       certificate), DIR/ca.key (root key, PKCS#8, mode 0600) and
       DIR/bundle.pem (trust bundle). It refuses to replace an existing
       ca.key unless --force is given.
issue  issues an SVID (one URI SAN, ServerAuth+ClientAuth, not a CA) and
       writes DIR/cert.pem (chain), DIR/key.pem (PKCS#8, mode 0600) and
       DIR/bundle.pem, ready for "ewgate run --svid-cert DIR/cert.pem
       --svid-key DIR/key.pem --trust-bundle DIR/bundle.pem". Files are
       replaced atomically, so a running gateway picks up a re-issued SVID.

Examples:
  ewgate ca init --trust-domain cluster.local --out ca
  ewgate ca issue --ca ca --spiffe-id spiffe://cluster.local/ns/istio-system/sa/eastwest --out gw1
  openssl verify -CAfile gw1/bundle.pem gw1/cert.pem
`

// runCA runs "ewgate ca init" and "ewgate ca issue"; args follow "ca".
func runCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, caUsage)
		return errors.New("ca: missing subcommand (init or issue)")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	switch sub, rest := args[0], args[1:]; sub {
	case "init":
		return runCAInit(rest, stdout, stderr)
	case "issue":
		return runCAIssue(rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, caUsage)
		return nil
	default:
		fmt.Fprint(stderr, caUsage)
		return fmt.Errorf("ca: unknown subcommand %q (want init or issue)", sub)
	}
}

// newCAFlagSet returns a flag set whose usage prints the ca usage and name's
// flags to stderr.
func newCAFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("ca "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, caUsage)
		fmt.Fprintf(stderr, "\nFlags of ca %s:\n", name)
		fs.PrintDefaults()
	}
	return fs
}

func runCAInit(args []string, stdout, stderr io.Writer) error {
	fs := newCAFlagSet("init", stderr)
	tdName := fs.String("trust-domain", "", "trust domain of the CA, e.g. cluster.local (required)")
	out := fs.String("out", "", "directory to write ca.crt, ca.key and bundle.pem to (required)")
	force := fs.Bool("force", false, "replace an existing CA in --out")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := caNoArgs(fs); err != nil {
		return err
	}
	if *tdName == "" || *out == "" {
		fs.Usage()
		return errors.New("ca init: --trust-domain and --out are required")
	}
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return fmt.Errorf("ca init: --trust-domain %q: %w", *tdName, err)
	}
	keyPath := filepath.Join(*out, identity.FileCAKey)
	if _, err := os.Stat(keyPath); err == nil && !*force {
		return fmt.Errorf("ca init: %s exists; pass --force to replace the CA (every SVID it issued stops verifying)", keyPath)
	}
	ca, err := identity.NewDevCA(td)
	if err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	if err := ca.WriteFiles(*out); err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s, %s and %s: root for trust domain %s, valid until %s\n",
		filepath.Join(*out, identity.FileCACert), keyPath, filepath.Join(*out, identity.FileBundle),
		td, ca.Certificate().NotAfter.UTC().Format(time.RFC3339))
	return nil
}

func runCAIssue(args []string, stdout, stderr io.Writer) error {
	fs := newCAFlagSet("issue", stderr)
	caDir := fs.String("ca", "", "directory of the CA made by \"ewgate ca init\" (required)")
	idStr := fs.String("spiffe-id", "", "SPIFFE ID of the SVID, e.g. spiffe://cluster.local/ns/istio-system/sa/eastwest (required)")
	out := fs.String("out", "", "directory to write cert.pem, key.pem and bundle.pem to (required)")
	ttl := fs.Duration("ttl", identity.DefaultSVIDTTL, "validity of the SVID")
	var dns caStringList
	fs.Var(&dns, "dns", "DNS SAN to add besides the SPIFFE ID (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := caNoArgs(fs); err != nil {
		return err
	}
	if *caDir == "" || *idStr == "" || *out == "" {
		fs.Usage()
		return errors.New("ca issue: --ca, --spiffe-id and --out are required")
	}
	if *ttl <= 0 {
		return fmt.Errorf("ca issue: --ttl %s: must be positive", *ttl)
	}
	id, err := spiffeid.FromString(*idStr)
	if err != nil {
		return fmt.Errorf("ca issue: --spiffe-id %q: %w", *idStr, err)
	}
	ca, err := identity.LoadDevCA(*caDir)
	if err != nil {
		return fmt.Errorf("ca issue: %w", err)
	}
	svid, err := ca.Issue(id, identity.IssueOptions{TTL: *ttl, DNSNames: dns})
	if err != nil {
		return fmt.Errorf("ca issue: %w", err)
	}
	if err := identity.WriteSVIDFiles(*out, svid, ca.Bundle()); err != nil {
		return fmt.Errorf("ca issue: %w", err)
	}
	leaf := svid.Certificates[0]
	fmt.Fprintf(stdout, "wrote %s, %s and %s: SVID %s, serial %s, valid until %s\n",
		filepath.Join(*out, identity.FileCert), filepath.Join(*out, identity.FileKey), filepath.Join(*out, identity.FileBundle),
		id, leaf.SerialNumber.Text(16), leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// caNoArgs rejects positional arguments left after the flags.
func caNoArgs(fs *flag.FlagSet) error {
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("%s: unexpected arguments: %s", fs.Name(), strings.Join(fs.Args(), " "))
	}
	return nil
}

// caStringList is a repeatable string flag.
type caStringList []string

func (l *caStringList) String() string { return strings.Join(*l, ",") }

func (l *caStringList) Set(s string) error {
	if s == "" {
		return errors.New("empty value")
	}
	*l = append(*l, s)
	return nil
}
