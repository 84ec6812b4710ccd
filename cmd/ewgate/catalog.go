package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/ewgate/ewgate/api"
	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/gateway"
	"github.com/ewgate/ewgate/metrics"
	"github.com/ewgate/ewgate/sni"
)

// catalogState joins the node's sources, the config files, the Kubernetes
// API, the endpoints registered through the API and the definitions other
// networks gossip, into the view the gateway serves and the resolver
// answers from.
type catalogState struct {
	spec   discovery.Node
	gw     *gateway.Gateway
	leases *api.Leases
	log    *slog.Logger
	addrs  discovery.AddressPolicy // endpoint addresses files may carry

	// gateways returns the live gateways of all networks; nil without
	// gossip.
	gateways func() []discovery.RemoteGateway

	// withKube: a Kubernetes source runs, and nothing is applied before
	// its first catalog, so that the gateway never serves a partial view.
	withKube  bool
	withFiles bool // -f was given

	mu          sync.Mutex
	files       *discovery.Catalog     // last good config files
	kube        *discovery.Catalog     // last good catalog of the Kubernetes source
	defs        []discovery.Definition // other networks' definitions merged in
	refused     string                 // the address policy's last refusal, logged once
	view        atomic.Pointer[discovery.View]
	changed     chan struct{} // buffer 1: resolution may have changed (the API's)
	viewChanged chan struct{} // buffer 1: the view changed (gossip's)
}

func newCatalogState(spec discovery.Node, gw *gateway.Gateway, leases *api.Leases, log *slog.Logger) *catalogState {
	return &catalogState{spec: spec, gw: gw, leases: leases, log: log,
		changed: make(chan struct{}, 1), viewChanged: make(chan struct{}, 1)}
}

// notify tells resolution watchers that answers may have changed.
func (cs *catalogState) notify() { wake(cs.changed) }

// wake is a non-blocking send on a coalescing channel of buffer 1.
func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// applyFiles makes c the config in force, if it, the cluster's catalog and
// the registered endpoints build a view the gateway can serve; else the
// last good config stays.
func (cs *catalogState) applyFiles(c *discovery.Catalog) error {
	if err := c.CheckEndpoints(&cs.addrs); err != nil {
		return err
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if err := cs.rebuildLocked(c, cs.kube); err != nil {
		return err
	}
	cs.files = c
	return nil
}

// applyKube is applyFiles for the Kubernetes source's catalog.
func (cs *catalogState) applyKube(c *discovery.Catalog) error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if err := cs.rebuildLocked(cs.files, c); err != nil {
		return err
	}
	cs.kube = c
	return nil
}

// complete reports whether every source has given a catalog.
func (cs *catalogState) complete(files, kube *discovery.Catalog) bool {
	return (files != nil || !cs.withFiles) && (kube != nil || !cs.withKube)
}

// rebuildLocked builds and applies the view of the sources' catalogs
// plus the registered endpoints. Until every source has given a catalog
// it applies nothing. A host or resource that two sources define is an
// error naming both; the last good state stays.
func (cs *catalogState) rebuildLocked(files, kube *discovery.Catalog) error {
	if !cs.complete(files, kube) {
		cs.log.Info("catalog held back until every source has given one", "files", files != nil, "kubernetes", kube != nil)
		return nil
	}
	c, err := discovery.Merge(cs.log, files, kube)
	if err != nil {
		return err
	}
	// Files were checked whole when they loaded; what is left out here
	// comes from the cluster, which applies what is valid.
	c, err = c.WithoutRefused(&cs.addrs)
	if refused := fmt.Sprint(err); err != nil && refused != cs.refused {
		// Logged when the set changes, not on every rebuild.
		cs.log.Warn("endpoints refused by the address policy are left out", "err", err)
		cs.refused = refused
	} else if err == nil {
		cs.refused = ""
	}
	if cs.leases != nil {
		extra := make(map[string][]discovery.Endpoint)
		for _, r := range cs.leases.Snapshot() {
			extra[r.ServiceHost] = append(extra[r.ServiceHost], r.Endpoint)
		}
		var unknown []string
		c, unknown = c.WithEndpoints(extra)
		if len(unknown) > 0 {
			cs.log.Warn("registered endpoints for services no config defines are ignored", "hosts", unknown)
		}
	}
	v, err := c.Merge(cs.defs).View(cs.spec)
	if err != nil {
		return err
	}
	if err := cs.gw.Apply(v); err != nil {
		return err
	}
	if old := cs.view.Load(); old == nil || !slices.Equal(old.Conflicts, v.Conflicts) {
		for _, c := range v.Conflicts {
			cs.log.Warn("catalog: networks define a service differently; the definition of higher precedence is used",
				"host", c.Host, "part", c.Part, "kept", c.Kept.String(), "kept_value", c.KeptValue,
				"ignored", c.Ignored.String(), "ignored_value", c.IgnoredValue)
		}
	}
	if old := cs.view.Load(); old == nil || !slices.Equal(old.Ignored, v.Ignored) {
		for _, ig := range v.Ignored {
			cs.log.Warn("config: VirtualService rule not served", "resource", ig.Source.String(), "field", ig.Field, "reason", ig.Reason)
		}
	}
	cs.view.Store(v)
	wake(cs.viewChanged)
	cs.notify()
	return nil
}

// setTrustDomain sets the trust domain of the SPIFFE IDs the summary gives
// this network's endpoints, known only once the identity has loaded, and
// rebuilds the view if it changed.
func (cs *catalogState) setTrustDomain(td string) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.spec.TrustDomain == td {
		return
	}
	cs.spec.TrustDomain = td
	if !cs.complete(cs.files, cs.kube) {
		return
	}
	if err := cs.rebuildLocked(cs.files, cs.kube); err != nil {
		cs.log.Error("catalog: not rebuilt for the trust domain", "trust_domain", td, "err", err)
	}
}

// applyOtherNetworks merges the service definitions of other networks' live
// gateways into the view, when they changed; health counts alone change
// nothing here (resolution reads them from gossip directly).
func (cs *catalogState) applyOtherNetworks(gws []discovery.RemoteGateway) {
	defs := discovery.Definitions(cs.spec.Network, gws)
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if discovery.SameDefinitions(defs, cs.defs) {
		return
	}
	cs.defs = defs
	if !cs.complete(cs.files, cs.kube) {
		return
	}
	if err := cs.rebuildLocked(cs.files, cs.kube); err != nil {
		cs.log.Error("catalog: other networks' definitions not applied", "err", err)
	}
}

// register exports the merged catalog's figures as metrics.
func (cs *catalogState) register(reg *metrics.Registry) {
	count := func(f func(*discovery.View) int) func() float64 {
		return func() float64 {
			if v := cs.view.Load(); v != nil {
				return float64(f(v))
			}
			return 0
		}
	}
	reg.GaugeFunc("ewgate_catalog_conflicts", "Parts of service definitions (namespace, exportTo, port, subset) on which networks disagree; the merge used the one of higher precedence (see /debug/config).",
		count(func(v *discovery.View) int { return len(v.Conflicts) }))
	reg.GaugeFunc("ewgate_catalog_remote_services", "Services only other networks define, routed to them.",
		count(func(v *discovery.View) int {
			n := 0
			for _, svc := range v.Services() {
				if svc.Origin.Remote() {
					n++
				}
			}
			return n
		}))
}

// watchLeases rebuilds the view whenever registrations change, until ctx
// is done.
func (cs *catalogState) watchLeases(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-cs.leases.Changed():
			cs.mu.Lock()
			if cs.complete(cs.files, cs.kube) {
				if err := cs.rebuildLocked(cs.files, cs.kube); err != nil {
					cs.log.Error("registered endpoints not applied", "err", err)
				}
			}
			cs.mu.Unlock()
		}
	}
}

// Resolve implements api.Resolver: this network from the node's own view,
// the others from gossip.
func (cs *catalogState) Resolve(key sni.Key, from string) (*discovery.Resolution, error) {
	v := cs.view.Load()
	if v == nil {
		return nil, &discovery.RouteError{Key: key, Reason: discovery.UnknownService}
	}
	var gws []discovery.RemoteGateway
	if cs.gateways != nil {
		gws = cs.gateways()
	}
	return v.Resolve(key, from, gws, cs.gw.Healthy)
}

// Changed implements api.Resolver.
func (cs *catalogState) Changed() <-chan struct{} { return cs.changed }
