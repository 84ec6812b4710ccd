package deploy_test

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
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

	// The probes reach the status port, Istio's gateway readiness, which
	// the node files leave on its default: bindAddress:15021.
	if c.ReadinessProbe.HTTPGet.Path != "/healthz/ready" {
		t.Errorf("readiness probe path %q, want /healthz/ready", c.ReadinessProbe.HTTPGet.Path)
	}
	statusPort := 0
	for _, p := range c.Ports {
		if p.Name == c.ReadinessProbe.HTTPGet.Port {
			statusPort = p.ContainerPort
		}
	}
	if statusPort != 15021 {
		t.Fatalf("readiness probe port %q is container port %d, want the status port 15021", c.ReadinessProbe.HTTPGet.Port, statusPort)
	}
	var lb struct {
		Spec struct {
			Ports []struct {
				Name       string
				Port       int
				TargetPort int
			}
		}
	}
	unmarshal(t, "base/services.yaml", &lb) // the first document: Service ewgate
	hasStatus := false
	for _, p := range lb.Spec.Ports {
		hasStatus = hasStatus || p.Name == "status-port" && p.Port == 15021 && p.TargetPort == 15021
	}
	if !hasStatus {
		t.Errorf("Service ewgate lacks status-port 15021 (Istio's east-west Service has it for load balancer health checks): %+v", lb.Spec.Ports)
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
		if _, ok := node["statusAddress"]; ok {
			t.Errorf("%s: statusAddress set: the probes expect the default, bindAddress:15021", f)
		}
		if ip := net.ParseIP(fmt.Sprint(node["bindAddress"])); ip == nil || !ip.IsUnspecified() {
			t.Errorf("%s: bindAddress %v: the kubelet's probes of the status port come to the pod IP; want an unspecified address", f, node["bindAddress"])
		}
		addr, _ := node["adminAddress"].(string)
		if _, _, err := net.SplitHostPort(addr); err != nil {
			t.Errorf("%s: adminAddress %q: %v", f, addr, err)
		}
		// Drain must finish within the grace period, after preStop and
		// the gossip leave.
		drainS, _ := node["drainTimeout"].(string)
		drain, err := time.ParseDuration(drainS)
		if err != nil {
			t.Errorf("%s: drainTimeout %q: %v", f, drainS, err)
			continue
		}
		delayS, _ := node["drainDelay"].(string)
		delay, err := time.ParseDuration(cmp.Or(delayS, "0s"))
		if err != nil {
			t.Errorf("%s: drainDelay %q: %v", f, delayS, err)
			continue
		}
		need := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds)*time.Second + gossipLeave + delay + drain
		if grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second; grace <= need {
			t.Errorf("%s: terminationGracePeriodSeconds %v is not above preStop %ds + gossip leave %v + drainDelay %v + drainTimeout %v",
				f, grace, c.Lifecycle.PreStop.Sleep.Seconds, gossipLeave, delay, drain)
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
