package kubetest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// DefaultAPIServer is where .ci/kube-apiserver.sh puts kube-apiserver; it
// is used when $EWGATE_KUBE_APISERVER is empty.
const DefaultAPIServer = "/var/cache/ewgate/kube-apiserver-v1.36.3-b2"

// ErrNotInstalled is wrapped by the error for a missing binary.
var ErrNotInstalled = errors.New("not installed")

// binaries are the paths of the programs a Server runs.
type binaries struct {
	apiserver, etcd string
}

// findBinaries locates kube-apiserver and etcd, or returns an error
// wrapping ErrNotInstalled that says how to install the missing one.
func findBinaries() (binaries, error) {
	var b binaries
	b.apiserver = os.Getenv("EWGATE_KUBE_APISERVER")
	if b.apiserver == "" {
		b.apiserver = DefaultAPIServer
	}
	if fi, err := os.Stat(b.apiserver); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return b, fmt.Errorf("kube-apiserver %s: %w: build it once with .ci/kube-apiserver.sh "+
			"(about 10 minutes; it caches the binary in /var/cache/ewgate), or point $EWGATE_KUBE_APISERVER at one", b.apiserver, ErrNotInstalled)
	}
	b.etcd = os.Getenv("EWGATE_ETCD")
	if b.etcd == "" {
		b.etcd = "etcd"
	}
	p, err := exec.LookPath(b.etcd)
	if err != nil {
		return b, fmt.Errorf("etcd %s: %w: apt-get install etcd-server, or point $EWGATE_ETCD at one (%v)", b.etcd, ErrNotInstalled, err)
	}
	b.etcd = p
	return b, nil
}

// skipOrFatal ends the test for a missing binary: a skip, except in CI
// (CI=true), where nothing may be skipped for want of a binary.
func skipOrFatal(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("kubetest: %v (CI=true: not skipping)", err)
	}
	t.Skipf("kubetest: %v", err)
}
