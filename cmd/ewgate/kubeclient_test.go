package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestKubeClientPrecedence checks the one precedence of the Kubernetes
// client config: --kubeconfig, then $KUBECONFIG, then in-cluster config.
func TestKubeClientPrecedence(t *testing.T) {
	tests := []struct {
		name     string
		flag     string
		env      kubeEnv
		explicit string   // the file --kubeconfig names
		files    []string // the $KUBECONFIG files
		from     string   // "" with err
		err      error
	}{
		{"flag", "/f", kubeEnv{}, "/f", nil, "--kubeconfig /f", nil},
		{"flag beats $KUBECONFIG and the pod", "/f", kubeEnv{kubeconfig: "/e", pod: true}, "/f", nil, "--kubeconfig /f", nil},
		{"$KUBECONFIG", "", kubeEnv{kubeconfig: "/e"}, "", []string{"/e"}, "$KUBECONFIG", nil},
		{"$KUBECONFIG list", "", kubeEnv{kubeconfig: "/e1:/e2"}, "", []string{"/e1", "/e2"}, "$KUBECONFIG", nil},
		{"$KUBECONFIG beats the pod", "", kubeEnv{kubeconfig: "/e", pod: true}, "", []string{"/e"}, "$KUBECONFIG", nil},
		{"in-cluster", "", kubeEnv{pod: true}, "", nil, "in-cluster config", nil},
		{"none", "", kubeEnv{}, "", nil, "", errNoKubeClient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.env.kubeClientFor(tt.flag)
			if !errors.Is(err, tt.err) || c.from != tt.from {
				t.Fatalf("kubeClientFor(%q) = %q, %v; want %q, %v", tt.flag, c.from, err, tt.from, tt.err)
			}
			if err != nil {
				return
			}
			if tt.from == "in-cluster config" {
				if c.rules != nil {
					t.Errorf("in-cluster: kubeconfig rules %+v", c.rules)
				}
				return
			}
			if c.rules.ExplicitPath != tt.explicit || !slices.Equal(c.rules.Precedence, tt.files) {
				t.Errorf("rules: explicit %q, precedence %q; want %q, %q", c.rules.ExplicitPath, c.rules.Precedence, tt.explicit, tt.files)
			}
		})
	}
}

// TestKubeRESTConfigLoadsTheChosenFile loads real kubeconfig files, one
// per server: the config comes from the file the precedence chooses.
func TestKubeRESTConfigLoadsTheChosenFile(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := func(name, server string) string {
		p := filepath.Join(dir, name)
		data := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "` + server + `"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flag, env := kubeconfig("flag", "https://flag.example:6443"), kubeconfig("env", "https://env.example:6443")
	for _, tt := range []struct {
		name, flag string
		env        kubeEnv
		host       string
	}{
		{"flag beats $KUBECONFIG", flag, kubeEnv{kubeconfig: env, pod: true}, "https://flag.example:6443"},
		{"$KUBECONFIG", "", kubeEnv{kubeconfig: env, pod: true}, "https://env.example:6443"},
		{"$KUBECONFIG list, first file first", "", kubeEnv{kubeconfig: env + string(filepath.ListSeparator) + flag}, "https://env.example:6443"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rc, err := tt.env.kubeRESTConfig(tt.flag)
			if err != nil {
				t.Fatal(err)
			}
			if rc.Host != tt.host {
				t.Errorf("host %q, want %q", rc.Host, tt.host)
			}
		})
	}
	if _, err := (kubeEnv{}).kubeRESTConfig(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing --kubeconfig file loaded")
	}
}
