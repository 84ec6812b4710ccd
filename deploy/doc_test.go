// Package deploy_test checks the Kubernetes manifests of deploy/ (plain
// YAML files, read without kustomize) against each other and against a
// real kube-apiserver (internal/kubetest): the ClusterRole grants the
// Kubernetes source exactly what it reads, and the base's objects, pods of
// the StatefulSet included, are admitted in the restricted namespace.
package deploy_test

import (
	"os"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/ewgate/ewgate/internal/kubetest"
)

var kube kubetest.Shared

func TestMain(m *testing.M) { os.Exit(kube.Run(m)) }

// read returns a file of deploy/.
func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// unmarshal decodes a one-document YAML file of deploy/ into v (through
// JSON, as Kubernetes does; fields v lacks are ignored: v holds what a
// test checks).
func unmarshal(t *testing.T, path string, v any) {
	t.Helper()
	if err := yaml.Unmarshal(read(t, path), v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
