package kubetest

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
)

// Shared is one Server for all the tests of a package: Run starts it
// before the package's tests and stops it after them, and Get hands it to
// each test. Starting it before any test runs keeps its processes and file
// descriptors out of the tests' leak checks. The zero value is ready; use
// one Shared per package, as a package-level variable of the test files:
//
//	var kube kubetest.Shared
//
//	func TestMain(m *testing.M) { os.Exit(kube.Run(m)) }
type Shared struct {
	mu  sync.Mutex
	srv *Server
	err error
}

// Run starts the server, runs the tests and stops the server, and returns
// m.Run's exit code. A server that cannot start does not stop the tests:
// each test that calls Get skips or fails with the reason.
func (sh *Shared) Run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		sh.err = err
		return m.Run()
	}
	defer os.RemoveAll(dir)
	bin, err := findBinaries()
	if err != nil {
		sh.err = err
	} else if sh.srv, err = launch(bin, dir); err != nil {
		sh.err = err
		fmt.Fprintf(os.Stderr, "kubetest: %v\n", err)
	}
	code := m.Run()
	if sh.srv != nil {
		sh.srv.close()
	}
	return code
}

// Get returns the shared server, running (a test before this one may have
// stopped it). Without the binaries it skips the test (fails it with
// CI=true); if the server did not start, it fails the test. Tests that
// stop the server must not run in parallel with others using it.
func (sh *Shared) Get(t testing.TB) *Server {
	t.Helper()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	switch {
	case errors.Is(sh.err, ErrNotInstalled):
		skipOrFatal(t, sh.err)
	case sh.err != nil:
		t.Fatalf("kubetest: %v", sh.err)
	case sh.srv == nil:
		t.Fatal("kubetest: Shared.Get without Shared.Run in TestMain")
	}
	if err := sh.srv.start(); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return sh.srv
}
