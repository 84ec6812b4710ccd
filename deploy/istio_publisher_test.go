package deploy_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/ewgate/ewgate/internal/await"
	"github.com/ewgate/ewgate/internal/kubetest"
	"github.com/ewgate/ewgate/istiopub"
	"github.com/ewgate/ewgate/peer"
	"sigs.k8s.io/yaml"
)

// applyPublisherRBAC adds components/istio-publisher's RBAC to the base's.
func applyPublisherRBAC(t *testing.T, s *kubetest.Server) {
	t.Helper()
	applyRBAC(t, s)
	s.Ensure(t, saNamespace, read(t, "components/istio-publisher/rbac.yaml"))
}

// The publisher's component grants the writes it needs, where it needs
// them, and nothing the base denies beyond them. Its own API server: the
// shared one's ServiceAccount must keep only the base's rules.
func TestPublisherRBAC(t *testing.T) {
	s := kubetest.Start(t)
	applyPublisherRBAC(t, s)
	se := resource{"networking.istio.io", "serviceentries", true, ""}
	we := resource{"networking.istio.io", "workloadentries", true, ""}
	gw := resource{"gateway.networking.k8s.io", "gateways", true, ""}
	lease := resource{"coordination.k8s.io", "leases", true, ""}
	theLease := resource{"coordination.k8s.io", "leases", true, istiopub.DefaultLeaseName}
	ns := resource{"", "namespaces", false, ""}
	type check struct {
		verb    string
		r       resource
		sub, ns string
		allow   bool
	}
	var checks []check
	for _, verb := range []string{"create", "update", "delete"} {
		for _, r := range []resource{se, we} {
			checks = append(checks, check{verb, r, "", "", true}, check{verb, r, "", "bookinfo", true})
		}
		checks = append(checks, check{verb, gw, "", saNamespace, true}, check{verb, gw, "", "bookinfo", false}, check{verb, gw, "", "", false})
	}
	for _, verb := range []string{"get", "list", "watch"} {
		checks = append(checks, check{verb, gw, "", saNamespace, true}, check{verb, gw, "", "", false}, check{verb, ns, "", "", true})
	}
	checks = append(checks,
		check{"create", lease, "", saNamespace, true},
		check{"get", theLease, "", saNamespace, true},
		check{"update", theLease, "", saNamespace, true},
		check{"update", lease, "", saNamespace, false}, // other Leases
		check{"delete", theLease, "", saNamespace, false},
		check{"create", lease, "", "kube-system", false},
		check{"patch", se, "", "", false},
		check{"deletecollection", we, "", "", false},
		check{"update", se, "status", "", false},
		check{"create", ns, "", "", false},
		check{"delete", ns, "", "", false},
		check{"create", resource{"", "services", true, ""}, "", "", false},
		check{"get", resource{"", "secrets", true, ""}, "", saNamespace, false},
		check{"create", resource{"networking.istio.io", "destinationrules", true, ""}, "", "", false},
		check{"create", resource{"networking.istio.io", "virtualservices", true, ""}, "", "", false},
		check{"create", resource{"gateway.networking.k8s.io", "httproutes", true, ""}, "", saNamespace, false},
	)
	for _, c := range checks {
		if got := allowed(t, s, c.verb, c.r, c.sub, c.ns); got != c.allow {
			t.Errorf("%s %s/%s %s (name %q) in %q: allowed %v, want %v", c.verb, c.r.group, c.r.name, c.sub, c.r.only, c.ns, got, c.allow)
		}
	}
}

// staticSource stands in for gossip, which is not what this test is
// about: one remote network with one gateway and one service.
type staticSource []peer.NodeSummary

func (s staticSource) Summaries() []peer.NodeSummary { return s }

// The real publisher, with a real token of the gateway's ServiceAccount
// and no more than the base's and the component's RBAC, takes the Lease
// and writes every kind, in the namespaces the component allows.
func TestPublisherRunsWithTheServiceAccount(t *testing.T) {
	s := kubetest.Start(t)
	applyPublisherRBAC(t, s)
	s.Ensure(t, "", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: bookinfo}\n"))
	ctx := context.Background()
	tok := serviceAccountToken(t, s)
	src := staticSource{{Node: "gw-b", Meta: peer.Meta{Network: "network-b", PassthroughAddr: "192.0.2.10:15443"},
		Summary: peer.Summary{Network: "network-b", Services: []peer.ServiceSummary{
			{Host: "reviews.bookinfo.svc.cluster.local", Namespace: "bookinfo", ServiceAccounts: []string{"spiffe://cluster.local/ns/bookinfo/sa/reviews"},
				Ports: []peer.PortSummary{{Port: 9080, Name: "http", Subsets: []peer.SubsetSummary{{Healthy: []peer.LocalityCount{{Count: 2}}}}}}},
			{Host: "db.example.internal", Namespace: "data",
				Ports: []peer.PortSummary{{Port: 5432, Name: "tcp", Subsets: []peer.SubsetSummary{{Healthy: []peer.LocalityCount{{Count: 1}}}}}}},
		}}}}
	p, err := istiopub.New(istiopub.Config{
		Source:   src,
		REST:     &rest.Config{Host: s.Host, BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAFile: s.CAFile}},
		Identity: "ewgate-0",
		Options:  istiopub.Options{Network: "network-a", Namespace: saNamespace},
		Poll:     20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.Run(runCtx)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	await.True(t, 60*time.Second, "the publisher to write everything without error", func() bool {
		st := p.Status()
		return st.Leading && !st.Synced.IsZero() && st.LastError == "" &&
			st.Objects[istiopub.KindGateway] == 1 && st.Objects[istiopub.KindServiceEntry] == 2 && st.Objects[istiopub.KindWorkloadEntry] == 2
	})
	if st := p.Status(); st.Total.Created != 5 || st.Errors != 0 {
		t.Errorf("status %+v, want 5 objects created and no error", st)
	}
	for path, want := range map[string]string{
		"/apis/gateway.networking.k8s.io/v1/namespaces/" + saNamespace + "/gateways": "istio-remote",
		"/apis/networking.istio.io/v1/namespaces/bookinfo/serviceentries":            "reviews.bookinfo.svc.cluster.local",
		"/apis/networking.istio.io/v1/namespaces/" + saNamespace + "/serviceentries": "db.example.internal",
		"/apis/coordination.k8s.io/v1/namespaces/" + saNamespace + "/leases":         `"holderIdentity":"ewgate-0"`,
	} {
		code, body, err := s.Do(ctx, http.MethodGet, path, nil)
		if err != nil || code != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d %v, want %s in %.400s", path, code, err, want, body)
		}
	}
}

// The component adds --publish-to-istio to the base's arguments.
func TestPublisherComponentAddsTheFlag(t *testing.T) {
	var comp struct {
		Resources []string
		Patches   []struct {
			Target struct{ Kind, Name string }
			Patch  string
		}
	}
	unmarshal(t, "components/istio-publisher/kustomization.yaml", &comp)
	if len(comp.Resources) != 1 || comp.Resources[0] != "rbac.yaml" || len(comp.Patches) != 1 {
		t.Fatalf("component: %+v", comp)
	}
	var ops []struct{ Op, Path, Value string }
	if err := yaml.Unmarshal([]byte(comp.Patches[0].Patch), &ops); err != nil {
		t.Fatal(err)
	}
	if p := comp.Patches[0]; p.Target.Kind != "StatefulSet" || p.Target.Name != "ewgate" || len(ops) != 1 ||
		ops[0] != (struct{ Op, Path, Value string }{"add", "/spec/template/spec/containers/0/args/-", "--publish-to-istio"}) {
		t.Errorf("patch %+v: %+v", p.Target, ops)
	}
	var sts statefulSet
	unmarshal(t, "base/statefulset.yaml", &sts)
	if c := sts.Spec.Template.Spec.Containers; len(c) == 0 || len(c[0].Args) == 0 {
		t.Error("the base's container has no args to append to")
	}
}
