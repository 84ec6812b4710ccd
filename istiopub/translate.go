package istiopub

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	networking "istio.io/api/networking/v1alpha3"
	"k8s.io/apimachinery/pkg/util/validation"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/peer"
)

// Labels and annotations of the objects the publisher writes.
const (
	// LabelManagedBy, with value ManagedByValue, marks every object the
	// publisher writes. It lists, updates and deletes only objects with
	// it, and never creates over an object without it.
	LabelManagedBy = "ewgate.io/managed-by"
	ManagedByValue = "istio-publisher"
	// LabelService joins a ServiceEntry's workloadSelector to its
	// WorkloadEntries; its value is the ServiceEntry's name.
	LabelService = "ewgate.io/service-entry"
	// AnnotationNetwork and AnnotationHost say which remote network and
	// service an object stands for, for people reading it.
	AnnotationNetwork = "ewgate.io/network"
	AnnotationHost    = "ewgate.io/host"

	// Istio's names.
	labelNetwork      = "topology.istio.io/network"
	labelTLSMode      = "security.istio.io/tlsMode"
	remoteClass       = "istio-remote"
	listenerProtocol  = "gateway.istio.io/listener-protocol"
	autoPassthrough   = "auto-passthrough"
	crossNetworkName  = "cross-network"
	defaultTLSModeVal = "istio"
)

// Kind is the kind of an Object.
type Kind string

// The kinds the publisher writes.
const (
	KindGateway       Kind = "Gateway"       // gateway.networking.k8s.io/v1
	KindServiceEntry  Kind = "ServiceEntry"  // networking.istio.io/v1
	KindWorkloadEntry Kind = "WorkloadEntry" // networking.istio.io/v1
)

// Object is one resource the publisher wants in the cluster. Spec is a
// *gatewayv1.GatewaySpec, *networking.ServiceEntry or
// *networking.WorkloadEntry, as Kind says.
type Object struct {
	Kind        Kind
	Namespace   string
	Name        string
	Labels      map[string]string
	Annotations map[string]string
	Spec        any
}

// Key identifies an object: kind, namespace and name.
func (o *Object) Key() string { return string(o.Kind) + " " + o.Namespace + "/" + o.Name }

// Cluster is what translation asks of the local cluster.
type Cluster interface {
	// Service returns the selector of the Service namespace/name and
	// whether the Service exists.
	Service(namespace, name string) (selector map[string]string, ok bool)
	// HasNamespace reports whether the namespace exists.
	HasNamespace(name string) bool
}

// Options shape the translation.
type Options struct {
	// Network is this cluster's network: its own gateways' summaries are
	// never published. Required.
	Network string
	// Namespace holds the Gateways, and the ServiceEntries and
	// WorkloadEntries of remote services whose namespace does not exist
	// here. Required.
	Namespace string
	// ClusterDomain is the local cluster's DNS domain: a remote host
	// <name>.<namespace>.svc.<ClusterDomain> is the same-named Service
	// of this cluster when that exists. Default
	// discovery.DefaultClusterDomain.
	ClusterDomain string
	// Local is local mode: every remote network's Gateway lists this
	// network's own gateways (LocalGateways, or when that is empty the
	// passthrough addresses of this network's live gateways in gossip),
	// so that sidecars that cannot reach other networks go through their
	// own gateway and its tunnels.
	Local         bool
	LocalGateways []string // host:port
}

// Translate returns the objects that describe the remote networks of
// summaries (as [peer.Node.Summaries] returns them), sorted by Key, and a
// description of each part it left out (an unparsable address, a service
// with a local Service that selects nothing, ...).
func Translate(opts Options, summaries []peer.NodeSummary, c Cluster) ([]Object, []string) {
	opts.ClusterDomain = cmp.Or(opts.ClusterDomain, discovery.DefaultClusterDomain)
	t := translation{opts: opts, cluster: c}
	byNet := make(map[string][]peer.NodeSummary)
	for _, s := range summaries {
		if s.Meta.Network == "" {
			continue
		}
		byNet[s.Meta.Network] = append(byNet[s.Meta.Network], s)
	}
	var local []string
	if opts.Local {
		local = opts.LocalGateways
		if len(local) == 0 {
			for _, s := range byNet[opts.Network] {
				if s.Meta.PassthroughAddr != "" {
					local = append(local, s.Meta.PassthroughAddr)
				}
			}
			if len(local) == 0 && len(byNet) > 1 {
				t.skip("local mode: this network's gateways advertise no passthrough address; no remote network's Gateway is written")
			}
		}
	}
	hosts := make(map[string]*remoteService)
	for _, network := range slices.Sorted(maps.Keys(byNet)) {
		if network == opts.Network {
			continue
		}
		nodes := byNet[network]
		addrs := local
		if !opts.Local {
			addrs = nil
			for _, s := range nodes {
				if s.Meta.PassthroughAddr != "" {
					addrs = append(addrs, s.Meta.PassthroughAddr)
				}
			}
		}
		t.gateways(network, addrs)
		for _, s := range nodes {
			for i := range s.Summary.Services {
				svc := &s.Summary.Services[i]
				rs := hosts[svc.Host]
				if rs == nil {
					rs = &remoteService{host: svc.Host, namespace: svc.Namespace, exportTo: svc.ExportTo,
						ports: make(map[uint16]peer.PortSummary), weights: make(map[weightKey]uint32)}
					hosts[svc.Host] = rs
				}
				rs.add(network, svc)
			}
		}
	}
	for _, host := range slices.Sorted(maps.Keys(hosts)) {
		t.service(hosts[host])
	}
	slices.SortFunc(t.out, func(a, b Object) int { return cmp.Compare(a.Key(), b.Key()) })
	return t.out, t.skipped
}

type translation struct {
	opts    Options
	cluster Cluster
	out     []Object
	skipped []string
}

func (t *translation) skip(format string, args ...any) {
	t.skipped = append(t.skipped, fmt.Sprintf(format, args...))
}

// gateways adds network's istio-remote Gateways: one per passthrough
// port, since a Gateway's listeners apply to all its addresses.
func (t *translation) gateways(network string, addrs []string) {
	byPort := make(map[uint16][]string)
	for _, a := range addrs {
		host, port, err := splitHostPort(a)
		if err != nil {
			t.skip("network %s: passthrough address %q: %v", network, a, err)
			continue
		}
		if !slices.Contains(byPort[port], host) {
			byPort[port] = append(byPort[port], host)
		}
	}
	for _, port := range slices.Sorted(maps.Keys(byPort)) {
		hosts := byPort[port]
		slices.Sort(hosts)
		spec := &gatewayv1.GatewaySpec{GatewayClassName: remoteClass}
		for _, h := range hosts {
			typ := gatewayv1.HostnameAddressType
			if _, err := netip.ParseAddr(h); err == nil {
				typ = gatewayv1.IPAddressType
			}
			spec.Addresses = append(spec.Addresses, gatewayv1.GatewaySpecAddress{Type: &typ, Value: h})
		}
		mode := gatewayv1.TLSModePassthrough
		spec.Listeners = []gatewayv1.Listener{{
			Name:     crossNetworkName,
			Port:     gatewayv1.PortNumber(port),
			Protocol: gatewayv1.TLSProtocolType,
			TLS: &gatewayv1.ListenerTLSConfig{Mode: &mode,
				Options: map[gatewayv1.AnnotationKey]gatewayv1.AnnotationValue{listenerProtocol: autoPassthrough}},
		}}
		p := strconv.Itoa(int(port))
		t.out = append(t.out, Object{
			Kind:        KindGateway,
			Namespace:   t.opts.Namespace,
			Name:        objectName(network+"-"+p, "gateway", network, p),
			Labels:      map[string]string{LabelManagedBy: ManagedByValue, labelNetwork: network},
			Annotations: map[string]string{AnnotationNetwork: network},
			Spec:        spec,
		})
	}
}

func splitHostPort(a string) (string, uint16, error) {
	host, ps, err := net.SplitHostPort(a)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("port %q: want 1-65535", ps)
	}
	if host == "" {
		return "", 0, fmt.Errorf("no host")
	}
	return host, uint16(p), nil
}

// remoteService is one host as all remote networks report it.
type remoteService struct {
	host, namespace string
	exportTo        []string
	ports           map[uint16]peer.PortSummary // first network's definition of each port
	accounts        []string
	subsets         map[string]map[string]string // definitions, first network's
	// weights counts the healthy endpoints per network, subset and
	// locality; see add.
	weights map[weightKey]uint32
}

type weightKey struct{ network, subset, locality string }

// add merges one gateway's summary of the service in network. Gateways of
// one network summarize the same endpoints, so their counts are not
// added: the largest count stands. A WorkloadEntry serves every port, so
// of a subset's counts per port the largest stands too.
func (rs *remoteService) add(network string, svc *peer.ServiceSummary) {
	for _, a := range svc.ServiceAccounts {
		if !slices.Contains(rs.accounts, a) {
			rs.accounts = append(rs.accounts, a)
		}
	}
	for _, d := range svc.Subsets {
		if rs.subsets == nil {
			rs.subsets = make(map[string]map[string]string)
		}
		if _, ok := rs.subsets[d.Name]; !ok {
			rs.subsets[d.Name] = d.Labels
		}
	}
	for _, p := range svc.Ports {
		if _, ok := rs.ports[p.Port]; !ok {
			rs.ports[p.Port] = p
		}
		for _, ss := range p.Subsets {
			for _, lc := range ss.Healthy {
				k := weightKey{network, ss.Name, lc.Locality}
				rs.weights[k] = max(rs.weights[k], lc.Count)
			}
		}
	}
}

// service adds the ServiceEntry and WorkloadEntries of rs, or, when a
// same-named Service exists here, the WorkloadEntries it selects.
func (t *translation) service(rs *remoteService) {
	slices.Sort(rs.accounts)
	svcName, svcNS, isKube := t.kubeName(rs.host)
	var selector map[string]string
	hasLocal := false
	if isKube {
		selector, hasLocal = t.cluster.Service(svcNS, svcName)
	}
	ns := rs.namespace
	if hasLocal {
		ns = svcNS
		if len(selector) == 0 {
			t.skip("service %s: the local Service %s/%s has no selector, so it can select no WorkloadEntry", rs.host, svcNS, svcName)
			return
		}
	} else if ns == "" || !t.cluster.HasNamespace(ns) {
		ns = t.opts.Namespace
	}
	seName := objectName(readableHost(rs.host), "service", rs.host)
	if !hasLocal {
		t.out = append(t.out, t.serviceEntry(rs, ns, seName))
	}
	sa := serviceAccount(rs.accounts, ns)
	for _, wk := range rs.workloads() {
		labels := map[string]string{LabelManagedBy: ManagedByValue, labelTLSMode: defaultTLSModeVal}
		if wk.subset != "" {
			def := rs.subsets[wk.subset]
			if hasLocal && conflicts(def, selector) {
				t.skip("service %s subset %s: its labels contradict the local Service %s/%s's selector", rs.host, wk.subset, svcNS, svcName)
				continue
			}
			maps.Copy(labels, def)
		}
		if hasLocal {
			maps.Copy(labels, selector)
		} else {
			labels[LabelService] = seName
		}
		labels[LabelManagedBy] = ManagedByValue
		t.out = append(t.out, Object{
			Kind:        KindWorkloadEntry,
			Namespace:   ns,
			Name:        objectName(readableHost(rs.host)+"-"+wk.network+"-"+wk.subset, "workload", rs.host, wk.network, wk.subset, wk.locality),
			Labels:      labels,
			Annotations: map[string]string{AnnotationNetwork: wk.network, AnnotationHost: rs.host},
			Spec: &networking.WorkloadEntry{
				Network:        wk.network,
				Labels:         labels,
				Locality:       wk.locality,
				Weight:         wk.weight,
				ServiceAccount: sa,
			},
		})
	}
}

// workload is one WorkloadEntry: a network's healthy endpoints of one
// subset in one locality.
type workload struct {
	network, subset, locality string
	weight                    uint32
}

// workloads returns rs's WorkloadEntries in a stable order. Where a
// network reports named subsets, each gets its own entry and the
// endpoints in none of them (the count of subset "" less theirs) one
// without subset labels, so that the service's own cluster counts each
// endpoint once; overlapping subsets count an endpoint in each. No
// entry has weight 0: Istio would read it as 1.
func (rs *remoteService) workloads() []workload {
	type nl struct{ network, locality string }
	named := make(map[nl]uint32)
	var out []workload
	for k, w := range rs.weights {
		if k.subset != "" && w > 0 {
			if _, defined := rs.subsets[k.subset]; !defined {
				continue // counted, but no labels to select it by
			}
			named[nl{k.network, k.locality}] += w
			out = append(out, workload{k.network, k.subset, k.locality, w})
		}
	}
	for k, w := range rs.weights {
		if k.subset != "" {
			continue
		}
		if rest := int64(w) - int64(named[nl{k.network, k.locality}]); rest > 0 {
			out = append(out, workload{k.network, "", k.locality, uint32(rest)})
		}
	}
	slices.SortFunc(out, func(a, b workload) int {
		return cmp.Or(cmp.Compare(a.network, b.network), cmp.Compare(a.subset, b.subset), cmp.Compare(a.locality, b.locality))
	})
	return out
}

func (t *translation) serviceEntry(rs *remoteService, ns, name string) Object {
	se := &networking.ServiceEntry{
		Hosts:            []string{rs.host},
		Location:         networking.ServiceEntry_MESH_INTERNAL,
		Resolution:       networking.ServiceEntry_STATIC,
		WorkloadSelector: &networking.WorkloadSelector{Labels: map[string]string{LabelService: name}},
		// The remote endpoints' own identities, whatever their trust
		// domain and namespace: what sidecars verify.
		SubjectAltNames: slices.Clone(rs.accounts),
	}
	for _, e := range rs.exportTo {
		if e == "." && ns != rs.namespace {
			e = rs.namespace // "." meant the service's namespace, not the publisher's
		}
		if !slices.Contains(se.ExportTo, e) {
			se.ExportTo = append(se.ExportTo, e)
		}
	}
	for _, num := range slices.Sorted(maps.Keys(rs.ports)) {
		p := rs.ports[num]
		pname := p.Name
		if len(validation.IsDNS1123Label(pname)) > 0 {
			pname = "port-" + strconv.Itoa(int(num))
		}
		se.Ports = append(se.Ports, &networking.ServicePort{Number: uint32(num), Name: pname, Protocol: p.Protocol})
	}
	return Object{
		Kind:        KindServiceEntry,
		Namespace:   ns,
		Name:        name,
		Labels:      map[string]string{LabelManagedBy: ManagedByValue},
		Annotations: map[string]string{AnnotationHost: rs.host},
		Spec:        se,
	}
}

// kubeName splits a host <name>.<namespace>.svc.<cluster domain>.
func (t *translation) kubeName(host string) (name, namespace string, ok bool) {
	rest, found := strings.CutSuffix(host, ".svc."+t.opts.ClusterDomain)
	if !found {
		return "", "", false
	}
	name, namespace, ok = strings.Cut(rest, ".")
	if !ok || name == "" || namespace == "" || strings.Contains(namespace, ".") {
		return "", "", false
	}
	return name, namespace, true
}

// serviceAccount returns the name of the first service account among the
// SPIFFE IDs (spiffe://<td>/ns/<ns>/sa/<sa>) in namespace ns, or "": a
// WorkloadEntry's service account names one in its own namespace.
func serviceAccount(ids []string, ns string) string {
	for _, id := range ids {
		_, path, ok := strings.Cut(strings.TrimPrefix(id, "spiffe://"), "/")
		if !ok {
			continue
		}
		parts := strings.Split(path, "/")
		if len(parts) == 4 && parts[0] == "ns" && parts[1] == ns && parts[2] == "sa" && parts[3] != "" {
			return parts[3]
		}
	}
	return ""
}

// conflicts reports whether a and b give one key different values.
func conflicts(a, b map[string]string) bool {
	for k, v := range a {
		if w, ok := b[k]; ok && w != v {
			return true
		}
	}
	return false
}

// readableHost is the part of a host a name shows: a Kubernetes service
// host's name and namespace, else the whole host.
func readableHost(host string) string {
	if name, _, ok := strings.Cut(host, ".svc."); ok {
		return name
	}
	return host
}

// maxNameLen keeps names valid as label values too (LabelService).
const maxNameLen = validation.LabelValueMaxLength

// objectName returns "ewgate-<readable>-<hash>": readable, sanitized to a
// DNS label and cut to fit 63 bytes, then a hash of kind and parts, so
// that different parts never share a name however they sanitize.
func objectName(readable string, kind string, parts ...string) string {
	h := sha256.Sum256([]byte(kind + "\x00" + strings.Join(parts, "\x00")))
	suffix := "-" + hex.EncodeToString(h[:5])
	var b strings.Builder
	dash := true
	for _, r := range strings.ToLower(readable) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
			dash = false
		case !dash:
			b.WriteByte('-')
			dash = true
		}
	}
	s := "ewgate-" + strings.Trim(b.String(), "-")
	if room := maxNameLen - len(suffix); len(s) > room {
		s = strings.TrimRight(s[:room], "-")
	}
	return strings.TrimRight(s, "-") + suffix
}
