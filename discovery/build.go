package discovery

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/ewgate/ewgate/sni"
)

// DefaultClusterDomain is the Kubernetes cluster domain Istio assumes when
// none is configured.
const DefaultClusterDomain = "cluster.local"

// Resource is one decoded Istio resource and where it was defined.
type Resource[T proto.Message] struct {
	Source Source
	// Labels and Annotations are the resource's metadata; Build reads the
	// ExportLabel of ServiceEntries from them.
	Labels, Annotations map[string]string
	// Spec is the resource's spec; Build only reads it.
	Spec T
}

// Resources are the inputs of a catalog, whatever their source: Istio
// resources decoded from files or from the Kubernetes API, and services of
// a platform registry (Kubernetes Services with their endpoints). Build
// turns them into a Catalog with one set of rules, so that a resource
// means the same wherever it was written.
type Resources struct {
	// ClusterDomain completes a DestinationRule's short host "name" to
	// "name.<namespace>.svc.<ClusterDomain>"; empty means
	// DefaultClusterDomain.
	ClusterDomain string
	// Node, if set, is the node the catalog is built for: Gateways whose
	// selector does not match its labels configure other proxies (an
	// ingress gateway's, say) and are left out unvalidated, logged at
	// debug level, as an Istio proxy ignores them. Nil keeps and validates
	// every Gateway.
	Node *Node
	// Warned, if set, keeps Build from repeating the warnings it logged
	// for these resources before; nil logs them on every Build.
	Warned           *Warned
	Gateways         []Resource[*networking.Gateway]
	ServiceEntries   []Resource[*networking.ServiceEntry]
	WorkloadEntries  []Resource[*networking.WorkloadEntry]
	DestinationRules []Resource[*networking.DestinationRule]
	// VirtualServices route PASSTHROUGH servers by their tls rules, in
	// the order Istio considers them (a cluster's by creation time).
	VirtualServices []Resource[*networking.VirtualService]
	// Services are a registry's services, already translated, with their
	// endpoints. DestinationRules give them subsets as they do to
	// ServiceEntry hosts, and a host may be defined only once across
	// Services and ServiceEntries. Build copies them; they must not be
	// modified afterwards, since the Catalog may share their endpoints.
	Services []*Service
}

// Build validates the resources and translates them into a Catalog. It
// returns every problem found, each naming the resource and the field,
// joined in one error; warnings (rules that match nothing) go to log (nil:
// no logging). The catalog remembers r, so that Merge can combine it with
// catalogs of other sources.
func (r *Resources) Build(log *slog.Logger) (*Catalog, error) {
	t := &translator{res: r, log: log, domain: r.ClusterDomain}
	if t.domain == "" {
		t.domain = DefaultClusterDomain
	}
	return t.build()
}

// BuildValid is Build for a source whose resources are written by many
// hands and cannot be fixed as one, like a cluster's API server: a
// resource with a problem is left out, as istiod ignores what it cannot
// use, and the catalog of the rest is returned together with the joined
// problems (nil if none). The catalog remembers only the resources it
// kept.
func (r *Resources) BuildValid(log *slog.Logger) (*Catalog, error) {
	cur := r
	var problems []error
	for {
		t := &translator{res: cur, log: log, domain: cur.ClusterDomain, bad: make(map[Source]bool)}
		if t.domain == "" {
			t.domain = DefaultClusterDomain
		}
		c, err := t.build()
		if err == nil {
			return c, errors.Join(problems...)
		}
		problems = append(problems, t.errs...)
		next := cur.without(t.bad)
		if next == nil {
			// Nothing named as bad: cannot happen, since every problem
			// names its resource; refuse rather than loop.
			return nil, errors.Join(problems...)
		}
		cur = next
	}
}

// without returns r less the resources bad names, or nil if it names none
// of them.
func (r *Resources) without(bad map[Source]bool) *Resources {
	out := &Resources{ClusterDomain: r.ClusterDomain, Node: r.Node, Warned: r.Warned}
	n := 0
	out.Gateways, n = keep(r.Gateways, bad, n)
	out.ServiceEntries, n = keep(r.ServiceEntries, bad, n)
	out.WorkloadEntries, n = keep(r.WorkloadEntries, bad, n)
	out.DestinationRules, n = keep(r.DestinationRules, bad, n)
	out.VirtualServices, n = keep(r.VirtualServices, bad, n)
	for _, s := range r.Services {
		if bad[s.Source] {
			n++
			continue
		}
		out.Services = append(out.Services, s)
	}
	if n == 0 {
		return nil
	}
	return out
}

func keep[T proto.Message](rs []Resource[T], bad map[Source]bool, n int) ([]Resource[T], int) {
	var out []Resource[T]
	for _, r := range rs {
		if bad[r.Source] {
			n++
			continue
		}
		out = append(out, r)
	}
	return out, n
}

// Merge builds one catalog from the resources of several, as if one source
// had held them all: a host or a resource (kind, namespace and name)
// defined by two of them is an error naming both, and DestinationRules of
// one apply to services of another. The cluster domain and the Node are the first
// ones set. Catalogs not made by Build have no resources to merge and are an
// error, except that nil catalogs are skipped and a single catalog is
// returned as it is.
func Merge(log *slog.Logger, cats ...*Catalog) (*Catalog, error) {
	cats = slices.DeleteFunc(slices.Clone(cats), func(c *Catalog) bool { return c == nil })
	switch len(cats) {
	case 0:
		return &Catalog{}, nil
	case 1:
		return cats[0], nil
	}
	var all Resources
	for _, c := range cats {
		r := c.resources
		if r == nil {
			return nil, errors.New("merge: a catalog not made by Build has no resources to merge")
		}
		if all.ClusterDomain == "" {
			all.ClusterDomain = r.ClusterDomain
		}
		if all.Warned == nil {
			all.Warned = r.Warned
		}
		if all.Node == nil {
			// A source that kept other proxies' Gateways for Build to
			// skip needs them skipped here too.
			all.Node = r.Node
		}
		all.Gateways = append(all.Gateways, r.Gateways...)
		all.ServiceEntries = append(all.ServiceEntries, r.ServiceEntries...)
		all.WorkloadEntries = append(all.WorkloadEntries, r.WorkloadEntries...)
		all.DestinationRules = append(all.DestinationRules, r.DestinationRules...)
		all.VirtualServices = append(all.VirtualServices, r.VirtualServices...)
		all.Services = append(all.Services, r.Services...)
	}
	return all.Build(log)
}

// translator builds one Catalog from Resources, collecting every problem.
type translator struct {
	res    *Resources
	log    *slog.Logger
	domain string
	errs   []error
	bad    map[Source]bool // resources with a problem; nil: not tracked
	// noAddress holds the WorkloadEntries already warned about for
	// having no address, so that one selected by several ServiceEntries
	// is logged once.
	noAddress map[Source]bool
}

func (t *translator) errorf(src Source, format string, args ...any) {
	t.errs = append(t.errs, fmt.Errorf("%v: %s", src, fmt.Sprintf(format, args...)))
	if t.bad != nil {
		t.bad[src] = true
	}
}

// warn logs a warning about the resources, once per Resources.Warned.
func (t *translator) warn(msg string, args ...any) {
	t.res.Warned.log(t.log, slog.LevelWarn, msg, args...)
}

func warn(log *slog.Logger, msg string, args ...any) {
	if log != nil {
		log.Warn(msg, args...)
	}
}

func (t *translator) build() (*Catalog, error) {
	c := &Catalog{resources: t.res}
	t.checkUnique()
	for _, g := range t.res.Gateways {
		if n := t.res.Node; n != nil && !SelectorMatches(g.Spec.GetSelector(), n.Labels) {
			t.res.Warned.log(t.log, slog.LevelDebug, "config: Gateway does not select this node, ignored", "resource", g.Source.String(), "selector", g.Spec.GetSelector())
			continue
		}
		if gw := t.buildGateway(g); gw != nil {
			c.Gateways = append(c.Gateways, gw)
		}
	}
	hosts := make(map[string]*Service)
	add := func(svc *Service) bool {
		if prev, ok := hosts[svc.Host]; ok {
			field := "spec.hosts"
			if svc.Source.Kind == "Service" {
				field = "host"
			}
			t.errorf(svc.Source, "%s: %q is already defined by %v", field, svc.Host, prev.Source)
			return false
		}
		hosts[svc.Host] = svc
		c.Services = append(c.Services, svc)
		return true
	}
	for _, svc := range t.res.Services {
		// A registry's hosts obey the rule of ServiceEntry hosts; the
		// Kubernetes source's are <name>.<namespace>.svc.<domain>.
		host, err := sni.ParseHost(svc.Host)
		if err != nil {
			t.errorf(svc.Source, "host: %v", err)
			continue
		}
		cp := *svc
		cp.Host = host
		cp.Subsets = nil // DestinationRules give subsets, below
		add(&cp)
	}
	for _, se := range t.res.ServiceEntries {
		for _, svc := range t.buildServices(se) {
			add(svc)
		}
	}
	t.attachSubsets(c.Services)
	for _, vs := range t.res.VirtualServices {
		if v := t.buildVirtualService(vs, c.Gateways); v != nil {
			c.VirtualServices = append(c.VirtualServices, v)
		}
	}
	if len(t.errs) > 0 {
		return nil, errors.Join(t.errs...)
	}
	return c, nil
}

// checkUnique reports resources defined twice: which one would win is a
// question the operator should answer, not the gateway.
func (t *translator) checkUnique() {
	seen := make(map[Source]string)
	check := func(src Source) {
		id := Source{Kind: src.Kind, Namespace: src.Namespace, Name: src.Name}
		if prev, ok := seen[id]; ok {
			t.errorf(src, "defined more than once (also in %s)", prev)
			return
		}
		seen[id] = src.File
	}
	for _, r := range t.res.Gateways {
		check(r.Source)
	}
	for _, r := range t.res.ServiceEntries {
		check(r.Source)
	}
	for _, r := range t.res.WorkloadEntries {
		check(r.Source)
	}
	for _, r := range t.res.DestinationRules {
		check(r.Source)
	}
	for _, r := range t.res.VirtualServices {
		check(r.Source)
	}
	for _, s := range t.res.Services {
		check(s.Source)
	}
}

// supportedModes names the tls modes a selecting Gateway's servers may use,
// for errors.
const supportedModes = "AUTO_PASSTHROUGH, PASSTHROUGH"

func (t *translator) buildGateway(r Resource[*networking.Gateway]) *Gateway {
	gw := &Gateway{Source: r.Source, Selector: r.Spec.GetSelector()}
	ok := true
	ports := make(map[uint32]int)
	if len(r.Spec.GetServers()) == 0 {
		t.errorf(r.Source, "spec.servers: at least one server is required")
		ok = false
	}
	for i, s := range r.Spec.GetServers() {
		field := fmt.Sprintf("spec.servers[%d]", i)
		fail := func(format string, args ...any) {
			t.errorf(r.Source, field+format, args...)
			ok = false
		}
		p := s.GetPort()
		if p == nil || p.GetNumber() == 0 || p.GetNumber() > 65535 {
			fail(".port.number: must be 1-65535")
			continue
		}
		if j, dup := ports[p.GetNumber()]; dup {
			fail(".port.number: port %d is already used by spec.servers[%d]", p.GetNumber(), j)
			continue
		}
		ports[p.GetNumber()] = i
		if len(s.GetHosts()) == 0 {
			fail(".hosts: at least one host is required")
			continue
		}
		srv := Server{Port: p.GetNumber(), PortName: p.GetName(), Protocol: p.GetProtocol()}
		for j, h := range s.GetHosts() {
			hp, err := ParseHostPattern(h)
			if err != nil {
				fail(".hosts[%d]: %v", j, err)
				continue
			}
			srv.Hosts = append(srv.Hosts, hp)
		}
		if s.GetTls() == nil {
			// The zero mode is PASSTHROUGH: say what is actually wrong.
			fail(".tls.mode: required (supported: %s)", supportedModes)
			continue
		}
		switch mode := s.GetTls().GetMode(); mode {
		case networking.ServerTLSSettings_AUTO_PASSTHROUGH:
			srv.Mode = AutoPassthrough
			if !strings.EqualFold(p.GetProtocol(), "TLS") {
				fail(".port.protocol: AUTO_PASSTHROUGH needs protocol TLS, not %q", p.GetProtocol())
				continue
			}
		case networking.ServerTLSSettings_PASSTHROUGH:
			srv.Mode = Passthrough
			if !strings.EqualFold(p.GetProtocol(), "TLS") && !strings.EqualFold(p.GetProtocol(), "HTTPS") {
				fail(".port.protocol: PASSTHROUGH needs protocol TLS or HTTPS, not %q", p.GetProtocol())
				continue
			}
		default:
			fail(".tls.mode: %s is not supported (supported: %s)", mode, supportedModes)
			continue
		}
		if s.GetBind() != "" {
			fail(".bind: not supported; set the node's --bind-address instead")
			continue
		}
		gw.Servers = append(gw.Servers, srv)
	}
	if !ok {
		return nil
	}
	return gw
}

func (t *translator) buildServices(r Resource[*networking.ServiceEntry]) []*Service {
	spec := r.Spec
	ok := true
	fail := func(format string, args ...any) {
		t.errorf(r.Source, format, args...)
		ok = false
	}
	if len(spec.GetHosts()) == 0 {
		fail("spec.hosts: at least one host is required")
	}
	var ports []Port
	for i, p := range spec.GetPorts() {
		field := fmt.Sprintf("spec.ports[%d]", i)
		switch {
		case p.GetNumber() == 0 || p.GetNumber() > 65535:
			fail("%s.number: must be 1-65535", field)
		case p.GetTargetPort() > 65535:
			fail("%s.targetPort: must be 0-65535", field)
		case slices.ContainsFunc(ports, func(q Port) bool { return q.Number == p.GetNumber() }):
			fail("%s.number: port %d is listed twice", field, p.GetNumber())
		case p.GetName() != "" && slices.ContainsFunc(ports, func(q Port) bool { return q.Name == p.GetName() }):
			fail("%s.name: name %q is listed twice", field, p.GetName())
		default:
			ports = append(ports, Port{Number: p.GetNumber(), Name: p.GetName(), Protocol: p.GetProtocol(), TargetPort: p.GetTargetPort()})
		}
	}
	if len(spec.GetEndpoints()) > 0 && spec.GetWorkloadSelector() != nil {
		fail("spec.workloadSelector: cannot be combined with spec.endpoints")
	}
	var eps []Endpoint
	for i, we := range spec.GetEndpoints() {
		switch ep, err := newEndpoint(we); {
		case errors.Is(err, errNoAddress):
			t.warn("config: endpoint without an address is not dialed", "resource", r.Source.String(),
				"field", fmt.Sprintf("spec.endpoints[%d].address", i), "network", we.GetNetwork())
		case err != nil:
			fail("spec.endpoints[%d].%v", i, err)
		default:
			eps = append(eps, ep)
		}
	}
	if sel := spec.GetWorkloadSelector(); sel != nil {
		for _, w := range t.res.WorkloadEntries {
			if w.Source.Namespace != r.Source.Namespace || !SelectorMatches(sel.GetLabels(), w.Spec.GetLabels()) {
				continue
			}
			switch ep, err := newEndpoint(w.Spec); {
			case errors.Is(err, errNoAddress):
				t.warnNoAddress(w)
			case err != nil:
				t.errorf(w.Source, "spec.%v", err)
				ok = false
			default:
				eps = append(eps, ep)
			}
		}
	}
	if err := checkExportTo(spec.GetExportTo(), r.Source.Namespace, true); err != nil {
		fail("spec.%v", err)
	}
	exp, err := ParseExport(r.Labels, r.Annotations)
	if err != nil {
		fail("%v", err)
	}
	var svcs []*Service
	for i, h := range spec.GetHosts() {
		// The SNI parser's rule: a host it refuses could never be
		// routed, so it is refused here, where the operator sees it.
		host, err := sni.ParseHost(h)
		if err != nil {
			fail("spec.hosts[%d]: %v", i, err)
			continue
		}
		svcs = append(svcs, &Service{
			Source:    r.Source,
			Host:      host,
			Namespace: r.Source.Namespace,
			ExportTo:  spec.GetExportTo(),
			Export:    exp,
			Ports:     ports,
			Endpoints: eps,
		})
	}
	if !ok {
		return nil
	}
	return svcs
}

// warnNoAddress logs, once per build, that a WorkloadEntry has no address.
func (t *translator) warnNoAddress(w Resource[*networking.WorkloadEntry]) {
	if t.noAddress[w.Source] {
		return
	}
	if t.noAddress == nil {
		t.noAddress = make(map[Source]bool)
	}
	t.noAddress[w.Source] = true
	t.warn("config: WorkloadEntry without an address is not dialed", "resource", w.Source.String(),
		"field", "spec.address", "network", w.Spec.GetNetwork())
}

// errNoAddress is newEndpoint's error for an entry without an address.
// Istio accepts one (its validation only warns: istiod uses entries that
// carry just a network to learn of other networks' workloads), but there
// is nothing to dial, so the endpoint is left out, with a warning.
var errNoAddress = errors.New("address: empty")

func newEndpoint(we *networking.WorkloadEntry) (Endpoint, error) {
	addr := we.GetAddress()
	if addr == "" {
		return Endpoint{}, errNoAddress
	}
	if _, err := netip.ParseAddr(addr); err != nil {
		// A name that resolvers read as an address ("10.1") is refused
		// too: it would reach an IP the address policy never saw.
		name, err := sni.ParseHost(addr)
		if err != nil {
			return Endpoint{}, fmt.Errorf("address: %q is neither an IP address nor a DNS name (unix sockets are not supported)", addr)
		}
		addr = name
	}
	for name, p := range we.GetPorts() {
		if p == 0 || p > 65535 {
			return Endpoint{}, fmt.Errorf("ports[%s]: must be 1-65535", name)
		}
	}
	return Endpoint{
		Address:        addr,
		Ports:          we.GetPorts(),
		Labels:         we.GetLabels(),
		Network:        we.GetNetwork(),
		Locality:       we.GetLocality(),
		Weight:         we.GetWeight(),
		ServiceAccount: we.GetServiceAccount(),
	}, nil
}

// attachSubsets gives each service the subsets of the DestinationRule for its
// host: an exact host beats a wildcard one, and two rules for the same host
// are an error.
func (t *translator) attachSubsets(svcs []*Service) {
	byHost := make(map[string]Resource[*networking.DestinationRule])
	for _, dr := range t.res.DestinationRules {
		if dr.Spec.GetHost() == "" {
			t.errorf(dr.Source, "spec.host: required")
			continue
		}
		// Refused, or "*foo.local" would match "barfoo.local".
		host, err := parseHost(resolveShortName(dr.Spec.GetHost(), dr.Source.Namespace, t.domain))
		if err != nil {
			t.errorf(dr.Source, "spec.host: %v", err)
			continue
		}
		if prev, ok := byHost[host]; ok {
			t.errorf(dr.Source, "spec.host: %q already has %v", host, prev.Source)
			continue
		}
		names := make(map[string]bool)
		for i, ss := range dr.Spec.GetSubsets() {
			if err := sni.CheckSubset(ss.GetName()); err != nil {
				t.errorf(dr.Source, "spec.subsets[%d].name: %v", i, err)
			} else if names[ss.GetName()] {
				t.errorf(dr.Source, "spec.subsets[%d].name: %q is listed twice", i, ss.GetName())
			}
			names[ss.GetName()] = true
		}
		byHost[host] = dr
	}
	used := make(map[Source]bool)
	for _, svc := range svcs {
		dr, ok := byHost[svc.Host]
		if !ok {
			var best string
			for h := range byHost {
				if strings.HasPrefix(h, "*") {
					p := HostPattern{Namespace: "*", Host: h}
					if p.Matches(svc.Host, "", "") && len(h) > len(best) {
						best = h
					}
				}
			}
			if best == "" {
				continue
			}
			dr = byHost[best]
		}
		used[dr.Source] = true
		svc.policy = dr.Spec.GetTrafficPolicy()
		for _, ss := range dr.Spec.GetSubsets() {
			svc.Subsets = append(svc.Subsets, Subset{Name: ss.GetName(), Labels: ss.GetLabels(), policy: ss.GetTrafficPolicy()})
		}
	}
	for _, dr := range t.res.DestinationRules {
		fields := unhonoured(dr.Spec.GetTrafficPolicy(), "spec.trafficPolicy")
		for i, ss := range dr.Spec.GetSubsets() {
			fields = append(fields, unhonoured(ss.GetTrafficPolicy(), fmt.Sprintf("spec.subsets[%d].trafficPolicy", i))...)
		}
		if len(fields) > 0 {
			t.warn("config: DestinationRule settings an L4 gateway does not apply are ignored", "resource", dr.Source.String(), "fields", fields)
		}
		if !used[dr.Source] {
			t.warn("config: DestinationRule matches no ServiceEntry host", "resource", dr.Source.String(), "host", dr.Spec.GetHost())
		}
	}
}
