package api

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/ewgate/ewgate/discovery"
)

// Defaults of [LeaseConfig].
const (
	DefaultLease         = 30 * time.Second
	DefaultMinLease      = time.Second
	DefaultMaxLease      = time.Hour
	DefaultMaxEndpoints  = 4096
	DefaultMaxRegistrars = 1024
	// DefaultMaxWeight is the largest endpoint weight a registration may
	// carry: enough to express any split between a few hundred endpoints,
	// small enough that no weight sum overflows 32 bits below 4 million
	// endpoints.
	DefaultMaxWeight = 1000
)

// ErrTooManyRegistrars is returned by [Leases.Register] for a new registrar
// when LeaseConfig.MaxRegistrars hold leases already.
var ErrTooManyRegistrars = errors.New("api: too many registrars")

// ErrLeaseHeld is wrapped by the error of [Leases.Register] and
// [Leases.Deregister] when another caller holds the registrar's live
// lease: a registrar name belongs to the identity that took it until its
// lease runs out or that identity deregisters it.
var ErrLeaseHeld = errors.New("api: lease held by another caller")

// RegisteredEndpoint is an endpoint an agent registered through the API:
// the service it belongs to and the endpoint as the catalog holds it.
type RegisteredEndpoint struct {
	// Registrar is who registered it. [Leases.Snapshot] sets it;
	// [Registry.Register] ignores it.
	Registrar string
	// ServiceHost is the service's fully qualified DNS name.
	ServiceHost string
	// Endpoint is the endpoint. An empty Network stands for the gateway's
	// own network.
	Endpoint discovery.Endpoint
}

// Clock tells time for [Leases]. Tests substitute a fake.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// At returns a channel that receives once the clock has reached t (at
	// once if it has already), and a function that releases the timer.
	At(t time.Time) (<-chan time.Time, func())
}

// systemClock is the Clock of the time package.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) At(t time.Time) (<-chan time.Time, func()) {
	tm := time.NewTimer(time.Until(t))
	return tm.C, func() { tm.Stop() }
}

// LeaseConfig configures [Leases]. The zero value is usable.
type LeaseConfig struct {
	// DefaultLease is the lease of a registration that asks for none;
	// default [DefaultLease] (30 s).
	DefaultLease time.Duration
	// MinLease and MaxLease bound the leases registrars may ask for;
	// defaults [DefaultMinLease] (1 s) and [DefaultMaxLease] (1 h).
	MinLease, MaxLease time.Duration
	// MaxEndpoints caps the endpoints of one registration; default
	// [DefaultMaxEndpoints].
	MaxEndpoints int
	// MaxRegistrars caps the registrars holding a lease at once; default
	// [DefaultMaxRegistrars].
	MaxRegistrars int
	// MaxWeight caps the weight of a registered endpoint; default
	// [DefaultMaxWeight]. A heavier endpoint is refused, not trimmed.
	MaxWeight uint32
	// Addresses is the rule every registered address must pass. Whatever
	// it says of DNS names, registrations carry IP addresses only: a name
	// would be resolved later, past the check.
	Addresses discovery.AddressPolicy
	// Clock tells time; nil is the system clock.
	Clock Clock
	// Logger receives registrations, expiries and withdrawals; nil
	// discards them.
	Logger *slog.Logger
}

// Leases is the in-memory [Registry]: each registrar's endpoints, kept
// until it deregisters or its lease runs out. Register renews a lease.
// Expired registrations are invisible to Snapshot at once and removed by
// Run, which also signals Changed. Leases is safe for concurrent use.
type Leases struct {
	cfg     LeaseConfig
	log     *slog.Logger
	changed chan struct{} // buffer 1: coalescing change notification
	kick    chan struct{} // buffer 1: wakes Run when an earlier expiry appears

	mu   sync.Mutex
	regs map[string]*registration
}

// registration is one registrar's endpoints and lease.
type registration struct {
	owner     string               // the caller that took the lease
	endpoints []RegisteredEndpoint // normalized, Registrar set
	expires   time.Time
}

// NewLeases returns an empty Leases. Call Run to sweep expired leases.
func NewLeases(cfg LeaseConfig) *Leases {
	cfg.DefaultLease = cmp.Or(cfg.DefaultLease, DefaultLease)
	cfg.MinLease = cmp.Or(cfg.MinLease, DefaultMinLease)
	cfg.MaxLease = cmp.Or(cfg.MaxLease, DefaultMaxLease)
	cfg.MaxEndpoints = cmp.Or(cfg.MaxEndpoints, DefaultMaxEndpoints)
	cfg.MaxRegistrars = cmp.Or(cfg.MaxRegistrars, DefaultMaxRegistrars)
	cfg.MaxWeight = cmp.Or(cfg.MaxWeight, DefaultMaxWeight)
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Leases{
		cfg:     cfg,
		log:     log,
		changed: make(chan struct{}, 1),
		kick:    make(chan struct{}, 1),
		regs:    make(map[string]*registration),
	}
}

// Register replaces registrar's endpoints with eps and renews its lease for
// lease (0: the default), returning the lease granted. It validates
// everything first and changes nothing on error: a *[FieldError] names the
// invalid field; a new registrar beyond MaxRegistrars gets
// [ErrTooManyRegistrars]; a registrar whose live lease another caller
// holds gets [ErrLeaseHeld]. Changed is signalled only when the endpoints
// differ from those registered before: a plain renewal is silent.
func (l *Leases) Register(caller, registrar string, lease time.Duration, eps []RegisteredEndpoint) (time.Duration, error) {
	if err := checkRegistrar(registrar); err != nil {
		return 0, err
	}
	if lease == 0 {
		lease = l.cfg.DefaultLease
	}
	if lease < l.cfg.MinLease || lease > l.cfg.MaxLease {
		return 0, fieldErrorf("lease_seconds", "%s is not in %s..%s", lease, l.cfg.MinLease, l.cfg.MaxLease)
	}
	if len(eps) > l.cfg.MaxEndpoints {
		return 0, fieldErrorf("endpoints", "%d endpoints exceed the limit of %d per registrar", len(eps), l.cfg.MaxEndpoints)
	}
	norm := make([]RegisteredEndpoint, len(eps))
	type instance struct{ host, network, address string }
	seen := make(map[instance]int, len(eps))
	for i, ep := range eps {
		n, err := normalizeEndpoint(i, ep)
		if err != nil {
			return 0, err
		}
		if err := l.cfg.Addresses.Check(n.Endpoint.Address); err != nil {
			return 0, fieldErrorf(fmt.Sprintf("endpoints[%d].address", i), "%v", err)
		}
		if n.Endpoint.Weight > l.cfg.MaxWeight {
			return 0, fieldErrorf(fmt.Sprintf("endpoints[%d].weight", i), "%d exceeds the limit of %d", n.Endpoint.Weight, l.cfg.MaxWeight)
		}
		in := instance{n.ServiceHost, n.Endpoint.Network, n.Endpoint.Address}
		if j, dup := seen[in]; dup {
			return 0, fieldErrorf(fmt.Sprintf("endpoints[%d].address", i), "repeats endpoints[%d]: one endpoint per service, network and address", j)
		}
		seen[in] = i
		n.Registrar = registrar
		norm[i] = n
	}

	l.mu.Lock()
	now := l.cfg.Clock.Now()
	expires := now.Add(lease)
	r, ok := l.regs[registrar]
	if ok && !now.Before(r.expires) {
		ok = false // expired, not swept yet: a new registration
	}
	if ok && r.owner != caller {
		l.mu.Unlock()
		l.log.Warn("registration refused: another caller holds the lease", "registrar", registrar, "caller", caller, "holder", r.owner)
		return 0, fmt.Errorf("register %s: %w (%s)", registrar, ErrLeaseHeld, r.owner)
	}
	if !ok && l.countLiveLocked(now) >= l.cfg.MaxRegistrars {
		l.mu.Unlock()
		return 0, fmt.Errorf("register %s: %w (limit %d)", registrar, ErrTooManyRegistrars, l.cfg.MaxRegistrars)
	}
	changed := !ok || !sameEndpoints(r.endpoints, norm)
	earlier := !ok || expires.Before(r.expires)
	l.regs[registrar] = &registration{owner: caller, endpoints: norm, expires: expires}
	l.mu.Unlock()

	switch {
	case !ok:
		l.log.Info("registrar registered", "registrar", registrar, "caller", caller, "endpoints", len(norm), "lease", lease)
	case changed:
		l.log.Info("registrar changed its endpoints", "registrar", registrar, "endpoints", len(norm), "lease", lease)
	default:
		l.log.Debug("registrar renewed", "registrar", registrar, "lease", lease)
	}
	if changed {
		signal(l.changed)
	}
	if earlier {
		signal(l.kick)
	}
	return lease, nil
}

// Deregister withdraws registrar's endpoints, if it has any. A live lease
// that another caller holds stays, and the error wraps [ErrLeaseHeld].
func (l *Leases) Deregister(caller, registrar string) error {
	l.mu.Lock()
	r, ok := l.regs[registrar]
	if ok && r.owner != caller && l.cfg.Clock.Now().Before(r.expires) {
		l.mu.Unlock()
		l.log.Warn("deregistration refused: another caller holds the lease", "registrar", registrar, "caller", caller, "holder", r.owner)
		return fmt.Errorf("deregister %s: %w (%s)", registrar, ErrLeaseHeld, r.owner)
	}
	delete(l.regs, registrar)
	l.mu.Unlock()
	if ok {
		// Signalled even when the lease had expired but was not swept yet:
		// the sweep that would have signalled it will not see it now.
		l.log.Info("registrar deregistered", "registrar", registrar, "endpoints", len(r.endpoints))
		signal(l.changed)
	}
	return nil
}

// Snapshot returns the endpoints of every unexpired lease, sorted by
// registrar, each registrar's in the order it registered them. The result
// is the caller's to keep and modify.
func (l *Leases) Snapshot() []RegisteredEndpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	live := l.liveLocked(l.cfg.Clock.Now())
	var out []RegisteredEndpoint
	for _, name := range slices.Sorted(maps.Keys(live)) {
		for _, ep := range live[name].endpoints {
			ep.Endpoint.Ports = maps.Clone(ep.Endpoint.Ports)
			ep.Endpoint.Labels = maps.Clone(ep.Endpoint.Labels)
			out = append(out, ep)
		}
	}
	return out
}

// countLiveLocked counts the registrations unexpired at now.
func (l *Leases) countLiveLocked(now time.Time) int {
	n := 0
	for _, r := range l.regs {
		if now.Before(r.expires) {
			n++
		}
	}
	return n
}

// liveLocked returns the registrations unexpired at now.
func (l *Leases) liveLocked(now time.Time) map[string]*registration {
	live := make(map[string]*registration, len(l.regs))
	for name, r := range l.regs {
		if now.Before(r.expires) {
			live[name] = r
		}
	}
	return live
}

// Changed returns a channel that receives a value after the endpoints of
// Snapshot changed: a registration, a change of endpoints, a
// deregistration, an expiry. Notifications coalesce: one value may stand
// for many changes, so re-read Snapshot each time. It has one receiver.
func (l *Leases) Changed() <-chan struct{} { return l.changed }

// Run removes expired registrations when their leases run out, signalling
// Changed, until ctx is done. It returns nil then.
func (l *Leases) Run(ctx context.Context) error {
	for {
		next, ok := l.sweep()
		var wake <-chan time.Time
		release := func() {}
		if ok {
			wake, release = l.cfg.Clock.At(next)
		}
		select {
		case <-ctx.Done():
			release()
			return nil
		case <-l.kick:
		case <-wake:
		}
		release()
	}
}

// sweep removes the registrations expired now and returns the earliest
// expiry of those left, if any.
func (l *Leases) sweep() (next time.Time, ok bool) {
	l.mu.Lock()
	now := l.cfg.Clock.Now()
	var expired []string
	for name, r := range l.regs {
		if !now.Before(r.expires) {
			expired = append(expired, name)
			delete(l.regs, name)
			continue
		}
		if !ok || r.expires.Before(next) {
			next, ok = r.expires, true
		}
	}
	l.mu.Unlock()
	if len(expired) > 0 {
		slices.Sort(expired)
		l.log.Warn("registrations expired: their registrars stopped renewing", "registrars", expired)
		signal(l.changed)
	}
	return next, ok
}

// signal sends on a channel of buffer 1 without blocking.
func signal(c chan<- struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
