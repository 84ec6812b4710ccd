// Package kube is the gateway's Kubernetes source: it watches its own
// cluster's API server with client-go shared informers (Services,
// EndpointSlices, Pods, Nodes, the system Namespace, and Istio's Gateway,
// ServiceEntry, WorkloadEntry and DestinationRule) and translates them into
// a discovery.Catalog, as istiod's Kubernetes registry does for an
// east-west gateway.
//
// A gateway reads only its own cluster: other clusters are reached through
// gossip, never through their API servers.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/sni"
)

// Defaults of Config.
const (
	DefaultSystemNamespace = "istio-system"
	DefaultDebounce        = 100 * time.Millisecond
)

// Config says which cluster to read and how to translate it.
type Config struct {
	// REST is the API server's client config (clientcmd or in-cluster).
	REST *rest.Config
	// ClusterDomain is the cluster's DNS domain; default
	// discovery.DefaultClusterDomain. Services are
	// <name>.<namespace>.svc.<ClusterDomain>, so New refuses a domain that
	// sni.ParseHost refuses.
	ClusterDomain string
	// SystemNamespace is Istio's namespace, whose network label is the
	// default network of pods; default DefaultSystemNamespace.
	SystemNamespace string
	// Network is the gateway's own network: the network of pods when
	// neither they nor the system namespace carry the network label.
	Network string
	// NodeLabels are the gateway's labels: only Gateways selecting them are
	// read.
	NodeLabels map[string]string
	// Debounce coalesces bursts of changes into one rebuild; default
	// DefaultDebounce.
	Debounce time.Duration
	// Apply receives every catalog built after the first complete sync; an
	// error rejects it (the caller keeps its last good state) and is
	// reported in Status.
	Apply func(*discovery.Catalog) error
	// Logger receives the source's events; nil discards them.
	Logger *slog.Logger
}

// Source is a running Kubernetes source. Build it with New, then Run it.
type Source struct {
	cfg      Config
	http     *http.Client // shared by the clients; idle connections closed when Run ends
	log      *slog.Logger
	inf      *informers
	changed  chan struct{} // buffer 1: an informer saw a change
	synced   chan struct{} // closed after the first catalog was applied
	syncOnce sync.Once

	watchErrors atomic.Uint64
	rebuilds    atomic.Uint64
	// warned keeps rebuilds, one per change, from repeating the warnings
	// about resources that have not changed.
	warned discovery.Warned

	mu      sync.Mutex
	failing map[string]error // resource -> last list/watch error, until it succeeds again
	lastErr error            // last build or apply problem; nil after a clean apply
	applied time.Time
}

// New checks cfg and builds the clients; it does not contact the API
// server.
func New(cfg Config) (*Source, error) {
	if cfg.REST == nil {
		return nil, errors.New("kubernetes source: no client config")
	}
	if cfg.Apply == nil {
		return nil, errors.New("kubernetes source: no Apply")
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = discovery.DefaultClusterDomain
	}
	// Service hosts end in the domain: one the SNI parser refuses would
	// leave every Service out, each with its own warning.
	if _, err := sni.ParseHost(cfg.ClusterDomain); err != nil {
		return nil, fmt.Errorf("kubernetes source: cluster domain: %w", err)
	}
	if cfg.SystemNamespace == "" {
		cfg.SystemNamespace = DefaultSystemNamespace
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	rc := rest.CopyConfig(cfg.REST)
	if rc.UserAgent == "" {
		rc.UserAgent = "ewgate"
	}
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	kc, err := kubernetes.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	ic, err := istioclient.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("istio client: %w", err)
	}
	s := &Source{
		cfg:     cfg,
		http:    hc,
		log:     cmpLogger(cfg.Logger),
		changed: make(chan struct{}, 1),
		synced:  make(chan struct{}),
		failing: make(map[string]error),
	}
	s.inf = newInformers(kc, ic, cfg.SystemNamespace, s)
	return s, nil
}

func cmpLogger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// Run starts the informers, waits for their first sync (logging what it
// waits for every few seconds), applies the first catalog, then rebuilds
// and applies a catalog after each burst of changes, until ctx is done.
// While the API server is unreachable the informers keep their last state,
// so the catalog stays as it was; they reconnect by themselves. Run may be
// called once.
func (s *Source) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer s.stop(&wg)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.inf.start(ctx, &wg)
	s.log.Info("kubernetes: waiting for the first sync of the API server's objects", "host", s.cfg.REST.Host)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	// Informers tell of their sync only when asked.
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for !s.inf.hasSynced() {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			s.log.Warn("kubernetes: still waiting for the first sync; the gateway is not ready", "host", s.cfg.REST.Host, "pending", s.inf.pending(), "errors", s.errorList())
		case <-poll.C:
		}
	}
	s.rebuild()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
			debounce.Reset(s.cfg.Debounce)
		case <-debounce.C:
			s.rebuild()
		}
	}
}

// stopWait bounds how long Run waits for its informers to stop.
const stopWait = 2 * time.Second

// stop waits for the informers to stop, but not longer than stopWait:
// client-go's reflector sleeps out its back-off (up to 30 s) without
// watching the context when the API server is unreachable, and a
// gateway's shutdown should not wait for that. Those goroutines end by
// themselves after the back-off.
func (s *Source) stop(wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(stopWait):
		s.log.Debug("kubernetes: informers still in client-go's back-off; not waiting for them")
		// A watch still open now leaves its connection behind when it
		// ends: close that one too, once the informers are done.
		go func() {
			<-done
			s.closeIdle()
		}()
	}
	s.closeIdle()
}

// closeIdle closes the source's idle API server connections, now and once
// more a moment later: HTTP/2 forgets a cancelled watch's stream in the
// goroutine that ran the request, after the informer has returned, and
// until then the connection does not count as idle.
func (s *Source) closeIdle() {
	// client-go wraps the transport: http.Client cannot reach it.
	closeIdle := func() { utilnet.CloseIdleConnectionsFor(s.http.Transport) }
	closeIdle()
	time.AfterFunc(250*time.Millisecond, closeIdle)
}

// notify is called by informer handlers on every change.
func (s *Source) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// rebuild translates the informers' state and applies it.
func (s *Source) rebuild() {
	t := translation{clusterDomain: s.cfg.ClusterDomain, network: s.cfg.Network, nodeLabels: s.cfg.NodeLabels}
	start := time.Now()
	r, readProblems := t.resources(s.inf.snapshot())
	r.Warned = &s.warned
	c, problems := r.BuildValid(s.log)
	problems = errors.Join(readProblems, problems)
	var err error
	if c == nil {
		err = problems
	} else {
		if problems != nil {
			s.log.Warn("kubernetes: resources left out or read the safe way", "err", problems)
		}
		err = s.cfg.Apply(c)
	}
	s.rebuilds.Add(1)
	s.mu.Lock()
	s.lastErr = err
	if err == nil && problems != nil {
		s.lastErr = fmt.Errorf("resources left out or read the safe way: %w", problems)
	}
	if err == nil {
		s.applied = time.Now()
	}
	s.mu.Unlock()
	if err != nil {
		s.log.Error("kubernetes: catalog rejected; the last good state stays in force", "err", err)
		return
	}
	s.log.Info("kubernetes: catalog applied", "gateways", len(c.Gateways), "services", len(c.Services), "took", time.Since(start).Round(time.Microsecond))
	s.syncOnce.Do(func() {
		s.log.Info("kubernetes: first sync complete")
		close(s.synced)
	})
}

// Synced is closed once the first complete sync was applied.
func (s *Source) Synced() <-chan struct{} { return s.synced }

// FirstSync reports whether the first complete sync was applied.
func (s *Source) FirstSync() bool {
	select {
	case <-s.synced:
		return true
	default:
		return false
	}
}

// InSync reports whether the first sync was applied and every watch is
// connected now; false while the API server is unreachable.
func (s *Source) InSync() bool {
	select {
	case <-s.synced:
	default:
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.failing) == 0
}

// WatchErrors counts failed lists and watches since the start.
func (s *Source) WatchErrors() uint64 { return s.watchErrors.Load() }

// Status is the source's state for /readyz and /debug/config.
type Status struct {
	Source string `json:"source"`
	// Synced is InSync.
	Synced bool `json:"synced"`
	// FirstSync reports whether the first complete sync was applied.
	FirstSync bool `json:"firstSync"`
	// Errors are the watches failing now, by resource.
	Errors map[string]string `json:"errors,omitempty"`
	// LastError is the last build or apply problem; empty after a clean
	// apply.
	LastError   string    `json:"lastError,omitempty"`
	LastApplied time.Time `json:"lastApplied,omitzero"`
	WatchErrors uint64    `json:"watchErrors"`
}

// Status returns the source's state now.
func (s *Source) Status() Status {
	st := Status{Source: SourceName, Synced: s.InSync(), WatchErrors: s.WatchErrors()}
	select {
	case <-s.synced:
		st.FirstSync = true
	default:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failing) > 0 {
		st.Errors = make(map[string]string, len(s.failing))
		for r, err := range s.failing {
			st.Errors[r] = err.Error()
		}
	}
	if s.lastErr != nil {
		st.LastError = s.lastErr.Error()
	}
	st.LastApplied = s.applied
	return st
}

func (s *Source) errorList() map[string]string { return s.Status().Errors }

// watchError counts and records a failed list or watch of resource.
func (s *Source) watchError(resource string, err error) {
	s.watchErrors.Add(1)
	s.watchFailed(resource, err)
}

// watchFailed records a failed list or watch of resource.
func (s *Source) watchFailed(resource string, err error) {
	s.mu.Lock()
	_, was := s.failing[resource]
	s.failing[resource] = err
	s.mu.Unlock()
	if !was {
		if s.FirstSync() {
			s.log.Warn("kubernetes: watch failed; serving the last known state", "resource", resource, "err", err)
		} else {
			s.log.Warn("kubernetes: list or watch failed before the first sync; retrying", "resource", resource, "err", err)
		}
	}
}

// watchOK records a list or watch of resource that succeeded.
func (s *Source) watchOK(resource string) {
	s.mu.Lock()
	_, was := s.failing[resource]
	delete(s.failing, resource)
	s.mu.Unlock()
	if was {
		s.log.Info("kubernetes: watch recovered", "resource", resource)
	}
}
