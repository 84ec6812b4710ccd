package discovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/golang/protobuf/jsonpb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"sigs.k8s.io/yaml"
)

// The Istio API group and the versions of it the loader reads. All of them
// share the v1alpha3 schema.
const istioGroup = "networking.istio.io"

var istioVersions = []string{"v1", "v1beta1", "v1alpha3"}

// LoadFiles reads Istio resources from files and directories, like
// `kubectl apply -f`: a directory contributes its *.yaml, *.yml and *.json
// files (not recursively), and a file may hold several documents separated
// by "---". It returns every problem found, each naming the file, the
// resource and the field, joined in one error. Resources of other API groups
// are skipped; Istio networking kinds the gateway does not use are skipped
// with a warning on log (nil: no logging).
func LoadFiles(paths []string, log *slog.Logger) (*Catalog, error) {
	return LoadFilesFor(paths, nil, log)
}

// LoadFilesFor is LoadFiles for one node (nil: none): Gateways that do not
// select it are left out unvalidated (see Resources.Node), so that a
// directory may also hold other proxies' Gateways. Warnings about the
// resources are logged once per load, not again by Merge (Resources.Warned).
func LoadFilesFor(paths []string, node *Node, log *slog.Logger) (*Catalog, error) {
	files, err := expandPaths(paths)
	if err != nil {
		return nil, err
	}
	var l loader
	l.log = log
	l.res.Node = node
	// A new load is a new version of the config: its warnings are logged
	// once, and not again when Merge rebuilds it.
	l.res.Warned = new(Warned)
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

// loader decodes files into Resources, collecting every problem.
type loader struct {
	log  *slog.Logger
	errs []error
	res  Resources
}

func (l *loader) errorf(src Source, format string, args ...any) {
	l.errs = append(l.errs, fmt.Errorf("%v: %s", src, fmt.Sprintf(format, args...)))
}

// build turns what the files held into a Catalog, reporting decoding and
// translation problems together.
func (l *loader) build() (*Catalog, error) {
	c, err := l.res.Build(l.log)
	if len(l.errs) > 0 {
		return nil, errors.Join(append(l.errs, err)...)
	}
	return c, err
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
	if err := checkLabel(src.Namespace); err != nil {
		// Kubernetes refuses it too; the namespace is matched against
		// exportTo lists and server host namespaces.
		l.errorf(src, "metadata.namespace: %v", err)
		return
	}
	switch d.Kind {
	case "Gateway":
		addSpec(l, src, d, &l.res.Gateways)
	case "ServiceEntry":
		addSpec(l, src, d, &l.res.ServiceEntries)
	case "WorkloadEntry":
		addSpec(l, src, d, &l.res.WorkloadEntries)
	case "DestinationRule":
		addSpec(l, src, d, &l.res.DestinationRules)
	case "VirtualService":
		addSpec(l, src, d, &l.res.VirtualServices)
	case "Sidecar", "EnvoyFilter", "WorkloadGroup", "ProxyConfig":
		warn(l.log, "config: resource kind not used by the gateway, ignored", "resource", src.String())
	default:
		l.errorf(src, "unknown kind %q in %s", d.Kind, istioGroup)
	}
}

// istioJSON decodes specs as Istio's own types do (their UnmarshalJSON,
// github.com/golang/protobuf's jsonpb), so that what istiod accepts reads
// the same here: durations in Go's syntax ("30ms", "5m") as well as
// protobuf's ("0.030s"), enums by name or number. Unlike Istio's, it
// refuses unknown fields.
var istioJSON = jsonpb.Unmarshaler{}

// addSpec decodes a spec strictly: an unknown field is an error, so a typo
// never silently changes routing.
func addSpec[T proto.Message](l *loader, src Source, d *document, out *[]Resource[T]) {
	spec := d.Spec
	var zero T
	msg := zero.ProtoReflect().New().Interface().(T)
	if len(spec) > 0 && string(spec) != "null" { // "spec:" with nothing after it
		if err := istioJSON.Unmarshal(bytes.NewReader(spec), protoadapt.MessageV1Of(msg)); err != nil {
			l.errorf(src, "spec: %v", err)
			return
		}
	}
	*out = append(*out, Resource[T]{Source: src, Labels: d.Metadata.Labels, Annotations: d.Metadata.Annotations, Spec: msg})
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
