package istiopub

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/ewgate/ewgate/peer"
)

// Defaults applied by [New] to zero [Config] fields.
const (
	DefaultLeaseName = "ewgate-istio-publisher"
	// DefaultGrace is how long a network that vanished from gossip stays
	// published: longer than a gossip blip or a rolling restart of its
	// gateways, short enough that istiod stops sending to a network that
	// is gone.
	DefaultGrace    = time.Minute
	DefaultPoll     = time.Second
	DefaultResync   = 5 * time.Minute
	DefaultDebounce = 200 * time.Millisecond
	// Lease timings: client-go's usual ones.
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// Source is what the publisher reads of gossip; *peer.Node is one.
type Source interface {
	// Summaries returns the latest summary of every live gateway.
	Summaries() []peer.NodeSummary
}

// Config configures a Publisher. Source, REST and Options.Network and
// Options.Namespace are required.
type Config struct {
	Source Source
	// REST reaches the local cluster's API server.
	REST *rest.Config
	// Options shape the objects; Options.Namespace also holds the Lease.
	Options Options
	// Identity names this replica in the Lease. Default: the hostname.
	Identity string
	// LeaseName is the Lease the replicas of one cluster share. Default
	// DefaultLeaseName.
	LeaseName string
	// LeaseDuration, RenewDeadline and RetryPeriod are
	// leaderelection.LeaderElectionConfig's. Defaults DefaultLeaseDuration,
	// DefaultRenewDeadline, DefaultRetryPeriod.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Grace is how long a network that no live gateway reports stays
	// published, as last reported. Default DefaultGrace; negative: none.
	Grace time.Duration
	// Poll is how often Source is read for changes. Default DefaultPoll.
	Poll time.Duration
	// Resync is how often the objects are rewritten even without a
	// change, repairing edits and deletions by others. Default
	// DefaultResync.
	Resync time.Duration
	// Debounce is how long after a change the publisher waits for more
	// before writing. Default DefaultDebounce.
	Debounce time.Duration
	// Logger receives the publisher's logs. Default: discard.
	Logger *slog.Logger
}

// Publisher keeps the local cluster's Istio resources describing the
// remote networks of Source, while it holds the Lease.
type Publisher struct {
	cfg     Config
	log     *slog.Logger
	http    *http.Client // shared by the clients, so that Run can close its connections
	kube    kubernetes.Interface
	apply   applier
	wake    chan struct{} // buffer 1: the local cluster changed
	leading atomic.Bool
	leadMu  sync.Mutex // held while leading: writes happen only under it

	mu     sync.Mutex
	held   map[string]heldNetwork // networks last seen, for Grace
	status Status
}

type heldNetwork struct {
	summaries []peer.NodeSummary
	lastSeen  time.Time
}

// Status is the publisher's state, for /debug and metrics.
type Status struct {
	Leading bool `json:"leading"`
	// LeadingSince is when this replica took the Lease; zero while it
	// does not lead.
	LeadingSince time.Time `json:"leadingSince,omitzero"`
	Synced       time.Time `json:"lastSync,omitzero"` // the last reconcile without error
	// LastError is the last reconcile's error; "" after a clean one.
	LastError string `json:"lastError,omitempty"`
	// Objects counts the objects last wanted, by kind.
	Objects map[Kind]int `json:"objects,omitempty"`
	// Skipped lists what the last translation left out, and why.
	Skipped []string `json:"skipped,omitempty"`
	// Held lists the networks no live gateway reports that stay
	// published until their grace period ends.
	Held map[string]time.Time `json:"held,omitempty"`
	// CollectFrom, while set, is when the publisher starts deleting:
	// the end of the grace period after it started leading.
	CollectFrom time.Time `json:"collectFrom,omitzero"`
	// Total counts every write since start.
	Total     Counts `json:"total"`
	Reconcile uint64 `json:"reconciles"`
	Errors    uint64 `json:"errors"`
}

// New checks cfg, applies the defaults and returns a Publisher; Run
// starts it.
func New(cfg Config) (*Publisher, error) {
	switch {
	case cfg.Source == nil:
		return nil, errors.New("istiopub: Config.Source is required")
	case cfg.REST == nil:
		return nil, errors.New("istiopub: Config.REST is required")
	case cfg.Options.Network == "":
		return nil, errors.New("istiopub: Config.Options.Network is required")
	case cfg.Options.Namespace == "":
		return nil, errors.New("istiopub: Config.Options.Namespace is required")
	}
	if cfg.Identity == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("istiopub: Config.Identity empty and no hostname: %w", err)
		}
		cfg.Identity = h
	}
	cfg.LeaseName = cmp.Or(cfg.LeaseName, DefaultLeaseName)
	cfg.LeaseDuration = cmp.Or(cfg.LeaseDuration, DefaultLeaseDuration)
	cfg.RenewDeadline = cmp.Or(cfg.RenewDeadline, DefaultRenewDeadline)
	cfg.RetryPeriod = cmp.Or(cfg.RetryPeriod, DefaultRetryPeriod)
	cfg.Grace = cmp.Or(cfg.Grace, DefaultGrace)
	cfg.Poll = cmp.Or(cfg.Poll, DefaultPoll)
	cfg.Resync = cmp.Or(cfg.Resync, DefaultResync)
	cfg.Debounce = cmp.Or(cfg.Debounce, DefaultDebounce)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	rc := rest.CopyConfig(cfg.REST)
	rc.UserAgent = cmp.Or(rc.UserAgent, "ewgate-istio-publisher")
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("istiopub: %w", err)
	}
	kc, err := kubernetes.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("istiopub: %w", err)
	}
	dc, err := dynamic.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("istiopub: %w", err)
	}
	return &Publisher{cfg: cfg, log: log, http: hc, kube: kc, apply: applier{client: dc, log: log, gatewayNamespace: cfg.Options.Namespace},
		wake: make(chan struct{}, 1), held: make(map[string]heldNetwork)}, nil
}

// Leading reports whether this replica holds the Lease.
func (p *Publisher) Leading() bool { return p.leading.Load() }

// Status returns a copy of the publisher's state.
func (p *Publisher) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.status
	s.Leading = p.leading.Load()
	s.Objects = maps.Clone(s.Objects)
	s.Skipped = slices.Clone(s.Skipped)
	s.Held = maps.Clone(s.Held)
	return s
}

// Run campaigns for the Lease until ctx ends, and while it holds it keeps
// the objects. A replica that loses the Lease stops writing at once and
// campaigns again. On return, the Lease is released if held; the objects
// stay (see docs/istio.md for turning the publisher off).
func (p *Publisher) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(p.kube, 0)
	services := factory.Core().V1().Services()
	namespaces := factory.Core().V1().Namespaces()
	wake := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { p.poke() },
		UpdateFunc: func(old, cur any) { p.poke() },
		DeleteFunc: func(any) { p.poke() },
	}
	if _, err := services.Informer().AddEventHandler(wake); err != nil {
		return err
	}
	if _, err := namespaces.Informer().AddEventHandler(wake); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer p.closeIdle()
	defer factory.Shutdown()
	// The publisher's own objects: a change by someone else (a deletion,
	// an edit) is repaired at once rather than at the next resync. Not
	// waited for: a kind whose CRD is missing must not stop the others.
	for _, k := range kinds {
		ns := p.apply.listNamespace(k)
		own := dynamicinformer.NewFilteredDynamicSharedInformerFactory(p.apply.client, 0, ns, func(o *metav1.ListOptions) {
			o.LabelSelector = LabelManagedBy + "=" + ManagedByValue
		})
		if _, err := own.ForResource(resources[k]).Informer().AddEventHandler(wake); err != nil {
			return err
		}
		own.Start(ctx.Done())
		defer own.Shutdown()
	}
	cl := listerCluster{services: services.Lister(), namespaces: namespaces.Lister()}

	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: p.cfg.Options.Namespace, Name: p.cfg.LeaseName},
		Client:     p.kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: p.cfg.Identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   p.cfg.LeaseDuration,
			RenewDeadline:   p.cfg.RenewDeadline,
			RetryPeriod:     p.cfg.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            p.cfg.LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				// client-go runs this in a goroutine it does not wait
				// for; leadMu lets Run wait for it (see below).
				OnStartedLeading: func(ctx context.Context) {
					p.leadMu.Lock()
					defer p.leadMu.Unlock()
					if ctx.Err() != nil {
						return // lost already: Run may have returned
					}
					p.leading.Store(true)
					defer p.leading.Store(false)
					p.log.Info("istio publisher: leading; writing this cluster's Istio resources", "lease", p.cfg.Options.Namespace+"/"+p.cfg.LeaseName, "identity", p.cfg.Identity)
					p.lead(ctx, cl, factory)
					p.log.Info("istio publisher: not leading any more; stopped writing", "identity", p.cfg.Identity)
				},
				OnStoppedLeading: func() {},
				OnNewLeader: func(id string) {
					if id != p.cfg.Identity {
						p.log.Info("istio publisher: another replica writes", "leader", id)
					}
				},
			},
		})
		if err != nil {
			return fmt.Errorf("istiopub: %w", err)
		}
		le.Run(ctx)
		// The lease is lost or released: wait until no write is in
		// flight before campaigning again or returning. A lead that
		// starts after this finds its context done and writes nothing.
		p.leadMu.Lock()
		p.leadMu.Unlock()
	}
	return nil
}

// closeIdle closes the publisher's idle API server connections, now and
// once more a moment later: HTTP/2 forgets a cancelled watch's stream
// after the informer has returned, and until then the connection is not
// idle.
func (p *Publisher) closeIdle() {
	// client-go wraps the transport: http.Client cannot reach it.
	closeIdle := func() { utilnet.CloseIdleConnectionsFor(p.http.Transport) }
	closeIdle()
	time.AfterFunc(250*time.Millisecond, closeIdle)
}

func (p *Publisher) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// lead keeps the objects until ctx ends (the Lease is lost or Run's
// context ends).
func (p *Publisher) lead(ctx context.Context, cl Cluster, factory informers.SharedInformerFactory) {
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			p.log.Warn("istio publisher: local cluster cache not synced", "type", typ.String())
			return
		}
	}
	poll := time.NewTicker(p.cfg.Poll)
	defer poll.Stop()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last []fingerprint
	leading := time.Now()
	p.setLeadingSince(leading)
	defer p.setLeadingSince(time.Time{})
	next := leading // at once
	for {
		timer.Reset(max(time.Until(next), 0))
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
			next = soonest(next, time.Now().Add(p.cfg.Debounce))
		case <-poll.C:
			live := p.cfg.Source.Summaries()
			p.observe(live, time.Now())
			if fp := fingerprints(live); !slices.Equal(fp, last) {
				last = fp
				next = soonest(next, time.Now().Add(p.cfg.Debounce))
			}
		case <-timer.C:
			graceEnd := p.reconcile(ctx, cl, leading)
			next = soonest(time.Now().Add(p.cfg.Resync), graceEnd)
		}
	}
}

// setLeadingSince records in the status when this replica took the Lease.
func (p *Publisher) setLeadingSince(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status.LeadingSince = t
}

// soonest returns the earlier of a and b, ignoring a zero time.
func soonest(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero():
		return a
	case b.Before(a):
		return b
	}
	return a
}

// fingerprint identifies one gateway's state in gossip: a change to any
// part means a new translation.
type fingerprint struct {
	node    string
	meta    peer.Meta
	version peer.Version
}

func fingerprints(s []peer.NodeSummary) []fingerprint {
	out := make([]fingerprint, len(s))
	for i, n := range s {
		out[i] = fingerprint{n.Node, n.Meta, n.Version}
	}
	return out
}

// reconcile translates the current state and writes it, and returns when
// the next held network's grace period ends (zero: none held).
//
// For the grace period after it started leading it deletes nothing: a
// restarted gateway's gossip has not yet heard from every network, and
// what it has not heard of yet must not be withdrawn from istiod.
func (p *Publisher) reconcile(ctx context.Context, cl Cluster, leading time.Time) time.Time {
	now := time.Now()
	summaries, held, graceEnd := p.withHeld(p.cfg.Source.Summaries(), now)
	want, skipped := Translate(p.cfg.Options, summaries, cl)
	var collectFrom time.Time
	if p.cfg.Grace > 0 && now.Before(leading.Add(p.cfg.Grace)) {
		collectFrom = leading.Add(p.cfg.Grace)
		graceEnd = soonest(graceEnd, collectFrom)
	}
	counts, err := p.apply.reconcile(ctx, want, collectFrom.IsZero())
	objects := make(map[Kind]int)
	for _, o := range want {
		objects[o.Kind]++
	}
	p.mu.Lock()
	p.status.Reconcile++
	p.status.Total.add(counts)
	p.status.Objects, p.status.Skipped, p.status.Held = objects, skipped, held
	p.status.CollectFrom = collectFrom
	if err != nil {
		p.status.Errors++
		p.status.LastError = err.Error()
	} else {
		p.status.LastError = ""
		p.status.Synced = now
	}
	p.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		p.log.Error("istio publisher: not every object written; retrying", "err", err)
		// Retry soon rather than at the next resync.
		return soonest(graceEnd, now.Add(p.cfg.Poll))
	}
	return graceEnd
}

// withHeld returns live plus the last summaries of networks no live
// gateway reports whose grace period has not ended, those networks with
// when it ends, and the earliest end.
func (p *Publisher) withHeld(live []peer.NodeSummary, now time.Time) ([]peer.NodeSummary, map[string]time.Time, time.Time) {
	byNet := p.observe(live, now)
	p.mu.Lock()
	defer p.mu.Unlock()
	out := slices.Clone(live)
	var held map[string]time.Time
	var earliest time.Time
	for network, h := range p.held {
		if _, ok := byNet[network]; ok {
			continue
		}
		end := h.lastSeen.Add(p.cfg.Grace)
		if p.cfg.Grace < 0 || !now.Before(end) {
			p.log.Info("istio publisher: withdrawing a network no gateway reports any more", "network", network, "last_seen", h.lastSeen)
			delete(p.held, network)
			continue
		}
		if held == nil {
			held = make(map[string]time.Time)
		}
		held[network] = end
		earliest = soonest(earliest, end)
		out = append(out, h.summaries...)
	}
	return out, held, earliest
}

// observe records the networks of live as seen at now, with their
// summaries, and returns live by network. It runs on every poll, so that
// a network's grace period starts at most one poll after it was last
// seen, however long ago the last reconcile was.
func (p *Publisher) observe(live []peer.NodeSummary, now time.Time) map[string][]peer.NodeSummary {
	byNet := make(map[string][]peer.NodeSummary)
	for _, s := range live {
		byNet[s.Meta.Network] = append(byNet[s.Meta.Network], s)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for network, s := range byNet {
		p.held[network] = heldNetwork{summaries: s, lastSeen: now}
	}
	return byNet
}

// listerCluster answers Cluster from the informers' caches.
type listerCluster struct {
	services   listersv1.ServiceLister
	namespaces listersv1.NamespaceLister
}

func (c listerCluster) Service(namespace, name string) (map[string]string, bool) {
	svc, err := c.services.Services(namespace).Get(name)
	if err != nil {
		return nil, false
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, false // not a Service of endpoints: the remote one stands alone
	}
	return svc.Spec.Selector, true
}

func (c listerCluster) HasNamespace(name string) bool {
	ns, err := c.namespaces.Get(name)
	return err == nil && ns.DeletionTimestamp == nil
}
