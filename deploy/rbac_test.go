package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/ewgate/ewgate/internal/kubetest"
)

// The gateway's Kubernetes identity, as the StatefulSet runs it.
const (
	saNamespace = "ewgate-system"
	saName      = "ewgate"
	saUser      = "system:serviceaccount:" + saNamespace + ":" + saName
)

// resource is an API group and resource name, whether it is namespaced,
// and the one object name it is limited to, if any.
type resource struct {
	group, name string
	namespaced  bool
	only        string
}

// watched is every resource the Kubernetes source lists and watches
// (issue 11; discovery/kube).
var watched = []resource{
	{"", "services", true, ""},
	{"", "pods", true, ""},
	{"", "nodes", false, ""},
	{"", "namespaces", false, "istio-system"}, // the system namespace
	{"discovery.k8s.io", "endpointslices", true, ""},
	{"networking.istio.io", "gateways", true, ""},
	{"networking.istio.io", "serviceentries", true, ""},
	{"networking.istio.io", "workloadentries", true, ""},
	{"networking.istio.io", "destinationrules", true, ""},
	{"networking.istio.io", "virtualservices", true, ""},
}

// applyRBAC creates the gateway's namespace, ServiceAccount, ClusterRole
// and ClusterRoleBinding from deploy/base, unless they exist.
func applyRBAC(t *testing.T, s *kubetest.Server) {
	t.Helper()
	s.Ensure(t, "", read(t, "base/namespace.yaml"))
	s.Ensure(t, saNamespace, read(t, "base/serviceaccount.yaml"))
	s.Ensure(t, "", read(t, "base/rbac.yaml"))
}

// allowed asks the API server, with a SubjectAccessReview, whether the
// gateway's ServiceAccount may do verb on the resource (sub: subresource)
// in namespace ns ("" is all namespaces, or cluster-scoped), on the object
// named r.only if that is set.
func allowed(t *testing.T, s *kubetest.Server, verb string, r resource, sub, ns string) bool {
	t.Helper()
	review := map[string]any{
		"apiVersion": "authorization.k8s.io/v1",
		"kind":       "SubjectAccessReview",
		"spec": map[string]any{
			"user":   saUser,
			"groups": []string{"system:serviceaccounts", "system:serviceaccounts:" + saNamespace, "system:authenticated"},
			"resourceAttributes": map[string]string{
				"group": r.group, "resource": r.name, "subresource": sub, "verb": verb, "namespace": ns, "name": r.only,
			},
		},
	}
	body, _ := json.Marshal(review)
	code, resp, err := s.Do(context.Background(), http.MethodPost, "/apis/authorization.k8s.io/v1/subjectaccessreviews", body)
	if err != nil || code != http.StatusCreated {
		t.Fatalf("SubjectAccessReview: HTTP %d, %v: %s", code, err, resp)
	}
	var out struct {
		Status struct {
			Allowed bool
			Denied  bool
		}
	}
	if err := json.Unmarshal(resp, &out); err != nil {
		t.Fatal(err)
	}
	return out.Status.Allowed
}

func TestClusterRoleGrantsWhatTheSourceReads(t *testing.T) {
	s := kube.Get(t)
	applyRBAC(t, s)
	for _, r := range watched {
		namespaces := []string{""} // all namespaces (cluster-wide informers)
		if r.namespaced {
			namespaces = append(namespaces, "sample", "istio-system")
		}
		for _, ns := range namespaces {
			for _, verb := range []string{"get", "list", "watch"} {
				if !allowed(t, s, verb, r, "", ns) {
					t.Errorf("%s %s/%s in %q: denied, want allowed", verb, r.group, r.name, ns)
				}
			}
		}
	}
}

func TestClusterRoleGrantsNothingElse(t *testing.T) {
	s := kube.Get(t)
	applyRBAC(t, s)
	type check struct {
		verb string
		r    resource
		sub  string
	}
	var denied []check
	// No writes to what it reads, nor to their status.
	for _, r := range watched {
		for _, verb := range []string{"create", "update", "patch", "delete", "deletecollection"} {
			denied = append(denied, check{verb, r, ""})
		}
		denied = append(denied, check{"update", r, "status"}, check{"get", r, "status"})
	}
	// Nothing it does not read: other namespaces than the system one,
	// other kinds.
	for _, r := range []resource{
		{"", "namespaces", false, ""},
		{"", "namespaces", false, "kube-system"},
		{"", "secrets", true, ""},
		{"", "configmaps", true, ""},
		{"", "endpoints", true, ""},
		{"", "serviceaccounts", true, ""},
		{"networking.istio.io", "sidecars", true, ""},
		{"networking.istio.io", "workloadgroups", true, ""},
		{"security.istio.io", "authorizationpolicies", true, ""},
		{"rbac.authorization.k8s.io", "clusterroles", false, ""},
		{"apps", "deployments", true, ""},
	} {
		for _, verb := range []string{"get", "list", "watch"} {
			denied = append(denied, check{verb, r, ""})
		}
	}
	// Nothing that reaches into pods, nodes or other identities.
	denied = append(denied,
		check{"create", resource{"", "pods", true, ""}, "exec"},
		check{"get", resource{"", "pods", true, ""}, "log"},
		check{"get", resource{"", "nodes", false, ""}, "proxy"},
		check{"create", resource{"", "serviceaccounts", true, ""}, "token"},
		check{"impersonate", resource{"", "users", false, ""}, ""},
	)
	for _, c := range denied {
		for _, ns := range []string{"", saNamespace} {
			if allowed(t, s, c.verb, c.r, c.sub, ns) {
				t.Errorf("%s %s/%s %s in %q: allowed, want denied", c.verb, c.r.group, c.r.name, c.sub, ns)
			}
		}
	}
}

// serviceAccountToken returns a real token of the gateway's
// ServiceAccount, as the pod gets it.
func serviceAccountToken(t *testing.T, s *kubetest.Server) string {
	t.Helper()
	code, resp, err := s.Do(context.Background(), http.MethodPost,
		fmt.Sprintf("/api/v1/namespaces/%s/serviceaccounts/%s/token", saNamespace, saName),
		[]byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":600}}`))
	if err != nil || code != http.StatusCreated {
		t.Fatalf("TokenRequest: HTTP %d, %v: %s", code, err, resp)
	}
	var tr struct{ Status struct{ Token string } }
	if err := json.Unmarshal(resp, &tr); err != nil || tr.Status.Token == "" {
		t.Fatalf("TokenRequest: no token (%v): %s", err, resp)
	}
	return tr.Status.Token
}

// TestServiceAccountToken uses a real token of the ServiceAccount, as the
// pod gets it, against the API server: what SubjectAccessReview answered
// is what a request with that token gets.
func TestServiceAccountToken(t *testing.T) {
	s := kube.Get(t)
	applyRBAC(t, s)
	ctx := context.Background()
	tok := serviceAccountToken(t, s)
	for _, tc := range []struct {
		method, path string
		body         string
		want         int
	}{
		{http.MethodGet, "/api/v1/services", "", http.StatusOK},
		{http.MethodGet, "/api/v1/pods?limit=1", "", http.StatusOK},
		{http.MethodGet, "/api/v1/nodes", "", http.StatusOK},
		{http.MethodGet, "/api/v1/namespaces/istio-system", "", 0}, // allowed: 200, or 404 where another test has not created it
		{http.MethodGet, "/api/v1/namespaces?fieldSelector=metadata.name%3Distio-system", "", http.StatusOK},
		{http.MethodGet, "/api/v1/namespaces?fieldSelector=metadata.name%3Distio-system&watch=1&timeoutSeconds=1", "", http.StatusOK},
		{http.MethodGet, "/api/v1/namespaces", "", http.StatusForbidden},
		{http.MethodGet, "/api/v1/namespaces/kube-system", "", http.StatusForbidden},
		{http.MethodGet, "/apis/discovery.k8s.io/v1/endpointslices?watch=1&timeoutSeconds=1", "", http.StatusOK},
		{http.MethodGet, "/apis/networking.istio.io/v1/gateways", "", http.StatusOK},
		{http.MethodGet, "/apis/networking.istio.io/v1/destinationrules?watch=1&timeoutSeconds=1", "", http.StatusOK},
		{http.MethodGet, "/api/v1/secrets", "", http.StatusForbidden},
		{http.MethodGet, "/api/v1/namespaces/default/configmaps", "", http.StatusForbidden},
		{http.MethodPost, "/api/v1/namespaces/default/services", `{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"},"spec":{"ports":[{"port":1}]}}`, http.StatusForbidden},
		{http.MethodDelete, "/api/v1/namespaces/default/services/kubernetes", "", http.StatusForbidden},
		{http.MethodPatch, "/api/v1/namespaces/" + saNamespace, `{"metadata":{"labels":{"x":"y"}}}`, http.StatusForbidden},
	} {
		var body []byte
		if tc.body != "" {
			body = []byte(tc.body)
		}
		code, resp, err := s.DoAs(ctx, tok, tc.method, tc.path, body)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		if code != tc.want && !(tc.want == 0 && (code == http.StatusOK || code == http.StatusNotFound)) {
			t.Errorf("%s %s with the ServiceAccount's token: HTTP %d, want %d: %.300s", tc.method, tc.path, code, tc.want, resp)
		}
	}
}
