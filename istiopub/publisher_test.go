package istiopub

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/kubetest"
	"github.com/ewgate/ewgate/internal/leakcheck"
	"github.com/ewgate/ewgate/peer"
)

var kube kubetest.Shared

const pollEvery = 20 * time.Millisecond

func TestMain(m *testing.M) { os.Exit(kube.Run(m)) }

// gossipPair starts two real gossip nodes on loopback, a in net-a and b
// in net-b (advertising passthrough address bAddr), joined.
func gossipPair(t *testing.T, bAddr string) (a, b *peer.Node) {
	t.Helper()
	start := func(name, network, pass string, join ...string) *peer.Node {
		n, err := peer.Start(context.Background(), peer.Config{Name: name, Network: network, BindAddr: "127.0.0.1",
			Insecure: true, Profile: peer.ProfileLocal, PassthroughAddr: pass, Join: join, ReconnectInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Shutdown() })
		return n
	}
	a = start("gw-a", "net-a", "10.0.0.1:15443")
	b = start("gw-b", "net-b", bAddr, a.Addr().String())
	if err := b.WaitJoined(context.Background()); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// reviewsSummary is net-b's summary: reviews with v1 pods in eu/1.
func reviewsSummary(v1 uint32) peer.Summary {
	return peer.Summary{Network: "net-b", Services: []peer.ServiceSummary{reviewsSvc(map[string]uint32{"eu/1": v1})}}
}

// startPublisher runs a publisher of gossip node src against srv until
// the test ends.
func startPublisher(t *testing.T, srv *kubetest.Server, src Source, identity string, grace time.Duration) (*Publisher, context.CancelFunc) {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Source: src, REST: rc, Identity: identity, Grace: grace,
		Options:       Options{Network: "net-a", Namespace: "ewgate-system"},
		LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 200 * time.Millisecond,
		Poll: pollEvery, Debounce: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := p.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	stop := func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	return p, stop
}

// item is what the tests read of a listed object.
type item struct {
	Metadata struct {
		Name, Namespace string
		Labels          map[string]string
	}
	Spec json.RawMessage
}

// list returns the objects of resource (e.g. "networking.istio.io/v1/workloadentries")
// in all namespaces that have the ownership label.
func list(t *testing.T, srv *kubetest.Server, resource string) []item {
	t.Helper()
	path := "/apis/" + resource + "?labelSelector=" + url.QueryEscape(LabelManagedBy+"="+ManagedByValue)
	code, body, err := srv.Do(context.Background(), http.MethodGet, path, nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET %s: %d %s %v", path, code, body, err)
	}
	var l struct{ Items []item }
	if err := json.Unmarshal(body, &l); err != nil {
		t.Fatal(err)
	}
	return l.Items
}

const (
	gateways        = "gateway.networking.k8s.io/v1/gateways"
	serviceEntries  = "networking.istio.io/v1/serviceentries"
	workloadEntries = "networking.istio.io/v1/workloadentries"
)

// weights returns "<namespace> <network> <locality> <subset labels> sa=<sa>: <weight>" per WorkloadEntry.
func weights(t *testing.T, srv *kubetest.Server) []string {
	var out []string
	for _, it := range list(t, srv, workloadEntries) {
		var spec struct {
			Network, Locality, ServiceAccount string
			Weight                            uint32
			Labels                            map[string]string
		}
		json.Unmarshal(it.Spec, &spec)
		out = append(out, fmt.Sprintf("%s %s %s app=%s version=%s tls=%s sa=%s: %d", it.Metadata.Namespace, spec.Network, spec.Locality,
			spec.Labels["app"], spec.Labels["version"], spec.Labels[labelTLSMode], spec.ServiceAccount, spec.Weight))
	}
	slices.Sort(out)
	return out
}

func do(t *testing.T, srv *kubetest.Server, method, path, body string) {
	t.Helper()
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	code, out, err := srv.Do(context.Background(), method, path, b)
	if err != nil || code >= 300 {
		t.Fatalf("%s %s: %d %s %v", method, path, code, out, err)
	}
}

// cleanup deletes what a test left with the ownership label.
func cleanup(t *testing.T, srv *kubetest.Server) {
	t.Cleanup(func() {
		for _, r := range []string{workloadEntries, serviceEntries, gateways} {
			for _, it := range list(t, srv, r) {
				group, rest, _ := strings.Cut(r, "/")
				version, res, _ := strings.Cut(rest, "/")
				do(t, srv, http.MethodDelete, fmt.Sprintf("/apis/%s/%s/namespaces/%s/%s/%s", group, version, it.Metadata.Namespace, res, it.Metadata.Name), "")
			}
		}
	})
}

const namespaces = `
apiVersion: v1
kind: Namespace
metadata: {name: ewgate-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: bookinfo}
`

// setup readies the shared API server (namespaces; what the publisher
// writes is deleted at the end) and two gossip nodes, b publishing
// reviews with two v1 pods. Leaks are checked from here on.
func setup(t *testing.T) (srv *kubetest.Server, a, b *peer.Node) {
	t.Helper()
	srv = kube.Get(t)
	srv.Ensure(t, "", []byte(namespaces))
	cleanup(t, srv)
	leakcheck.Check(t)
	a, b = gossipPair(t, "192.0.2.10:15443")
	if err := b.Publish(reviewsSummary(2)); err != nil {
		t.Fatal(err)
	}
	return srv, a, b
}

// Against a real API server and real gossip: the publisher writes net-b's
// Gateway, ServiceEntry and weighted WorkloadEntries; follows a change of
// counts; switches to WorkloadEntries selected by a same-named local
// Service when one appears; never writes over or deletes an object
// without its label; deletes a service's objects when gossip drops it;
// and withdraws net-b only once its grace period has passed.
func TestPublisher(t *testing.T) {
	srv, a, b := setup(t)
	const grace = 3 * time.Second
	p, _ := startPublisher(t, srv, a, "replica-1", grace)

	wantWeights := func(what string, want ...string) {
		t.Helper()
		await.True(t, 30*time.Second, what, func() bool { return slices.Equal(weights(t, srv), want) })
	}
	await.True(t, 30*time.Second, "net-b's istio-remote Gateway", func() bool {
		gws := list(t, srv, gateways)
		return len(gws) == 1 && gws[0].Metadata.Labels[labelNetwork] == "net-b" && gws[0].Metadata.Namespace == "ewgate-system" &&
			strings.Contains(string(gws[0].Spec), `"value":"192.0.2.10"`) && strings.Contains(string(gws[0].Spec), `"port":15443`) &&
			strings.Contains(string(gws[0].Spec), `"gatewayClassName":"istio-remote"`)
	})
	await.True(t, 30*time.Second, "reviews' ServiceEntry", func() bool {
		se := list(t, srv, serviceEntries)
		return len(se) == 1 && se[0].Metadata.Namespace == "bookinfo" && strings.Contains(string(se[0].Spec), `"hosts":["`+reviews+`"]`) &&
			strings.Contains(string(se[0].Spec), `"resolution":"STATIC"`) && strings.Contains(string(se[0].Spec), `"location":"MESH_INTERNAL"`)
	})
	wantWeights("v1 with 2, v2 with 1",
		"bookinfo net-b eu/1 app= version=v1 tls=istio sa=reviews: 2",
		"bookinfo net-b eu/1 app= version=v2 tls=istio sa=reviews: 1")

	t.Run("counts change", func(t *testing.T) {
		if err := b.Publish(reviewsSummary(5)); err != nil {
			t.Fatal(err)
		}
		wantWeights("v1 with 5",
			"bookinfo net-b eu/1 app= version=v1 tls=istio sa=reviews: 5",
			"bookinfo net-b eu/1 app= version=v2 tls=istio sa=reviews: 1")
	})

	t.Run("deleted by hand", func(t *testing.T) {
		we := list(t, srv, workloadEntries)[0]
		do(t, srv, http.MethodDelete, "/apis/networking.istio.io/v1/namespaces/bookinfo/workloadentries/"+we.Metadata.Name, "")
		// Nothing else changes: the publisher's watch of its own objects
		// brings it back.
		await.True(t, 30*time.Second, "the WorkloadEntry restored", func() bool {
			return slices.ContainsFunc(list(t, srv, workloadEntries), func(it item) bool { return it.Metadata.Name == we.Metadata.Name })
		})
	})

	t.Run("same-named local Service", func(t *testing.T) {
		srv.Create(t, "bookinfo", []byte(`
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
`))
		wantWeights("WorkloadEntries the local Service selects",
			"bookinfo net-b eu/1 app=reviews version=v1 tls=istio sa=reviews: 5",
			"bookinfo net-b eu/1 app=reviews version=v2 tls=istio sa=reviews: 1")
		await.True(t, 30*time.Second, "no ServiceEntry beside the local Service", func() bool { return len(list(t, srv, serviceEntries)) == 0 })
		do(t, srv, http.MethodDelete, "/api/v1/namespaces/bookinfo/services/reviews", "")
		await.True(t, 30*time.Second, "the ServiceEntry back", func() bool { return len(list(t, srv, serviceEntries)) == 1 })
	})

	t.Run("objects it did not create", func(t *testing.T) {
		// Someone else's WorkloadEntry, and someone else's ServiceEntry
		// with the very name the publisher uses for reviews.
		se := list(t, srv, serviceEntries)[0]
		refused := p.Status().Total.Refused
		do(t, srv, http.MethodPost, "/apis/networking.istio.io/v1/namespaces/bookinfo/workloadentries",
			`{"apiVersion":"networking.istio.io/v1","kind":"WorkloadEntry","metadata":{"name":"by-hand"},"spec":{"address":"192.0.2.99"}}`)
		do(t, srv, http.MethodDelete, "/apis/networking.istio.io/v1/namespaces/bookinfo/serviceentries/"+se.Metadata.Name, "")
		do(t, srv, http.MethodPost, "/apis/networking.istio.io/v1/namespaces/bookinfo/serviceentries",
			`{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"`+se.Metadata.Name+`"},
			"spec":{"hosts":["by-hand.example.com"],"resolution":"STATIC","ports":[{"number":80,"name":"http"}]}}`)
		await.True(t, 30*time.Second, "the publisher to refuse to write over it", func() bool { return p.Status().Total.Refused > refused })
		code, body, _ := srv.Do(context.Background(), http.MethodGet, "/apis/networking.istio.io/v1/namespaces/bookinfo/serviceentries/"+se.Metadata.Name, nil)
		if code != http.StatusOK || !strings.Contains(string(body), "by-hand.example.com") {
			t.Errorf("the hand-written ServiceEntry was changed: %d %s", code, body)
		}
		// Deleting it fires none of the publisher's watches (they see only
		// its own objects): its next reconcile, at the latest the resync,
		// here one that a gossip change causes, writes its own.
		do(t, srv, http.MethodDelete, "/apis/networking.istio.io/v1/namespaces/bookinfo/serviceentries/"+se.Metadata.Name, "")
		if err := b.Publish(reviewsSummary(6)); err != nil {
			t.Fatal(err)
		}
		await.True(t, 30*time.Second, "the publisher's ServiceEntry back", func() bool { return len(list(t, srv, serviceEntries)) == 1 })
		code, _, _ = srv.Do(context.Background(), http.MethodGet, "/apis/networking.istio.io/v1/namespaces/bookinfo/workloadentries/by-hand", nil)
		if code != http.StatusOK {
			t.Errorf("the hand-written WorkloadEntry: HTTP %d, want it kept", code)
		}
		do(t, srv, http.MethodDelete, "/apis/networking.istio.io/v1/namespaces/bookinfo/workloadentries/by-hand", "")
	})

	t.Run("service gone", func(t *testing.T) {
		if err := b.Publish(peer.Summary{Network: "net-b"}); err != nil {
			t.Fatal(err)
		}
		wantWeights("no WorkloadEntries")
		await.True(t, 30*time.Second, "no ServiceEntry", func() bool { return len(list(t, srv, serviceEntries)) == 0 })
		if len(list(t, srv, gateways)) != 1 {
			t.Error("net-b's Gateway went with its last service")
		}
		if err := b.Publish(reviewsSummary(6)); err != nil {
			t.Fatal(err)
		}
		await.True(t, 30*time.Second, "reviews back", func() bool { return len(list(t, srv, workloadEntries)) == 2 })
	})

	t.Run("network gone", func(t *testing.T) {
		deleted := p.Status().Total.Deleted
		if err := b.Leave(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		await.True(t, 30*time.Second, "gossip to drop net-b", func() bool {
			for _, s := range a.Summaries() {
				if s.Meta.Network == "net-b" {
					return false
				}
			}
			return true
		})
		var end time.Time
		await.True(t, 30*time.Second, "net-b held", func() bool {
			st := p.Status()
			var ok bool
			if end, ok = st.Held["net-b"]; ok && st.Total.Deleted != deleted {
				t.Errorf("net-b held until %v, yet %d objects deleted", end, st.Total.Deleted-deleted)
			}
			return ok
		})
		// The order of the publisher's own clock readings, no timing
		// threshold: the reconcile that ends net-b's hold (and so deletes
		// its objects) runs at or after the end the publisher reported.
		await.True(t, 30*time.Second, "net-b's hold to end", func() bool {
			st := p.Status()
			if _, held := st.Held["net-b"]; held || st.LastError != "" {
				return false
			}
			if st.Synced.Before(end) {
				t.Errorf("net-b's hold ended at the reconcile of %v, before its end %v", st.Synced, end)
			}
			return true
		})
		await.True(t, 30*time.Second, "net-b withdrawn", func() bool {
			return len(list(t, srv, gateways)) == 0 && len(list(t, srv, serviceEntries)) == 0 && len(list(t, srv, workloadEntries)) == 0
		})
	})
}

// Two replicas of one cluster's publisher share the Lease: only one ever
// leads, only the leader writes, and when it stops the other takes over
// and keeps the objects.
func TestPublisherLease(t *testing.T) {
	srv, a, b := setup(t)
	p1, stop1 := startPublisher(t, srv, a, "replica-1", time.Minute)
	p2, stop2 := startPublisher(t, srv, a, "replica-2", time.Minute)
	both := func() bool { return p1.Leading() && p2.Leading() }
	// Sampled throughout: the Lease never has two holders.
	var twice sync.WaitGroup
	sampling, stopSampling := context.WithCancel(context.Background())
	twice.Add(1)
	go func() {
		defer twice.Done()
		for sampling.Err() == nil {
			if both() {
				t.Error("both replicas lead")
				return
			}
			time.Sleep(time.Millisecond) // sampling rate, not synchronisation
		}
	}()
	t.Cleanup(func() { stopSampling(); twice.Wait() })

	wrote := func(p *Publisher) bool { return p.Leading() && p.Status().Total.Created > 0 }
	await.True(t, 30*time.Second, "one replica to lead and write", func() bool {
		return (wrote(p1) || wrote(p2)) && len(list(t, srv, workloadEntries)) == 2
	})
	leader, follower, stopLeader := p1, p2, stop1
	if p2.Leading() {
		leader, follower, stopLeader = p2, p1, stop2
	}
	if w := follower.Status().Total; w != (Counts{}) || follower.Status().Reconcile != 0 {
		t.Errorf("the follower wrote: %+v", follower.Status())
	}
	if leader.Status().Total.Created == 0 {
		t.Errorf("the leader wrote nothing: %+v", leader.Status())
	}

	stopLeader()
	if leader.Leading() {
		t.Error("a stopped replica still leads")
	}
	await.True(t, 30*time.Second, "the other replica to take over", follower.Leading)
	if err := b.Publish(reviewsSummary(7)); err != nil {
		t.Fatal(err)
	}
	await.True(t, 30*time.Second, "the new leader to write the new counts", func() bool {
		return follower.Status().Total.Updated > 0 &&
			slices.Contains(weights(t, srv), "bookinfo net-b eu/1 app= version=v1 tls=istio sa=reviews: 7")
	})
	if w := leader.Status().Total; w.Updated != 0 {
		t.Errorf("the stopped replica wrote the new counts: %+v", w)
	}
}

// A publisher that starts leading (a restart, a hand-over) while gossip
// has not heard of a network yet leaves that network's objects alone for
// the grace period, then deletes them.
func TestPublisherStartDoesNotWithdraw(t *testing.T) {
	srv, a, b := setup(t)
	_, stop := startPublisher(t, srv, a, "replica-1", time.Minute)
	await.True(t, 30*time.Second, "net-b's objects", func() bool { return len(list(t, srv, workloadEntries)) == 2 })
	stop()
	if err := b.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	await.True(t, 30*time.Second, "gossip to drop net-b", func() bool { return len(a.Summaries()) == 1 })

	const grace = 2 * time.Second
	p, _ := startPublisher(t, srv, a, "replica-2", grace)
	var first Status
	await.True(t, 30*time.Second, "the new publisher to reconcile", func() bool {
		first = p.Status()
		return first.Leading && first.Reconcile > 0
	})
	// The order of the publisher's own clock readings, no timing
	// threshold: a reconcile before the end of the grace period after it
	// took the Lease deletes nothing and says until when; the one that
	// deletes runs after it.
	collectFrom := first.LeadingSince.Add(grace)
	if first.LeadingSince.IsZero() {
		t.Fatalf("status %+v: leading without leadingSince", first)
	}
	if first.Synced.Before(collectFrom) && (!first.CollectFrom.Equal(collectFrom) || first.Total.Deleted != 0) {
		t.Errorf("status %+v: a reconcile in the grace period, want collectFrom %v and nothing deleted", first, collectFrom)
	}
	await.True(t, 30*time.Second, "net-b withdrawn after the grace period", func() bool {
		return len(list(t, srv, gateways)) == 0 && len(list(t, srv, workloadEntries)) == 0
	})
	await.True(t, 30*time.Second, "the status of the reconcile that deleted", func() bool {
		st := p.Status()
		if st.Total.Deleted == 0 || st.LastError != "" {
			return false
		}
		if st.Synced.Before(collectFrom) || !st.CollectFrom.IsZero() {
			t.Errorf("status %+v: deleted at the reconcile of %v, before the end of the grace period %v", st, st.Synced, collectFrom)
		}
		return true
	})
}
