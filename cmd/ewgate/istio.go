package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/ewgate/ewgate/istiopub"
	"github.com/ewgate/ewgate/metrics"
)

// publishSettings are the settings of the Istio publisher (istiopub):
// off unless PublishToIstio.
type publishSettings struct {
	PublishToIstio bool `json:"publishToIstio"`
	// PublishNamespace holds the Lease, the Gateways and the entries of
	// remote services whose namespace does not exist here. Default
	// $POD_NAMESPACE, else DefaultPublishNamespace.
	PublishNamespace string `json:"publishNamespace"`
	// PublishLocal is istiopub.Options.Local; PublishLocalGateways its
	// LocalGateways.
	PublishLocal         bool     `json:"publishLocal"`
	PublishLocalGateways []string `json:"publishLocalGateways"`
	PublishGrace         duration `json:"publishGrace"`
}

// DefaultPublishNamespace is PublishNamespace outside a pod: the
// namespace deploy/ installs ewgate in.
const DefaultPublishNamespace = "ewgate-system"

func defaultPublishSettings() publishSettings {
	return publishSettings{PublishGrace: duration(istiopub.DefaultGrace)}
}

func (s *publishSettings) flags(fs *flag.FlagSet) {
	fs.BoolVar(&s.PublishToIstio, "publish-to-istio", s.PublishToIstio, "write this cluster's Istio resources describing the other networks gossip reports (istio-remote Gateways, ServiceEntries, WorkloadEntries); one writer per cluster, elected by a Lease; needs gossip and a Kubernetes client")
	fs.StringVar(&s.PublishNamespace, "publish-namespace", s.PublishNamespace, "`namespace` of the publisher's Lease and Gateways, and of the entries of remote services whose namespace does not exist here (default $POD_NAMESPACE, else ewgate-system)")
	fs.BoolVar(&s.PublishLocal, "publish-local", s.PublishLocal, "local mode: each remote network's Gateway lists this network's own gateways, so sidecars reach other networks through them and their tunnels")
	fs.Var(&listFlag{list: &s.PublishLocalGateways, comma: true}, "publish-local-gateways", "with --publish-local, the `host:port,...` sidecars reach this network's gateways at (default: their gossiped passthrough addresses)")
	fs.Var(&s.PublishGrace, "publish-grace", "how long a network no gateway reports any more stays published, so that a gossip blip does not churn istiod")
}

// check rejects publisher settings that parse but mean nothing.
func (s *publishSettings) check() error {
	if s.PublishGrace < 0 {
		return fmt.Errorf("--publish-grace (publishGrace) %v: want 0 or more", time.Duration(s.PublishGrace))
	}
	if len(s.PublishLocalGateways) > 0 && !s.PublishLocal {
		return errors.New("--publish-local-gateways (publishLocalGateways) without --publish-local (publishLocal)")
	}
	for _, a := range s.PublishLocalGateways {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("--publish-local-gateways (publishLocalGateways) %q: %w", a, err)
		}
	}
	return nil
}

// newPublisher builds the publisher the settings ask for, or returns nil.
// It publishes what g's gossip node reports, under its node name.
func newPublisher(s settings, g *gossip, log *slog.Logger) (*istiopub.Publisher, error) {
	if !s.PublishToIstio {
		return nil, nil
	}
	if g == nil {
		return nil, errors.New("--publish-to-istio needs gossip (--gossip-address): other networks are learnt from it")
	}
	rc, err := processKubeEnv().kubeRESTConfig(s.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("--publish-to-istio needs this cluster's API server: %w", err)
	}
	grace := time.Duration(s.PublishGrace)
	if grace == 0 {
		grace = -1 // istiopub: no grace period
	}
	return istiopub.New(istiopub.Config{
		Source:   g.node,
		REST:     rc,
		Identity: g.node.Name(),
		Grace:    grace,
		Options: istiopub.Options{
			Network:       s.Network,
			Namespace:     cmp.Or(s.PublishNamespace, os.Getenv("POD_NAMESPACE"), DefaultPublishNamespace),
			ClusterDomain: s.ClusterDomain,
			Local:         s.PublishLocal,
			LocalGateways: s.PublishLocalGateways,
		},
		Logger: log,
	})
}

// registerPublisher adds the publisher's metrics.
func registerPublisher(reg *metrics.Registry, p *istiopub.Publisher) {
	reg.GaugeFunc("ewgate_istio_publisher_leading", "1 while this gateway holds the Lease and writes this cluster's Istio resources, else 0.",
		func() float64 { return b2f(p.Leading()) })
	writes := reg.CounterVec("ewgate_istio_publisher_writes_total", "Istio resources written by the publisher, by operation (refused: an object of that name exists without the ownership label).", "op")
	for _, op := range []struct {
		name  string
		count func(istiopub.Counts) int
	}{
		{"created", func(c istiopub.Counts) int { return c.Created }},
		{"updated", func(c istiopub.Counts) int { return c.Updated }},
		{"deleted", func(c istiopub.Counts) int { return c.Deleted }},
		{"refused", func(c istiopub.Counts) int { return c.Refused }},
	} {
		writes.Func(op.name, func() float64 { return float64(op.count(p.Status().Total)) })
	}
	reg.CounterFunc("ewgate_istio_publisher_errors_total", "Publisher reconciles that did not write every object (retried).",
		func() float64 { return float64(p.Status().Errors) })
}
