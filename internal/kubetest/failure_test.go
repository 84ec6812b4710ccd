package kubetest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindBinaries(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "exe")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, apiserver, etcd string
		missing               string // "" if found
	}{
		{"both", exe, exe, ""},
		{"no apiserver", filepath.Join(dir, "none"), exe, ".ci/kube-apiserver.sh"},
		{"apiserver not executable", plain, exe, ".ci/kube-apiserver.sh"},
		{"apiserver is a directory", dir, exe, ".ci/kube-apiserver.sh"},
		{"no etcd", exe, filepath.Join(dir, "none"), "etcd-server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("EWGATE_KUBE_APISERVER", tc.apiserver)
			t.Setenv("EWGATE_ETCD", tc.etcd)
			b, err := findBinaries()
			if tc.missing == "" {
				if err != nil || b.apiserver != tc.apiserver || b.etcd != tc.etcd {
					t.Fatalf("findBinaries = %+v, %v", b, err)
				}
				return
			}
			if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), tc.missing) {
				t.Fatalf("err = %v, want ErrNotInstalled naming %s", err, tc.missing)
			}
		})
	}
}

// TestStartFailureShowsLog starts an "API server" that fails at once: the
// error carries the end of its output, and etcd is stopped.
func TestStartFailureShowsLog(t *testing.T) {
	bin, err := findBinaries()
	if err != nil {
		skipOrFatal(t, err)
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad-apiserver")
	if err := os.WriteFile(bad, []byte("#!/bin/sh\necho 'flag provided but not defined: --oops' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin.apiserver = bad
	s, err := launch(bin, dir)
	if err == nil {
		s.close()
		t.Fatal("launch with a failing kube-apiserver succeeded")
	}
	for _, want := range []string{"kube-apiserver exited while starting", "flag provided but not defined: --oops", "kube-apiserver.log"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	// Nothing is left running with this server's data directory.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cmd, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(cmd), "--data-dir="+filepath.Join(dir, "etcd")) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && stat[i+2] != 'Z' {
			t.Errorf("etcd still running after the failed start: %s", filepath.Dir(p))
		}
	}
}
