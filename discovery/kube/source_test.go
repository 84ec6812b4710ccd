package kube

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ewgate/ewgate/discovery"
	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/kubetest"
	"github.com/ewgate/ewgate/internal/leakcheck"
)

// applied records the catalogs a Source applies.
type applied struct {
	mu   sync.Mutex
	last *discovery.Catalog
	n    int
	ch   chan struct{} // buffer 1: a catalog was applied
}

func (a *applied) apply(c *discovery.Catalog) error {
	a.mu.Lock()
	a.last, a.n = c, a.n+1
	a.mu.Unlock()
	select {
	case a.ch <- struct{}{}:
	default:
	}
	return nil
}

func (a *applied) catalog() *discovery.Catalog {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

func (a *applied) has(host string) bool {
	c := a.catalog()
	if c == nil {
		return false
	}
	for _, s := range c.Services {
		if s.Host == host {
			return true
		}
	}
	return false
}

// startSource runs a Source on srv until the test ends.
func startSource(t testing.TB, srv *kubetest.Server) (*Source, *applied) {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	a := &applied{ch: make(chan struct{}, 1)}
	s, err := New(Config{REST: rc, Network: "net-a", Apply: a.apply})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s, a
}

const serviceYAML = `
apiVersion: v1
kind: Service
metadata: {name: %s, namespace: default}
spec:
  ports: [{name: tls, port: 9080}]
`

// A gateway started while its API server is down applies nothing, says
// so, and syncs once the API server is up.
func TestSourceWaitsForFirstSync(t *testing.T) {
	srv := kubetest.Start(t)
	srv.Create(t, "default", []byte(fmt.Sprintf(serviceYAML, "early")))
	srv.Stop(t)
	s, a := startSource(t, srv)
	await.True(t, 30*time.Second, "watch errors", func() bool { return s.WatchErrors() > 0 })
	if st := s.Status(); st.FirstSync || st.Synced || len(st.Errors) == 0 || a.catalog() != nil {
		t.Fatalf("before the first sync: %+v, catalog %v", st, a.catalog())
	}
	srv.Start(t)
	select {
	case <-s.Synced():
	case <-time.After(90 * time.Second):
		t.Fatalf("no first sync: %+v", s.Status())
	}
	if !a.has("early.default.svc.cluster.local") {
		t.Errorf("first catalog lacks the Service: %+v", a.catalog())
	}
	await.True(t, 30*time.Second, "in sync", s.InSync)
}

// A stopped source leaves no goroutine or connection behind.
func TestSourceStopsCleanly(t *testing.T) {
	srv := kubetest.Start(t)
	srv.Create(t, "default", []byte(fmt.Sprintf(serviceYAML, "one")))
	leakcheck.Check(t)
	s, a := startSource(t, srv)
	<-s.Synced()
	if !a.has("one.default.svc.cluster.local") {
		t.Errorf("catalog lacks the Service: %+v", a.catalog())
	}
}

// BenchmarkChangeToApplied measures the time from creating a Service
// through the API to a catalog holding it handed to Apply: the API
// server's write, the watch event, the debounce (DefaultDebounce) and the
// translation.
func BenchmarkChangeToApplied(b *testing.B) {
	srv := kubetest.Start(b)
	s, a := startSource(b, srv)
	<-s.Synced()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		name := fmt.Sprintf("svc-%d", i)
		srv.Create(b, "default", []byte(fmt.Sprintf(serviceYAML, name)))
		host := name + ".default.svc.cluster.local"
		for !a.has(host) {
			<-a.ch
		}
	}
}

// BenchmarkScale feeds a real API server 5,000 Services with 4 ready pods
// each (20,000 endpoints, in 5,000 EndpointSlices, and 20,000 pods), then
// measures the source: the heap it holds once synced (informer caches
// and the catalog), the time of its first sync, and the time of one full
// rebuild (translation and validation). Creating the objects takes a few
// minutes and is not timed.
func BenchmarkScale(b *testing.B) {
	const services, perService = 5000, 4
	srv := kubetest.Start(b)
	ctx := context.Background()
	jobs := make(chan [2]string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if code, out, err := srv.Do(ctx, "POST", j[0], []byte(j[1])); err != nil || code != 201 {
					b.Errorf("POST %s: %d %s %v", j[0], code, out, err)
				}
			}
		}()
	}
	for i := range services {
		jobs <- [2]string{"/api/v1/namespaces/default/services", fmt.Sprintf(
			`{"metadata": {"name": "svc-%d"}, "spec": {"ports": [{"name": "tls", "port": 9080}]}}`, i)}
		var eps []string
		for k := range perService {
			name := fmt.Sprintf("svc-%d-%d", i, k)
			ip := fmt.Sprintf("10.%d.%d.%d", 1+i/250, i%250, 1+k)
			jobs <- [2]string{"/api/v1/namespaces/default/pods", fmt.Sprintf(
				`{"metadata": {"name": %q, "labels": {"app": "svc-%d", "version": "v%d", "security.istio.io/tlsMode": "istio"}},
"spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app"}]}}`, name, i, k%2)}
			eps = append(eps, fmt.Sprintf(`{"addresses": [%q], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "namespace": "default", "name": %q}}`, ip, name))
		}
		jobs <- [2]string{"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", fmt.Sprintf(
			`{"metadata": {"name": "svc-%d-1", "labels": {"kubernetes.io/service-name": "svc-%d"}}, "addressType": "IPv4",
"ports": [{"name": "tls", "port": 9080}], "endpoints": [%s]}`, i, i, strings.Join(eps, ","))}
	}
	close(jobs)
	wg.Wait()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	s, a := startSource(b, srv)
	<-s.Synced()
	syncTime := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	c := a.catalog()
	eps := 0
	for _, svc := range c.Services {
		eps += len(svc.Endpoints)
	}
	if len(c.Services) < services || eps < services*perService {
		b.Fatalf("catalog: %d services, %d endpoints", len(c.Services), eps)
	}
	b.ResetTimer()
	for b.Loop() {
		t := translation{clusterDomain: discovery.DefaultClusterDomain, network: "net-a"}
		r, err := t.resources(s.inf.snapshot())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.BuildValid(nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heap-MiB")
	b.ReportMetric(syncTime.Seconds(), "first-sync-s")
}

// New refuses a cluster domain that would make every Service's host one
// the SNI parser refuses; it needs no API server to do so.
func TestNewRefusesUnroutableClusterDomain(t *testing.T) {
	apply := func(*discovery.Catalog) error { return nil }
	for _, domain := range []string{"123", "cluster.0x1f", "cluster..local", "*.local", "cluster_local"} {
		_, err := New(Config{REST: &rest.Config{Host: "https://127.0.0.1:1"}, ClusterDomain: domain, Apply: apply})
		if err == nil || !strings.Contains(err.Error(), "cluster domain") || !strings.Contains(err.Error(), domain) {
			t.Errorf("New with cluster domain %q: %v, want an error naming it", domain, err)
		}
	}
	if _, err := New(Config{REST: &rest.Config{Host: "https://127.0.0.1:1"}, ClusterDomain: "cluster.local", Apply: apply}); err != nil {
		t.Errorf("New with cluster domain cluster.local: %v", err)
	}
}
