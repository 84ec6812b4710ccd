package kubetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// istioCRDFile is where the istio.io/api module ships Istio's CRDs.
const istioCRDFile = "kubernetes/customresourcedefinitions.gen.yaml"

// gatewayAPICRDDir is where the sigs.k8s.io/gateway-api module ships the
// standard channel's CRDs, one file per kind (and, beside them, a
// ValidatingAdmissionPolicy that is not a CRD).
const gatewayAPICRDDir = "config/crd/standard"

// istioCRDs returns Istio's CustomResourceDefinitions as JSON documents,
// from the istio.io/api version the repository's go.mod requires
// (downloaded into the module cache if it is not there yet).
func istioCRDs() ([][]byte, error) {
	dir, err := moduleDir("istio.io/api")
	if err != nil {
		return nil, err
	}
	return crdFile(filepath.Join(dir, istioCRDFile))
}

// gatewayAPICRDs returns the Gateway API's standard CRDs (Gateway,
// GatewayClass, the routes, ReferenceGrant, ...), from the
// sigs.k8s.io/gateway-api version go.mod requires: Istio reads Gateways of
// class istio-remote to learn other networks' gateways.
func gatewayAPICRDs() ([][]byte, error) {
	dir, err := moduleDir("sigs.k8s.io/gateway-api")
	if err != nil {
		return nil, err
	}
	files, err := filepath.Glob(filepath.Join(dir, gatewayAPICRDDir, "gateway.networking.k8s.io_*.yaml"))
	if err != nil {
		return nil, err
	}
	var docs [][]byte
	for _, f := range files {
		if strings.HasSuffix(f, "_vap_safeupgrades.yaml") {
			continue // an admission policy against mixing channels, not a CRD
		}
		d, err := crdFile(f)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d...)
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("no Gateway API CRDs in %s", filepath.Join(dir, gatewayAPICRDDir))
	}
	return docs, nil
}

// moduleDir returns the directory of module, at the version the
// repository's go.mod requires, downloading it into the module cache if
// it is not there yet.
func moduleDir(module string) (string, error) {
	out, err := exec.Command("go", "mod", "download", "-json", module).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return "", fmt.Errorf("go mod download %s: %w: %s%s", module, err, stderr, out)
	}
	var mod struct{ Dir, Version, Error string }
	if err := json.Unmarshal(out, &mod); err != nil {
		return "", fmt.Errorf("go mod download %s: %w", module, err)
	}
	if mod.Dir == "" {
		return "", fmt.Errorf("go mod download %s: no module directory (%s)", module, mod.Error)
	}
	return mod.Dir, nil
}

// crdFile reads a YAML stream of CRDs as JSON documents.
func crdFile(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	docs, err := yamlDocuments(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return docs, nil
}

// yamlDocuments splits a YAML stream at its "---" lines and converts every
// document that is not empty to JSON.
func yamlDocuments(stream []byte) ([][]byte, error) {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() error {
		j, err := yaml.YAMLToJSON(cur.Bytes())
		cur.Reset()
		if err != nil {
			return fmt.Errorf("document %d: %w", len(docs)+1, err)
		}
		if s := string(bytes.TrimSpace(j)); s != "null" && s != "{}" {
			docs = append(docs, j)
		}
		return nil
	}
	for line := range bytes.Lines(stream) {
		if s := strings.TrimRight(string(line), " \t\r\n"); s == "---" || strings.HasPrefix(s, "--- ") {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		cur.Write(line)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return docs, nil
}

// installCRDs creates every CRD (one that exists already is left alone)
// and waits until the API server reports each Established.
func (s *Server) installCRDs(ctx context.Context, crds [][]byte) error {
	const base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
	var names []string
	for _, crd := range crds {
		var meta struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if err := json.Unmarshal(crd, &meta); err != nil || meta.Kind != "CustomResourceDefinition" || meta.Metadata.Name == "" {
			return fmt.Errorf("not a CustomResourceDefinition (%v): %.200s", err, crd)
		}
		code, body, err := s.Do(ctx, http.MethodPost, base, crd)
		if err != nil {
			return fmt.Errorf("create CRD %s: %w", meta.Metadata.Name, err)
		}
		if code != http.StatusCreated && code != http.StatusConflict {
			return fmt.Errorf("create CRD %s: HTTP %d: %s", meta.Metadata.Name, code, body)
		}
		names = append(names, meta.Metadata.Name)
	}
	for _, name := range names {
		for {
			ok, err := s.crdEstablished(ctx, base+"/"+name)
			if err != nil {
				return err
			}
			if ok {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CRD %s not Established: %w", name, ctx.Err())
			case <-time.After(20 * time.Millisecond): // poll interval
			}
		}
	}
	return nil
}

// crdEstablished reports whether the CRD at path has condition Established
// True.
func (s *Server) crdEstablished(ctx context.Context, path string) (bool, error) {
	code, body, err := s.Do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return false, err
	}
	if code != http.StatusOK {
		return false, fmt.Errorf("get %s: HTTP %d: %s", path, code, body)
	}
	var crd struct {
		Status struct {
			Conditions []struct{ Type, Status string }
		}
	}
	if err := json.Unmarshal(body, &crd); err != nil {
		return false, fmt.Errorf("get %s: %w", path, err)
	}
	for _, c := range crd.Status.Conditions {
		if c.Type == "Established" && c.Status == "True" {
			return true, nil
		}
	}
	return false, nil
}
