package kubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// Create creates every object of a YAML (or JSON) stream, in order, and
// fails the test unless the API server creates each (201). Objects of a
// namespaced kind go to their metadata.namespace, else to namespace. The
// resource path of each kind is looked up in the API server's discovery,
// so custom resources work as soon as their CRD is Established.
func (s *Server) Create(t testing.TB, namespace string, stream []byte) {
	t.Helper()
	s.create(t, namespace, stream, false)
}

// Ensure is Create, except that an object that exists already (409) is
// left as it is: for fixtures with fixed names that several tests, or
// repeated runs (-count), share on one server.
func (s *Server) Ensure(t testing.TB, namespace string, stream []byte) {
	t.Helper()
	s.create(t, namespace, stream, true)
}

func (s *Server) create(t testing.TB, namespace string, stream []byte, existingOK bool) {
	t.Helper()
	docs, err := yamlDocuments(stream)
	if err != nil {
		t.Fatalf("kubetest: Create: %v", err)
	}
	ctx := context.Background()
	for _, doc := range docs {
		path, err := s.createPath(ctx, doc, namespace)
		if err != nil {
			t.Fatalf("kubetest: Create: %v", err)
		}
		code, body, err := s.Do(ctx, http.MethodPost, path, doc)
		if err != nil {
			t.Fatalf("kubetest: POST %s: %v", path, err)
		}
		if code != http.StatusCreated && !(existingOK && code == http.StatusConflict) {
			t.Fatalf("kubetest: POST %s: HTTP %d: %s", path, code, body)
		}
	}
}

// createPath returns the collection path to POST the object to.
func (s *Server) createPath(ctx context.Context, doc []byte, namespace string) (string, error) {
	var obj struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(doc, &obj); err != nil {
		return "", err
	}
	if obj.APIVersion == "" || obj.Kind == "" {
		return "", fmt.Errorf("object without apiVersion or kind: %.200s", doc)
	}
	// Discovery: /api/v1 for the core group, /apis/<group>/<version> else.
	base := "/apis/" + obj.APIVersion
	if !strings.Contains(obj.APIVersion, "/") {
		base = "/api/" + obj.APIVersion
	}
	code, body, err := s.Do(ctx, http.MethodGet, base, nil)
	if err != nil {
		return "", err
	}
	if code != http.StatusOK {
		return "", fmt.Errorf("discovery %s for %s %s: HTTP %d: %s", base, obj.Kind, obj.Metadata.Name, code, body)
	}
	var list struct {
		Resources []struct {
			Name       string `json:"name"`
			Kind       string `json:"kind"`
			Namespaced bool   `json:"namespaced"`
		} `json:"resources"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return "", fmt.Errorf("discovery %s: %w", base, err)
	}
	for _, r := range list.Resources {
		if r.Kind != obj.Kind || strings.Contains(r.Name, "/") { // not a subresource
			continue
		}
		if !r.Namespaced {
			return base + "/" + r.Name, nil
		}
		ns := obj.Metadata.Namespace
		if ns == "" {
			ns = namespace
		}
		if ns == "" {
			return "", fmt.Errorf("%s %s is namespaced and has no namespace", obj.Kind, obj.Metadata.Name)
		}
		return base + "/namespaces/" + ns + "/" + r.Name, nil
	}
	return "", fmt.Errorf("the API server has no kind %s in %s", obj.Kind, obj.APIVersion)
}
