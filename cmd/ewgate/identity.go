package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/ewgate/ewgate/identity"
	"github.com/ewgate/ewgate/metrics"
)

// identitySource is an SVID source that must be closed.
type identitySource interface {
	identity.Source
	io.Closer
}

// loadIdentity builds the node's SPIFFE identity from settings: the
// Workload API (--spiffe-socket or SPIFFE_ENDPOINT_SOCKET) or files
// (--svid-cert, --svid-key, --trust-bundle). It returns nil when none is
// configured: passthrough needs no identity of its own.
func loadIdentity(ctx context.Context, s settings, log *slog.Logger) (identitySource, error) {
	files := s.SVIDCert != "" || s.SVIDKey != "" || len(s.TrustBundles) > 0
	socket := s.SPIFFESocket
	if socket == "" && !files {
		socket = os.Getenv("SPIFFE_ENDPOINT_SOCKET")
	}
	switch {
	case socket != "" && files:
		return nil, errors.New("identity: give either --spiffe-socket or --svid-cert/--svid-key/--trust-bundle, not both")
	case socket != "":
		src, err := identity.NewWorkloadAPISource(ctx, identity.WorkloadAPIConfig{
			Socket:       socket,
			StartTimeout: time.Duration(s.SPIFFETimeout),
			Logger:       log,
		})
		if err != nil {
			return nil, fmt.Errorf("identity: %w", err)
		}
		return src, nil
	case files:
		if s.SVIDCert == "" || s.SVIDKey == "" || len(s.TrustBundles) == 0 {
			return nil, errors.New("identity: --svid-cert, --svid-key and --trust-bundle go together")
		}
		cfg := identity.FileConfig{CertFile: s.SVIDCert, KeyFile: s.SVIDKey, Logger: log}
		for _, b := range s.TrustBundles {
			bf, err := identity.ParseBundleFile(b)
			if err != nil {
				return nil, fmt.Errorf("identity: --trust-bundle: %w", err)
			}
			cfg.Bundles = append(cfg.Bundles, bf)
		}
		src, err := identity.NewFileSource(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("identity: %w", err)
		}
		return src, nil
	}
	return nil, nil
}

// watchIdentity exports the SVID's remaining validity and warns when it
// runs low, until ctx is done.
func watchIdentity(ctx context.Context, src identity.Source, reg *metrics.Registry, s settings, log *slog.Logger) {
	reg.GaugeFunc("ewgate_svid_remaining_seconds", "Seconds until this node's SVID expires; negative once expired.", func() float64 {
		exp, err := identity.Expiry(src)
		if err != nil {
			return 0
		}
		return time.Until(exp).Seconds()
	})
	if svid, err := src.GetX509SVID(); err == nil {
		log.Info("identity loaded", "spiffe_id", svid.ID.String(), "expires", svid.Certificates[0].NotAfter)
	}
	go identity.WatchExpiry(ctx, src, identity.ExpiryConfig{Threshold: time.Duration(s.SVIDExpiryWarning), Logger: log})
}

// workloadTrustDomain returns the trust domain of this network's
// workloads, of the SPIFFE IDs other networks learn for them: flag
// (--trust-domain) if set, else svid, the trust domain of the gateway's
// own SVID ("" without one), since workloads usually share their
// gateway's and an operator should not have to say it twice. "" leaves
// discovery.Node's default, DefaultTrustDomain. A flag other than svid is
// logged, not refused: workloads may live in another trust domain.
func workloadTrustDomain(flag, svid string, log *slog.Logger) string {
	if flag != "" && svid != "" && flag != svid {
		log.Warn("this gateway's SVID is in another trust domain than --trust-domain, which other networks' sidecars use to verify this network's endpoints",
			"svid_trust_domain", svid, "trust_domain", flag)
	}
	return cmp.Or(flag, svid)
}
