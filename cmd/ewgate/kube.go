package main

import (
	"fmt"
	"os"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ewgate/ewgate/discovery/kube"
)

// inClusterToken is where Kubernetes mounts a pod's service account token.
const inClusterToken = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// inPod reports whether the process runs in a Kubernetes pod with its
// service account token mounted, as client-go's in-cluster config needs.
func inPod() bool {
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return false
	}
	_, err := os.Stat(inClusterToken)
	return err == nil
}

// kubeMode decides whether the Kubernetes source runs, and whether from
// in-cluster config: --kubeconfig turns it on; in a pod, with no
// --kubeconfig, it is on when no -f is given (a gateway with files keeps
// reading only them, as before, and needs no RBAC), or when --kubernetes
// on asks for both.
func kubeMode(s settings, pod bool) (on, inCluster bool, err error) {
	switch s.Kubernetes {
	case "off":
		if s.Kubeconfig != "" {
			return false, false, fmt.Errorf("--kubernetes off (kubernetes) contradicts --kubeconfig %s", s.Kubeconfig)
		}
		return false, false, nil
	case "on":
		if s.Kubeconfig == "" && !pod {
			return false, false, fmt.Errorf("--kubernetes on (kubernetes): give --kubeconfig, or run in a pod with its service account token mounted")
		}
		return true, s.Kubeconfig == "", nil
	case "auto", "":
		if s.Kubeconfig != "" {
			return true, false, nil
		}
		if pod && len(s.Files) == 0 {
			return true, true, nil
		}
		return false, false, nil
	}
	return false, false, fmt.Errorf("--kubernetes (kubernetes) %q: want auto, on or off", s.Kubernetes)
}

// kubeSource builds the Kubernetes source the settings ask for, or nil.
func kubeSource(s settings, cfg kube.Config) (*kube.Source, error) {
	on, inCluster, err := kubeMode(s, inPod())
	if err != nil || !on {
		return nil, err
	}
	var rc *rest.Config
	if inCluster {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.REST = rc
	cfg.ClusterDomain = s.ClusterDomain
	cfg.SystemNamespace = s.SystemNamespace
	return kube.New(cfg)
}
