package kubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/internal/leakcheck"
)

var kube Shared

func TestMain(m *testing.M) { os.Exit(kube.Run(m)) }

// do sends a request and fails the test unless the status is want.
func do(t *testing.T, s *Server, method, path, body string, want int) []byte {
	t.Helper()
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	code, resp, err := s.Do(context.Background(), method, path, b)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if code != want {
		t.Fatalf("%s %s: HTTP %d, want %d: %s", method, path, code, want, resp)
	}
	return resp
}

const (
	configMapPath = "/api/v1/namespaces/default/configmaps"
	configMap     = `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"kubetest"},"data":{"k":"v"}}`
	sePath        = "/apis/networking.istio.io/v1/namespaces/default/serviceentries"
	serviceEntry  = `{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"kubetest"},
		"spec":{"hosts":["kubetest.example.com"],"location":"MESH_INTERNAL","resolution":"STATIC",
		"ports":[{"number":443,"name":"tls","protocol":"TLS"}]}}`
)

// readBack checks that the ConfigMap and the ServiceEntry created from the
// constants above are stored as written.
func readBack(t *testing.T, s *Server) {
	t.Helper()
	var cm struct{ Data map[string]string }
	if err := json.Unmarshal(do(t, s, http.MethodGet, configMapPath+"/kubetest", "", http.StatusOK), &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Data["k"] != "v" {
		t.Errorf("ConfigMap data = %v, want k: v", cm.Data)
	}
	var se struct {
		Spec struct {
			Hosts []string
			Ports []struct{ Number int }
		}
	}
	if err := json.Unmarshal(do(t, s, http.MethodGet, sePath+"/kubetest", "", http.StatusOK), &se); err != nil {
		t.Fatal(err)
	}
	if len(se.Spec.Hosts) != 1 || se.Spec.Hosts[0] != "kubetest.example.com" || len(se.Spec.Ports) != 1 || se.Spec.Ports[0].Number != 443 {
		t.Errorf("ServiceEntry spec = %+v", se.Spec)
	}
}

func TestDataSurvivesRestart(t *testing.T) {
	leakcheck.Check(t)
	s := Start(t)
	do(t, s, http.MethodPost, configMapPath, configMap, http.StatusCreated)
	do(t, s, http.MethodPost, sePath, serviceEntry, http.StatusCreated)
	readBack(t, s)

	// Istio's validation schema is installed: a ServiceEntry without hosts
	// is refused.
	do(t, s, http.MethodPost, sePath, `{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry",
		"metadata":{"name":"nohosts"},"spec":{"ports":[{"number":1,"name":"x"}]}}`, http.StatusUnprocessableEntity)

	host := s.Host
	s.Stop(t)
	if s.Running() {
		t.Fatal("Running after Stop")
	}
	if _, _, err := s.Do(context.Background(), http.MethodGet, "/readyz", nil); err == nil {
		t.Fatal("API server answers after Stop")
	}
	s.Start(t)
	if s.Host != host {
		t.Fatalf("Host changed from %s to %s", host, s.Host)
	}
	readBack(t, s)
	s.Restart(t)
	readBack(t, s)
}

func TestSetup(t *testing.T) {
	s := kube.Get(t)
	do(t, s, http.MethodGet, "/api/v1/namespaces/default/serviceaccounts/default", "", http.StatusOK)
	for _, crd := range []string{"gateways", "serviceentries", "workloadentries", "destinationrules"} {
		do(t, s, http.MethodGet, "/apis/networking.istio.io/v1/"+crd, "", http.StatusOK)
	}
	// The admin token is the only credential: anything else is refused.
	code, _, err := s.DoAs(context.Background(), "wrong", http.MethodGet, "/api/v1/namespaces", nil)
	if err != nil || code != http.StatusUnauthorized {
		t.Errorf("wrong token: HTTP %d, %v; want 401", code, err)
	}
	b, err := os.ReadFile(s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	var kc struct {
		Clusters []struct {
			Cluster struct {
				Server string
				CAData []byte `json:"certificate-authority-data"`
			}
		}
		Users []struct{ User struct{ Token string } }
	}
	if err := json.Unmarshal(b, &kc); err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	ca, _ := os.ReadFile(s.CAFile)
	if len(kc.Clusters) != 1 || kc.Clusters[0].Cluster.Server != s.Host || string(kc.Clusters[0].Cluster.CAData) != string(ca) ||
		len(kc.Users) != 1 || kc.Users[0].User.Token != s.Token {
		t.Errorf("kubeconfig does not name this server, CA and token:\n%s", b)
	}
}

func TestTwoServers(t *testing.T) {
	a := kube.Get(t)
	b := Start(t)
	if a.Host == b.Host || a.Token == b.Token {
		t.Fatalf("two servers share Host or Token: %s %s", a.Host, b.Host)
	}
	do(t, b, http.MethodPost, configMapPath, strings.Replace(configMap, "kubetest", "only-b", 1), http.StatusCreated)
	do(t, b, http.MethodGet, configMapPath+"/only-b", "", http.StatusOK)
	do(t, a, http.MethodGet, configMapPath+"/only-b", "", http.StatusNotFound)
	// Each server's token is its own.
	code, _, err := a.DoAs(context.Background(), b.Token, http.MethodGet, "/api/v1/namespaces", nil)
	if err != nil || code != http.StatusUnauthorized {
		t.Errorf("b's token at a: HTTP %d, %v; want 401", code, err)
	}
}

func TestYAMLDocuments(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"one", "a: 1\n", []string{`{"a":1}`}},
		{"two", "a: 1\n---\nb: x\n", []string{`{"a":1}`, `{"b":"x"}`}},
		{"leading separator and comments", "# c\n---\na: 1\n--- \n# only a comment\n---\n", []string{`{"a":1}`}},
		{"separator inside a block scalar is text", "a: |\n  ---\n  x\n", []string{`{"a":"---\nx\n"}`}},
		{"empty", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := yamlDocuments([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d documents %q, want %q", len(got), got, tc.want)
			}
			for i := range got {
				if string(got[i]) != tc.want[i] {
					t.Errorf("document %d = %s, want %s", i, got[i], tc.want[i])
				}
			}
		})
	}
	if _, err := yamlDocuments([]byte("a: [\n")); err == nil {
		t.Error("broken YAML: no error")
	}
}

func TestCreate(t *testing.T) {
	s := kube.Get(t)
	ns := fmt.Sprintf("create-%d", time.Now().UnixNano()) // new on every run (-count)
	s.Create(t, ns, []byte(`apiVersion: v1
kind: Namespace
metadata: {name: `+ns+`}
---
# namespaced, no namespace: the one given
apiVersion: v1
kind: Service
metadata: {name: svc}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: `+ns+`}
spec:
  host: svc
  subsets: [{name: v1, labels: {version: v1}}]
`))
	do(t, s, http.MethodGet, "/api/v1/namespaces/"+ns, "", http.StatusOK)
	do(t, s, http.MethodGet, "/api/v1/namespaces/"+ns+"/services/svc", "", http.StatusOK)
	do(t, s, http.MethodGet, "/apis/networking.istio.io/v1/namespaces/"+ns+"/destinationrules/dr", "", http.StatusOK)
}

func TestEnsure(t *testing.T) {
	s := kube.Get(t)
	cm := []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"ensure"},"data":{"k":"first"}}`)
	s.Ensure(t, "default", cm)
	// Again, with other data: no error, and the first object stays.
	s.Ensure(t, "default", []byte(strings.Replace(string(cm), "first", "second", 1)))
	var got struct{ Data map[string]string }
	if err := json.Unmarshal(do(t, s, http.MethodGet, configMapPath+"/ensure", "", http.StatusOK), &got); err != nil {
		t.Fatal(err)
	}
	if got.Data["k"] != "first" {
		t.Errorf("data %v after Ensure of an existing object, want the first", got.Data)
	}
}

// The Gateway API's CRDs are installed with their validation: an
// istio-remote Gateway as Istio reads it is stored, and a listener
// without a protocol is refused.
func TestGatewayAPICRDs(t *testing.T) {
	s := kube.Get(t)
	const path = "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways"
	do(t, s, http.MethodPost, path, `{"apiVersion":"gateway.networking.k8s.io/v1","kind":"Gateway",
		"metadata":{"name":"kubetest-remote","labels":{"topology.istio.io/network":"network-b"}},
		"spec":{"gatewayClassName":"istio-remote","addresses":[{"type":"IPAddress","value":"192.0.2.10"}],
		"listeners":[{"name":"cross-network","port":15443,"protocol":"TLS",
		"tls":{"mode":"Passthrough","options":{"gateway.istio.io/listener-protocol":"auto-passthrough"}}}]}}`, http.StatusCreated)
	var gw struct {
		Spec struct {
			Listeners []struct {
				TLS struct{ Options map[string]string }
			}
		}
	}
	if err := json.Unmarshal(do(t, s, http.MethodGet, path+"/kubetest-remote", "", http.StatusOK), &gw); err != nil {
		t.Fatal(err)
	}
	if len(gw.Spec.Listeners) != 1 || gw.Spec.Listeners[0].TLS.Options["gateway.istio.io/listener-protocol"] != "auto-passthrough" {
		t.Errorf("Gateway spec = %+v", gw.Spec)
	}
	do(t, s, http.MethodPost, path, `{"apiVersion":"gateway.networking.k8s.io/v1","kind":"Gateway",
		"metadata":{"name":"kubetest-bad"},"spec":{"gatewayClassName":"istio-remote","listeners":[{"name":"x","port":15443}]}}`,
		http.StatusUnprocessableEntity)
	do(t, s, http.MethodDelete, path+"/kubetest-remote", "", http.StatusOK)
}
