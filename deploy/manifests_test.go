package deploy_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// gossipLeave is how long a stopping gateway spends leaving gossip before
// it drains (cmd/ewgate/gossip.go).
const gossipLeave = 5 * time.Second

// statefulSet holds the fields of base/statefulset.yaml checked here.
type statefulSet struct {
	Spec struct {
		Replicas int
		Selector struct{ MatchLabels map[string]string }
		Template struct {
			Metadata struct{ Labels map[string]string }
			Spec     podSpec
		}
	}
}

type podSpec struct {
	ServiceAccountName            string
	AutomountServiceAccountToken  *bool
	TerminationGracePeriodSeconds int
	Containers                    []struct {
		Args  []string
		Ports []struct {
			Name          string
			ContainerPort int
		}
		Lifecycle struct {
			PreStop struct {
				Sleep struct{ Seconds int }
			}
		}
		ReadinessProbe struct {
			HTTPGet struct {
				Path string
				Port string
			}
		}
	}
}

// nodeFiles returns every overlay's per-replica node settings file.
func nodeFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("overlays/*/node/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no node files: %v", err)
	}
	return files
}

func TestStatefulSetMatchesRBACAndNodeFiles(t *testing.T) {
	var sts statefulSet
	unmarshal(t, "base/statefulset.yaml", &sts)
	pod := sts.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if sts.Spec.Replicas != 2 {
		t.Errorf("replicas %d, want 2", sts.Spec.Replicas)
	}
	if pod.ServiceAccountName != saName {
		t.Errorf("serviceAccountName %q, want %q (the ClusterRoleBinding's subject)", pod.ServiceAccountName, saName)
	}
	var sa struct{ AutomountServiceAccountToken *bool }
	unmarshal(t, "base/serviceaccount.yaml", &sa)
	if pod.AutomountServiceAccountToken == nil || !*pod.AutomountServiceAccountToken ||
		(sa.AutomountServiceAccountToken != nil && !*sa.AutomountServiceAccountToken) {
		t.Error("the pod does not mount its service account token: the Kubernetes source has no credentials")
	}
	for _, a := range c.Args {
		if a == "-f" || a == "--f" || strings.HasPrefix(a, "-f=") || strings.HasPrefix(a, "--f=") {
			t.Errorf("arg %q: the cluster's own services come from the API server, not files", a)
		}
	}

	// The readiness probe reaches the admin server on a port the node
	// files make it listen on, on every address (the kubelet dials the pod
	// IP).
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe path %q, want /readyz", c.ReadinessProbe.HTTPGet.Path)
	}
	adminPort := 0
	for _, p := range c.Ports {
		if p.Name == c.ReadinessProbe.HTTPGet.Port {
			adminPort = p.ContainerPort
		}
	}
	if adminPort == 0 {
		t.Fatalf("readiness probe port %q is not a container port", c.ReadinessProbe.HTTPGet.Port)
	}

	var pdb struct {
		Spec struct {
			MinAvailable int
			Selector     struct{ MatchLabels map[string]string }
		}
	}
	unmarshal(t, "base/pdb.yaml", &pdb)
	if pdb.Spec.MinAvailable < 1 || pdb.Spec.MinAvailable >= sts.Spec.Replicas {
		t.Errorf("PodDisruptionBudget minAvailable %d with %d replicas: want at least 1 and room for one disruption", pdb.Spec.MinAvailable, sts.Spec.Replicas)
	}
	for k, v := range pdb.Spec.Selector.MatchLabels {
		if sts.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("PodDisruptionBudget selects %s=%s, which the pods do not carry", k, v)
		}
	}

	for _, f := range nodeFiles(t) {
		var node map[string]any
		if err := yaml.Unmarshal(read(t, f), &node); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if _, ok := node["files"]; ok {
			t.Errorf("%s: files: the Kubernetes source replaces hand-written catalogs", f)
		}
		if node["kubernetes"] != "on" {
			t.Errorf("%s: kubernetes: %v, want on (in-cluster config, and a clear error without a token)", f, node["kubernetes"])
		}
		if ns, ok := node["systemNamespace"]; ok && ns != "istio-system" {
			t.Errorf("%s: systemNamespace %v, but rbac.yaml grants the istio-system namespace only", f, ns)
		}
		addr, _ := node["adminAddress"].(string)
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Errorf("%s: adminAddress %q: %v (the default, 127.0.0.1:15000, is out of the kubelet's reach)", f, addr, err)
			continue
		}
		if ip := net.ParseIP(host); ip == nil || ip.IsLoopback() {
			t.Errorf("%s: adminAddress %q: the kubelet's probes cannot reach it; want an unspecified address", f, addr)
		}
		if port != strconv.Itoa(adminPort) {
			t.Errorf("%s: adminAddress port %s, but the probe targets container port %d", f, port, adminPort)
		}
		// Drain must finish within the grace period, after preStop and
		// the gossip leave.
		drainS, _ := node["drainTimeout"].(string)
		drain, err := time.ParseDuration(drainS)
		if err != nil {
			t.Errorf("%s: drainTimeout %q: %v", f, drainS, err)
			continue
		}
		need := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds)*time.Second + gossipLeave + drain
		if grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second; grace <= need {
			t.Errorf("%s: terminationGracePeriodSeconds %v is not above preStop %ds + gossip leave %v + drainTimeout %v",
				f, grace, c.Lifecycle.PreStop.Sleep.Seconds, gossipLeave, drain)
		}
	}
}

// TestBaseIsAdmitted creates the base's objects in the real API server
// (its validation, and Pod Security "restricted" on the namespace), and a
// pod from the StatefulSet's template as the controller would.
func TestBaseIsAdmitted(t *testing.T) {
	s := kube.Get(t)
	applyRBAC(t, s)
	for _, f := range []string{"base/services.yaml", "base/pdb.yaml", "base/statefulset.yaml"} {
		s.Ensure(t, saNamespace, read(t, f))
	}
	var sts struct {
		Spec struct {
			Template struct {
				Metadata map[string]any  `json:"metadata"`
				Spec     json.RawMessage `json:"spec"`
			}
		}
	}
	unmarshal(t, "base/statefulset.yaml", &sts)
	meta := sts.Spec.Template.Metadata
	// A name of its own on every run (-count): there is no garbage
	// collection of pods without a kubelet.
	podName := fmt.Sprintf("ewgate-%d", time.Now().UnixNano())
	meta["name"] = podName
	pod, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": sts.Spec.Template.Spec})
	if err != nil {
		t.Fatal(err)
	}
	s.Create(t, saNamespace, pod)
	// The ServiceAccount admission plugin mounted the token.
	code, body, err := s.Do(t.Context(), http.MethodGet, "/api/v1/namespaces/"+saNamespace+"/pods/"+podName, nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("get pod: HTTP %d, %v", code, err)
	}
	var got struct {
		Spec struct {
			Volumes []struct {
				Name      string
				Projected *struct {
					Sources []struct {
						ServiceAccountToken *struct{ Path string }
					}
				}
			}
		}
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	token := false
	for _, v := range got.Spec.Volumes {
		if v.Projected != nil {
			for _, src := range v.Projected.Sources {
				token = token || src.ServiceAccountToken != nil
			}
		}
	}
	if !token {
		t.Errorf("the admitted pod has no service account token volume: %s", body)
	}
}
