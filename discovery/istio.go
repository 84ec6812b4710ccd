package discovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
	"sigs.k8s.io/yaml"
)

// The Istio API group and the versions of it the loader reads. All of them
// share the v1alpha3 schema.
const istioGroup = "networking.istio.io"

var istioVersions = []string{"v1", "v1beta1", "v1alpha3"}

// clusterDomain completes DestinationRule short hosts, as Istio does by default.
const clusterDomain = "svc.cluster.local"

// LoadFiles reads Istio resources from files and directories, like
// `kubectl apply -f`: a directory contributes its *.yaml, *.yml and *.json
// files (not recursively), and a file may hold several documents separated
// by "---". It returns every problem found, each naming the file, the
// resource and the field, joined in one error. Resources of other API groups
// are skipped; Istio networking kinds the gateway does not use are skipped
// with a warning on log (nil: no logging).
func LoadFiles(paths []string, log *slog.Logger) (*Catalog, error) {
	files, err := expandPaths(paths)
	if err != nil {
		return nil, err
	}
	var l loader
	l.log = log
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		l.addFile(f, data)
	}
	return l.build()
}

// Parse reads Istio resources from one document stream, named file in errors.
func Parse(file string, data []byte, log *slog.Logger) (*Catalog, error) {
	var l loader
	l.log = log
	l.addFile(file, data)
	return l.build()
}

// expandPaths turns files and directories into the list of files to read.
func expandPaths(paths []string) ([]string, error) {
	if len(paths) == 0 {
		return nil, errors.New("no config files given")
	}
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("config path: %w", err)
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("config directory: %w", err)
		}
		for _, e := range entries {
			if e.IsDir() || !isConfigFile(e.Name()) {
				continue
			}
			files = append(files, filepath.Join(p, e.Name()))
		}
	}
	return files, nil
}

// isConfigFile reports whether a directory entry is read as config; hidden
// files are skipped because editors and Kubernetes ConfigMap mounts keep
// temporary and versioned copies under dot names.
func isConfigFile(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	switch filepath.Ext(name) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// document is the Kubernetes envelope of one resource.
type document struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec json.RawMessage `json:"spec"`
}

type resource[T proto.Message] struct {
	src  Source
	spec T
}

// loader accumulates resources and problems before building a Catalog.
type loader struct {
	log       *slog.Logger
	errs      []error
	seen      map[Source]string // resource identity -> file defining it
	gateways  []resource[*networking.Gateway]
	entries   []resource[*networking.ServiceEntry]
	workloads []resource[*networking.WorkloadEntry]
	rules     []resource[*networking.DestinationRule]
	exports   map[Source]Export // ServiceEntry export choices (ExportLabel)
}

func (l *loader) errorf(src Source, format string, args ...any) {
	l.errs = append(l.errs, fmt.Errorf("%v: %s", src, fmt.Sprintf(format, args...)))
}

func (l *loader) warn(msg string, args ...any) {
	if l.log != nil {
		l.log.Warn(msg, args...)
	}
}

func (l *loader) addFile(file string, data []byte) {
	for i, doc := range splitDocuments(data) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		where := fmt.Sprintf("%s (document %d)", file, i+1)
		// Strict: a key written twice is an error, not a silent override.
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			l.errs = append(l.errs, fmt.Errorf("%s: invalid YAML: %w", where, err))
			continue
		}
		if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
			continue // only comments
		}
		var d document
		if err := json.Unmarshal(js, &d); err != nil {
			l.errs = append(l.errs, fmt.Errorf("%s: not a Kubernetes resource: %w", where, err))
			continue
		}
		l.addDocument(file, where, &d)
	}
}

func (l *loader) addDocument(file, where string, d *document) {
	if d.Kind == "" || d.APIVersion == "" {
		l.errs = append(l.errs, fmt.Errorf("%s: missing apiVersion or kind", where))
		return
	}
	group, version, _ := strings.Cut(d.APIVersion, "/")
	if group != istioGroup {
		return
	}
	if !slices.Contains(istioVersions, version) {
		l.errs = append(l.errs, fmt.Errorf("%s: apiVersion %q: unknown version of %s (want one of %v)", where, d.APIVersion, istioGroup, istioVersions))
		return
	}
	src := Source{File: file, Kind: d.Kind, Namespace: d.Metadata.Namespace, Name: d.Metadata.Name}
	if src.Namespace == "" {
		src.Namespace = DefaultNamespace
	}
	if src.Name == "" {
		l.errs = append(l.errs, fmt.Errorf("%s: %s: metadata.name is required", where, d.Kind))
		return
	}
	id := Source{Kind: src.Kind, Namespace: src.Namespace, Name: src.Name}
	if prev, ok := l.seen[id]; ok {
		// Two files may not define the same resource: which would win is
		// a question the operator should answer, not the loader.
		l.errorf(src, "defined more than once (also in %s)", prev)
		return
	}
	if l.seen == nil {
		l.seen = make(map[Source]string)
	}
	l.seen[id] = file
	switch d.Kind {
	case "Gateway":
		addSpec(l, src, d.Spec, &l.gateways)
	case "ServiceEntry":
		exp, err := ParseExport(d.Metadata.Labels, d.Metadata.Annotations)
		if err != nil {
			l.errorf(src, "%v", err)
			return
		}
		if l.exports == nil {
			l.exports = make(map[Source]Export)
		}
		l.exports[src] = exp
		addSpec(l, src, d.Spec, &l.entries)
	case "WorkloadEntry":
		addSpec(l, src, d.Spec, &l.workloads)
	case "DestinationRule":
		addSpec(l, src, d.Spec, &l.rules)
	case "VirtualService", "Sidecar", "EnvoyFilter", "WorkloadGroup", "ProxyConfig":
		l.warn("config: resource kind not used by the gateway, ignored", "resource", src.String())
	default:
		l.errorf(src, "unknown kind %q in %s", d.Kind, istioGroup)
	}
}

// addSpec decodes a spec strictly: an unknown field is an error, so a typo
// never silently changes routing.
func addSpec[T proto.Message](l *loader, src Source, spec json.RawMessage, out *[]resource[T]) {
	var zero T
	msg := zero.ProtoReflect().New().Interface().(T)
	if len(spec) > 0 && string(spec) != "null" { // "spec:" with nothing after it
		if err := protojson.Unmarshal(spec, msg); err != nil {
			l.errorf(src, "spec: %v", err)
			return
		}
	}
	*out = append(*out, resource[T]{src: src, spec: msg})
}

// splitDocuments splits a YAML stream at "---" lines, which may carry a
// comment ("--- # next"), as kubectl does.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	start := 0
	for i := 0; i < len(data); {
		end := bytes.IndexByte(data[i:], '\n')
		next := len(data)
		if end >= 0 {
			next = i + end + 1
		}
		line := bytes.TrimRight(data[i:next], "\r\n")
		if rest, ok := bytes.CutPrefix(line, []byte("---")); ok {
			if rest = bytes.TrimSpace(rest); len(rest) == 0 || rest[0] == '#' {
				docs = append(docs, data[start:i])
				start = next
			}
		}
		i = next
	}
	return append(docs, data[start:])
}

func (l *loader) build() (*Catalog, error) {
	c := &Catalog{}
	for _, g := range l.gateways {
		if gw := l.buildGateway(g); gw != nil {
			c.Gateways = append(c.Gateways, gw)
		}
	}
	hosts := make(map[string]*Service)
	for _, se := range l.entries {
		for _, svc := range l.buildServices(se) {
			if prev, ok := hosts[svc.Host]; ok {
				l.errorf(se.src, "spec.hosts: %q is already defined by %v", svc.Host, prev.Source)
				continue
			}
			hosts[svc.Host] = svc
			c.Services = append(c.Services, svc)
		}
	}
	l.attachSubsets(c.Services)
	if len(l.errs) > 0 {
		return nil, errors.Join(l.errs...)
	}
	return c, nil
}

func (l *loader) buildGateway(r resource[*networking.Gateway]) *Gateway {
	gw := &Gateway{Source: r.src, Selector: r.spec.GetSelector()}
	ok := true
	ports := make(map[uint32]int)
	if len(r.spec.GetServers()) == 0 {
		l.errorf(r.src, "spec.servers: at least one server is required")
		ok = false
	}
	for i, s := range r.spec.GetServers() {
		field := fmt.Sprintf("spec.servers[%d]", i)
		fail := func(format string, args ...any) {
			l.errorf(r.src, field+format, args...)
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
			fail(".tls.mode: required (supported: AUTO_PASSTHROUGH)")
			continue
		}
		if mode := s.GetTls().GetMode(); mode != networking.ServerTLSSettings_AUTO_PASSTHROUGH {
			fail(".tls.mode: %s is not supported (supported: AUTO_PASSTHROUGH)", mode)
			continue
		}
		srv.Mode = AutoPassthrough
		if !strings.EqualFold(p.GetProtocol(), "TLS") {
			fail(".port.protocol: AUTO_PASSTHROUGH needs protocol TLS, not %q", p.GetProtocol())
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

func (l *loader) buildServices(r resource[*networking.ServiceEntry]) []*Service {
	spec := r.spec
	ok := true
	fail := func(format string, args ...any) {
		l.errorf(r.src, format, args...)
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
		if ep, err := newEndpoint(we); err != nil {
			fail("spec.endpoints[%d].%v", i, err)
		} else {
			eps = append(eps, ep)
		}
	}
	if sel := spec.GetWorkloadSelector(); sel != nil {
		for _, w := range l.workloads {
			if w.src.Namespace != r.src.Namespace || !labelsMatch(sel.GetLabels(), w.spec.GetLabels()) {
				continue
			}
			if ep, err := newEndpoint(w.spec); err != nil {
				l.errorf(w.src, "spec.%v", err)
				ok = false
			} else {
				eps = append(eps, ep)
			}
		}
	}
	var svcs []*Service
	for i, h := range spec.GetHosts() {
		host := strings.ToLower(h)
		if err := checkDNSName(host); err != nil {
			fail("spec.hosts[%d]: %v", i, err)
			continue
		}
		svcs = append(svcs, &Service{
			Source:    r.src,
			Host:      host,
			Namespace: r.src.Namespace,
			ExportTo:  spec.GetExportTo(),
			Export:    l.exports[r.src],
			Ports:     ports,
			Endpoints: eps,
		})
	}
	if !ok {
		return nil
	}
	return svcs
}

func newEndpoint(we *networking.WorkloadEntry) (Endpoint, error) {
	addr := we.GetAddress()
	if addr == "" {
		return Endpoint{}, errors.New("address: required")
	}
	if _, err := netip.ParseAddr(addr); err != nil {
		if err := checkDNSName(strings.ToLower(addr)); err != nil {
			return Endpoint{}, fmt.Errorf("address: %q is neither an IP address nor a DNS name (unix sockets are not supported)", addr)
		}
		addr = strings.ToLower(addr)
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
func (l *loader) attachSubsets(svcs []*Service) {
	byHost := make(map[string]resource[*networking.DestinationRule])
	for _, dr := range l.rules {
		host := strings.ToLower(dr.spec.GetHost())
		if host == "" {
			l.errorf(dr.src, "spec.host: required")
			continue
		}
		if !strings.Contains(host, ".") && host != "*" {
			host = host + "." + dr.src.Namespace + "." + clusterDomain
		}
		if _, err := ParseHostPattern(host); err != nil || strings.Contains(host, "/") {
			// Without this, "*foo.local" would match "barfoo.local".
			l.errorf(dr.src, "spec.host: %q is neither a DNS name nor a wildcard \"*.suffix\"", dr.spec.GetHost())
			continue
		}
		if prev, ok := byHost[host]; ok {
			l.errorf(dr.src, "spec.host: %q already has %v", host, prev.src)
			continue
		}
		names := make(map[string]bool)
		for i, ss := range dr.spec.GetSubsets() {
			if err := checkLabel(ss.GetName()); err != nil {
				l.errorf(dr.src, "spec.subsets[%d].name: %v", i, err)
			} else if names[ss.GetName()] {
				l.errorf(dr.src, "spec.subsets[%d].name: %q is listed twice", i, ss.GetName())
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
		used[dr.src] = true
		for _, ss := range dr.spec.GetSubsets() {
			svc.Subsets = append(svc.Subsets, Subset{Name: ss.GetName(), Labels: ss.GetLabels()})
		}
	}
	for _, dr := range l.rules {
		if !used[dr.src] {
			l.warn("config: DestinationRule matches no ServiceEntry host", "resource", dr.src.String(), "host", dr.spec.GetHost())
		}
	}
}

// checkDNSName validates a lower-case DNS name of at most 253 characters.
func checkDNSName(h string) error {
	if h == "" {
		return errors.New("empty host")
	}
	if len(h) > 253 {
		return fmt.Errorf("host %q is longer than 253 characters", h)
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return fmt.Errorf("host %q is an IP address, not a name", h)
	}
	for _, label := range strings.Split(h, ".") {
		if err := checkLabel(label); err != nil {
			return fmt.Errorf("host %q: %w", h, err)
		}
	}
	return nil
}

// checkLabel validates a DNS-1123 label.
func checkLabel(s string) error {
	if s == "" || len(s) > 63 {
		return fmt.Errorf("label %q must be 1-63 characters", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return fmt.Errorf("label %q: only a-z, 0-9 and inner '-' are allowed", s)
		}
	}
	return nil
}
