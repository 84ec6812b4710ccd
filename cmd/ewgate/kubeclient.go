package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
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

// kubeEnv is what of the process's environment may choose the client
// config of this cluster's API server.
type kubeEnv struct {
	kubeconfig string // $KUBECONFIG: a list of files, as kubectl reads it
	pod        bool   // in a pod (inPod): in-cluster config is there
}

// processKubeEnv reads the process's kubeEnv.
func processKubeEnv() kubeEnv {
	return kubeEnv{kubeconfig: os.Getenv("KUBECONFIG"), pod: inPod()}
}

// errNoKubeClient is kubeClientFor's error when nothing names an API
// server.
var errNoKubeClient = errors.New("no Kubernetes client config: give --kubeconfig, set $KUBECONFIG, or run in a pod with its service account token mounted")

// kubeClient is where the client config of this cluster's API server
// comes from.
type kubeClient struct {
	// rules load kubeconfig files; nil: the pod's in-cluster config.
	rules *clientcmd.ClientConfigLoadingRules
	// from names the choice for errors: "--kubeconfig FILE",
	// "$KUBECONFIG" or "in-cluster config".
	from string
}

// kubeClientFor is the one precedence of the Kubernetes client config,
// for the Kubernetes source and the Istio publisher alike: the file
// --kubeconfig names (flag), which must exist; else the files $KUBECONFIG
// lists, merged as kubectl merges them; else, in a pod, the in-cluster
// config. Without any of them it returns errNoKubeClient.
func (e kubeEnv) kubeClientFor(flag string) (kubeClient, error) {
	switch {
	case flag != "":
		return kubeClient{rules: &clientcmd.ClientConfigLoadingRules{ExplicitPath: flag}, from: "--kubeconfig " + flag}, nil
	case e.kubeconfig != "":
		return kubeClient{rules: &clientcmd.ClientConfigLoadingRules{Precedence: filepath.SplitList(e.kubeconfig)}, from: "$KUBECONFIG"}, nil
	case e.pod:
		return kubeClient{from: "in-cluster config"}, nil
	}
	return kubeClient{}, errNoKubeClient
}

// restConfig loads the client config.
func (c kubeClient) restConfig() (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if c.rules == nil {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(c.rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config (%s): %w", c.from, err)
	}
	return rc, nil
}

// kubeRESTConfig is the client config of this cluster's API server that
// flag (--kubeconfig) and the environment choose (kubeClientFor).
func (e kubeEnv) kubeRESTConfig(flag string) (*rest.Config, error) {
	c, err := e.kubeClientFor(flag)
	if err != nil {
		return nil, err
	}
	return c.restConfig()
}
